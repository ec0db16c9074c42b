"""Alembic environment: the URL comes from the app's Settings, like everything else."""

from alembic import context
from sqlalchemy import create_engine, pool

from app.core.config import Settings

config = context.config


def _url() -> str:
    settings = Settings()
    if settings.database_url:
        return settings.database_url
    # Same default as `python -m app migrate`: the embedded PostgreSQL of this checkout.
    from app.core.embedded import start_embedded

    return start_embedded(settings.data_dir)


def run_migrations_offline() -> None:
    context.configure(url=_url(), literal_binds=True, transactional_ddl=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:  # handed over by app.core.migrate or a test
        context.configure(connection=connection, transactional_ddl=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = create_engine(_url(), poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(connection=connection, transactional_ddl=True)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
