"""`python -m bench.nodelay <uvicorn arguments>`: uvicorn whose pre-bound listening socket says it is TCP.

Diagnostic only. With `--workers N` uvicorn binds the listening socket itself with
protocol number 0 and hands it to the workers; asyncio turns TCP_NODELAY on for
accepted connections only when the socket reports IPPROTO_TCP, so every keep-alive
response written in two sends (headers, then body) waits for the client's delayed
ACK, about 40 ms on Linux (uvicorn issue 3149). Here the bound socket is wrapped
again from its file descriptor, which makes Python ask the kernel for the protocol
(6); everything else is uvicorn's own command line and supervisor, unchanged.
"""

from __future__ import annotations

import socket
import sys

from uvicorn.config import Config
from uvicorn.main import main

_bind_socket = Config.bind_socket


def bind_socket(self: Config) -> socket.socket:
    sock = _bind_socket(self)
    if sock.family in (socket.AF_INET, socket.AF_INET6) and sock.proto == 0:
        sock = socket.socket(fileno=sock.detach())  # family, type and protocol read back from the kernel
    return sock


Config.bind_socket = bind_socket  # type: ignore[method-assign]

if __name__ == "__main__":
    sys.exit(main())
