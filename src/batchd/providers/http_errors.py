"""One line for a pyreqwest error of an HTTP attempt that got no answer: an upstream's
(:mod:`batchd.providers.openai_http`) or a webhook receiver's (:mod:`batchd.webhooks.deliver`)."""

from __future__ import annotations

from pyreqwest.exceptions import PyreqwestError

__all__ = ["describe"]


def describe(exc: PyreqwestError, on: str | None = None) -> str:
    """``ConnectError on the upstream of model 'm': connection error (Connection refused (os
    error 111))``, or without ``on …`` when ``on`` is ``None``.

    pyreqwest's own message is generic; the root of its cause chain says what happened. The
    outer causes are left out: they repeat the full URL, which could carry userinfo. An
    upstream's message reaches clients (error files, the synchronous routes' 502s), so the
    provider names the upstream by its model, not by its host, which is the operator's business
    (the log has it).
    """
    where = "" if on is None else f" on {on}"
    text = f"{type(exc).__name__}{where}: {exc.message}"
    details = getattr(exc, "details", None)
    causes = details.get("causes") if isinstance(details, dict) else None
    if causes:
        root = causes[-1].get("message")
        if root and root != exc.message:
            text += f" ({root})"
    return text
