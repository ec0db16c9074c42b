"""Settings: the one place that reads the environment."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, PrivateAttr, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from app.errors import ConfigurationError

logger = logging.getLogger(__name__)

# What DATABASE_URL may start with: hosting providers hand out the first two.
POSTGRES_SCHEMES = frozenset({"postgres", "postgresql", "postgresql+psycopg"})

MAX_TTL_SECONDS = 30 * 24 * 3600
MIN_ADMIN_KEY_LENGTH = 16
SECRETS = (
    "cron_secret",
    "whatsapp_verify_token",
    "whatsapp_app_secret",
    "whatsapp_access_token",
    "admin_api_keys",
    "device_id_secret",
    "log_hash_key",
)


class Settings(BaseSettings):
    """Runtime configuration, from environment variables and an optional `.env`."""

    # Each setting's docstring is its description: docs/gen_settings.py writes the settings reference and
    # .env.example from them.
    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    # Database. Unset locally means "start the embedded PostgreSQL".
    database_url: str | None = None
    """`postgresql://user:password@host:5432/database` (`postgres://` and `postgresql+psycopg://` too). Unset: the
    commands of `python -m app` start the embedded PostgreSQL (`DATA_DIR`); the serverless entry points need it."""
    db_pool: Literal["null", "queue"] | None = None  # None: queue for servers, null for serverless
    """`queue` keeps idle connections for reuse; `null` opens a connection for each statement and closes it after
    (pooling left to a pooler). Unset: `queue` for `python -m app serve`, `null` in the serverless entry points."""
    db_pool_size: int = Field(5, ge=1, le=100)
    """Idle connections kept per process under `DB_POOL=queue`; at most twice as many are open at once, plus one
    of the health check's own."""
    db_pool_timeout: float = Field(5.0, gt=0)
    """Seconds a statement waits for a free pooled connection before it is treated as an outage."""
    db_pre_ping: bool = False
    """A round trip on every checkout to test the connection; connections the server closed are discarded without
    it."""
    db_prepare: bool = True
    """psycopg's automatic prepared statements; `false` alone is enough behind PgBouncer in transaction mode."""
    db_connect_timeout: int = Field(5, ge=2, le=60)
    """Seconds to open a connection; bounds how long a request waits on an unreachable host."""
    db_statement_timeout_ms: int = Field(5000, ge=0)
    """Milliseconds a statement may run before the server cancels it (an outage to the caller); `0` disables."""
    # What sits between the app and PostgreSQL. "transaction" (PgBouncer, Supavisor,
    # RDS Proxy in transaction mode) turns off prepared statements and startup options.
    db_pooler: Literal["none", "session", "transaction"] = "none"
    """What sits between the app and PostgreSQL; `transaction` (PgBouncer, Supavisor, RDS Proxy in transaction
    mode) turns off prepared statements and startup options."""
    # "startup" sends the timeout as a connection option (no extra round trip);
    # "local" sets it per transaction, for poolers that refuse startup options;
    # "auto": local when DB_POOLER=transaction or DB_PREPARE=false, else startup.
    db_statement_timeout_mode: Literal["auto", "startup", "local"] = "auto"
    """`startup` sends the statement timeout as a connection option; `local` sets it with `SET LOCAL` per
    transaction; `auto`: `local` with `DB_POOLER=transaction` or `DB_PREPARE=false`, else `startup`."""
    # TCP keepalives, so a connection a middlebox dropped without a FIN is found idle.
    db_keepalives_idle: int = Field(30, ge=1, le=7200)  # seconds idle before the first probe
    """Seconds a connection is idle before the first TCP keepalive probe."""
    db_keepalives_interval: int = Field(10, ge=1, le=600)  # seconds between probes
    """Seconds between TCP keepalive probes."""
    db_keepalives_count: int = Field(3, ge=1, le=20)  # unanswered probes before the socket is dead
    """Unanswered TCP keepalive probes before a connection is dead."""
    data_dir: Path = Path(".data/postgres")
    """Where the embedded PostgreSQL keeps its data (used only while `DATABASE_URL` is unset)."""

    # Sessions and pipeline.
    default_session_ttl: int = Field(86400, ge=1, le=MAX_TTL_SECONDS)
    """Seconds: the lock's TTL and a session's inactivity timeout."""
    lease_seconds: int = Field(30, ge=1, le=3600)
    """Seconds a worker holds a device while its agents run (renewed every third of it); a crashed worker's device
    is free again after it."""
    chat_wait_seconds: float = Field(20.0, ge=0, le=300)
    """Seconds `POST /api/chat` waits behind a busy device before answering `202` (queued)."""
    context_list_cap: int = Field(20, ge=1, le=1000)
    """Items kept in the context's `interrupted_queries` and `recent_interactions`."""
    agents: str = "app.agents.demo:registry"
    """The agent registry, as `package.module:attribute`."""
    # Agent turns (README, "The agent contract").
    agent_history_messages: int = Field(20, ge=0, le=500)  # earlier messages an agent sees; 0: none
    """Earlier messages of the session an agent receives; `0`: none."""
    agent_timeout_seconds: float = Field(60.0, gt=0, le=900)  # a turn's bound; past it the failure reply
    """Seconds one turn may take; past it the failure reply is stored and the message is not run again."""
    agent_max_attempts: int = Field(2, ge=1, le=10)  # turns started on one message (a crashed holder's retried)
    """Turns started on one message (a crashed worker's message runs again) before it fails."""
    # Turns (requests inside the pipeline) one process holds at once; past it 503 + Retry-After.
    max_concurrent_turns: int = Field(1000, ge=1, le=100_000)
    """Turns one process holds at once; past it `POST /api/chat` answers `503` with `Retry-After`."""
    # Requests starting a turn that run their CPU-bound start at once (app/runtime.py: Admission).
    admission_width: int = Field(8, ge=1, le=10_000)
    """Requests starting a turn (`POST /api/chat`, `/api/chat/stream`, the WhatsApp webhook) parsed and validated
    at once per process; the rest wait in arrival order, so a burst holds up no health check or running turn."""
    agent_threads: int = Field(40, ge=1, le=1000)  # sync agents running at once, each on a worker thread
    """Sync agents (`def handle`) running at once per process, each on a worker thread."""
    # On SIGTERM: running turns get this long to finish, then are cancelled (their messages run again).
    shutdown_grace_seconds: float = Field(10.0, ge=0, le=900)
    """On `SIGTERM`, seconds running turns get to finish, counted from the signal, before they are cancelled (their
    messages run again)."""
    # merge: one turn answers a device's waiting messages; interrupt: as merge, and a new message first
    # stops the device's streamed turn in flight (its partial reply kept, marked stopped)
    burst_mode: Literal["each", "merge", "interrupt"] = "each"
    """`each`: every message answered on its own; `merge`: one turn answers all of a device's waiting messages;
    `interrupt`: as `merge`, and a new message first stops the device's streamed turn in flight."""
    burst_max_messages: int = Field(10, ge=2, le=100)  # at most this many messages merged into one turn
    """Most messages merged into one turn."""
    # Streamed replies: a web turn's draft is written at most once per this many ms while text arrives.
    stream_flush_ms: int = Field(100, ge=10, le=10_000)
    """A streamed web turn writes its draft at most once per this many milliseconds while text arrives."""
    events_stream_seconds: float = Field(300.0, ge=1, le=3600)
    """An event stream (GET /api/chat/events, /api/inbox/events) ends after this long and the page opens a new
    one: keep it under the host's longest request (a function's maximum duration, a proxy's timeout)."""
    event_streams_per_device: int = Field(5, ge=1, le=100)
    """Event streams (GET /api/chat/events: one per open chat page) one device may hold open on one instance; one
    more is refused with 429 `too_many_streams`. Each asks the database every 2 s while nothing wakes it."""
    # Send OpenAI Agents SDK runs to OpenAI's trace viewer; off so no conversation leaves unasked.
    openai_agents_tracing: bool = False
    """Send OpenAI Agents SDK runs to OpenAI's tracing."""

    # Cleanup.
    cleanup_batch_size: int = Field(5000, ge=1, le=100_000)
    """Rows per cleanup statement."""
    cleanup_max_seconds: float | None = Field(50.0, gt=0)
    """Seconds one cleanup run may take."""
    recovery_interval_seconds: float = Field(10.0, ge=0, le=3600)
    """A server process (not a serverless function) answers, this often, the messages a crashed worker
    left pending once their lease lapsed, as the scheduled cleanup does; `0` leaves that to the cleanup."""
    cron_secret: SecretStr | None = None
    """Bearer secret of `GET /api/cron/cleanup`; unset refuses every call."""
    message_retention_days: int = Field(0, ge=0)  # 0: keep messages forever
    """Delete messages older than this many days; `0` keeps them."""
    orphan_after_hours: int = Field(48, ge=0)  # 0: never delete idle state rows
    """Delete state rows without lock or activity for this many hours; `0` never."""

    # WhatsApp Cloud API.
    whatsapp_verify_token: SecretStr | None = None
    """The webhook handshake token typed into Meta's dashboard; unset refuses every handshake."""
    whatsapp_app_secret: SecretStr | None = None
    """The Meta app secret that signs deliveries (`X-Hub-Signature-256`); unset refuses every delivery."""
    whatsapp_access_token: SecretStr | None = None
    """The Graph API token replies are sent with; unset stores replies but cannot send them."""
    # The Graph API host (a stand-in in tests) and, separately, the version pinned in every URL.
    whatsapp_api_base_url: str = "https://graph.facebook.com"
    """The Graph API host, without a version (a stand-in in tests); a URL ending in a version still works, with a
    warning."""
    whatsapp_api_version: str = Field("v25.0", pattern=r"^v[0-9]{1,3}\.[0-9]{1,2}$")
    """The Graph API version in every URL."""
    whatsapp_timeout_seconds: float = Field(10.0, gt=0, le=60)
    """Connect and read timeout of each send, in seconds."""
    whatsapp_send_attempts: int = Field(3, ge=1, le=10)
    """Tries per send on a timeout, a connection error, `429` or `5xx`."""
    # The "typing..." indicator: repeated at most this often while a turn runs (it shows for 25 s).
    whatsapp_typing_interval_seconds: float = Field(20.0, gt=0, le=25)
    """Seconds between repeats of the "typing..." indicator while a turn runs."""
    # The webhook answers Meta within this many seconds of receipt, whatever the Graph API does.
    webhook_ack_seconds: float = Field(8.0, ge=1, le=25)
    """The WhatsApp webhook answers Meta within this many seconds of receipt."""
    # phone_number_id -> tenant, as JSON ({"1234": "acme"}) or "1234:acme,5678:globex".
    whatsapp_tenants: Annotated[dict[str, str], NoDecode] = Field(default_factory=dict)
    """Business phone number id to tenant, as `1234:acme,5678:globex` or JSON; unlisted numbers belong to
    `default`."""
    webhook_max_age_seconds: int = Field(7 * 24 * 3600, ge=60)
    """WhatsApp messages older than this many seconds are acknowledged and ignored; an erasure keeps keyed hashes
    of message ids this long."""
    # Tenants that consent to storing their WhatsApp users' profile names ("acme,default"); none by default.
    whatsapp_profile_name_tenants: Annotated[tuple[str, ...], NoDecode] = ()
    """Tenants that consent to storing their WhatsApp users' profile names, comma-separated; none by default."""

    # Session admin API: "tenant:key,tenant:key"; each key sees only its tenant. Parsed once, at start.
    admin_api_keys: SecretStr | None = None
    """Keys of the admin API and the operator console, as `tenant:key,tenant:key`; each key sees only its tenant.
    Unset: no key is valid."""
    # Bytes of a POST /api/sessions/import body; past it 413 before the body is read whole.
    import_max_bytes: int = Field(1024 * 1024, ge=1024, le=64 * 1024 * 1024)
    """Largest `POST /api/sessions/import` body, in bytes; past it `413`."""
    _admin_keys: list[tuple[str, bytes]] = PrivateAttr(default_factory=list)

    # Signed web chat device ids (<uuid>.<tag>); unset keeps plain UUIDs.
    device_id_secret: SecretStr | None = None
    """Signs web chat device ids issued by `POST /api/devices`; unset accepts any UUID."""
    # The tenants an anonymous web client may name in X-Tenant-ID ("default,acme"); any other is a 400.
    web_tenants: Annotated[tuple[str, ...], NoDecode] = ("default",)
    """Tenants a web client may name in `X-Tenant-ID`, comma-separated; any other is `400`."""
    # Abuse limits, per minute, counted in PostgreSQL (so they hold across instances); 0 turns one off.
    rate_limit_per_device: int = Field(30, ge=0, le=100_000)  # inbound messages per device
    """New inbound messages per device per minute; past it `429` (web) or dropped (WhatsApp); `0` off."""
    rate_limit_new_devices: int = Field(20, ge=0, le=100_000)  # POST /api/devices per client address
    """`POST /api/devices` calls per client address per minute; `0` off."""
    # Key of the hash that stands for device ids in logs; unset: a random key per process.
    log_hash_key: SecretStr | None = None
    """Key of the hash that stands for device ids in logs; unset: a random key per process."""
    log_format: Literal["auto", "json", "text"] = "auto"
    """`json`, `text`, or `auto`: JSON in the serverless entry points, text otherwise."""
    # GET /metrics (Prometheus text): on, off, or auto (on except on Lambda, where each
    # execution environment would count apart). Behind an admin key unless METRICS_PUBLIC.
    # Traces and pushed metrics are configured by the standard OTEL_* variables (app/telemetry/setup.py).
    metrics: Literal["auto", "on", "off"] = "auto"
    """`GET /metrics` (Prometheus text): `on`, `off`, or `auto` (on for a server, off on Lambda)."""
    metrics_public: bool = False
    """Serve `GET /metrics` without an admin key."""

    # Serverless entry points.
    api_gateway_base_path: str = "/"
    """The API Gateway stage or custom-domain base path in front of the Lambda function."""

    # HTTP server.
    host: str = "127.0.0.1"
    """The address `python -m app serve` listens on."""
    port: int = Field(8000, ge=1, le=65535)
    """The port `python -m app serve` listens on."""
    log_level: str = "INFO"
    """The log level (`DEBUG`, `INFO`, `WARNING`, ...)."""

    @field_validator(*SECRETS, "database_url", mode="before")
    @classmethod
    def _trim(cls, value: object) -> object:
        # A secret pasted with a trailing newline would otherwise never match (a silent 401).
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        if isinstance(value, str):
            return value.strip() or None
        return value

    @field_validator("api_gateway_base_path")
    @classmethod
    def _base_path(cls, value: str) -> str:
        # "prod", "/prod" and "/prod/" name the same stage; "" and "/" mean none.
        value = value.strip().strip("/")
        if any(c.isspace() or not c.isprintable() for c in value):
            raise ValueError("must be a path such as /prod, without whitespace")
        return "/" + value

    @model_validator(mode="after")
    def _parse_admin_keys(self) -> Settings:
        try:
            self._admin_keys = parse_admin_keys(self.admin_api_keys)
        except ConfigurationError as err:
            raise ValueError(str(err)) from None
        return self

    @property
    def admin_keys(self) -> list[tuple[str, bytes]]:
        """ADMIN_API_KEYS as (tenant, key) pairs, parsed and checked when Settings was made."""
        return self._admin_keys

    @property
    def statement_timeout_mode(self) -> Literal["startup", "local"]:
        """Where the statement timeout is set: a startup option, or SET LOCAL per transaction."""
        if self.db_statement_timeout_mode != "auto":
            return self.db_statement_timeout_mode
        return "local" if self.db_pooler == "transaction" or not self.db_prepare else "startup"

    @property
    def prepare(self) -> bool:
        """Whether psycopg may prepare statements (never through a transaction-mode pooler)."""
        return self.db_prepare and self.db_pooler != "transaction"

    @field_validator("whatsapp_tenants", mode="before")
    @classmethod
    def _pairs(cls, value: object) -> object:
        if isinstance(value, str) and value.lstrip().startswith("{"):
            return json.loads(value)
        if isinstance(value, str):
            pairs = (item.split(":", 1) for item in value.split(",") if item.strip())
            return {key.strip(): tenant.strip() for key, tenant in pairs}
        return value

    @field_validator("web_tenants", mode="before")
    @classmethod
    def _web_tenants(cls, value: object) -> object:
        return _tenant_list(value, "WEB_TENANTS", at_least_one=True)

    @model_validator(mode="before")
    @classmethod
    def _versioned_base_url(cls, values: object) -> object:
        # Earlier releases documented WHATSAPP_API_BASE_URL with the version at its end
        # (".../v20.0"). It keeps working: the version in it is used, and one warning says
        # where it belongs now, so an upgrade never takes a deployment down.
        if not isinstance(values, dict):
            return values
        key = next((k for k in values if k.lower() == "whatsapp_api_base_url"), None)
        url = values.get(key) if key else None
        if key is None or not isinstance(url, str):
            return values
        found = re.search(r"/(v[0-9]{1,3}\.[0-9]{1,2})/*$", url)
        if found is None:
            return values
        version_key = next((k for k in values if k.lower() == "whatsapp_api_version"), "whatsapp_api_version")
        logger.warning(
            "WHATSAPP_API_BASE_URL ends in a Graph API version (%s): it is used, but set it as "
            "WHATSAPP_API_VERSION and leave the version out of the base URL",
            found.group(1),
        )
        return {**values, key: url[: found.start()], version_key: found.group(1)}

    @field_validator("whatsapp_profile_name_tenants", mode="before")
    @classmethod
    def _consenting(cls, value: object) -> object:
        return _tenant_list(value, "WHATSAPP_PROFILE_NAME_TENANTS", at_least_one=False)

    @field_validator("whatsapp_api_base_url")
    @classmethod
    def _trailing_slash(cls, url: str) -> str:
        return url.rstrip("/")

    @field_validator("database_url")
    @classmethod
    def _driver(cls, url: str | None) -> str | None:
        # Accept the URLs hosting providers hand out; SQLAlchemy needs the driver named. The
        # message never repeats the value: it may hold a password.
        if not url:
            return None
        scheme, sep, rest = url.partition("://")
        if not sep or scheme.lower() not in POSTGRES_SCHEMES or not rest:
            raise ValueError(
                "must be a PostgreSQL URL such as postgresql://user:password@host:5432/database "
                f"(schemes: {', '.join(sorted(POSTGRES_SCHEMES))})"
            )
        return "postgresql+psycopg://" + rest


