"""The database handle (`Engine`, and `Database`, which makes it on first use).

The request path runs its statements on psycopg's pools (app/core/pools.py, through
app/core/db.py `run` / `arun`) and never imports SQLAlchemy: a cold start pays only for
psycopg. Migrations and the admin import use a SQLAlchemy engine, built on first use from
the same settings.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

from app.core import schema
from app.core.config import Settings
from app.core.pools import LockPools, PoolConfig, has_input, utc_timestamps
from app.errors import ConfigurationError

if TYPE_CHECKING:
    import sqlalchemy as sa

logger = logging.getLogger(__name__)


class Engine:
    """One database's handle: psycopg pools for `run` and `arun`, and a SQLAlchemy engine made on first use.

    Not SQLAlchemy's Engine, though `connect`, `begin` and `raw_connection` hand over to
    one (`sqlalchemy`): migrations and the admin import need it, the request path does not,
    so a process that only serves requests never imports SQLAlchemy. Made by make_engine;
    nothing connects before the first statement.
    """

    def __init__(self, url: str, pools: LockPools, sqlalchemy_args: dict[str, Any], local_timeout_ms: int) -> None:
        self.url = url  # postgresql+psycopg://..., SQLAlchemy's spelling (the pools use pools.config.conninfo)
        self.pools = pools
        self._sqlalchemy_args = sqlalchemy_args
        self._local_timeout_ms = local_timeout_ms
        self._sqlalchemy: sa.Engine | None = None
        self._lock = threading.Lock()

    @property
    def sqlalchemy(self) -> sa.Engine:
        """The SQLAlchemy engine of the same database and settings, created (and SQLAlchemy imported) on first use."""
        engine = self._sqlalchemy
        if engine is None:
            with self._lock:
                if self._sqlalchemy is None:
                    self._sqlalchemy = _sqlalchemy_engine(self.url, self._sqlalchemy_args, self._local_timeout_ms)
                engine = self._sqlalchemy
        return engine

    def connect(self) -> sa.Connection:
        """A SQLAlchemy connection (autocommit; a migration or an import sets its own isolation level)."""
        return self.sqlalchemy.connect()

    def begin(self) -> contextlib.AbstractContextManager[sa.Connection]:
        """A SQLAlchemy connection in a transaction, committed when the block ends without an error."""
        return self.sqlalchemy.begin()

    def raw_connection(self) -> Any:
        """A driver connection from SQLAlchemy's pool, as SQLAlchemy's Engine.raw_connection."""
        return self.sqlalchemy.raw_connection()

    def dispose(self, close: bool = True) -> None:
        """close=True (shutdown, tests): close the sync pool and SQLAlchemy's connections.

        close=False (after a disconnect): SQLAlchemy's pool is replaced without touching the
        connections it lent; the psycopg pools are drained by the caller. Async pools are
        closed by LockPools.aclose, in their own loop.
        """
        if close:
            self.pools.close()
        engine = self._sqlalchemy
        if engine is not None:
            engine.dispose(close=close)


def make_engine(settings: Settings, *, serverless: bool = False, url: str | None = None) -> Engine:
    """Build the handle for one-statement lock operations; it connects on first use, never here.

    Every connection has TCP keepalives (DB_KEEPALIVES_*), hands timestamps back in UTC
    whatever the session's TimeZone, and is bounded by DB_CONNECT_TIMEOUT and
    DB_STATEMENT_TIMEOUT_MS. `run` draws its connections from the handle's psycopg
    pools (DB_POOL_SIZE idle, twice that open at once, DB_POOL_TIMEOUT; a null pool
    with DB_POOL=null or serverless); the SQLAlchemy engine that serves migrations and
    imports (queue or null pool alike) is made on first use. Imports nothing of
    SQLAlchemy. Raises ConfigurationError without a URL.
    """
    url = url or settings.database_url
    if not url:
        raise ConfigurationError("DATABASE_URL is not set")
    conninfo = libpq_url(url)
    connect_args: dict[str, object] = {
        "connect_timeout": settings.db_connect_timeout,
        "application_name": "agent-sessions",
        # psycopg prepares a statement after 5 runs on a connection; poolers in
        # transaction mode may hand the next run to a server that never saw it.
        "prepare_threshold": 5 if settings.prepare else None,
        # libpq keepalives: a peer that vanished without a FIN makes the idle socket
        # fail within idle + interval * count seconds, so the pool's checkout drops it.
        "keepalives": 1,
        "keepalives_idle": settings.db_keepalives_idle,
        "keepalives_interval": settings.db_keepalives_interval,
        "keepalives_count": settings.db_keepalives_count,
    }
    local_timeout = settings.statement_timeout_mode == "local"
    if settings.db_statement_timeout_ms and not local_timeout:
        timeout = f"-c statement_timeout={settings.db_statement_timeout_ms}"
        # After the URL's own ?options= (a search_path, an isolation level), which a connect
        # argument of the same name would otherwise replace.
        own = _url_options(conninfo)
        connect_args["options"] = f"{own} {timeout}" if own else timeout
    _log_pooler_choice(settings)

    pool = settings.db_pool or ("null" if serverless else "queue")
    sqlalchemy_args: dict[str, Any] = {"connect_args": connect_args, "pool": pool, "pre_ping": settings.db_pre_ping}
    if pool == "queue":
        sqlalchemy_args |= {"pool_size": settings.db_pool_size, "pool_timeout": settings.db_pool_timeout}
    local_ms = int(settings.db_statement_timeout_ms or 0) if local_timeout else 0
    size = settings.db_pool_size if pool == "queue" else 0
    config = PoolConfig(conninfo, dict(connect_args), size, settings.db_pool_timeout, settings.db_pre_ping, local_ms)
    return Engine(sqlalchemy_url(url), LockPools(config), sqlalchemy_args, local_ms)


def _url_options(conninfo: str) -> str | None:
    """The libpq `options` the URL carries (?options=...), None without; ConfigurationError if libpq cannot read it."""
    try:
        options = conninfo_to_dict(conninfo).get("options")
    except psycopg.ProgrammingError as exc:
        raise ConfigurationError("DATABASE_URL cannot be read as a PostgreSQL connection URL") from exc
    return str(options) if options else None


def _scheme_and_rest(url: str) -> tuple[str, str]:
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ConfigurationError("DATABASE_URL must be a URL such as postgresql://user:password@host:5432/database")
    return scheme.lower(), rest


def libpq_url(url: str) -> str:
    """url as libpq reads it (postgresql://...): the driver name SQLAlchemy needs dropped, the rest untouched."""
    return "postgresql://" + _scheme_and_rest(url)[1]


def sqlalchemy_url(url: str) -> str:
    """url as SQLAlchemy reads it: postgresql+psycopg://..., psycopg 3 named (Settings spells it so already)."""
    scheme, rest = _scheme_and_rest(url)
    return url if "+" in scheme else "postgresql+psycopg://" + rest


def _sqlalchemy_engine(url: str, args: dict[str, Any], local_ms: int) -> sa.Engine:
    # Imported here, not at module level: only migrations, the admin import and tests get this far.
    import sqlalchemy as sa
    from sqlalchemy import event
    from sqlalchemy.pool import NullPool, QueuePool

    pool_args: dict[str, object] = {"poolclass": NullPool}
    if args["pool"] == "queue":
        pool_args = {
            "poolclass": QueuePool,
            "pool_size": args["pool_size"],
            "max_overflow": args["pool_size"],
            "pool_timeout": args["pool_timeout"],
            "pool_recycle": 1800,
        }
    engine = sa.create_engine(
        url,
        connect_args=args["connect_args"],
        pool_pre_ping=args["pre_ping"],
        # Every lock operation is one statement: autocommit makes it one round trip
        # (no BEGIN/COMMIT); a migration or an import opens its own transaction.
        isolation_level="AUTOCOMMIT",
        # An autocommit connection never holds a transaction to roll back on return.
        pool_reset_on_return=None,
        **pool_args,
    )
    event.listen(engine, "connect", _utc_timestamps)
    event.listen(engine, "first_connect", schema.on_first_connect)
    event.listen(engine, "checkout", _discard_dead_connection)
    if local_ms:

        @event.listens_for(engine, "begin")
        def _set_local_timeout(conn: sa.Connection) -> None:
            conn.exec_driver_sql(f"SET LOCAL statement_timeout = {local_ms}")

    return engine


def lock_pools(engine: Engine) -> LockPools:
    """Where `run` and `arun` take engine's connections; ConfigurationError for an engine not from make_engine."""
    pools = getattr(engine, "pools", None)
    if not isinstance(pools, LockPools):
        raise ConfigurationError("this engine was not made by app.core.engine.make_engine: it has no lock pools")
    return pools


def _log_pooler_choice(settings: Settings) -> None:
    # One line per engine (one per process in a server), so an operator sees what a pooler setting did.
    if settings.statement_timeout_mode == "startup" and settings.prepare:
        return
    reason = f"DB_POOLER={settings.db_pooler}" if settings.db_pooler == "transaction" else "DB_PREPARE=false"
    logger.info(
        "%s: prepared statements %s, statement timeout set %s",
        reason,
        "on" if settings.prepare else "off",
        "per transaction (SET LOCAL), no startup options"
        if settings.statement_timeout_mode == "local"
        else "as a startup option",
    )


def _utc_timestamps(dbapi_conn, record) -> None:
    utc_timestamps(dbapi_conn)


def _discard_dead_connection(dbapi_conn, record, proxy) -> None:
    # The same check as the lock operations' pools, for SQLAlchemy's own checkouts.
    if isinstance(dbapi_conn, psycopg.Connection) and has_input(dbapi_conn):
        try:
            dbapi_conn.execute("SELECT 1")
        except psycopg.Error as err:
            from sqlalchemy import exc  # loaded already: this is a SQLAlchemy event

            raise exc.DisconnectionError("server closed the connection") from err


class Database:
    """Holds the process's engine (app.core.engine.Engine), created on first use."""

    def __init__(self, settings: Settings, *, serverless: bool = False, engine: Engine | None = None):
        self.settings = settings
        self.serverless = serverless
        self._engine = engine
        self._lock = threading.Lock()

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            with self._lock:
                if self._engine is None:
                    self._engine = make_engine(self.settings, serverless=self.serverless)
        return self._engine

    def dispose(self) -> None:
        """Close the sync pool and SQLAlchemy's connections (async pools: aclose, in their loop)."""
        if self._engine is not None:
            self._engine.dispose()

    async def aclose(self) -> None:
        """Close the running loop's async pool: an app's shutdown, in the loop that served it."""
        if self._engine is not None:
            await lock_pools(self._engine).aclose()
