"""The provider registry: built-in providers plus the ``batchd.providers`` entry-point group.

A third-party package registers providers with an entry point in that group whose object is
either a :class:`~batchd.providers.base.Provider` subclass (registered under the entry point's
name) or a ``register(registry)`` hook that calls :meth:`ProviderRegistry.register` itself::

    [project.entry-points."batchd.providers"]
    mine = "batchd_mine:MineProvider"

:func:`build_providers` turns the routing table of :class:`~batchd.config.Settings` into one
provider instance per model name; nothing is started (no I/O) until ``Provider.start``.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Iterable, Mapping
from importlib.metadata import EntryPoint, entry_points

from batchd.config import ModelRoute, Settings
from batchd.errors import ConfigError
from batchd.providers.base import Provider
from batchd.providers.table import ModelTable

__all__ = ["ENTRY_POINT_GROUP", "ProviderRegistry", "build_providers"]

ENTRY_POINT_GROUP = "batchd.providers"


# The built-in providers as "module:Class", imported when a route names them: the in-process
# engines' modules are light, but their backends (llama.cpp, torch) come with the ``local``
# extra and are imported only when a model is loaded.
_BUILTINS = {
    "openai": "batchd.providers.openai_http:OpenAIProvider",
    "anthropic": "batchd.providers.anthropic_http:AnthropicProvider",
    "llamacpp": "batchd.providers.llamacpp:LlamaCppProvider",
    "sentence-transformers": "batchd.providers.sentence_transformers:SentenceTransformersProvider",
}


def _load_builtin(name: str, target: str) -> type[Provider]:
    module_name, _, class_name = target.partition(":")
    provider: type[Provider] = getattr(importlib.import_module(module_name), class_name)
    return provider


class ProviderRegistry:
    """Provider classes by name; build one with :meth:`default` or register your own."""

    def __init__(self) -> None:
        self._classes: dict[str, type[Provider]] = {}
        self._lazy: dict[str, str] = {}  # built-ins not imported yet: name -> "module:Class"

    @classmethod
    def default(cls, *, plugins: bool = True) -> ProviderRegistry:
        """The built-ins, plus (``plugins=True``) everything in the entry-point group."""
        registry = cls()
        registry._lazy.update(_BUILTINS)
        if plugins:
            registry.load_entry_points(entry_points(group=ENTRY_POINT_GROUP))
        return registry

    def register(self, name: str, provider: type[Provider], *, replace: bool = False) -> None:
        """Make ``provider`` available as ``provider = "<name>"`` in routes."""
        if not (inspect.isclass(provider) and issubclass(provider, Provider)):
            raise ConfigError(f"provider {name!r}: {provider!r} is not a Provider subclass")
        if inspect.isabstract(provider):
            raise ConfigError(f"provider {name!r}: {provider.__name__} is abstract")
        if name in self._lazy and not replace:
            self._resolve(name)
        if name in self._classes and not replace and self._classes[name] is not provider:
            raise ConfigError(f"provider {name!r} is registered twice")
        self._lazy.pop(name, None)
        self._classes[name] = provider

    def _resolve(self, name: str) -> None:
        target = self._lazy.pop(name)
        self._classes[name] = _load_builtin(name, target)

    def load_entry_points(self, points: Iterable[EntryPoint]) -> None:
        """Register what each entry point names (a Provider subclass or a register hook)."""
        for point in points:
            try:
                loaded = point.load()
            except Exception as exc:
                raise ConfigError(
                    f"provider plugin {point.name!r} ({point.value}) failed to load: {exc}"
                ) from exc
            if inspect.isclass(loaded) and issubclass(loaded, Provider):
                self.register(point.name, loaded)
            elif callable(loaded) and not inspect.isclass(loaded):
                hook: Callable[[ProviderRegistry], object] = loaded
                hook(self)
            else:
                raise ConfigError(
                    f"provider plugin {point.name!r} ({point.value}) is neither a Provider "
                    "subclass nor a register(registry) hook"
                )

    def names(self) -> list[str]:
        """The registered provider names, sorted."""
        return sorted({*self._classes, *self._lazy})

    def get(self, name: str) -> type[Provider]:
        """The class registered as ``name``; :class:`ConfigError` lists the known names."""
        if name in self._lazy:
            self._resolve(name)
        try:
            return self._classes[name]
        except KeyError:
            known = ", ".join(self.names()) or "none"
            raise ConfigError(f"unknown provider {name!r}; known providers: {known}") from None

    def build(self, route: ModelRoute, env: Mapping[str, str]) -> Provider:
        """One provider instance for ``route`` (not started)."""
        try:
            provider_cls = self.get(route.provider)
        except ConfigError as exc:
            raise ConfigError(f"model {route.name!r}: {exc.message}") from None
        provider = provider_cls.from_route(route, env)
        provider.aliases = frozenset(route.aliases)
        return provider


def build_providers(
    settings: Settings,
    env: Mapping[str, str] | None = None,
    registry: ProviderRegistry | None = None,
) -> ModelTable:
    """One provider per ``[[models]]`` route, by route name, found by its aliases too (none
    started).

    ``env`` is the environment secrets such as ``api_key_env`` are resolved from, passed in by
    the caller (the CLI passes ``os.environ``); ``registry`` defaults to
    :meth:`ProviderRegistry.default`.
    """
    env = {} if env is None else env
    registry = ProviderRegistry.default() if registry is None else registry
    providers = {route.name: registry.build(route, env) for route in settings.models}
    return ModelTable(providers, settings.model_names)
