"""Gates a test opens for agents in any process: GET {url}/wait/<name> answers once the test opens it."""

from __future__ import annotations

import contextlib
import threading
from collections import defaultdict
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler

from tests.utils.local_http import LocalServer

WAIT_SECONDS = 60.0


class Gates:
    def __init__(self, url: str, events: dict[str, threading.Event]):
        self.url, self._events = url, events

    def open(self, name: str) -> None:
        self._events[name].set()


@contextlib.contextmanager
def gate_server() -> Iterator[Gates]:
    events: dict[str, threading.Event] = defaultdict(threading.Event)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # http.server's name
            name = self.path.rsplit("/", 1)[-1]
            opened = events[name].wait(WAIT_SECONDS)
            self.send_response(200 if opened else 504)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = LocalServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Gates(f"http://127.0.0.1:{server.server_address[1]}", events)
    finally:
        for event in events.values():  # let agents still waiting go
            event.set()
        server.shutdown()
        server.server_close()
