"""A loopback TCP proxy that adds a one-way delay to every chunk: RTT injection for tests.

The device talks to the proxy, the proxy to the gateway; each chunk waits ``rtt_ms / 2`` in
each direction (plus optional jitter), so a request–answer exchange costs one extra round trip.
With ``bandwidth_mbps`` each direction is also a link of that rate: a chunk (up to 64 KiB, as
read) waits until the chunks before it have gone, then takes ``bytes * 8 / rate`` to go.
``benchmarks/cascade.py`` uses it too. It binds 127.0.0.1
only, and every thread and socket is bounded and closed by :meth:`DelayProxy.close`.
"""

from __future__ import annotations

import contextlib
import queue
import random
import socket
import threading
import time


class DelayProxy:
    """Forward ``127.0.0.1:<port>`` to ``upstream`` with ``rtt_ms / 2`` per direction, plus
    exponentially distributed jitter of mean ``jitter_ms / 2`` per direction when asked, and
    at most ``bandwidth_mbps`` per direction when given."""

    def __init__(
        self,
        upstream: tuple[str, int],
        rtt_ms: float,
        jitter_ms: float = 0.0,
        seed: int = 0,
        bandwidth_mbps: float | None = None,
    ):
        self.upstream = upstream
        self.one_way_s = rtt_ms / 2000.0
        self.jitter_s = jitter_ms / 2000.0
        self.bits_per_s = bandwidth_mbps * 1e6 if bandwidth_mbps else None
        self._random = random.Random(seed)
        self._stop = threading.Event()
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self.port = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._spawn(self._accept)

    def _spawn(self, target, *args) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        with self._lock:
            self._threads.append(thread)
        thread.start()

    def _track(self, sock: socket.socket) -> socket.socket:
        with self._lock:
            self._sockets.append(sock)
        return sock

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._track(client)
            try:
                server = self._track(socket.create_connection(self.upstream, timeout=2.0))
            except OSError:  # the gateway is down: the device sees the connection close
                client.close()
                continue
            for sock in (client, server):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.settimeout(0.2)
            self._direction(client, server)
            self._direction(server, client)

    def _direction(self, source: socket.socket, sink: socket.socket) -> None:
        """One direction of a connection: a reader stamps each chunk with its due time and a
        writer delivers it then, so chunks are delayed in parallel, as on a real link."""
        chunks: queue.Queue[tuple[float, bytes]] = queue.Queue()
        self._spawn(self._read, source, chunks)
        self._spawn(self._write, chunks, source, sink)

    def _read(self, source: socket.socket, chunks: queue.Queue) -> None:
        free_at = 0.0  # when this direction's link has sent everything queued so far
        while not self._stop.is_set():
            try:
                chunk = source.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                chunk = b""
            with self._lock:
                jitter = self._random.expovariate(1 / self.jitter_s) if self.jitter_s else 0.0
            sent_at = time.monotonic()
            if self.bits_per_s:
                free_at = max(sent_at, free_at) + len(chunk) * 8 / self.bits_per_s
                sent_at = free_at
            chunks.put((sent_at + self.one_way_s + jitter, chunk))
            if not chunk:
                return

    def _write(self, chunks: queue.Queue, source: socket.socket, sink: socket.socket) -> None:
        while not self._stop.is_set():
            try:
                due, chunk = chunks.get(timeout=0.2)
            except queue.Empty:
                continue
            time.sleep(max(0.0, due - time.monotonic()))
            if not chunk:
                break
            try:
                sink.sendall(chunk)
            except OSError:
                break
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        """Stop accepting, close every socket and join every thread (bounded)."""
        self._stop.set()
        self._listener.close()
        with self._lock:
            sockets, threads = list(self._sockets), list(self._threads)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.close()
        for thread in threads:
            thread.join(timeout=2.0)
