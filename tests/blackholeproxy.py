"""A TCP proxy on its own thread, for fault tests against a server in another process.

It forwards 127.0.0.1:<port> to a backend until `blackhole()`: from then on every byte
either way is read and dropped and new connections are accepted and never answered (a
server that stops answering, packets dropped); `restore()` resets the silenced connections
and forwards again. The test's own reactor may be blocked (stomp.py clients are
synchronous), so this proxy does not use it.
"""

from __future__ import annotations

import selectors
import socket
import struct
import threading


def _reset(sock: socket.socket) -> None:
    """Close with RST, as a peer whose connection timed out would see."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


class _Pair:
    __slots__ = ("backend", "blackholed", "client")

    def __init__(self, client: socket.socket, backend: socket.socket | None) -> None:
        self.client = client
        self.backend = backend
        self.blackholed = backend is None


class ThreadedProxy:
    """Start with `start()`, stop with `stop()`; `port` is where clients connect."""

    def __init__(self, backend_host: str, backend_port: int) -> None:
        self._backend = (backend_host, backend_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.setblocking(False)
        self.port: int = self._listener.getsockname()[1]
        self._selector = selectors.DefaultSelector()
        self._lock = threading.Lock()
        self._pairs: set[_Pair] = set()
        self._blackholed = False
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="tcp-proxy", daemon=True)
        #: Bytes read and dropped while blackholed.
        self.dropped_bytes = 0

    def start(self) -> ThreadedProxy:
        self._selector.register(self._listener, selectors.EVENT_READ, None)
        self._thread.start()
        return self

    def blackhole(self) -> None:
        with self._lock:
            self._blackholed = True
            for pair in self._pairs:
                pair.blackholed = True

    def restore(self) -> None:
        with self._lock:
            self._blackholed = False
            silenced = [pair for pair in self._pairs if pair.blackholed]
            for pair in silenced:
                self._close(pair)

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
        self._thread.join(5)
        for pair in list(self._pairs):
            self._close(pair)
        self._listener.close()
        self._selector.close()

    def _run(self) -> None:
        while True:
            with self._lock:
                if self._stopping:
                    return
            for key, _ in self._selector.select(0.05):
                with self._lock:
                    if key.data is None:
                        self._accept()
                    else:
                        pair, sock = key.data
                        if pair in self._pairs:
                            self._forward(pair, sock)

    def _accept(self) -> None:
        try:
            client, _ = self._listener.accept()
        except BlockingIOError:
            return
        backend = None
        if not self._blackholed:
            try:
                backend = socket.create_connection(self._backend, timeout=5)
            except OSError:
                _reset(client)
                return
        pair = _Pair(client, backend)
        self._pairs.add(pair)
        self._selector.register(client, selectors.EVENT_READ, (pair, client))
        if backend is not None:
            self._selector.register(backend, selectors.EVENT_READ, (pair, backend))

    def _forward(self, pair: _Pair, sock: socket.socket) -> None:
        try:
            data = sock.recv(65536)
        except OSError:
            data = b""
        if not data:
            self._close(pair)
            return
        if pair.blackholed:
            self.dropped_bytes += len(data)
            return
        target = pair.backend if sock is pair.client else pair.client
        assert target is not None
        try:
            target.sendall(data)
        except OSError:
            self._close(pair)

    def _close(self, pair: _Pair) -> None:
        self._pairs.discard(pair)
        for sock in (pair.client, pair.backend):
            if sock is None:
                continue
            try:
                self._selector.unregister(sock)
            except (KeyError, ValueError):
                pass
            _reset(sock)
