"""The failpoint switchboard itself (no services): parsing, tags, counts, once across processes."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from saga import failpoints
from saga.failpoints import FailpointConfigError, FailpointError, failpoint, hits, parse


@pytest.fixture(autouse=True)
def _fresh(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv(failpoints.ENV, raising=False)
    monkeypatch.delenv(failpoints.MARKERS_ENV, raising=False)
    failpoints.reset()
    yield
    failpoints.reset()


def arm(monkeypatch: pytest.MonkeyPatch, spec: str, markers: Path | None = None) -> None:
    monkeypatch.setenv(failpoints.ENV, spec)
    if markers is not None:
        monkeypatch.setenv(failpoints.MARKERS_ENV, str(markers))
    failpoints.reset()


def _call_every_point() -> None:
    for name in failpoints.POINTS:
        for tags in [(), ("x", "do"), ("record", "undo")]:
            assert failpoint(name, *tags) is None


def test_unset_does_nothing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Unset: every point returns at once, logs nothing and leaves no hit; the same
    calls with one point armed do act, so the observations below can see a firing."""
    monkeypatch.setenv(failpoints.MARKERS_ENV, str(tmp_path))
    caplog.set_level("DEBUG", logger="saga.failpoints")
    _call_every_point()
    assert hits(tmp_path) == [] and not (tmp_path / "hits.log").exists()
    assert caplog.records == []

    arm(monkeypatch, "worker.before_ack=raise(armed)", tmp_path)
    with pytest.raises(FailpointError, match="armed"):
        _call_every_point()
    assert [h["point"] for h in hits(tmp_path)] == ["worker.before_ack"]
    assert [r.getMessage() for r in caplog.records] == [
        "failpoint worker.before_ack fired: worker.before_ack=raise(armed)"
    ]


def test_unset_kill_point_leaves_the_process_alive(tmp_path: Path) -> None:
    """A process passing every point unarmed runs to its end; armed with kill, it dies there."""
    code = (
        "from saga.failpoints import POINTS, failpoint\n"
        "for name in POINTS: failpoint(name, 'x', 'do')\n"
        "print('ran')"
    )
    base = {k: v for k, v in os.environ.items() if k != failpoints.ENV}
    base[failpoints.MARKERS_ENV] = str(tmp_path)
    unset = subprocess.run([sys.executable, "-c", code], env=base, capture_output=True, text=True)
    assert (unset.returncode, unset.stdout.strip()) == (0, "ran"), unset.stderr
    assert hits(tmp_path) == []
    armed_env = {**base, failpoints.ENV: "chain.after_submit=kill"}
    armed = subprocess.run(
        [sys.executable, "-c", code], env=armed_env, capture_output=True, text=True
    )
    assert (armed.returncode, armed.stdout) == (-9, "")
    assert [h["point"] for h in hits(tmp_path)] == ["chain.after_submit"]


def test_parse_rejects_unknown_points_and_actions() -> None:
    with pytest.raises(FailpointConfigError, match="unknown failpoint"):
        parse("chain.nowhere=kill")
    with pytest.raises(FailpointConfigError, match="unknown action"):
        parse("chain.after_submit=explode")
    with pytest.raises(FailpointConfigError, match="sleep needs seconds"):
        parse("chain.after_submit=sleep(soon)")
    terms = parse("chain.after_submit@undo@record=2*raise(boom); worker.before_ack=sleep(0.5)")
    (term,) = terms["chain.after_submit"]
    assert (term.tags, term.count, term.action, term.arg) == (
        frozenset({"undo", "record"}),
        2,
        "raise",
        "boom",
    )


def test_tags_and_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    arm(monkeypatch, "chain.after_submit@undo=2*raise(boom)")
    failpoint("chain.after_submit", "record", "do")  # tag does not match
    for _ in range(2):
        with pytest.raises(FailpointError, match="boom"):
            failpoint("chain.after_submit", "record", "undo")
    failpoint("chain.after_submit", "record", "undo")  # spent


def test_once_fires_in_one_process_only(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A child killed at a once* point leaves the marker; the next process runs through."""
    env = {
        **os.environ,
        failpoints.ENV: "chain.after_prepared=once*kill",
        failpoints.MARKERS_ENV: str(tmp_path),
    }
    code = "from saga.failpoints import failpoint; failpoint('chain.after_prepared'); print('ran')"
    first = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    second = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert first.returncode == -9 and first.stdout == ""
    assert second.returncode == 0 and second.stdout.strip() == "ran"
    assert [h["point"] for h in hits(tmp_path)] == ["chain.after_prepared"]


def test_once_needs_a_markers_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    arm(monkeypatch, "chain.after_prepared=once*kill")
    with pytest.raises(FailpointConfigError, match="once"):
        failpoint("chain.after_prepared")
