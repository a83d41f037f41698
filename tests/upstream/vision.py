"""Request checks of the fake upstream for image parts (chat) and ``/v1/responses`` bodies.

Chat ``content`` arrays are checked part by part as OpenAI does: ``{"type": "text", "text": str}``
or ``{"type": "image_url", "image_url": {"url": str, "detail"?: "auto"|"low"|"high"}}``
(``input_audio``, ``file`` and ``refusal`` parts pass unchecked). An image URL is either
``http(s)://host...`` or ``data:image/(png|jpeg|gif|webp);base64,<base64>``, decoded strictly
(:func:`base64.b64decode` with ``validate=True``) and checked for the format's magic bytes (PNG
signature, JPEG ``FF D8``, ``GIF8``, ``RIFF....WEBP``).

Every check raises :class:`InvalidRequest` naming the param
(``messages[0].content[1].image_url.url``, ``input[0].content[1].image_url``, ``text.format`` ...);
the server turns it into a 400 ``invalid_request_error``. Pure functions, no I/O.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any
from urllib.parse import urlsplit

__all__ = [
    "DETAILS",
    "IMAGE_FORMATS",
    "InvalidRequest",
    "check_chat_content",
    "check_image_url",
    "check_responses_body",
]

DETAILS = ("auto", "low", "high")
IMAGE_FORMATS = ("png", "jpeg", "gif", "webp")
_DATA_URL = re.compile(r"data:image/([a-zA-Z0-9.+-]+);base64,(.*)", re.DOTALL)
_CHAT_PASSTHROUGH_PARTS = ("input_audio", "file", "refusal")
_ROLES = ("user", "assistant", "system", "developer")
_TEXT_FORMATS = ("text", "json_object", "json_schema")
_MIN_OUTPUT_TOKENS = 16


class InvalidRequest(Exception):
    """A request the upstream rejects with a 400: message, param, code."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


def _has_magic(kind: str, data: bytes) -> bool:
    if kind == "png":
        return data.startswith(b"\x89PNG\r\n\x1a\n")
    if kind == "jpeg":
        return data.startswith(b"\xff\xd8")
    if kind == "gif":
        return data.startswith((b"GIF87a", b"GIF89a"))
    return data[:4] == b"RIFF" and data[8:12] == b"WEBP"


def check_image_url(url: Any, param: str) -> None:
    """An ``http(s)`` URL with a host, or a base64 data URL of a png/jpeg/gif/webp image."""
    if not isinstance(url, str) or not url:
        raise InvalidRequest(
            f"Invalid '{param}': expected a non-empty string.", param, "invalid_type"
        )
    if url.startswith("data:"):
        match = _DATA_URL.fullmatch(url)
        if match is None:
            raise InvalidRequest(
                f"Invalid image URL: '{param}'. Expected a base64-encoded data URL with an image "
                "MIME type (e.g. 'data:image/png;base64,...').",
                param,
                "invalid_image_url",
            )
        kind = match.group(1).lower()
        if kind not in IMAGE_FORMATS:
            raise InvalidRequest(
                f"Invalid image URL: '{param}'. Unsupported MIME type 'image/{kind}'; expected "
                f"one of {', '.join('image/' + k for k in IMAGE_FORMATS)}.",
                param,
                "invalid_image_format",
            )
        try:
            data = base64.b64decode(match.group(2), validate=True)
        except (binascii.Error, ValueError):
            raise InvalidRequest(
                f"Invalid image URL: '{param}'. The data URL is not valid base64.",
                param,
                "invalid_image_url",
            ) from None
        if not _has_magic(kind, data):
            raise InvalidRequest(
                f"You uploaded an unsupported image ('{param}'): the data is not a valid "
                f"{kind} image.",
                param,
                "invalid_image_format",
            )
        return
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise InvalidRequest(
            f"Invalid image URL: '{param}'. Expected an http(s) URL or a base64 data URL.",
            param,
            "invalid_image_url",
        )


def _check_detail(detail: Any, param: str) -> None:
    if detail is not None and detail not in DETAILS:
        raise InvalidRequest(
            f"Invalid value for '{param}': expected one of {', '.join(DETAILS)}.",
            param,
            "invalid_value",
        )


def _check_text(part: dict[str, Any], param: str) -> None:
    if not isinstance(part.get("text"), str):
        raise InvalidRequest(f"Invalid '{param}.text': expected a string.", f"{param}.text")


