"""The embedded default models as routes (found by :mod:`batchd.embedded_models`, which
:meth:`batchd.config.Settings.load` uses without importing the providers)."""

from __future__ import annotations

from batchd.config import ModelRoute
from batchd.embedded_models import CHAT_MODEL, EMBEDDING_MODEL, installed_models, package_dir

__all__ = ["CHAT_MODEL", "EMBEDDING_MODEL", "embedded_routes", "package_dir"]


def embedded_routes() -> tuple[ModelRoute, ...]:
    """Routes for the embedded models whose packages are installed (none without the extra)."""
    return tuple(ModelRoute.model_validate(model.route()) for model in installed_models())
