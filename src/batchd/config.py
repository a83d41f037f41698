"""Settings: defaults < TOML config file < ``BATCHD_*`` environment < command-line options.

Settings are built once at the edge (the CLI, or a test) with :meth:`Settings.load` and passed down
explicitly; nothing else in batchd reads the environment.
"""

from __future__ import annotations

import contextvars
import hashlib
import os
import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import platformdirs
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from batchd.errors import ConfigError
from batchd.webhooks.settings import DEFAULT_RETRY_SCHEDULE, WebhookSetting, check_networks

__all__ = [
    "MB",
    "ApiKeySetting",
    "ModelNames",
    "ModelRoute",
    "ProjectLimits",
    "Settings",
    "default_data_dir",
]

MB = 1024 * 1024

# The parsed config file, visible to the settings source only while Settings.load runs.
_config_file_values: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "batchd_config_file_values", default=None
)


def default_data_dir() -> Path:
    """The per-user data directory, e.g. ``~/.local/share/batchd`` on Linux."""
    return Path(platformdirs.user_data_dir("batchd", appauthor=False))


class ModelRoute(BaseModel):
    """One ``[[models]]`` entry of the routing table: a model name clients send in ``body.model``.

    Provider settings (``base_url``, ``api_key_env``, ``max_concurrency``…) are kept as extra
    fields; each provider validates its own.
    """

    model_config = ConfigDict(extra="allow", frozen=True)

    name: str = Field(min_length=1)
    provider: str = Field(min_length=1)
    aliases: tuple[str, ...] = ()
    """Other names clients may send for this model (``"gpt-4o-mini"``…); answers still name
    the model that really answered."""
    fallback: tuple[str, ...] = ()
    """Routes (names or aliases) that take a batch request whose attempts on this route ran out
    with retryable errors (timeouts, 5xx, 429), in order; off when empty."""
    cache: bool = False
    """Answer a request whose body was answered before (the same project and route, any batch)
    from the result cache instead of the upstream: embeddings, and generations with
    ``temperature`` 0 (:mod:`batchd.engine.cache`)."""
    cache_ttl_seconds: float = Field(default=7 * 24 * 3600, gt=0)
    """How long a cached answer is reused."""

    @field_validator("aliases")
    @classmethod
    def _named(cls, aliases: tuple[str, ...]) -> tuple[str, ...]:
        if any(not alias for alias in aliases):
            raise ValueError("an alias may not be empty")
        return aliases

    @property
    def options(self) -> dict[str, Any]:
        """The provider settings: every key but ``name``, ``provider``, ``aliases``,
        ``fallback`` and the ``cache`` keys."""
        return dict(self.model_extra or {})


_NAMES_IN_MESSAGES = 20


class ModelNames:
    """The model names requests may use: each route's name and aliases or, when ``force`` names
    a route (``batchd run --model``), any name at all, served by that route."""

    def __init__(self, routes: Iterable[ModelRoute], force: str | None = None) -> None:
        routes = tuple(routes)
        self._routes = {route.name: route.name for route in routes}
        self.aliases = {alias: route.name for route in routes for alias in route.aliases}
        self.force = None if force is None else self.aliases.get(force, force)

    @classmethod
    def of(cls, names: Iterable[str]) -> ModelNames:
        """Routes with these names and no aliases."""
        return cls(ModelRoute(name=name, provider="-") for name in names)

    def resolve(self, name: str) -> str | None:
        """The route name serving ``name``; ``None`` when no route does."""
        if self.force is not None:
            return self.force
        return self._routes.get(name) or self.aliases.get(name)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.resolve(name) is not None

    def listed(self) -> list[str]:
        """Every name with its alias target, routes first: ``'a'``, ``'b' (alias of 'a')``."""
        names = [f"'{name}'" for name in self._routes]
        names += [f"'{alias}' (alias of '{name}')" for alias, name in self.aliases.items()]
        return names

    def hint(self, model: str) -> str:
        """What to tell a client about ``model``, which no route serves: the served names (at
        most 20) and how to serve it."""
        names = self.listed()
        if not names:
            return "No models are configured: add a [[models]] route to the batchd configuration."
        shown = ", ".join(names[:_NAMES_IN_MESSAGES])
        more = len(names) - _NAMES_IN_MESSAGES
        if more > 0:
            shown += f" and {more} more"
        return (
            f"Served models: {shown} (GET /v1/models lists them). Use one of them, or add a "
            f"[[models]] route, or an alias, named '{model}' to the batchd configuration."
        )

    def signature(self) -> list[Any]:
        """What validation depends on: the names, the aliases and the forced route."""
        return [sorted(self._routes), sorted(self.aliases.items()), self.force]


