"""Providers: what runs a batch's requests, one configured instance per ``[[models]]`` route.

- :mod:`batchd.providers.base`: :class:`Provider`, :class:`ProviderRequest`,
  :class:`ProviderResult`, :class:`ProviderOptions`;
- :mod:`batchd.providers.registry`: built-ins plus the ``batchd.providers`` entry-point group,
  :func:`build_providers`;
- :mod:`batchd.providers.table`: :class:`ModelTable`, the providers found by name or alias;
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
from batchd.providers.table import ModelTable

__all__ = [
    "ENTRY_POINT_GROUP",
    "DispatchLimits",
    "ModelTable",
    "Provider",
    "ProviderOptions",
    "ProviderRegistry",
    "ProviderRequest",
    "ProviderResult",
    "build_providers",
]