def check_chat_content(content: Any, param: str) -> None:
    """Check a chat message's ``content`` (``param`` is ``messages[i].content``); strings pass."""
    if not isinstance(content, list):
        return
    if not content:
        raise InvalidRequest(
            f"Invalid '{param}': empty array. Expected an array with minimum length 1.",
            param,
            "empty_array",
        )
    for j, part in enumerate(content):
        at = f"{param}[{j}]"
        if not isinstance(part, dict):
            raise InvalidRequest(f"Invalid '{at}': expected an object.", at, "invalid_type")
        kind = part.get("type")
        if kind == "text":
            _check_text(part, at)
        elif kind == "image_url":
            image = part.get("image_url")
            if not isinstance(image, dict):
                raise InvalidRequest(
                    f"Invalid '{at}.image_url': expected an object with a url.",
                    f"{at}.image_url",
                    "invalid_type",
                )
            check_image_url(image.get("url"), f"{at}.image_url.url")
            _check_detail(image.get("detail"), f"{at}.image_url.detail")
        elif kind not in _CHAT_PASSTHROUGH_PARTS:
            raise InvalidRequest(
                f"Invalid value: {kind!r}. Supported values are: 'text', 'image_url', "
                "'input_audio', 'refusal' and 'file'.",
                f"{at}.type",
                "invalid_value",
            )


def _check_input_message(item: Any, at: str) -> None:
    if not isinstance(item, dict):
        raise InvalidRequest(f"Invalid '{at}': expected an object.", at, "invalid_type")
    if item.get("type", "message") != "message":
        raise InvalidRequest(
            f"Invalid '{at}.type': this fake upstream supports only message items.",
            f"{at}.type",
            "invalid_value",
        )
    if item.get("role") not in _ROLES:
        raise InvalidRequest(
            f"Invalid '{at}.role': expected one of {', '.join(_ROLES)}.",
            f"{at}.role",
            "invalid_value",
        )
    content = item.get("content")
    if isinstance(content, str):
        return
    if not isinstance(content, list) or not content:
        raise InvalidRequest(
            f"Invalid '{at}.content': expected a string or a non-empty array of parts.",
            f"{at}.content",
            "invalid_value",
        )
    for j, part in enumerate(content):
        pat = f"{at}.content[{j}]"
        if not isinstance(part, dict):
            raise InvalidRequest(f"Invalid '{pat}': expected an object.", pat, "invalid_type")
        kind = part.get("type")
        if kind in ("input_text", "output_text"):
            _check_text(part, pat)
        elif kind == "input_image":
            check_image_url(part.get("image_url"), f"{pat}.image_url")
            _check_detail(part.get("detail"), f"{pat}.detail")
        else:
            raise InvalidRequest(
                f"Invalid value: {kind!r}. Supported values (in this fake) are: 'input_text', "
                "'output_text' and 'input_image'.",
                f"{pat}.type",
                "invalid_value",
            )


def _check_text_format(text: Any) -> None:
    if text is None:
        return
    if not isinstance(text, dict):
        raise InvalidRequest("Invalid 'text': expected an object.", "text", "invalid_type")
    fmt = text.get("format")
    if fmt is None:
        return
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind not in _TEXT_FORMATS:
        raise InvalidRequest(
            "text.format.type must be one of text, json_object, json_schema",
            "text.format",
            "invalid_value",
        )
    if kind == "json_schema":
        if not isinstance(fmt.get("name"), str) or not fmt["name"]:
            raise InvalidRequest(
                "Missing required parameter: 'text.format.name'.",
                "text.format.name",
                "missing_required_parameter",
            )
        if not isinstance(fmt.get("schema"), dict):
            raise InvalidRequest(
                "text.format.schema must be an object", "text.format.schema", "invalid_value"
            )


def check_responses_body(body: dict[str, Any]) -> None:
    """Check a ``/v1/responses`` body (model, ``n`` and the ``stream`` type are checked before)."""
    if body.get("stream") is True:
        raise InvalidRequest(
            "stream is not supported by this fake for /v1/responses", "stream", "unsupported_value"
        )
    if "input" not in body:
        raise InvalidRequest(
            "Missing required parameter: 'input'.", "input", "missing_required_parameter"
        )
    value = body["input"]
    if isinstance(value, str):
        if not value:
            raise InvalidRequest("input must not be empty", "input", "invalid_value")
    elif isinstance(value, list) and value:
        for i, item in enumerate(value):
            _check_input_message(item, f"input[{i}]")
    else:
        raise InvalidRequest(
            "input must be a non-empty string or a non-empty array of messages",
            "input",
            "invalid_value",
        )
    instructions = body.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise InvalidRequest("instructions must be a string", "instructions", "invalid_type")
    limit = body.get("max_output_tokens")
    if limit is not None and (
        not isinstance(limit, int) or isinstance(limit, bool) or limit < _MIN_OUTPUT_TOKENS
    ):
        raise InvalidRequest(
            f"Invalid 'max_output_tokens': expected an integer >= {_MIN_OUTPUT_TOKENS}.",
            "max_output_tokens",
            "invalid_value",
        )
    _check_text_format(body.get("text"))
