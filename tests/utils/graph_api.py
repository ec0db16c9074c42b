"""A real HTTP server on 127.0.0.1 standing in for the Graph API: it records requests and answers as scripted."""

from __future__ import annotations

import contextlib
import itertools
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any

from tests.utils.local_http import LocalServer


@dataclass(frozen=True)
class Captured:
    """One request as the server received it; header names are lower case."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@dataclass(frozen=True)
class Behaviour:
    status: int = 200
    hang: float = 0.0  # seconds to wait before answering (cut short by release() or close: no answer then)
    code: int = 131000  # the Graph API error code of a failure


OUTSIDE_WINDOW = 131047  # "Re-engagement message": more than 24 hours since the user's last message


class GraphApi:
    """Answers 200 with a message id unless told to fail or hang for the next requests."""

    def __init__(self) -> None:
        self.requests: list[Captured] = []
        self.accepted: list[Captured] = []  # requests answered 2xx to a client still listening
        self._release = threading.Event()
        self._script: list[Behaviour] = []
        self._always: Behaviour | None = None
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._ids = itertools.count(1)
        self.given_ids: list[tuple[str, str | None]] = []  # (message id, recipient) of each accepted send
        self._server = LocalServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def messages(self) -> list[Captured]:
        """Every message POST so far (typing indicators left out), in arrival order."""
        with self._lock:
            return [r for r in self.requests if r.method == "POST" and "status" not in r.json]

    @property
    def sent(self) -> list[Any]:
        """The JSON bodies of every message POST so far (typing indicators left out), in arrival order."""
        with self._lock:
            return [r.json for r in self.requests if r.method == "POST" and "status" not in r.json]

    @property
    def delivered(self) -> list[Any]:
        """The JSON bodies of the message POSTs the stand-in accepted (2xx written back), in order."""
        with self._lock:
            return [r.json for r in self.accepted if "status" not in r.json]

    @property
    def typing(self) -> list[Any]:
        """The read + typing indicator calls so far."""
        with self._lock:
            return [r.json for r in self.requests if r.method == "POST" and r.json.get("status") == "read"]

    def status(self, state: str, n: int = -1, *, error: tuple[int, str] | None = None) -> dict[str, Any]:
        """The status callback Meta would send for the n-th message this stand-in accepted.

        state: sent, delivered, read or failed (error: (code, title) of the failure).
        """
        with self._lock:
            given, recipient = self.given_ids[n]
        callback: dict[str, Any] = {
            "id": given,
            "status": state,
            "timestamp": str(int(time.time())),
            "recipient_id": recipient,
        }
        if error is not None:
            callback["errors"] = [{"code": error[0], "title": error[1], "error_data": {"details": error[1]}}]
        return callback

    def refuse_outside_window(self, times: int | None = None) -> None:
        """Answer 400 with error code 131047, as outside the customer-service window."""
        self._plan(Behaviour(status=400, code=OUTSIDE_WINDOW), times)

    def release(self) -> None:
        """End every hang now, answering nothing, and answer normally from here on."""
        with self._lock:
            self._script.clear()
            self._always = None
        self._release.set()

    def fail(self, status: int, times: int | None = None) -> None:
        """Answer status to the next `times` message sends, or to every request."""
        self._plan(Behaviour(status=status), times)

    def hang(self, seconds: float, times: int | None = None) -> None:
        """Wait seconds before answering the next `times` message sends, or every request."""
        self._plan(Behaviour(hang=seconds), times)

    def _plan(self, behaviour: Behaviour, times: int | None) -> None:
        with self._lock:
            if times is None:
                self._always = behaviour
            else:
                self._script.extend([behaviour] * times)

    def _next(self, captured: Captured) -> Behaviour:
        # Scripted `times` count message sends only; the typing indicator calls in between
        # follow the standing behaviour (fail(...)/hang(...) without times).
        with self._lock:
            if self._script and b'"status"' not in captured.body:
                return self._script.pop(0)
            return self._always or Behaviour()

    def close(self) -> None:
        self._closing.set()
        self._release.set()
        self._server.shutdown()
        self._server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                captured = Captured(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                with api._lock:
                    api.requests.append(captured)
                behaviour = api._next(captured)
                if behaviour.hang and api._release.wait(behaviour.hang):
                    return  # released: the client has long given up; answer nothing
                request = (captured.json or {}) if body else {}
                if behaviour.status < 400 and request.get("status") == "read":
                    answer: dict[str, Any] = {"success": True}
                elif behaviour.status < 400:
                    recipient = request.get("to")
                    given = f"wamid.OUT{next(api._ids)}"
                    with api._lock:
                        api.given_ids.append((given, recipient))
                    answer = {
                        "messaging_product": "whatsapp",
                        "contacts": [{"input": recipient, "wa_id": recipient}],
                        "messages": [{"id": given}],
                    }
                else:
                    answer = {
                        "error": {
                            "message": f"scripted failure {behaviour.status}",
                            "type": "OAuthException",
                            "code": behaviour.code,
                            "fbtrace_id": "AbCdEf",
                        }
                    }
                data = json.dumps(answer).encode()
                try:
                    self.send_response(behaviour.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    self.wfile.flush()
                except OSError:  # the client gave up (timeout): not accepted
                    return
                if behaviour.status < 400:
                    with api._lock:
                        api.accepted.append(captured)

            do_GET = do_POST = _serve  # noqa: N815 - http.server's handler names

            def log_message(self, format: str, *args: Any) -> None:  # keeps test output quiet
                pass

        return Handler


@contextlib.contextmanager
def graph_api() -> Iterator[GraphApi]:
    api = GraphApi()
    try:
        yield api
    finally:
        api.close()
