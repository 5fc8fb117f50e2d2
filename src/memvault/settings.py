"""Settings: every knob memvault reads, from arguments or ``MEMVAULT_*`` variables.

Settings reach code through the vault (``memvault.open(settings)``) and the app
factory, never through import-time globals.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Literal

from pydantic import (
    AliasChoices,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from .errors import ConfigError

__all__ = ["Settings", "load_settings", "revalidate"]

# S3 bucket names: 3-63 lower-case letters, digits, dots and hyphens.
_S3_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
# One Memcached server: host:port (a name, IPv4, or [IPv6]).
_HOST_PORT = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):[0-9]{1,5}$")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Settings(BaseSettings):
    """memvault's configuration. Each field is read from ``MEMVAULT_<NAME>``."""

    # validate_by_name: the few fields with aliases (seed 003's MEMCACHED_*) are
    # still given by their names (``Settings(cache_url=…)``, ``revalidate``).
    model_config = SettingsConfigDict(env_prefix="MEMVAULT_", extra="ignore", frozen=True,
                                      validate_by_name=True, validate_by_alias=True)

    data_dir: Path = Path("./data")
    database_url: str | None = None
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    durability: Literal["full", "normal"] = "full"
    auth: Literal["required", "disabled"] = "required"
    max_upload_mb: int = Field(50, ge=1, le=100_000)
    #: Snapshots kept per knowledge graph (the newest; older ones are released).
    graph_snapshots_keep: int = Field(20, ge=1, le=100_000)
    max_body_kb: int = Field(4096, ge=16, description="limit for JSON request bodies")
    token_ttl_hours: int = Field(720, ge=1)
    password_hash: Literal["rfc9106", "owasp"] = "rfc9106"
    #: Password hashes computed at once per process (each takes the profile's memory).
    max_concurrent_hashes: int = Field(4, ge=1, le=1024)
    #: How long a register/login waits for a hashing slot before a 503.
    hash_wait_ms: int = Field(1000, ge=0, le=60_000)
    login_max_failures_per_account: int = Field(10, ge=1)
    login_max_failures_per_address: int = Field(100, ge=1)
    login_failure_window_s: int = Field(900, ge=1)
    stream_bundle_tokens: int = Field(20, ge=1)
    persist_chunk_tokens: int = Field(60, ge=1)
    persist_interval_ms: int = Field(200, ge=1)
    stream_lease_s: float = Field(30, gt=0)
    max_chunk_chars: int = Field(65536, ge=1, description="largest text of one stored chunk")
    log_json: bool = False
    log_level: str = "INFO"
    #: Serve ``GET /metrics`` (Prometheus text format); ``false``: 404.
    metrics: bool = True
    #: Unset: ``/metrics`` answers loopback clients only; set: every client must
    #: send ``Authorization: Bearer <this token>``.
    metrics_token: SecretStr | None = None
    #: PostgreSQL: migrate a database holding records even without a backup of
    #: it from the last hour in ``<data_dir>/backups`` (``memvault migrate --yes``).
    migrate_without_backup: bool = False
    #: Where file bytes live: ``file`` (under the data dir), ``database`` or
    #: ``s3://bucket/prefix``; replicas need ``database`` or ``s3://``.
    blob_store: str = "file"
    #: An S3-compatible endpoint other than AWS (credentials: the AWS variables).
    s3_endpoint_url: str | None = None
    #: Target size of a document chunk, in the embedder's tokens.
    chunk_tokens: int = Field(256, ge=1, le=100_000)
    #: Tokens shared by consecutive chunks (smaller than ``chunk_tokens``).
    chunk_overlap: int = Field(32, ge=0)
    #: What turns text into vectors: ``local`` (all-MiniLM-L6-v2, offline), ``openai``
    #: (an OpenAI-compatible endpoint) or ``hash`` (no model; poor semantic quality).
    embedder: Literal["local", "openai", "hash"] = "local"
    #: The endpoint's full address (``…/v1/embeddings``) for ``embedder=openai``.
    embeddings_url: str | None = None
    embeddings_model: str = "text-embedding-3-small"
    embeddings_api_key: SecretStr | None = None
    #: Threads per process running background jobs (indexing, …).
    job_workers: int = Field(1, ge=1, le=64)
    #: How long a claimed job stays claimed without a heartbeat; a worker that
    #: dies (kill -9) gives its job up to any other process after this.
    job_lease_s: float = Field(60, gt=0)
    #: First retry delay of a failed job, doubled per attempt (capped at an hour).
    job_retry_s: float = Field(5, ge=0)
    #: Finished (done or failed) jobs are kept this long, then deleted.
    job_retention_h: float = Field(24, ge=0)
    #: Bound of the embedding cache (vectors keyed by model and text sha256, in
    #: the database), in MiB; least recently used vectors are evicted past it.
    embed_cache_mb: int = Field(256, ge=0, le=1_000_000)
    #: Who answers ``/api/chat``: ``extractive`` (quotes the best passages; no
    #: model) or ``openai`` (an OpenAI-compatible chat completions endpoint).
    responder: Literal["extractive", "openai"] = "extractive"
    #: For ``responder=openai``: the endpoint's base (``…/v1`` or the server's
    #: root; ``/chat/completions`` is added) or its full address.
    llm_base_url: str | None = None
    llm_model: str = "gpt-4o-mini"
    llm_api_key: SecretStr | None = None
    #: Prompt budget (system prompt, passages, recent messages), in estimated tokens.
    llm_context_tokens: int = Field(6000, ge=256, le=10_000_000)
    #: A reply fails when the model sends no token for this long.
    llm_timeout_s: float = Field(60, gt=0, le=3600)
    #: SQLite: a collection with fewer vectors is searched exactly in memory; from
    #: this many on, by an HNSW graph saved under ``<data_dir>/indexes/``.
    ann_exact_below: int = Field(20_000, ge=1)
    #: Longest an upload with ``?wait=true`` waits for its documents to be
    #: indexed; past it the answer shows them still ``pending``/``indexing``.
    ingest_wait_s: float = Field(300, gt=0, le=3600)
    # -- caches (cache/) ------------------------------------------------------
    #: The caches' shared tier: unset → the vault's database; ``redis://…``;
    #: ``memcached://host:port[,host:port…]``; ``memory://`` (in-process only).
    #: Seed 003's ``MEMCACHED_SERVERS`` (``host:port,…``, no scheme) is taken
    #: when this is unset, as ``memcached://…``.
    cache_url: str | None = Field(None, validation_alias=AliasChoices(
        "MEMVAULT_CACHE_URL", "MEMCACHED_SERVERS"))
    #: SASL credentials of the Memcached tier (or ``MEMCACHED_USERNAME`` /
    #: ``MEMCACHED_PASSWORD`` when these are unset).
    cache_username: str | None = Field(None, validation_alias=AliasChoices(
        "MEMVAULT_CACHE_USERNAME", "MEMCACHED_USERNAME"))
    cache_password: SecretStr | None = Field(None, validation_alias=AliasChoices(
        "MEMVAULT_CACHE_PASSWORD", "MEMCACHED_PASSWORD"))
    #: Bound of the in-process tier, in MiB (least recently used entries go).
    cache_memory_mb: int = Field(64, ge=0, le=1_000_000)
    #: How long the in-process tier may serve an entry without asking the
    #: shared tier: another process's write is seen within this; 0 disables it.
    cache_local_ttl_ms: int = Field(1000, ge=0, le=86_400_000)
    #: Largest value a cache accepts (encoded), in KiB.
    cache_max_value_kb: int = Field(1024, ge=1, le=1_048_576)
    # -- live fan-out (live.py, fanout.py) -------------------------------------
    #: Redis for publishing stream events to the other servers (defaults to
    #: ``MEMVAULT_CACHE_URL`` when that is ``redis://…``).
    pubsub_url: str | None = None
    #: ``auto``: tell the other servers of each committed chunk over Redis (when
    #: one is set above) or PostgreSQL LISTEN/NOTIFY; ``off``: they poll only.
    live_fanout: Literal["auto", "off"] = "auto"
    #: How often a stream follower still re-reads the database while the push
    #: channel is up (a safety net); every 100 ms while it is down or absent.
    live_poll_ms: int = Field(1000, ge=10, le=3_600_000)
    # -- runs (stores/runs.py) ------------------------------------------------
    #: An HTTP-driven run not touched (steps, heartbeat) for this long becomes
    #: ``interrupted``; library runs renew theirs while their process lives.
    run_lease_s: float = Field(600, gt=0, le=86_400 * 30)
    #: Finished runs kept per user and workflow (the newest by start).
    runs_keep: int = Field(100, ge=1, le=10_000_000)
    #: Finished runs older than this are deleted (unset: kept by count only).
    runs_max_age_days: float | None = Field(None, gt=0)

    @field_validator("database_url")
    @classmethod
    def _check_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if not value.startswith(("sqlite://", "sqlite+pysqlite://", "postgresql://",
                                 "postgres://", "postgresql+psycopg://")):
            raise ValueError("must start with sqlite:// or postgresql://")
        return value

    @field_validator("blob_store")
    @classmethod
    def _check_blob_store(cls, value: str) -> str:
        value = value.strip()
        if value in ("file", "database"):
            return value
        bucket = value.removeprefix("s3://").partition("/")[0]
        if value.startswith("s3://") and _S3_BUCKET.match(bucket):
            return value
        raise ValueError("must be file, database or s3://bucket/prefix")

    @field_validator("cache_url")
    @classmethod
    def _check_cache_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        value = value.strip()
        if "://" not in value and all(_HOST_PORT.match(part.strip())
                                      for part in value.split(",")):
            # seed 003's MEMCACHED_SERVERS: a bare host:port list
            value = "memcached://" + ",".join(part.strip() for part in value.split(","))
        if value.startswith("memcached://"):
            servers = [p.strip() for p in value.removeprefix("memcached://").split(",")]
            if not all(_HOST_PORT.match(p) for p in servers):
                raise ValueError("must be memcached://host:port[,host:port…]")
            return value
        if value.startswith(("memory://", "redis://", "rediss://")):
            return value
        raise ValueError("must start with redis://, memcached:// or memory:// (unset: the "
                         "database)")

    @field_validator("s3_endpoint_url", "embeddings_url", "llm_base_url")
    @classmethod
    def _check_endpoint(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value

    @model_validator(mode="after")
    def _auth_only_off_on_loopback(self) -> Settings:
        if self.auth == "disabled" and not _is_loopback(self.host):
            raise ValueError("MEMVAULT_AUTH=disabled is only accepted when MEMVAULT_HOST is a "
                             "loopback address")
        return self

    @model_validator(mode="after")
    def _openai_needs_url(self) -> Settings:
        if self.embedder == "openai" and not self.embeddings_url:
            raise ValueError("MEMVAULT_EMBEDDER=openai needs MEMVAULT_EMBEDDINGS_URL (the "
                             "endpoint's full address, e.g. https://api.openai.com/v1/embeddings)")
        return self

    @model_validator(mode="after")
    def _openai_responder_needs_url(self) -> Settings:
        if self.responder == "openai" and not self.llm_base_url:
            raise ValueError("MEMVAULT_RESPONDER=openai needs MEMVAULT_LLM_BASE_URL (e.g. "
                             "https://api.openai.com/v1)")
        return self

    @model_validator(mode="after")
    def _overlap_below_chunk_size(self) -> Settings:
        if self.chunk_overlap >= self.chunk_tokens:
            raise ValueError(f"MEMVAULT_CHUNK_OVERLAP ({self.chunk_overlap}) must be smaller "
                             f"than MEMVAULT_CHUNK_TOKENS ({self.chunk_tokens})")
        return self

    @property
    def backend(self) -> Literal["sqlite", "postgresql"]:
        url = self.database_url
        return "postgresql" if url and url.startswith("postgres") else "sqlite"

    @property
    def sqlite_path(self) -> Path:
        """The SQLite file: from ``database_url`` when given, else ``<data_dir>/memvault.db``."""
        url = self.database_url
        if url:
            return Path(url.split(":///", 1)[1])
        return self.data_dir / "memvault.db"


def load_settings(**overrides: object) -> Settings:
    """Build settings from the environment plus ``overrides``.

    Raises:
        ConfigError: one line naming the first bad setting.
    """
    _refuse_unknown(overrides)
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise _config_error(exc) from None


def revalidate(settings: Settings, **overrides: object) -> Settings:
    """``settings`` with ``overrides`` applied and everything validated again
    (the environment is not read: ``settings`` already says what it means).

    Raises:
        ConfigError: one line naming the first bad setting.
    """
    _refuse_unknown(overrides)
    values = {name: getattr(settings, name) for name in Settings.model_fields}
    try:
        return Settings.model_validate({**values, **overrides})
    except ValidationError as exc:
        raise _config_error(exc) from None


def _refuse_unknown(overrides: dict[str, object]) -> None:
    # The environment may hold variables of other versions; a keyword argument
    # that names no setting is a typo and would otherwise be dropped silently.
    unknown = sorted(set(overrides) - set(Settings.model_fields))
    if unknown:
        raise ConfigError(f"unknown setting {unknown[0]!r}")


def _config_error(exc: ValidationError) -> ConfigError:
    err = exc.errors()[0]
    # an aliased field is named by its variable (MEMVAULT_CACHE_URL, …)
    name = ".".join(str(p) for p in err["loc"]).removeprefix("MEMVAULT_")
    message = str(err["msg"]).removeprefix("Value error, ")
    if not name:  # a rule across fields names them itself
        return ConfigError(f"invalid settings: {message}")
    return ConfigError(f"invalid setting MEMVAULT_{name.upper()}: {message}")
