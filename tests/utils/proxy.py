"""A loopback TCP proxy in front of PostgreSQL that a test can cut, to stage a database outage."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections.abc import Iterator

from sqlalchemy.engine import make_url


def _target(url: str) -> tuple[int, object]:
    parsed = make_url(url)
    host = parsed.query.get("host") or parsed.host or "127.0.0.1"
    if isinstance(host, tuple):
        host = host[0]
    if host.startswith("/"):
        return socket.AF_UNIX, f"{host}/.s.PGSQL.{parsed.port or 5432}"
    return socket.AF_INET, (host, parsed.port or 5432)


class OutageProxy:
    """Forwards 127.0.0.1:<port> to the server until `down()`; `up()` serves again; `refuse_new()`
    refuses new connections only.

    `drop_silently()` acts like a NAT or firewall that forgot the open connections: the
    client is told nothing (no FIN), and its next packet is answered with a reset.
    """

    def __init__(self, database_url: str):
        self.family, self.address = _target(database_url)
        self.database_url = database_url
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._dropped: set[socket.socket] = set()  # client sockets whose server side is gone
        self._up = True
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        parsed = make_url(self.database_url)
        query = {k: v for k, v in parsed.query.items() if k != "host"}
        return parsed.set(host="127.0.0.1", port=self.port, query=query).render_as_string(hide_password=False)

    def down(self) -> None:
        with self._lock:
            self._up = False
            for sock in self._open:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                    sock.close()
            self._open.clear()

    def refuse_new(self) -> None:
        """Refuse new connections and keep the open ones (a server at max_connections, say)."""
        with self._lock:
            self._up = False

    def drop_silently(self) -> int:
        """Forget every open connection without telling the client; returns how many were dropped."""
        with self._lock:
            pairs, self._pairs = self._pairs, []
            for client, server in pairs:
                self._dropped.add(client)
                self._open.discard(server)
                with contextlib.suppress(OSError):
                    server.shutdown(socket.SHUT_RDWR)
                    server.close()
            return len(pairs)

    def up(self) -> None:
        with self._lock:
            self._up = True

    def close(self) -> None:
        self._closed = True
        self.down()
        self._listener.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                if not self._up:
                    client.close()  # refused, as by a stopped server
                    continue
                try:
                    server = socket.socket(self.family, socket.SOCK_STREAM)
                    server.connect(self.address)
                except OSError:
                    client.close()
                    continue
                self._open.update((client, server))
                self._pairs.append((client, server))
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while chunk := source.recv(65536):
                if source in self._dropped:
                    self._reset(source)  # the client spoke on a forgotten connection
                    return
                sink.sendall(chunk)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                if sock in self._dropped:
                    continue  # a silent drop tells the client nothing
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def _reset(self, client: socket.socket) -> None:
        # SO_LINGER with a zero timeout makes close() send RST instead of FIN.
        with self._lock:
            self._dropped.discard(client)
            self._open.discard(client)
        with contextlib.suppress(OSError):
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            client.close()


@contextlib.contextmanager
def outage_proxy(database_url: str) -> Iterator[OutageProxy]:
    proxy = OutageProxy(database_url)
    try:
        yield proxy
    finally:
        proxy.close()
