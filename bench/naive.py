"""The ORM version of the lock store that users tend to write first, as the baseline to beat."""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

from bench.common import TENANT


class Base(DeclarativeBase):
    pass


class State(Base):
    """conversation_states mapped the textbook way."""

    __tablename__ = "conversation_states"

    tenant_id: Mapped[str] = mapped_column(sa.Text, primary_key=True, default=TENANT)
    device_id: Mapped[str] = mapped_column(sa.Text, primary_key=True)
    active_agent: Mapped[str | None] = mapped_column(sa.String(50))
    locked_at: Mapped[dt.datetime | None] = mapped_column(sa.DateTime(timezone=True))
    session_ttl: Mapped[int] = mapped_column(sa.Integer, default=86400)
    expires_at: Mapped[dt.datetime | None] = mapped_column(sa.DateTime(timezone=True))
    context: Mapped[dict] = mapped_column(JSONB, default=dict)
    version: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    created_at: Mapped[dt.datetime] = mapped_column(sa.DateTime(timezone=True), server_default=sa.func.now())
    updated_at: Mapped[dt.datetime] = mapped_column(sa.DateTime(timezone=True), server_default=sa.func.now())


class NaiveStore:
    """Query the row, check expiry in Python, set attributes, commit: a session per call."""

    def __init__(self, url: str):
        self.engine = sa.create_engine(url)  # defaults: QueuePool, a transaction per session
        self.Session = sessionmaker(self.engine)

    def get_session_lock(self, device_id: str) -> str | None:
        with self.Session() as session:
            state = session.query(State).filter_by(tenant_id=TENANT, device_id=device_id).first()
            now = dt.datetime.now(dt.UTC)
            if state and state.active_agent and state.expires_at and state.expires_at > now:
                return state.active_agent
            return None

    def set_session_lock(self, device_id: str, agent_key: str, ttl: int) -> bool:
        with self.Session() as session:
            state = session.query(State).filter_by(tenant_id=TENANT, device_id=device_id).first()
            now = dt.datetime.now(dt.UTC)
            if state is None:
                state = State(tenant_id=TENANT, device_id=device_id, version=0)
                session.add(state)
            else:
                state.version += 1
            state.active_agent = agent_key
            state.locked_at = now
            state.session_ttl = ttl
            state.expires_at = now + dt.timedelta(seconds=ttl)
            state.updated_at = now
            session.commit()
            return True

    def dispose(self) -> None:
        self.engine.dispose()
