"""One number from a process's own Prometheus endpoint, for tests.

A test that asserts something did NOT happen first waits for a counter showing
that the code under test had its chance (a poll ran, a wait hit its deadline, a
peer error was seen); these read such counters where the product exposes them.
"""

from __future__ import annotations

import urllib.error
import urllib.request

from prometheus_client.parser import text_string_to_metric_families


def metric(port: int, name: str) -> float | None:
    """The sample `name` (summed over its labels) at 127.0.0.1:`port`/metrics.

    None while the endpoint does not answer yet or does not list the sample, so a
    wait on it keeps waiting instead of reading a missing counter as zero.
    """
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
            text = reply.read().decode()
    except (urllib.error.URLError, ConnectionError):
        return None
    values = [
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    ]
    return float(sum(values)) if values else None


def at_least(port: int, name: str, floor: float) -> bool:
    """Whether the sample is listed and has reached `floor` (for wait loops)."""
    value = metric(port, name)
    return value is not None and value >= floor
