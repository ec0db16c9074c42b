"""A real HTTP server on 127.0.0.1 that takes a request and never answers it: a model call that hangs.

Each connection gets a thread that reads the request's head, sets `requested`, then
waits on the socket until the client closes it (EOF: `closed` is set) or the test
calls `answer()` (a 200 with `body` goes to every connection still open). No sleeps:
the threads block in select() on the connection and on a wake-up socket.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
from collections.abc import Iterator


class StalledServer:
    """requested: a request's head arrived. closed: a client closed its connection before any answer."""

    def __init__(self, body: bytes = b'{"late": true}') -> None:
        self.body = body
        self.requested, self.closed = threading.Event(), threading.Event()
        self.requests: list[bytes] = []  # each request's head, as received
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._wake_r, self._wake_w = socket.socketpair()  # readable once answer() was called
        self._stop_r, self._stop_w = socket.socketpair()  # readable once close() was called
        self._answering = False
        self._threads: list[threading.Thread] = []
        self._accepting = threading.Thread(target=self._accept, name="stalled-server", daemon=True)
        self._accepting.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._listener.getsockname()[1]}"

    def answer(self) -> None:
        """Answer every connection still open (and every later request) with 200 and `body`."""
        self._answering = True
        self._wake_w.send(b"x")

    def close(self) -> None:
        self._stop_w.send(b"x")
        self.answer()
        for thread in [self._accepting, *self._threads]:
            thread.join(10)
        for sock in (self._listener, self._wake_r, self._wake_w, self._stop_r, self._stop_w):
            sock.close()

    def _accept(self) -> None:
        while True:
            readable, _, _ = select.select([self._listener, self._stop_r], [], [])
            if self._stop_r in readable:
                return
            conn, _ = self._listener.accept()
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = conn.recv(65536)
                if not chunk:
                    self.closed.set()
                    return
                head += chunk
            self.requests.append(head.split(b"\r\n\r\n")[0])
            self.requested.set()
            while not self._answering:
                readable, _, _ = select.select([conn, self._wake_r], [], [])
                if conn in readable and not conn.recv(65536):  # the rest of a body, or EOF
                    self.closed.set()
                    return
            response = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
            with contextlib.suppress(OSError):
                conn.sendall(response % (len(self.body), self.body))


@contextlib.contextmanager
def stalled_server() -> Iterator[StalledServer]:
    server = StalledServer()
    try:
        yield server
    finally:
        server.close()
