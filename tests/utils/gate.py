"""A gate over loopback TCP that agents (in this process or a server's) wait at until the test opens it.

An agent connects to 127.0.0.1:<port> and reads one byte; the test counts the agents
waiting (each is a turn in flight) and opens the gate for all of them at once. An
agent that arrives after the gate opened passes at once. Nothing polls: the agent's
side is an awaited read, the test's side a condition variable.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator

WAIT_SECONDS = 120.0  # a bound on the test, never a measure of speed


class Gate:
    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=1024)
        self.port: int = self._listener.getsockname()[1]
        self._cond = threading.Condition()
        self._waiting: list[socket.socket] = []
        self.arrived = 0
        self.opened = False
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            with self._cond:
                self.arrived += 1
                if self.opened:
                    self._pass(sock)
                else:
                    self._waiting.append(sock)
                self._cond.notify_all()

    @staticmethod
    def _pass(sock: socket.socket) -> None:
        with contextlib.suppress(OSError):
            sock.sendall(b"!")
            sock.close()

    def wait_arrived(self, count: int, seconds: float = WAIT_SECONDS) -> bool:
        """True once count agents have reached the gate (opened or not); False after seconds."""
        with self._cond:
            return self._cond.wait_for(lambda: self.arrived >= count, seconds)

    def open(self) -> None:
        """Let every waiting agent through, and every later one at once."""
        with self._cond:
            self.opened = True
            waiting, self._waiting = self._waiting, []
        for sock in waiting:
            self._pass(sock)

    def close(self) -> None:
        """Stop accepting; waiting agents see the connection close (their read fails)."""
        self._closed = True
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._cond:
            waiting, self._waiting = self._waiting, []
        for sock in waiting:
            with contextlib.suppress(OSError):
                sock.close()


@contextlib.contextmanager
def gate() -> Iterator[Gate]:
    g = Gate()
    try:
        yield g
    finally:
        g.close()