def _tenant_list(value: object, name: str, *, at_least_one: bool) -> object:
    """Setting `name`'s tenants, from a comma-separated string or a sequence: a tuple, trimmed, without
    blanks or repeats, in order. ValueError (naming the setting and the entry's position) for anything
    else, for an entry that is not a tenant id (app/validation.py), or for none at all if at_least_one."""
    from app import validation  # app.validation imports this module

    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, (list, tuple, set, frozenset)):
        raise ValueError(f"{name} must be a comma-separated list of tenant ids")
    tenants = tuple(dict.fromkeys(item.strip() if isinstance(item, str) else item for item in items))
    tenants = tuple(tenant for tenant in tenants if tenant != "")
    if at_least_one and not tenants:
        raise ValueError(f"{name} must name at least one tenant")
    for number, tenant in enumerate(tenants, start=1):
        try:
            validation.tenant_id(tenant)
        except (ValueError, TypeError):
            raise ValueError(
                f"{name} entry {number} is not a valid tenant id (1-128 printable characters without whitespace)"
            ) from None
    return tenants


def parse_admin_keys(raw: SecretStr | str | None) -> list[tuple[str, bytes]]:
    """ADMIN_API_KEYS ("tenant:key,tenant:key") as (tenant, key) pairs; ConfigurationError if malformed.

    Keys are at least MIN_ADMIN_KEY_LENGTH printable characters without whitespace; one key
    belongs to one tenant, a tenant may have several (for rotation).
    """
    from app import validation  # app.validation imports this module

    text = raw.get_secret_value() if isinstance(raw, SecretStr) else (raw or "")
    pairs: list[tuple[str, bytes]] = []
    owners: dict[bytes, str] = {}
    for number, item in enumerate(text.split(","), start=1):
        if not item.strip():
            continue
        tenant, sep, key = (part.strip() for part in item.strip().partition(":"))
        # The messages name the entry by position, never its content: it holds a secret.
        if not sep or not tenant or not key:
            raise ConfigurationError(f"ADMIN_API_KEYS entry {number} is not of the form tenant:key")
        try:
            validation.tenant_id(tenant)
        except ValueError:
            raise ConfigurationError(f"ADMIN_API_KEYS entry {number} names an invalid tenant id") from None
        if len(key) < MIN_ADMIN_KEY_LENGTH or any(c.isspace() or not c.isprintable() for c in key):
            raise ConfigurationError(
                f"ADMIN_API_KEYS entry {number}: a key must be at least {MIN_ADMIN_KEY_LENGTH} printable "
                "characters without whitespace"
            )
        secret = key.encode()
        if owners.get(secret, tenant) != tenant:
            raise ConfigurationError(f"ADMIN_API_KEYS entry {number} reuses another tenant's key")
        owners[secret] = tenant
        pairs.append((tenant, secret))
    return pairs


def settings_problem(err: ValidationError) -> str:
    """One line naming each bad setting and why, never its value (it may be a secret)."""
    parts = []
    for item in err.errors(include_input=False, include_url=False):
        name = ".".join(str(part) for part in item.get("loc", ())).upper()
        message = str(item.get("msg", "invalid")).removeprefix("Value error, ")
        parts.append(f"{name}: {message}" if name else message)
    return "invalid settings: " + "; ".join(parts)
