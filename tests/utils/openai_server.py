"""A real HTTP server on 127.0.0.1 that speaks the Chat Completions API: every request gets one reply text.

A request with "stream": true gets it as the API streams it (server-sent chunks, one per
word, then the finish and the usage chunk, then [DONE]), in one body with its length.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from typing import Any

from tests.utils.local_http import LocalServer


class ChatCompletions:
    """Records each request body and answers with `reply` and a fixed usage (5 in, 2 out)."""

    def __init__(self, reply: str) -> None:
        self.reply = reply
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._server = LocalServer(("127.0.0.1", 0), self._handler())
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True).start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as the OpenAI client's pool expects

            def do_POST(self) -> None:  # http.server's naming
                request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with api._lock:
                    api.requests.append({"path": self.path, **request})
                usage = {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
                head = {"id": f"chatcmpl-{len(api.requests)}", "created": 0, "model": request.get("model")}
                if request.get("stream"):
                    chunks = [
                        {"index": 0, "delta": {"role": "assistant", "content": word}, "finish_reason": None}
                        for word in re.findall(r"\s*\S+\s*", api.reply)
                    ]
                    chunks.append({"index": 0, "delta": {}, "finish_reason": "stop"})
                    events = [{**head, "object": "chat.completion.chunk", "choices": [chunk]} for chunk in chunks]
                    events.append({**head, "object": "chat.completion.chunk", "choices": [], "usage": usage})
                    body = "".join(f"data: {json.dumps(event)}\n\n" for event in events).encode()
                    body += b"data: [DONE]\n\n"
                    content_type = "text/event-stream"
                else:
                    body = json.dumps(
                        {
                            **head,
                            "object": "chat.completion",
                            "usage": usage,
                            "choices": [
                                {
                                    "index": 0,
                                    "finish_reason": "stop",
                                    "message": {"role": "assistant", "content": api.reply},
                                }
                            ],
                        }
                    ).encode()
                    content_type = "application/json"
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        return Handler


@contextlib.contextmanager
def chat_completions(reply: str) -> Iterator[ChatCompletions]:
    api = ChatCompletions(reply)
    try:
        yield api
    finally:
        api.close()
