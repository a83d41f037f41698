"""Deterministic answers of the fake upstream: pure functions of the request body.

Everything here is free of I/O so that tests can compute, in-process, exactly what the upstream
server will answer (and which digest it will count) for a given request body.

Image parts. :func:`image_parts` lists every image part of a chat body (``messages[*].content[*]``
of type ``image_url``) or of a Responses body (``input[*].content[*]`` of type ``input_image``), in
order, as ``(sha256 hex of the URL string as sent, detail as sent or None)``; the sha256 is of the
URL's UTF-8 bytes, so a data URL's hash proves its base64 arrived byte for byte.
:func:`image_fingerprint` is the line ``images: <n>; <sha256>:<detail>, <sha256>:<detail>`` (``-``
for a part without ``detail``), or ``""`` when there is no image part. A chat answer (and a
Responses answer) of a request with image parts carries it: text mode appends a newline and
the fingerprint to the ``Echo`` line; ``json_object`` adds it as the key ``"images"`` of the JSON
object; ``json_schema`` answers (a schema instance) do not carry it. Requests without image parts
get exactly the answers they always got.

Responses. :func:`responses_chat_body` maps a ``/v1/responses`` body onto the equivalent chat body
(``instructions`` → a leading system message, ``input`` → messages, ``input_text``/``output_text``
→ text parts, ``input_image`` → ``image_url`` parts with the same url and detail, ``text.format``
→ ``response_format``); :func:`response_text` is :func:`chat_content` of that body and
:func:`response` the whole ``response`` object.

Anthropic Messages (``POST /v1/messages``). :func:`anthropic_text` is ``"Echo <hash>: <first
words>"``, the hash over ``system`` and ``messages``, the words those of the last user message
(its text blocks joined by newlines), cut to ``max_tokens`` words; :func:`anthropic_message` the
whole ``Message`` object (``stop_reason`` ``"max_tokens"`` when the cut took words off, else
``"end_turn"``; ``usage.input_tokens`` the words of ``system`` and of every message).
"""

from __future__ import annotations

import base64
import hashlib
import re
import sys
from array import array
from typing import Any

import orjson

__all__ = [
    "CREATED",
    "DEFAULT_EMBEDDING_DIMENSIONS",
    "GENRES",
    "SYSTEM_FINGERPRINT",
    "anthropic_message",
    "anthropic_text",
    "body_digest",
    "canonical_json",
    "chat_completion",
    "chat_content",
    "completion",
    "count_tokens",
    "embedding_dimensions",
    "embedding_vector",
    "embeddings",
    "encode_base64_vector",
    "image_fingerprint",
    "image_parts",
    "last_user_text",
    "movie_answer",
    "request_texts",
    "response",
    "response_text",
    "responses_chat_body",
    "schema_instance",
    "short_hash",
    "split_stream_pieces",
]

#: ``created`` of every answer: a fixed timestamp, so that answers are byte-for-byte reproducible.
CREATED = 1_735_689_600
SYSTEM_FINGERPRINT = "fp_upstream_fake"
GENRES: tuple[str, ...] = (
    "action",
    "adventure",
    "animation",
    "comedy",
    "crime",
    "documentary",
    "drama",
    "family",
    "fantasy",
    "history",
    "horror",
    "music",
    "mystery",
    "romance",
    "science-fiction",
    "thriller",
    "war",
    "western",
)
DEFAULT_EMBEDDING_DIMENSIONS: dict[str, int] = {
    "text-embedding-3-large": 3072,
    "text-embedding-3-small": 1536,
    "text-embedding-ada-002": 1536,
}
_FALLBACK_EMBEDDING_DIMENSIONS = 1536
_SNIPPET_WORDS = 24


