"""A TCP forwarder that tests switch off and on to cut a process off a real server.

RabbitMQ and PostgreSQL on the test machines are shared; stopping them would
disturb everyone else. Pointing the process under test at this proxy instead and
closing it gives the same symptoms (refused connections, connections reset
mid-stream) without touching the server.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading


class TcpProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self._listener: socket.socket | None = None
        self._port = 0
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._port

    def start(self) -> TcpProxy:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self._port))
        listener.listen(64)
        self._port = listener.getsockname()[1]
        self._listener = listener
        self._stopped.clear()
        self._thread = threading.Thread(target=self._serve, args=(listener,), daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Refuse new connections and reset the open ones (a server going away)."""
        self._stopped.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for a, b in pairs:
            for s in (a, b):
                with contextlib.suppress(OSError):
                    s.close()

    def _serve(self, listener: socket.socket) -> None:
        sel = selectors.DefaultSelector()
        listener.setblocking(False)
        sel.register(listener, selectors.EVENT_READ, None)
        try:
            while not self._stopped.is_set():
                for key, _ in sel.select(timeout=0.1):
                    if key.data is None:
                        try:
                            client, _addr = listener.accept()
                        except OSError:
                            continue
                        try:
                            upstream = socket.create_connection(self.target, timeout=3)
                        except OSError:
                            client.close()
                            continue
                        client.setblocking(False)
                        upstream.setblocking(False)
                        with self._lock:
                            self._pairs.append((client, upstream))
                        sel.register(client, selectors.EVENT_READ, upstream)
                        sel.register(upstream, selectors.EVENT_READ, client)
                        continue
                    src: socket.socket = key.fileobj  # type: ignore[assignment]
                    dst: socket.socket = key.data
                    try:
                        data = src.recv(65536)
                        if data:
                            dst.setblocking(True)
                            dst.sendall(data)
                            dst.setblocking(False)
                            continue
                    except OSError:
                        pass
                    for s in (src, dst):
                        with contextlib.suppress(KeyError, ValueError):
                            sel.unregister(s)
                        with contextlib.suppress(OSError):
                            s.close()
        finally:
            sel.close()

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
