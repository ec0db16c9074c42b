"""Refuse, and record, every connection and name lookup that would leave 127.0.0.1."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

_LOCAL_NAMES = {"localhost", "localhost.localdomain"}


def _is_loopback(host: object) -> bool:
    if isinstance(host, bytes):
        host = host.decode()
    if host in (None, "", *_LOCAL_NAMES):
        return True
    try:
        return ipaddress.ip_address(str(host).split("%")[0]).is_loopback
    except ValueError:
        return False  # a name other than localhost: resolving it already goes out


def _is_address(host: object) -> bool:
    if isinstance(host, bytes):
        host = host.decode()
    try:
        ipaddress.ip_address(str(host).split("%")[0])
    except ValueError:
        return False
    return True


@contextlib.contextmanager
def loopback_only(record: Callable[[str], None] | None = None) -> Iterator[list[str]]:
    """While open, a connect or lookup to a non-loopback host raises and is added to the yielded list.

    Patches socket.socket.connect/connect_ex and socket.getaddrinfo for every thread
    (the SDK's trace exporter and HTTP clients included); libpq connects in C, to
    127.0.0.1 in these tests anyway.
    """
    attempts: list[str] = []
    lock = threading.Lock()
    connect, connect_ex, getaddrinfo = socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo

    def refuse(what: str) -> None:
        with lock:
            attempts.append(what)
        if record is not None:
            record(what)

    def guarded_connect(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback(address[0]):
            refuse(f"connect {address[0]}:{address[1]}")
            raise ConnectionRefusedError(f"test refuses connections to {address[0]}")
        return connect(sock, address)

    def guarded_connect_ex(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback(address[0]):
            refuse(f"connect {address[0]}:{address[1]}")
            return 111  # ECONNREFUSED
        return connect_ex(sock, address)

    def guarded_getaddrinfo(host, *args, **kwargs):
        if not _is_loopback(host) and not _is_address(host):  # a literal address is checked at connect
            refuse(f"resolve {host!r}")
            raise socket.gaierror(socket.EAI_NONAME, f"test refuses to resolve {host!r}")
        return getaddrinfo(host, *args, **kwargs)

    socket.socket.connect, socket.socket.connect_ex = guarded_connect, guarded_connect_ex
    socket.getaddrinfo = guarded_getaddrinfo
    try:
        yield attempts
    finally:
        socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo = connect, connect_ex, getaddrinfo


def install_for_process(log: Path) -> None:
    """Refuse non-loopback traffic for the rest of this process, writing each attempt to log as JSON."""

    def record(what: str) -> None:
        with log.open("a", encoding="utf-8") as out:
            out.write(json.dumps({"blocked": what}) + "\n")

    guard = loopback_only(record)
    guard.__enter__()
    _KEPT.append(guard)  # a collected generator would run its finally and lift the guard


_KEPT: list[contextlib.AbstractContextManager] = []