def canonical_json(value: Any) -> bytes:
    """Compact JSON with sorted keys: the bytes that :func:`body_digest` hashes."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def body_digest(body: Any) -> str:
    """sha256 (hex) of the canonical JSON of a parsed request body.

    The upstream counts every request under this digest; key order and whitespace of the body on
    the wire do not matter.
    """
    return hashlib.sha256(canonical_json(body)).hexdigest()


def short_hash(*parts: Any, length: int = 12) -> str:
    digest = hashlib.sha256(canonical_json(list(parts))).hexdigest()
    return digest[:length]


def _hash_int(*parts: Any) -> int:
    return int.from_bytes(hashlib.sha256(canonical_json(list(parts))).digest()[:8], "big")


def count_tokens(text: str) -> int:
    """The fake tokenizer: whitespace-separated words."""
    return len(text.split())


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = [
            part["text"]
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        ]
        return "\n".join(texts)
    return ""


def last_user_text(messages: Any) -> str:
    """The text of the last ``user`` message (text parts joined by newlines), or ``""``."""
    if not isinstance(messages, list):
        return ""
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            return _content_text(message.get("content"))
    return ""


def _collect_strings(value: Any, out: list[str]) -> None:
    if isinstance(value, str):
        out.append(value)
    elif isinstance(value, list):
        for item in value:
            _collect_strings(item, out)
    elif isinstance(value, dict):
        for item in value.values():
            _collect_strings(item, out)


def request_texts(body: Any) -> list[str]:
    """Every string in ``messages``, ``prompt`` and ``input``: where fault markers are sought."""
    out: list[str] = []
    if isinstance(body, dict):
        for key in ("messages", "prompt", "input"):
            _collect_strings(body.get(key), out)
    return out


def _snippet(text: str, words: int = _SNIPPET_WORDS) -> str:
    parts = text.split()
    snippet = " ".join(parts[:words])
    return snippet + (" ..." if len(parts) > words else "")


def movie_answer(text: str) -> dict[str, Any]:
    """The JSON-mode answer for a movie description: 1-3 categories and a one-line summary."""
    digest = hashlib.sha256(b"movie:" + text.encode()).digest()
    count = 1 + digest[0] % 3
    ranked = sorted(range(len(GENRES)), key=lambda i: (digest[1 + i], i))
    categories = [GENRES[i] for i in ranked[:count]]
    about = _snippet(text, 20) or "nothing in particular"
    summary = f"A {', '.join(categories)} film about {about}"
    return {"categories": categories, "summary": summary}


def schema_instance(schema: Any, text: str, path: str = "$") -> Any:
    """A deterministic value that satisfies a (simple) JSON schema.

    Handles ``type`` (also a list), ``enum``, ``const``, ``anyOf``/``oneOf``/``allOf`` (first
    branch), object ``properties`` (all of them, as strict mode requires), arrays with
    ``minItems``/``maxItems``, and string/number bounds. Properties named ``summary`` and
    ``categories`` get the movie answer's values when their type allows.
    """
    if not isinstance(schema, dict):
        return {}
    if "const" in schema:
        return schema["const"]
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        return enum[_hash_int("enum", path, text) % len(enum)]
    for key in ("anyOf", "oneOf", "allOf"):
        branches = schema.get(key)
        if isinstance(branches, list) and branches:
            return schema_instance(branches[0], text, path)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), kind[0] if kind else None)
    if kind is None:
        kind = "object" if "properties" in schema else "string"
    movie = movie_answer(text)
    name = path.rsplit(".", 1)[-1]
    if kind == "object":
        properties = schema.get("properties")
        if not isinstance(properties, dict):
            return {}
        return {key: schema_instance(sub, text, f"{path}.{key}") for key, sub in properties.items()}
    if kind == "array":
        low = int(schema.get("minItems", 1))
        high = int(schema.get("maxItems", max(low, 3)))
        items = schema.get("items", {"type": "string"})
        item_kind = items.get("type") if isinstance(items, dict) else None
        if name == "categories" and item_kind == "string" and "enum" not in items:
            values: list[Any] = list(movie["categories"])
        else:
            values = [schema_instance(items, text, f"{path}[{i}]") for i in range(max(low, 1))]
        while len(values) < low:
            values.append(schema_instance(items, text, f"{path}[{len(values)}]"))
        return values[: max(high, low)]
    if kind == "string":
        value = (
            movie["summary"] if name == "summary" else f"{name}-{short_hash(path, text, length=8)}"
        )
        max_length = schema.get("maxLength")
        return value[: int(max_length)] if isinstance(max_length, int) else value
    if kind in ("integer", "number"):
        low_n = schema.get("minimum", 0)
        high_n = schema.get("maximum", low_n + 100)
        span = int(high_n - low_n) + 1
        return int(low_n) + _hash_int("num", path, text) % max(span, 1)
    if kind == "boolean":
        return bool(_hash_int("bool", path, text) & 1)
    return None


def _response_format(body: dict[str, Any]) -> dict[str, Any]:
    value = body.get("response_format")
    return value if isinstance(value, dict) else {}


def _image_part(part: Any) -> tuple[Any, Any] | None:
    """(url, detail) of a chat ``image_url`` or a Responses ``input_image`` part, else None."""
    if not isinstance(part, dict):
        return None
    if part.get("type") == "image_url" and isinstance(part.get("image_url"), dict):
        return part["image_url"].get("url"), part["image_url"].get("detail")
    if part.get("type") == "input_image":
        return part.get("image_url"), part.get("detail")
    return None


def image_parts(body: Any) -> list[tuple[str, str | None]]:
    """Every image part of a chat (``messages``) or Responses (``input``) body, in order.

    Each is ``(sha256 hex of the URL's UTF-8 bytes as sent, detail as sent or None)``.
    """
    out: list[tuple[str, str | None]] = []
    if not isinstance(body, dict):
        return out
    for key in ("messages", "input"):
        items = body.get(key)
        for item in items if isinstance(items, list) else ():
            content = item.get("content") if isinstance(item, dict) else None
            for part in content if isinstance(content, list) else ():
                found = _image_part(part)
                if found is not None and isinstance(found[0], str):
                    url, detail = found
                    sha = hashlib.sha256(url.encode()).hexdigest()
                    out.append((sha, detail if isinstance(detail, str) else None))
    return out


def image_fingerprint(body: Any) -> str:
    """``images: <n>; <sha256>:<detail>, ...`` (``-`` for no detail), or ``""`` without images."""
    parts = image_parts(body)
    if not parts:
        return ""
    listed = ", ".join(f"{sha}:{detail or '-'}" for sha, detail in parts)
    return f"images: {len(parts)}; {listed}"


def chat_content(body: dict[str, Any]) -> str:
    """The assistant message of a chat completion request.

    ``response_format`` ``json_object``: the movie answer of the last user message, as JSON.
    ``json_schema``: an instance of the schema. Otherwise ``"Echo <hash>: <first words>"`` where the
    hash covers all the messages and the words are those of the last user message. With image
    parts, :func:`image_fingerprint` follows on a line of its own (text) or is the ``"images"``
    key (``json_object``).
    """
    fmt = _response_format(body)
    text = last_user_text(body.get("messages"))
    images = image_fingerprint(body)
    if fmt.get("type") == "json_object":
        answer = movie_answer(text)
        if images:
            answer["images"] = images
        return orjson.dumps(answer).decode()
    if fmt.get("type") == "json_schema":
        spec = fmt.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        return orjson.dumps(schema_instance(schema or {}, text)).decode()
    echo = f"Echo {short_hash(body.get('messages'))}: {_snippet(text)}".rstrip()
    return f"{echo}\n{images}" if images else echo


def _choice_count(body: dict[str, Any]) -> int:
    n = body.get("n")
    return n if isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= 128 else 1


def _prompt_tokens(body: dict[str, Any]) -> int:
    total = 0
    for message in body.get("messages") or []:
        if isinstance(message, dict):
            total += count_tokens(_content_text(message.get("content")))
    return total


def chat_completion(body: dict[str, Any]) -> dict[str, Any]:
    """The full ``chat.completion`` object the upstream answers for ``body`` (a valid request)."""
    content = chat_content(body)
    n = _choice_count(body)
    prompt_tokens = _prompt_tokens(body)
    completion_tokens = count_tokens(content) * n
    return {
        "id": f"chatcmpl-{body_digest(body)[:24]}",
        "object": "chat.completion",
        "created": CREATED,
        "model": body["model"],
        "choices": [
            {
                "index": i,
                "message": {
                    "role": "assistant",
                    "content": content,
                    "refusal": None,
                    "annotations": [],
                },
                "logprobs": None,
                "finish_reason": "stop",
            }
            for i in range(n)
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
        },
        "service_tier": "default",
        "system_fingerprint": SYSTEM_FINGERPRINT,
    }


_RESPONSE_TEXT_PARTS = ("input_text", "output_text")


def _chat_part(part: Any) -> Any:
    if not isinstance(part, dict):
        return part
    if part.get("type") in _RESPONSE_TEXT_PARTS:
        return {"type": "text", "text": part.get("text")}
    if part.get("type") == "input_image":
        image: dict[str, Any] = {"url": part.get("image_url")}
        if "detail" in part:
            image["detail"] = part["detail"]
        return {"type": "image_url", "image_url": image}
    return part


def _text_format(body: dict[str, Any]) -> dict[str, Any]:
    text = body.get("text")
    fmt = text.get("format") if isinstance(text, dict) else None
    return fmt if isinstance(fmt, dict) else {"type": "text"}


def responses_chat_body(body: dict[str, Any]) -> dict[str, Any]:
    """The chat completion body equivalent to a ``/v1/responses`` body (see the module doc)."""
    messages: list[Any] = []
    instructions = body.get("instructions")
    if isinstance(instructions, str):
        messages.append({"role": "system", "content": instructions})
    value = body.get("input")
    if isinstance(value, str):
        messages.append({"role": "user", "content": value})
    elif isinstance(value, list):
        for item in value:
            if not isinstance(item, dict):
                continue
            content = item.get("content")
            if isinstance(content, list):
                content = [_chat_part(part) for part in content]
            messages.append({"role": item.get("role"), "content": content})
    chat: dict[str, Any] = {"model": body.get("model"), "messages": messages}
    fmt = _text_format(body)
    if fmt.get("type") == "json_object":
        chat["response_format"] = {"type": "json_object"}
    elif fmt.get("type") == "json_schema":
        spec = {key: fmt[key] for key in ("name", "description", "schema", "strict") if key in fmt}
        chat["response_format"] = {"type": "json_schema", "json_schema": spec}
    return chat


def response_text(body: dict[str, Any]) -> str:
    """The ``output_text`` of a ``/v1/responses`` request: chat's answer to the equivalent body."""
    return chat_content(responses_chat_body(body))


def _number(value: Any, default: float) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return default


def response(body: dict[str, Any]) -> dict[str, Any]:
    """The ``response`` object the upstream answers for a (valid) ``/v1/responses`` body."""
    text = response_text(body)
    input_tokens = _prompt_tokens(responses_chat_body(body))
    output_tokens = count_tokens(text)
    return {
        "id": f"resp_{body_digest(body)[:24]}",
        "object": "response",
        "created_at": CREATED,
        "status": "completed",
        "error": None,
        "incomplete_details": None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "model": body["model"],
        "output": [
            {
                "type": "message",
                "id": f"msg_{short_hash('message', body, length=24)}",
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": text, "annotations": []}],
            }
        ],
        "parallel_tool_calls": True,
        "previous_response_id": None,
        "reasoning": {"effort": None, "summary": None},
        "service_tier": "default",
        "store": True,
        "temperature": _number(body.get("temperature"), 1.0),
        "text": {"format": _text_format(body)},
        "tool_choice": "auto",
        "tools": [],
        "top_p": _number(body.get("top_p"), 1.0),
        "truncation": "disabled",
        "usage": {
            "input_tokens": input_tokens,
            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": output_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": input_tokens + output_tokens,
        },
        "user": None,
        "metadata": body.get("metadata") if isinstance(body.get("metadata"), dict) else {},
    }


def _prompts(prompt: Any) -> list[str]:
    """``prompt`` as a list of texts (token arrays become space-separated numbers)."""
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, list) and prompt and all(isinstance(p, int) for p in prompt):
        return [" ".join(str(p) for p in prompt)]
    if isinstance(prompt, list):
        out: list[str] = []
        for item in prompt:
            if isinstance(item, list):
                out.append(" ".join(str(p) for p in item))
            else:
                out.append(str(item))
        return out
    return []


