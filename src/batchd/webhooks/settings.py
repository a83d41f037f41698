"""The ``[[webhooks]]`` entries of the configuration and the webhook settings' checks (pydantic
only: :mod:`batchd.config` imports this module)."""

from __future__ import annotations

import hashlib
import ipaddress
import os
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from batchd.webhooks.guard import url_problem
from batchd.webhooks.signing import secret_problem

__all__ = [
    "DEFAULT_RETRY_SCHEDULE",
    "EVENT_TYPES",
    "EventType",
    "WebhookSetting",
    "check_networks",
]

EventType = Literal["batch.completed", "batch.failed", "batch.expired", "batch.cancelled"]
EVENT_TYPES: tuple[EventType, ...] = get_args(EventType)

#: Seconds between a failed attempt and the next (Standard Webhooks' schedule: attempts at once,
#: then after 5 s, 5 min, 30 min, 2 h, 5 h, 10 h and 10 h: about 28 hours in all).
DEFAULT_RETRY_SCHEDULE: tuple[float, ...] = (5, 300, 1800, 7200, 18000, 36000, 36000)

_PROJECT = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"  # batchd.config.PROJECT_PATTERN


def check_networks(values: tuple[str, ...]) -> tuple[str, ...]:
    """Each of ``values`` as an IP network (``10.0.0.0/8``, or one address); a
    :class:`ValueError` that names a bad one."""
    for value in values:
        try:
            ipaddress.ip_network(value, strict=False)
        except ValueError:
            raise ValueError(
                f"{value!r} is not an IP address or network, e.g. 127.0.0.1, 10.0.0.0/8 or ::1"
            ) from None
    return values


class WebhookSetting(BaseModel):
    """One ``[[webhooks]]`` entry: where a project's batch events are sent, signed with the
    endpoint's secret (given, or read from the environment variable ``secret_env``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    project: str = Field(default="default", pattern=_PROJECT)
    url: str = Field(min_length=1)
    secret: SecretStr | None = None
    secret_env: str | None = Field(default=None, min_length=1)
    events: tuple[EventType, ...] | None = Field(default=None, min_length=1)
    """The events sent (all four when unset)."""

    @field_validator("url")
    @classmethod
    def _url(cls, url: str) -> str:
        problem = url_problem(url)
        if problem is not None:
            raise ValueError(problem)
        return url

    @model_validator(mode="after")
    def _one_secret(self) -> WebhookSetting:
        if (self.secret is None) == (self.secret_env is None):
            raise ValueError(
                "give exactly one of secret (whsec_…) and secret_env (the name of an environment "
                "variable holding it)"
            )
        if self.secret_env is not None and not os.environ.get(self.secret_env):
            raise ValueError(
                f"secret_env names {self.secret_env!r}, which is not set: export it with the "
                "endpoint's whsec_ secret"
            )
        problem = secret_problem(self.signing_secret)
        if problem is not None:
            raise ValueError(problem)
        return self

    @property
    def signing_secret(self) -> str:
        if self.secret is not None:
            return self.secret.get_secret_value()
        return os.environ.get(self.secret_env or "", "")

    @property
    def id(self) -> str:
        """A stable id (``whcfg_…``, from the project and the URL): the same in every process
        and after a restart, so that its deliveries find it again."""
        digest = hashlib.sha256(f"{self.project}\n{self.url}".encode()).hexdigest()[:16]
        return f"whcfg_{digest}"
