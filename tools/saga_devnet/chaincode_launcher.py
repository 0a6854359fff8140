"""Start the sagafacts chaincode (``python -m sagafacts_chaincode``, chaincode-as-a-service)
as a child process, for the demo's local ledger and the tests.

    with chaincode_running(f"127.0.0.1:{free_port()}", "sagafacts_1.0:x", log) as proc:
        ...  # a devnet whose chaincodes.sagafacts.address is that address

The devnet dials the chaincode, so the chaincode must listen before the devnet
starts: ``start_chaincode`` returns only once the port accepts connections.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LISTEN_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _log_tail(log: Path, chars: int = 4000) -> str:
    try:
        return log.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


def wait_listening(
    proc: subprocess.Popen[bytes],
    port: int,
    what: str,
    log: Path,
    timeout: float = LISTEN_TIMEOUT,
) -> None:
    """Return once something accepts connections on 127.0.0.1:`port`; raise if `proc`
    exits first or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}; see {log}\n{_log_tail(log)}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(
        f"{what} did not listen on port {port} within {timeout:g} s; see {log}\n{_log_tail(log)}"
    )


def stop(proc: subprocess.Popen[bytes], timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM, then SIGKILL if it has not exited within `timeout`; reaps it either way."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def start_chaincode(
    address: str,
    chaincode_id: str,
    log: Path,
    *,
    new_session: bool = False,
    timeout: float = LISTEN_TIMEOUT,
) -> subprocess.Popen[bytes]:
    """Run the chaincode on `address` (host:port) with package id `chaincode_id`,
    its output appended to `log`, and wait until it listens.

    The caller owns the process and must `stop` it; if it never listens it is
    stopped here before the error is raised.
    """
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "sagafacts_chaincode",
                "--id",
                chaincode_id,
                "--address",
                address,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=new_session,
        )
    try:
        wait_listening(proc, int(address.rsplit(":", 1)[1]), "the chaincode", log, timeout)
    except BaseException:
        stop(proc)
        raise
    return proc


@contextmanager
def chaincode_running(
    address: str,
    chaincode_id: str,
    log: Path,
    *,
    new_session: bool = False,
    timeout: float = LISTEN_TIMEOUT,
) -> Iterator[subprocess.Popen[bytes]]:
    """`start_chaincode`, and `stop` it on the way out."""
    proc = start_chaincode(address, chaincode_id, log, new_session=new_session, timeout=timeout)
    try:
        yield proc
    finally:
        stop(proc)