#: Azure OpenAI's data-plane API versions, GA and preview, that have the Batch and Files API
#: (batch files since 2024-07-01-preview); the GA ``/openai/v1/`` routes take no version.
AZURE_API_VERSIONS = (
    "2024-07-01-preview",
    "2024-08-01-preview",
    "2024-09-01-preview",
    "2024-10-01-preview",
    "2024-10-21",
    "2024-12-01-preview",
    "2025-01-01-preview",
    "2025-02-01-preview",
    "2025-03-01-preview",
    "2025-04-01-preview",
    "preview",
    "latest",
)

#: A database URL's plain scheme → its async driver (an explicit driver is kept as it is).
_ASYNC_DRIVERS = {
    "postgresql": "postgresql+asyncpg",
    "postgres": "postgresql+asyncpg",
    "sqlite": "sqlite+aiosqlite",
}


def _async_url(url: str) -> str:
    """A database URL with its async driver (``postgresql://`` means asyncpg, ``sqlite://``
    aiosqlite); an explicit driver is kept."""
    scheme, sep, rest = url.partition("://")
    return _ASYNC_DRIVERS.get(scheme, scheme) + sep + rest


PROJECT_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"


class ProjectLimits(BaseModel):
    """What one project may use; ``None`` (or no entry) for no limit. ``[project_limits]`` sets
    them for every project; ``limits`` of an ``[[api_keys]]`` entry for its own project."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_upload_bytes: int | None = Field(default=None, gt=0)
    """The largest file of one upload (max_batch_file_bytes and max_upload_bytes apply too)."""
    max_stored_bytes: int | None = Field(default=None, gt=0)
    """Bytes of live files (uploads and batch outputs) the project may keep."""
    max_batches_per_hour: int | None = Field(default=None, gt=0)
    """Batches created in any sliding hour (429 rate_limit_exceeded, with Retry-After)."""
    max_active_batches: int | None = Field(default=None, gt=0)
    """Batches not yet completed, failed, expired or cancelled (429 rate_limit_exceeded)."""
    max_enqueued_tokens: dict[str, int] = Field(default_factory=dict)
    """Per model (``"*"`` for any other): estimated prompt tokens of the project's in-progress
    batches; a batch that would go over fails with token_limit_exceeded."""

    def merged_over(self, base: ProjectLimits) -> ProjectLimits:
        """These limits where set, ``base``'s elsewhere."""
        values = base.model_dump()
        values.update(self.model_dump(exclude_unset=True))
        return ProjectLimits(**values)

    def enqueued_token_limit(self, model: str) -> int | None:
        return self.max_enqueued_tokens.get(model, self.max_enqueued_tokens.get("*"))


