"""Long statements sent with PostgreSQL's numbered placeholders, converted once per process.

psycopg turns a statement's `%(name)s` placeholders into `$1, $2, ...` at every execution,
and keeps the result only for statements of at most 4,096 bytes (MAX_CACHED_STATEMENT_LENGTH
in psycopg/_queries.py, so that varying bulk inserts cannot fill its cache). The ledger's
claim and finish are longer (about 7 KB, their comments included): a py-spy profile of a
worker under the chat load (`python -m bench.pyspy`) found psycopg converting them again
in about a fifth of its samples, some 75-115 us a statement. Such a statement is converted
here once, and run through psycopg's raw cursor, which sends `$n` placeholders as they are.

The conversion is psycopg's own rule: `%%` is a literal `%`, and a name used twice is one
parameter (`$n` again), so the server sees exactly the statement psycopg would have sent.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# Statements up to this many bytes have their conversion cached by psycopg itself.
CACHED_BY_PSYCOPG = 4096

_TOKEN = re.compile(r"%\((?P<name>[^)]+)\)s|%%|%")


@dataclass(frozen=True)
class Numbered:
    """A statement in PostgreSQL's form: `query` with $1..$n, `names[i]` the parameter sent as $(i+1)."""

    query: str
    names: tuple[str, ...]

    def values(self, params: Mapping[str, Any]) -> list[Any]:
        """The parameters in placeholder order; KeyError names one the mapping lacks."""
        return [params[name] for name in self.names]


def numbered(sql: str) -> Numbered | None:
    """The statement converted once (cached per text), or None when psycopg caches its own conversion.

    Raises ValueError for a placeholder other than `%(name)s` (positional `%s`, the `%b`/`%t`
    formats or a lone `%`): the long statements use named ones only.
    """
    # A character is at most 4 bytes in UTF-8: the many short statements skip the cache.
    return None if len(sql) <= CACHED_BY_PSYCOPG // 4 else _convert(sql)


@functools.lru_cache(maxsize=64)
def _convert(sql: str) -> Numbered | None:
    if len(sql.encode()) <= CACHED_BY_PSYCOPG:
        return None
    names: dict[str, int] = {}

    def replace(match: re.Match[str]) -> str:
        token = match.group(0)
        if token == "%%":
            return "%"
        name = match.group("name")
        if name is None:
            raise ValueError(f"only %(name)s placeholders can be numbered; found {token!r} in: {sql[:60]!r}")
        position = names.setdefault(name, len(names) + 1)
        return f"${position}"

    return Numbered(_TOKEN.sub(replace, sql), tuple(names))
