"""Settings: the one place that reads the environment."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

MAX_TTL_SECONDS = 30 * 24 * 3600


class Settings(BaseSettings):
    """Runtime configuration, from environment variables and an optional `.env`."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    # Database. Unset locally means "start the embedded PostgreSQL".
    database_url: str | None = None
    db_pool: Literal["null", "queue"] | None = None  # None: queue for servers, null for serverless
    db_pool_size: int = Field(5, ge=1, le=100)
    db_pool_timeout: float = Field(5.0, gt=0)
    db_pre_ping: bool = False
    db_prepare: bool = True
    db_connect_timeout: int = Field(5, ge=2, le=60)
    db_statement_timeout_ms: int = Field(5000, ge=0)
    # "startup" sends the timeout as a connection option (no extra round trip);
    # "local" sets it per transaction, for poolers that refuse startup options.
    db_statement_timeout_mode: Literal["startup", "local"] = "startup"
    data_dir: Path = Path(".data/postgres")

    # Sessions and pipeline.
    default_session_ttl: int = Field(86400, ge=1, le=MAX_TTL_SECONDS)
    lease_seconds: int = Field(30, ge=1, le=3600)
    chat_wait_seconds: float = Field(20.0, ge=0, le=300)
    context_list_cap: int = Field(20, ge=1, le=1000)
    agents: str = "app.agents.demo:registry"
    # Agent turns (README, "The agent contract").
    agent_history_messages: int = Field(20, ge=0, le=500)  # earlier messages an agent sees; 0: none
    agent_timeout_seconds: float = Field(60.0, gt=0, le=900)  # a turn's bound; past it the failure reply
    agent_max_attempts: int = Field(2, ge=1, le=10)  # turns started on one message (a crashed holder's retried)
    burst_mode: Literal["each", "merge"] = "each"  # merge: one turn answers a device's waiting messages
    burst_max_messages: int = Field(10, ge=2, le=100)  # at most this many messages merged into one turn
    # Send OpenAI Agents SDK runs to OpenAI's trace viewer; off so no conversation leaves unasked.
    openai_agents_tracing: bool = False

    # Cleanup.
    cleanup_batch_size: int = Field(5000, ge=1, le=100_000)
    cleanup_max_seconds: float | None = Field(50.0, gt=0)
    cron_secret: SecretStr | None = None
    message_retention_days: int = Field(0, ge=0)  # 0: keep messages forever
    orphan_after_hours: int = Field(48, ge=0)  # 0: never delete idle state rows

    # WhatsApp Cloud API.
    whatsapp_verify_token: SecretStr | None = None
    whatsapp_app_secret: SecretStr | None = None
    whatsapp_access_token: SecretStr | None = None
    # The Graph API host (a stand-in in tests) and, separately, the version pinned in every URL.
    whatsapp_api_base_url: str = "https://graph.facebook.com"
    whatsapp_api_version: str = Field("v25.0", pattern=r"^v[0-9]{1,3}\.[0-9]{1,2}$")
    whatsapp_timeout_seconds: float = Field(10.0, gt=0, le=60)
    whatsapp_send_attempts: int = Field(3, ge=1, le=10)
    # The "typing..." indicator: repeated at most this often while a turn runs (it shows for 25 s).
    whatsapp_typing_interval_seconds: float = Field(20.0, gt=0, le=25)
    # The webhook answers Meta within this many seconds of receipt, whatever the Graph API does.
    webhook_ack_seconds: float = Field(8.0, ge=1, le=25)
    # phone_number_id -> tenant, as JSON ({"1234": "acme"}) or "1234:acme,5678:globex".
    whatsapp_tenants: Annotated[dict[str, str], NoDecode] = Field(default_factory=dict)
    webhook_max_age_seconds: int = Field(7 * 24 * 3600, ge=60)

    # Session admin API: "tenant:key,tenant:key"; each key sees only its tenant.
    admin_api_keys: SecretStr | None = None

    # Signed web chat device ids (<uuid>.<tag>); unset keeps plain UUIDs.
    device_id_secret: SecretStr | None = None
    # Key of the hash that stands for device ids in logs; unset: a random key per process.
    log_hash_key: SecretStr | None = None
    log_format: Literal["auto", "json", "text"] = "auto"

    # Serverless entry points.
    api_gateway_base_path: str = "/"

    # HTTP server.
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    log_level: str = "INFO"

    @field_validator("whatsapp_tenants", mode="before")
    @classmethod
    def _pairs(cls, value: object) -> object:
        if isinstance(value, str) and value.lstrip().startswith("{"):
            return json.loads(value)
        if isinstance(value, str):
            pairs = (item.split(":", 1) for item in value.split(",") if item.strip())
            return {key.strip(): tenant.strip() for key, tenant in pairs}
        return value

    @field_validator("whatsapp_api_base_url")
    @classmethod
    def _unversioned(cls, url: str) -> str:
        # The version has its own setting: a URL that still ends in one would pin it twice.
        url = url.rstrip("/")
        if re.search(r"/v[0-9]+\.[0-9]+$", url):
            raise ValueError("WHATSAPP_API_BASE_URL must not end in a version: set WHATSAPP_API_VERSION instead")
        return url

    @field_validator("database_url")
    @classmethod
    def _driver(cls, url: str | None) -> str | None:
        # Accept the URLs hosting providers hand out; SQLAlchemy needs the driver named.
        if not url:
            return None
        for prefix in ("postgres://", "postgresql://"):
            if url.startswith(prefix):
                return "postgresql+psycopg://" + url[len(prefix):]
        return url
