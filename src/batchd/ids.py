"""Object ids in OpenAI's shapes: ``file-…``, ``batch_…``, ``batch_req_…``, ``req_…``; and
Anthropic's Message Batches' ``msgbatch_…``.

Ids are random (not guessable, not ordered); ordering in lists uses the store's sequence column.
"""

from __future__ import annotations

import os
import re
import secrets
import string

__all__ = [
    "is_batch_id",
    "is_file_id",
    "new_batch_id",
    "new_batch_request_id",
    "new_file_id",
    "new_message_batch_id",
    "new_request_id",
]

_ALNUM = string.ascii_letters + string.digits
_FILE_ID = re.compile(r"file-[A-Za-z0-9]{1,64}")
_BATCH_ID = re.compile(r"(?:msg)?batch_[A-Za-z0-9]{1,64}")


def new_file_id() -> str:
    """``file-`` and 24 alphanumerics, like OpenAI's file ids."""
    return "file-" + "".join(secrets.choice(_ALNUM) for _ in range(24))


def new_batch_id() -> str:
    """``batch_`` and 32 hex digits, like OpenAI's batch ids."""
    return "batch_" + secrets.token_hex(16)


def new_message_batch_id() -> str:
    """``msgbatch_`` and 24 alphanumerics, like Anthropic's Message Batch ids."""
    return "msgbatch_" + "".join(secrets.choice(_ALNUM) for _ in range(24))


_POOL_SIZE = 256
_hex_pool: list[str] = []
os.register_at_fork(after_in_child=_hex_pool.clear)  # a child draws its own


def _random_hex() -> str:
    """32 random hex digits (as ``secrets.token_hex(16)``), drawn from the OS 256 at a time:
    one ``batch_req_`` id per result makes this the hot path of the engine. ``list.pop`` and
    ``list.extend`` are atomic, so worker threads may draw too."""
    try:
        return _hex_pool.pop()
    except IndexError:
        digits = os.urandom(16 * _POOL_SIZE).hex()
        _hex_pool.extend(digits[i : i + 32] for i in range(32, len(digits), 32))
        return digits[:32]


def new_batch_request_id() -> str:
    """The ``id`` of one line of an output or error file."""
    return "batch_req_" + _random_hex()


def new_request_id() -> str:
    """The ``x-request-id`` of one HTTP response."""
    return "req_" + _random_hex()


def is_file_id(value: str) -> bool:
    """Whether ``value`` has the shape of a file id (checked before any storage access)."""
    return _FILE_ID.fullmatch(value) is not None


def is_batch_id(value: str) -> bool:
    """Whether ``value`` has the shape of a batch id."""
    return _BATCH_ID.fullmatch(value) is not None
