"""Providers: what runs a batch's requests, one configured instance per ``[[models]]`` route.

- :mod:`batchd.providers.base`: :class:`Provider`, :class:`ProviderRequest`,
  :class:`ProviderResult`, :class:`ProviderOptions`;
- :mod:`batchd.providers.registry`: built-ins plus the ``batchd.providers`` entry-point group,
  :func:`build_providers`;
- :mod:`batchd.providers.openai_http`: the ``openai`` provider (any OpenAI-compatible server).
"""

from batchd.providers.base import (
    DispatchLimits,
    Provider,
    ProviderOptions,
    ProviderRequest,
    ProviderResult,
)
from batchd.providers.registry import ENTRY_POINT_GROUP, ProviderRegistry, build_providers

__all__ = [
    "ENTRY_POINT_GROUP",
    "DispatchLimits",
    "Provider",
    "ProviderOptions",
    "ProviderRegistry",
    "ProviderRequest",
    "ProviderResult",
    "build_providers",
]
