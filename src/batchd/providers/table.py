"""The routing table at run time: one started provider per route, found by any name a request
may use (a route's name, one of its aliases, or anything when one route serves every request).

It is a ``Mapping`` of route names to providers: iterating it gives each provider once, under its
route name, and a lookup (``table[name]``, ``table.get(name)``, ``name in table``) resolves
aliases and the forced route (:class:`batchd.config.ModelNames`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from batchd.config import ModelNames
from batchd.providers.base import Provider

__all__ = ["ModelTable"]


class ModelTable(Mapping[str, Provider]):
    """Providers by route name, looked up by any served name."""

    def __init__(self, providers: Mapping[str, Provider], names: ModelNames | None = None) -> None:
        self._providers = dict(providers)
        #: Without ``names``, each provider is served under its own name only.
        self.names = names if names is not None else ModelNames.of(self._providers)

    def __getitem__(self, name: str) -> Provider:
        route = self.names.resolve(name)
        if route is None:
            raise KeyError(name)
        return self._providers[route]

    def __iter__(self) -> Iterator[str]:
        return iter(self._providers)

    def __len__(self) -> int:
        return len(self._providers)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.names.resolve(name) in self._providers

    @property
    def aliases(self) -> dict[str, str]:
        """alias → route name."""
        return dict(self.names.aliases)

    def hint(self, model: str) -> str:
        """What to say about a model no route serves (the served names, how to serve it)."""
        return self.names.hint(model)