class ApiKeySetting(BaseModel):
    """One ``[[api_keys]]`` entry: a key (or its SHA-256, to keep the key itself out of the
    file) and the project whose files and batches it sees."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    key: SecretStr | None = Field(default=None, min_length=8)
    key_sha256: str | None = Field(default=None, pattern=r"^[0-9a-fA-F]{64}$")
    project: str = Field(default="default", pattern=PROJECT_PATTERN)
    name: str | None = Field(default=None, max_length=128)
    limits: ProjectLimits | None = None
    """The limits of this key's project (over ``[project_limits]``)."""
    admin: bool = False
    """Whether the key sees every project in the dashboard (``/dashboard``); the API still
    answers it as a key of ``project``. Keys made with ``batchd keys create --admin`` are admin
    too."""

    @model_validator(mode="after")
    def _one_key(self) -> ApiKeySetting:
        if (self.key is None) == (self.key_sha256 is None):
            raise ValueError("give exactly one of key and key_sha256")
        return self

    @property
    def sha256(self) -> str:
        if self.key_sha256 is not None:
            return self.key_sha256.lower()
        assert self.key is not None
        return hashlib.sha256(self.key.get_secret_value().encode()).hexdigest()


class _ConfigFileSource(PydanticBaseSettingsSource):
    """Values read from the TOML config file by :meth:`Settings.load`."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        # Unused: __call__ returns the whole mapping at once.
        return (_config_file_values.get() or {}).get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(_config_file_values.get() or {})


class Settings(BaseSettings):
    """Everything batchd can be configured with."""

    model_config = SettingsConfigDict(env_prefix="BATCHD_", extra="forbid", frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    data_dir: Path = Field(default_factory=default_data_dir)
    database_url: str | None = Field(
        default=None,
        description="The metadata store, e.g. postgresql://user@host/db (asyncpg; "
        "BATCHD_DATABASE_URL); default: a SQLite file in the data directory.",
    )
    log_level: str = "info"
    log_format: Literal["text", "json"] = Field(
        default="text",
        description="text, or json: one JSON object per log line (timestamp, level, logger, "
        "message, and the access log's fields as keys; BATCHD_LOG_FORMAT).",
    )
    access_log: bool | None = Field(
        default=None,
        description="A log line per HTTP request (client, method, path, status, latency, "
        "request id, project) on the batchd.access logger; default: on unless the server binds "
        "a loopback address (BATCHD_ACCESS_LOG).",
    )
    storage_url: str | None = Field(
        default=None,
        description="Where file contents are kept: s3://bucket or s3://bucket/prefix, an "
        "S3-compatible bucket (credentials and region from AWS_ACCESS_KEY_ID, "
        "AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_REGION; BATCHD_STORAGE_URL); default: "
        "the data directory's files/ folder.",
    )
    storage_endpoint_url: str | None = Field(
        default=None,
        description="The endpoint of the storage_url bucket when it is not AWS, e.g. "
        "http://127.0.0.1:9000 for MinIO (BATCHD_STORAGE_ENDPOINT_URL, else AWS_ENDPOINT_URL).",
    )

    # Files
    max_upload_bytes: int = Field(default=512 * MB, gt=0)
    max_batch_file_bytes: int = Field(default=200 * MB, gt=0)
    batch_file_expiry_seconds: int | None = Field(default=30 * 24 * 3600, gt=0)
    output_file_expiry_seconds: int | None = Field(default=30 * 24 * 3600, gt=0)
    require_jsonl_extension: bool = False

    # Batches
    max_requests_per_batch: int = Field(default=50_000, gt=0)
    # Anthropic's Message Batches (and any batch of /v1/messages lines): Anthropic's own limits.
    message_batch_max_requests: int = Field(default=100_000, gt=0)
    message_batch_max_bytes: int = Field(default=256 * MB, gt=0)
    max_validation_errors: int = Field(default=1000, gt=0)
    max_request_bytes: int = Field(default=32 * MB, gt=0)
    completion_window_seconds: int = Field(
        default=24 * 3600,
        gt=0,
        description="Seconds a batch may run before it ends 'expired' (the '24h' window).",
    )

    # Execution engine
    max_attempts: int = Field(
        default=5, ge=1, description="Attempts per request (the first included)."
    )
    retry_base_seconds: float = Field(
        default=0.5, gt=0, description="Upper bound of the first jittered retry wait."
    )
    retry_cap_seconds: float = Field(
        default=60.0, gt=0, description="Largest upper bound of a jittered retry wait."
    )
    cancel_grace_seconds: float = Field(
        default=30.0,
        ge=0,
        description="How long in-flight requests of a cancelled or expired batch may finish.",
    )
    max_running_batches: int = Field(
        default=64,
        ge=1,
        description="Batches this process executes at once; they share each model's slots by "
        "priority, project and batch (batchd.engine.fairness), so this bounds memory, not "
        "who waits.",
    )
    lease_seconds: float = Field(
        default=30.0,
        gt=0,
        description="How long a claim on a batch lasts without renewal (renewed every third).",
    )
    range_size: int = Field(
        default=10_000,
        gt=0,
        description="The most requests per claimable range of a batch when several engines "
        "share the database: a batch is cut into four ranges per live engine, of 500 "
        "requests at least and range_size at most; each engine runs two of a batch at once.",
    )
    progress_interval_seconds: float = Field(
        default=0.5, gt=0, description="How often live request_counts reach the store."
    )
    progress_log_seconds: float = Field(
        default=30.0, gt=0, description="How often a running batch logs its progress."
    )
    cache_max_bytes: int = Field(
        default=1024 * MB,
        gt=0,
        description="The most bytes of answers the result cache of the routes with cache = true "
        "keeps, over all projects; the oldest go first.",
    )
    cache_database_url: str | None = Field(
        default=None,
        description="Where the result cache lives, e.g. sqlite:///cache.sqlite3 (batchd run "
        "--cache); default: the metadata store's database.",
    )

    # Access
    api_keys: tuple[ApiKeySetting, ...] = ()
    project_limits: ProjectLimits = Field(default_factory=ProjectLimits)
    max_request_body_bytes: int = Field(
        default=16 * MB,
        gt=0,
        description="The largest request body of any route but file uploads (413 above).",
    )
    insecure: bool = Field(
        default=False,
        description="Serve on a non-loopback address with no API keys (anyone who can reach "
        "it can use it).",
    )
    metrics_token: SecretStr | None = Field(
        default=None,
        min_length=16,
        description="The bearer token /metrics (and `batchd worker --metrics-port`) asks of a "
        "scrape (BATCHD_METRICS_TOKEN); unset, the metrics are open on a loopback address and "
        "refused on any other. API keys do not open /metrics.",
    )

    # Webhooks (Standard Webhooks: batchd.webhooks)
    webhooks: tuple[WebhookSetting, ...] = ()
    """``[[webhooks]]``: endpoints of the config file (``batchd webhooks add`` stores others)."""
    webhook_allow_networks: tuple[str, ...] = Field(
        default=(),
        description="Networks (CIDR, or one address) that webhooks may be sent to although they "
        'are not public, e.g. ["10.0.0.0/8"]: loopback, private, link-local and other '
        "non-public addresses are refused otherwise.",
    )
    webhook_retry_schedule: tuple[float, ...] = Field(
        default=DEFAULT_RETRY_SCHEDULE,
        min_length=1,
        description="Seconds between a failed webhook attempt and the next; after the last, "
        "the delivery is 'failed'. Default: Standard Webhooks' 5 s, 5 min, 30 min, 2 h, 5 h, "
        "10 h, 10 h (8 attempts over about 28 h).",
    )
    webhook_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        le=60,
        description="How long one webhook attempt may take in all (connecting: 5 s at most).",
    )
    webhook_poll_seconds: float = Field(
        default=1.0,
        gt=0,
        description="How often a process looks for webhooks to send without a wake-up.",
    )

    @field_validator("webhook_allow_networks")
    @classmethod
    def _networks(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        return check_networks(values)

    @field_validator("webhook_retry_schedule")
    @classmethod
    def _schedule(cls, values: tuple[float, ...]) -> tuple[float, ...]:
        if any(value < 0 for value in values):
            raise ValueError("the delays between webhook attempts are seconds, 0 or more")
        return values

    # Azure OpenAI's routes (/openai/...?api-version=)
    azure_api_versions: tuple[str, ...] = Field(
        default=AZURE_API_VERSIONS,
        min_length=1,
        description="The api-version values the /openai/ routes accept (the /openai/v1/ routes "
        "need none); another one is a 400.",
    )

    # Routing table
    models: tuple[ModelRoute, ...] = ()
    embedded_models: bool | None = Field(
        default=None,
        description="Serve the embedded default models (all-MiniLM-L6-v2 embeddings, "
        "SmolLM2-135M-Instruct chat, and their cookbook aliases) when the local extra is "
        "installed: true beside the [[models]] routes, false never, unset only when no "
        "[[models]] are configured.",
    )
    force_model: str | None = Field(
        default=None,
        min_length=1,
        description="Serve every request with this route (a name or an alias), whatever its "
        "body.model: `batchd run --model`, `batchd serve --model`.",
    )

    @field_validator("storage_url")
    @classmethod
    def _s3_url(cls, url: str | None) -> str | None:
        if not url:  # unset, or set empty
            return None
        from batchd.storage.s3 import parse_s3_url

        parse_s3_url(url)  # its ValueError says what is wrong
        return url

    @field_validator("storage_endpoint_url")
    @classmethod
    def _http_url(cls, url: str | None) -> str | None:
        if not url:
            return None
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"{url!r} is not an http:// or https:// URL")
        return url

    @model_validator(mode="before")
    @classmethod
    def _aws_endpoint(cls, values: Any) -> Any:
        """With a ``storage_url``, ``storage_endpoint_url`` defaults to ``AWS_ENDPOINT_URL`` (the
        S3 client itself reads the other ``AWS_*`` settings)."""
        endpoint = os.environ.get("AWS_ENDPOINT_URL")
        if (
            endpoint
            and isinstance(values, dict)
            and values.get("storage_url")
            and not values.get("storage_endpoint_url")
        ):
            return {**values, "storage_endpoint_url": endpoint}
        return values

    @field_validator("api_keys")
    @classmethod
    def _one_limit_per_project(cls, keys: tuple[ApiKeySetting, ...]) -> tuple[ApiKeySetting, ...]:
        limits: dict[str, ProjectLimits] = {}
        for entry in keys:
            if entry.limits is None:
                continue
            known = limits.setdefault(entry.project, entry.limits)
            if known != entry.limits:
                raise ValueError(
                    f"the keys of project {entry.project!r} set different limits; set them on "
                    "one key only, or the same on each"
                )
        return keys

    def limits_for(self, project: str) -> ProjectLimits:
        """The limits of ``project``: its keys' over ``project_limits``."""
        for entry in self.api_keys:
            if entry.project == project and entry.limits is not None:
                return entry.limits.merged_over(self.project_limits)
        return self.project_limits

    @field_validator("models")
    @classmethod
    def _unique_model_names(cls, models: tuple[ModelRoute, ...]) -> tuple[ModelRoute, ...]:
        seen: dict[str, str] = {}
        for route in models:
            for name in (route.name, *route.aliases):
                if name in seen:
                    raise ValueError(
                        f"the model name {name!r} is configured twice in [[models]] ({seen[name]}, "
                        f"then in route {route.name!r}); every name and alias must be unique"
                    )
                seen[name] = f"first in route {route.name!r}"
        return models

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _ConfigFileSource(settings_cls))

    @classmethod
    def load(cls, config_file: Path | None = None, **overrides: Any) -> Settings:
        """Build settings from a TOML file, the environment and explicit overrides.

        ``None`` overrides are ignored, so CLI options that were not given fall through.
        Raises :class:`ConfigError` with a message naming the bad key.
        """
        file_values: dict[str, Any] = {}
        if config_file is not None:
            try:
                with open(config_file, "rb") as fh:
                    file_values = tomllib.load(fh)
            except FileNotFoundError as exc:
                raise ConfigError(f"config file not found: {config_file}") from exc
            except tomllib.TOMLDecodeError as exc:
                raise ConfigError(f"config file {config_file} is not valid TOML: {exc}") from exc
        token = _config_file_values.set(file_values)
        try:
            settings = cls(**{k: v for k, v in overrides.items() if v is not None})
        except ValidationError as exc:
            where = f" in {config_file}" if config_file else ""
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or 'settings'}: {err['msg']}"
                for err in exc.errors()
            )
            raise ConfigError(f"invalid configuration{where}: {problems}") from exc
        finally:
            _config_file_values.reset(token)
        embedded = settings.embedded_models
        if embedded or (embedded is None and not settings.models):
            settings = settings.model_copy(
                update={"models": settings.models + _embedded_routes(settings.models)}
            )
        if settings.force_model is not None:
            _check_forced_route(settings.force_model, settings.models)
        _check_fallbacks(settings.models)
        return settings

    @property
    def sqlite_path(self) -> Path:
        return self.data_dir / "batchd.sqlite3"

    @property
    def shared(self) -> bool:
        """Whether engines share the work through the database (``database_url`` set): ranges
        of requests claimed with fenced leases, results as rows of the database."""
        return self.database_url is not None

    @property
    def resolved_database_url(self) -> str:
        """The SQLAlchemy async URL: ``database_url`` with its async driver (``postgresql://``
        means asyncpg, ``sqlite://`` aiosqlite), or the data directory's SQLite file."""
        if self.database_url is None:
            return f"sqlite+aiosqlite:///{self.sqlite_path}"
        return _async_url(self.database_url)

    @property
    def resolved_cache_database_url(self) -> str | None:
        """``cache_database_url`` with its async driver; ``None``: the store's database."""
        return None if self.cache_database_url is None else _async_url(self.cache_database_url)

    @property
    def model_names(self) -> ModelNames:
        """The names requests may use (routes, aliases, the forced route)."""
        return ModelNames(self.models, self.force_model)

    def route(self, model: str) -> ModelRoute | None:
        """The routing-table entry serving ``model`` (a name or an alias), if any."""
        name = self.model_names.resolve(model)
        for route in self.models:
            if route.name == name:
                return route
        return None

    def max_file_bytes(self, purpose: str | None) -> int:
        """The upload size limit for a purpose (the largest one while the purpose is unknown)."""
        if purpose == "batch":
            return min(self.max_batch_file_bytes, self.max_upload_bytes)
        return self.max_upload_bytes