def completion(body: dict[str, Any]) -> dict[str, Any]:
    """The ``text_completion`` object for a ``/v1/completions`` request."""
    prompts = _prompts(body.get("prompt"))
    n = _choice_count(body)
    choices = []
    completion_tokens = 0
    for p_index, prompt in enumerate(prompts):
        text = f" Echo {short_hash(prompt)}: {_snippet(prompt)}".rstrip()
        for j in range(n):
            choices.append(
                {
                    "text": text,
                    "index": p_index * n + j,
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            )
            completion_tokens += count_tokens(text)
    prompt_tokens = sum(count_tokens(p) for p in prompts)
    return {
        "id": f"cmpl-{body_digest(body)[:24]}",
        "object": "text_completion",
        "created": CREATED,
        "model": body["model"],
        "choices": choices,
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
        "system_fingerprint": SYSTEM_FINGERPRINT,
    }


def embedding_vector(item: Any, dimensions: int) -> list[float]:
    """A deterministic unit vector (float32 values) for one embedding input.

    The first ``dimensions`` components of a longer vector for the same input, renormalised, as
    OpenAI's ``dimensions`` shortening does.
    """
    raw = hashlib.shake_256(b"embedding:" + canonical_json(item)).digest(4 * dimensions)
    words = array("I")
    words.frombytes(raw)
    values = [w / 2_147_483_648.0 - 1.0 for w in words]
    norm = sum(v * v for v in values) ** 0.5 or 1.0
    return array("f", [v / norm for v in values]).tolist()


def encode_base64_vector(vector: list[float]) -> str:
    """Little-endian float32 bytes, base64: OpenAI's ``encoding_format="base64"``."""
    packed = array("f", vector)
    if sys.byteorder != "little":
        packed.byteswap()
    return base64.b64encode(packed.tobytes()).decode("ascii")


def _embedding_inputs(value: Any) -> list[Any]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, int) for v in value):
        return [value]
    if isinstance(value, list):
        return list(value)
    return []


