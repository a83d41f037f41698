"""Settings: defaults < TOML config file < ``BATCHD_*`` environment < command-line options.

Settings are built once at the edge (the CLI, or a test) with :meth:`Settings.load` and passed down
explicitly; nothing else in batchd reads the environment.
"""

from __future__ import annotations

import contextvars
import hashlib
import tomllib
from pathlib import Path
from typing import Any

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

__all__ = ["MB", "ApiKeySetting", "ModelRoute", "ProjectLimits", "Settings", "default_data_dir"]

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

    @property
    def options(self) -> dict[str, Any]:
        """The provider settings: every key but ``name`` and ``provider``."""
        return dict(self.model_extra or {})


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
        description="SQLAlchemy async URL; default: a SQLite file in the data directory.",
    )
    log_level: str = "info"

    # Files
    max_upload_bytes: int = Field(default=512 * MB, gt=0)
    max_batch_file_bytes: int = Field(default=200 * MB, gt=0)
    batch_file_expiry_seconds: int | None = Field(default=30 * 24 * 3600, gt=0)
    output_file_expiry_seconds: int | None = Field(default=30 * 24 * 3600, gt=0)
    require_jsonl_extension: bool = False

    # Batches
    max_requests_per_batch: int = Field(default=50_000, gt=0)
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
        default=16, ge=1, description="Batches this process executes at once."
    )
    lease_seconds: float = Field(
        default=30.0,
        gt=0,
        description="How long a claim on a batch lasts without renewal (renewed every third).",
    )
    progress_interval_seconds: float = Field(
        default=0.5, gt=0, description="How often live request_counts reach the store."
    )
    progress_log_seconds: float = Field(
        default=30.0, gt=0, description="How often a running batch logs its progress."
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

    # Routing table
    models: tuple[ModelRoute, ...] = ()
    embedded_models: bool = Field(
        default=True,
        description="With no [[models]] configured, serve the embedded default models "
        "(all-MiniLM-L6-v2 embeddings, SmolLM2-135M-Instruct chat) when the local extra is "
        "installed.",
    )

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
        seen: set[str] = set()
        for route in models:
            if route.name in seen:
                raise ValueError(f"model {route.name!r} is configured twice in [[models]]")
            seen.add(route.name)
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
        if not settings.models and settings.embedded_models:
            from batchd.embedded_models import installed_models

            routes = tuple(ModelRoute.model_validate(m.route()) for m in installed_models())
            if routes:
                settings = settings.model_copy(update={"models": routes})
        return settings

    @property
    def sqlite_path(self) -> Path:
        return self.data_dir / "batchd.sqlite3"

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite+aiosqlite:///{self.sqlite_path}"

    def route(self, model: str) -> ModelRoute | None:
        """The routing-table entry serving ``model``, if any."""
        for route in self.models:
            if route.name == model:
                return route
        return None

    def max_file_bytes(self, purpose: str | None) -> int:
        """The upload size limit for a purpose (the largest one while the purpose is unknown)."""
        if purpose == "batch":
            return min(self.max_batch_file_bytes, self.max_upload_bytes)
        return self.max_upload_bytes