def _embedded_routes(configured: tuple[ModelRoute, ...]) -> tuple[ModelRoute, ...]:
    """The installed embedded models as routes, beside ``configured`` ones: a name or alias
    that a configured route already uses stays the configured route's."""
    from batchd.embedded_models import installed_models

    taken = {name for route in configured for name in (route.name, *route.aliases)}
    routes = []
    for model in installed_models():
        if model.name in taken:
            continue
        route = ModelRoute.model_validate(model.route())
        aliases = tuple(alias for alias in route.aliases if alias not in taken)
        routes.append(route.model_copy(update={"aliases": aliases}))
    return tuple(routes)


def _check_fallbacks(routes: tuple[ModelRoute, ...]) -> None:
    names = ModelNames(routes)
    for route in routes:
        for fallback in route.fallback:
            target = names.resolve(fallback)
            if target is None or target == route.name:
                served = ", ".join(name for name in names.listed() if name != route.name)
                raise ConfigError(
                    f"model {route.name!r}: fallback {fallback!r} "
                    + ("is the route itself" if target else "names no route")
                    + f"; name another route: {served or 'none is configured'}"
                )


def _check_forced_route(force: str, routes: tuple[ModelRoute, ...]) -> None:
    names = ModelNames(routes)
    if names.resolve(force) is None:
        served = ", ".join(names.listed()) or "none (configure a [[models]] route)"
        raise ConfigError(f"--model {force!r} names no route; the routes are: {served}")