def embedding_dimensions(body: dict[str, Any]) -> int:
    dims = body.get("dimensions")
    if isinstance(dims, int) and not isinstance(dims, bool):
        return dims
    return DEFAULT_EMBEDDING_DIMENSIONS.get(str(body.get("model")), _FALLBACK_EMBEDDING_DIMENSIONS)


def embeddings(body: dict[str, Any]) -> dict[str, Any]:
    """The embeddings ``list`` object for a ``/v1/embeddings`` request."""
    dims = embedding_dimensions(body)
    base64_format = body.get("encoding_format") == "base64"
    data = []
    tokens = 0
    for index, item in enumerate(_embedding_inputs(body.get("input"))):
        vector = embedding_vector(item, dims)
        data.append(
            {
                "object": "embedding",
                "index": index,
                "embedding": encode_base64_vector(vector) if base64_format else vector,
            }
        )
        tokens += count_tokens(item) if isinstance(item, str) else len(item)
    return {
        "object": "list",
        "data": data,
        "model": body["model"],
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def _anthropic_answer(body: dict[str, Any]) -> tuple[str, bool]:
    """:func:`anthropic_text`, and whether ``max_tokens`` cut it short."""
    text = last_user_text(body.get("messages"))
    echo = f"Echo {short_hash(body.get('system'), body.get('messages'))}: {_snippet(text)}"
    words = echo.split()
    limit = body.get("max_tokens")
    if isinstance(limit, int) and not isinstance(limit, bool) and 0 < limit < len(words):
        return " ".join(words[:limit]), True
    return echo.rstrip(), False


def anthropic_text(body: dict[str, Any]) -> str:
    """The text of the answer to a ``/v1/messages`` body (see the module doc)."""
    return _anthropic_answer(body)[0]


def anthropic_message(body: dict[str, Any]) -> dict[str, Any]:
    """The Anthropic ``Message`` object the upstream answers for a (valid) ``/v1/messages``
    body."""
    text, cut = _anthropic_answer(body)
    input_tokens = count_tokens(_content_text(body.get("system"))) + _prompt_tokens(body)
    output_tokens = count_tokens(text)
    return {
        "id": f"msg_{body_digest(body)[:24]}",
        "type": "message",
        "role": "assistant",
        "model": body["model"],
        "content": [{"type": "text", "text": text}],
        "stop_reason": "max_tokens" if cut else "end_turn",
        "stop_sequence": None,
        "usage": {
            "input_tokens": input_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "output_tokens": output_tokens,
            "service_tier": "standard",
        },
    }


_PIECE = re.compile(r"\S+\s*")


def split_stream_pieces(text: str, words_per_piece: int = 3) -> list[str]:
    """How streamed content is cut into deltas: a few words (with their spaces) per chunk."""
    words = _PIECE.findall(text)
    lead = text[: len(text) - len(text.lstrip())]
    if lead and words:
        words[0] = lead + words[0]
    pieces = [
        "".join(words[i : i + words_per_piece]) for i in range(0, len(words), words_per_piece)
    ]
    return pieces or [text]
