"""Standard Webhooks' secrets and signatures (https://www.standardwebhooks.com).

A secret is ``whsec_`` and the base64 of 24 to 64 random bytes; a message is signed with
HMAC-SHA256 over ``"<webhook-id>.<webhook-timestamp>.<body>"`` and the signature sent as
``webhook-signature: v1,<base64 of the MAC>``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets

__all__ = ["PREFIX", "headers", "new_secret", "secret_problem", "sign"]

PREFIX = "whsec_"
_MIN_BYTES, _MAX_BYTES = 24, 64


def new_secret() -> str:
    """A new secret: ``whsec_`` and 32 random bytes in base64."""
    return PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def _key(secret: str) -> bytes:
    return base64.b64decode(secret.removeprefix(PREFIX), validate=True)


def secret_problem(secret: str) -> str | None:
    """What is wrong with ``secret`` (``None``: nothing)."""
    how = "`batchd webhooks add` makes one; any whsec_ secret of a Standard Webhooks library does"
    if not secret.startswith(PREFIX):
        return f"a webhook secret starts with {PREFIX!r} and goes on in base64 ({how})"
    try:
        key = _key(secret)
    except (binascii.Error, ValueError):
        return f"the webhook secret after {PREFIX!r} is not valid base64 ({how})"
    if not _MIN_BYTES <= len(key) <= _MAX_BYTES:
        return (
            f"the webhook secret holds {len(key)} bytes; it needs {_MIN_BYTES} to {_MAX_BYTES} "
            f"({how})"
        )
    return None


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header of ``body`` sent as ``message_id`` at ``timestamp``."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    mac = hmac.new(_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def headers(secret: str, message_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The Standard Webhooks headers of one attempt."""
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, message_id, timestamp, body),
    }
