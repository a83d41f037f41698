"""Request parsing and response shapes of the ``llamacpp`` provider (see
:mod:`batchd.providers.llamacpp`).

Pure Python, no llama.cpp: a request body becomes a :class:`Job` (what to generate and how to
sample it) or a :class:`RequestError` (an OpenAI-style 400 that becomes an error-file line); a
finished generation becomes a ``chat.completion`` or ``text_completion`` body.

Parameters, as OpenAI's API documents them:

==============================================  ================================================
``/v1/chat/completions``                        handling
==============================================  ================================================
``messages``                                    ``system``/``developer`` (as system), ``user``,
                                                ``assistant``; content a string or a list of
                                                ``text`` parts (joined with newlines)
``temperature`` (1), ``top_p`` (1), ``seed``    sampled with llama.cpp's samplers; 0 = greedy
``max_tokens`` / ``max_completion_tokens``      the option ``max_tokens`` when absent
``stop``                                        a string or a list; cut from the content
``presence_penalty``, ``frequency_penalty``     llama.cpp's penalties over the generated tokens
``logit_bias``                                  token ids of this model's vocabulary; -100 bans
``response_format``                             ``text``, ``json_object``, ``json_schema``:
                                                grammar-constrained decoding
``n``                                           1 only
``user``, ``metadata``, ``store``,              ignored
``service_tier``, ``prompt_cache_key``,
``safety_identifier``, ``parallel_tool_calls``,
``stream_options``
``top_k``, ``min_p``, ``repetition_penalty``    llama.cpp extensions (as vLLM accepts them)
``tools``, ``functions``, ``tool_choice``,      400 ``unsupported_parameter``: they would change
``logprobs``, ``stream``, ``audio``,            what the answer means
``modalities`` (other than text),
``prediction``, ``reasoning_effort``,
``web_search_options``
anything else                                   400 ``unknown_parameter``
==============================================  ================================================

``/v1/completions`` takes ``prompt`` (a string, or a list of one string) and the same sampling
parameters; ``echo``, ``suffix``, ``best_of`` > 1 and ``logprobs`` are 400s.
"""

from __future__ import annotations

import math
import secrets
import time
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from batchd.errors import ProviderError

__all__ = [
    "CHAT",
    "COMPLETIONS",
    "RESPONSES",
    "ChatTemplate",
    "Job",
    "RequestError",
    "Sampling",
    "chat_completion_body",
    "parse_request",
    "text_completion_body",
]

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
RESPONSES = "/v1/responses"  # converted to a chat request (see llamacpp_responses)

FinishReason = Literal["stop", "length"]

_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
#: Accepted and ignored: bookkeeping that does not change the answer (the Responses API's too,
#: less ``metadata`` and ``stream_options``).
IGNORED = frozenset(
    {
        "model",
        "user",
        "metadata",
        "store",
        "service_tier",
        "prompt_cache_key",
        "safety_identifier",
        "parallel_tool_calls",
        "stream_options",
    }
)
#: Accepted only when absent, null or "off" (see _unsupported): each would change the answer.
_UNSUPPORTED_CHAT = (
    "tools",
    "functions",
    "tool_choice",
    "function_call",
    "logprobs",
    "top_logprobs",
    "stream",
    "audio",
    "modalities",
    "prediction",
    "reasoning_effort",
    "web_search_options",
    "n",
)
_UNSUPPORTED_COMPLETIONS = ("echo", "suffix", "best_of", "logprobs", "stream", "n")
#: How to sample: chat's and completions' parameters (the Responses API's too).
SAMPLING = frozenset(
    {
        "temperature",
        "top_p",
        "seed",
        "stop",
        "presence_penalty",
        "frequency_penalty",
        "logit_bias",
        "top_k",
        "min_p",
        "repetition_penalty",
    }
)
_CHAT_KEYS = (
    IGNORED
    | SAMPLING
    | set(_UNSUPPORTED_CHAT)
    | {"messages", "max_tokens", "max_completion_tokens", "response_format"}
)
_COMPLETION_KEYS = IGNORED | SAMPLING | set(_UNSUPPORTED_COMPLETIONS) | {"prompt", "max_tokens"}


class RequestError(ProviderError):
    """A request batchd cannot serve as asked: an HTTP 400 in OpenAI's error shape."""

    def __init__(
        self, message: str, *, param: str | None = None, code: str | None = "invalid_value"
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": "invalid_request_error",
                "param": self.param,
                "code": self.code,
            }
        }


@dataclass(slots=True)
class Sampling:
    """How to pick each token (llama.cpp's sampler chain of one sequence)."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logit_bias: dict[int, float] = field(default_factory=dict)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def penalised(self) -> bool:
        return (
            self.presence_penalty != 0.0
            or self.frequency_penalty != 0.0
            or self.repetition_penalty != 1.0
        )


@dataclass(slots=True)
class Job:
    """One parsed request: what to generate, how to sample it, where its answer goes."""

    endpoint: str
    messages: list[dict[str, str]] | None
    """Chat: the messages as the template sees them (role and string content)."""
    prompt: str | None
    """Completions: the prompt text."""
    max_tokens: int | None
    """``None``: the provider's default."""
    stop: tuple[str, ...]
    sampling: Sampling
    json_schema: Mapping[str, Any] | bool | None = None
    """``None``: free text; ``True``: any JSON object (``json_object``); a mapping: that JSON
    schema (``json_schema``)."""


# -- parsing --------------------------------------------------------------------------------------


def parse_request(endpoint: str, body: Mapping[str, Any]) -> Job:
    """The :class:`Job` of one request body; :class:`RequestError` when it cannot be served."""
    if not isinstance(body, Mapping):
        raise RequestError("The request body must be a JSON object.", code="invalid_type")
    if endpoint == CHAT:
        return _parse_chat(body)
    if endpoint == COMPLETIONS:
        return _parse_completion(body)
    raise RequestError(
        f"This model does not serve {endpoint}; it serves {CHAT}, {COMPLETIONS} and {RESPONSES}.",
        code="unsupported_endpoint",
    )


# The checks below are shared with llamacpp_responses (the Responses API's own parameters).


def check_keys(
    value: Mapping[str, Any], known: Collection[str], where: str | None = None, hint: str = ""
) -> None:
    """:class:`RequestError` for the first key of ``value`` not in ``known``: a request
    argument (``where`` ``None``; ``hint``: what is supported) or one of the object ``where``."""
    for key in value:
        if key in known:
            continue
        if where is not None:
            message, param = f"Unrecognized argument in '{where}': {key}.", f"{where}.{key}"
        else:
            message, param = f"Unrecognized request argument supplied: {key}", key
            message += f" ({hint})." if hint else ""
        raise RequestError(message, param=param, code="unknown_parameter")


def missing(
    param: str, what: str = "", *, code: str = "missing_required_parameter"
) -> RequestError:
    """``param`` is required (``what`` follows its name in the message)."""
    return RequestError(f"Missing required parameter: '{param}'{what}.", param=param, code=code)


def invalid_type(param: str, expected: str) -> RequestError:
    """``param`` is not ``expected`` (``"a string"``, ``"an object"``…)."""
    return RequestError(f"'{param}' must be {expected}.", param=param, code="invalid_type")


def invalid_value(param: str, value: Any, supported: str) -> RequestError:
    """``param`` is none of the values it can take (``supported`` says which)."""
    return RequestError(f"Invalid value for '{param}': {value!r}; {supported}.", param=param)


def unsupported(param: str, what: str | None = None) -> RequestError:
    return RequestError(
        f"'{param}' is not supported by this model{f': {what}' if what else ''}.",
        param=param,
        code="unsupported_parameter",
    )


def _is_off(value: Any) -> bool:
    """Absent-equivalent values of a parameter batchd does not support."""
    return value is None or value is False or value == [] or value == {} or value == "none"


def _parse_chat(body: Mapping[str, Any]) -> Job:
    check_keys(body, _CHAT_KEYS)
    for key in _UNSUPPORTED_CHAT:
        value = body.get(key)
        if key == "n":
            _check_n(value)
        elif key == "top_logprobs":
            if value not in (None, 0):
                raise unsupported(key, "log probabilities are not returned")
        elif key == "modalities":
            if value is not None and value != ["text"]:
                raise unsupported(key, "this model only answers with text")
        elif key == "tool_choice" and value == "auto" and _is_off(body.get("tools")):
            continue  # "auto" without tools: no tool can be chosen
        elif not _is_off(value):
            raise unsupported(key)
    max_tokens = _max_tokens(body, "max_completion_tokens")
    legacy = _max_tokens(body, "max_tokens")
    if max_tokens is not None and legacy is not None and max_tokens != legacy:
        raise RequestError(
            "Set either 'max_tokens' or 'max_completion_tokens', not both with different values.",
            param="max_tokens",
        )
    return Job(
        endpoint=CHAT,
        messages=_messages(body.get("messages")),
        prompt=None,
        max_tokens=max_tokens if max_tokens is not None else legacy,
        stop=_stop(body.get("stop")),
        sampling=_sampling(body),
        json_schema=_response_format(body.get("response_format")),
    )


def _parse_completion(body: Mapping[str, Any]) -> Job:
    check_keys(body, _COMPLETION_KEYS)
    _check_n(body.get("n"))
    if body.get("echo") not in (None, False):
        raise unsupported("echo")
    if body.get("suffix") not in (None, ""):
        raise unsupported("suffix")
    if body.get("best_of") not in (None, 1):
        raise unsupported("best_of", "only best_of=1 is supported")
    if body.get("logprobs") not in (None, 0, False):
        raise unsupported("logprobs", "log probabilities are not returned")
    if body.get("stream") not in (None, False):
        raise unsupported("stream")
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        if prompt is None:
            raise missing("prompt")
        raise RequestError(
            "'prompt' must be a string (or a list of one string); token arrays and several "
            "prompts in one request are not supported by this model.",
            param="prompt",
        )
    return Job(
        endpoint=COMPLETIONS,
        messages=None,
        prompt=prompt,
        max_tokens=_max_tokens(body, "max_tokens"),
        stop=_stop(body.get("stop")),
        sampling=_sampling(body),
    )


def _check_n(value: Any) -> None:
    if value is not None and (value != 1 or isinstance(value, bool)):
        raise RequestError(
            "Only n=1 is supported by this model: send one request per answer (with different "
            "seeds, for different answers).",
            param="n",
            code="unsupported_parameter",
        )


def _number(
    body: Mapping[str, Any],
    key: str,
    default: float,
    low: float,
    high: float,
    *,
    low_open: bool = False,
) -> float:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise invalid_type(key, "a number")
    if value > high or value < low or (low_open and value == low):
        bound = f"greater than {low:g}" if low_open else f"at least {low:g}"
        raise RequestError(
            f"Invalid '{key}': {value}; it must be {bound} and at most {high:g}.", param=key
        )
    return float(value)


def _integer(body: Mapping[str, Any], key: str, low: int) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid_type(key, "an integer")
    if value < low:
        raise RequestError(
            f"Invalid '{key}': integer below minimum value. Expected a value >= {low}, but got "
            f"{value} instead.",
            param=key,
            code="integer_below_min_value",
        )
    return value


def _max_tokens(body: Mapping[str, Any], key: str) -> int | None:
    return _integer(body, key, 1)


def _sampling(body: Mapping[str, Any]) -> Sampling:
    seed = _integer(body, "seed", -(2**63))
    top_k = _integer(body, "top_k", -1)
    return Sampling(
        temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
        top_p=_number(body, "top_p", 1.0, 0.0, 1.0),
        top_k=max(0, top_k or 0),
        min_p=_number(body, "min_p", 0.0, 0.0, 1.0),
        seed=None if seed is None else seed & 0xFFFFFFFF,
        presence_penalty=_number(body, "presence_penalty", 0.0, -2.0, 2.0),
        frequency_penalty=_number(body, "frequency_penalty", 0.0, -2.0, 2.0),
        repetition_penalty=_number(body, "repetition_penalty", 1.0, 0.0, 10.0, low_open=True),
        logit_bias=_logit_bias(body.get("logit_bias")),
    )


def _logit_bias(value: Any) -> dict[int, float]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise invalid_type("logit_bias", "an object mapping token ids to biases")
    out: dict[int, float] = {}
    for key, bias in value.items():
        try:
            token = int(key)
        except (TypeError, ValueError):
            token = -1
        if token < 0:
            raise RequestError(
                f"Invalid key in 'logit_bias': {key!r} is not a token id.", param="logit_bias"
            )
        if isinstance(bias, bool) or not isinstance(bias, int | float) or not -100 <= bias <= 100:
            raise RequestError(
                f"Invalid value in 'logit_bias' for token {key}: biases are numbers from -100 "
                "to 100.",
                param="logit_bias",
            )
        # -100 bans the token (OpenAI's meaning), which a finite bias does not guarantee.
        out[token] = -math.inf if bias <= -100 else float(bias)
    return out


def _stop(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,) if value else ()
    if isinstance(value, list) and all(isinstance(s, str) for s in value):
        return tuple(dict.fromkeys(s for s in value if s))
    raise RequestError("'stop' must be a string or a list of strings.", param="stop")


def _messages(value: Any) -> list[dict[str, str]]:
    messages = objects(value, "messages", "a non-empty array of messages")
    return [_message(where, message) for where, message in messages]


def objects(
    value: Any, param: str, expected: str, sep: str = "."
) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """The items of the required non-empty array ``param`` (``expected`` says what it must be),
    each an object, with where it is (``{param}{sep}[{i}]``); checked as they are taken."""
    if value is None:
        raise missing(param)
    if not isinstance(value, list) or not value:
        raise RequestError(f"'{param}' must be {expected}.", param=param)
    return _each_object(value, param, sep)


def _each_object(items: list[Any], where: str, sep: str) -> Iterator[tuple[str, Mapping[str, Any]]]:
    for i, item in enumerate(items):
        item_where = f"{where}{sep}[{i}]"
        if not isinstance(item, Mapping):
            raise invalid_type(item_where, "an object")
        yield item_where, item


def _message(where: str, message: Mapping[str, Any]) -> dict[str, str]:
    role = message.get("role")
    if role not in _ROLES:
        if role in ("tool", "function"):
            raise RequestError(
                f"'{where}.role': '{role}' messages are not supported by this model (no tool "
                "calling).",
                param=f"{where}.role",
                code="unsupported_parameter",
            )
        raise invalid_value(
            f"{where}.role", role, "supported roles are system, developer, user and assistant"
        )
    for key in ("tool_calls", "function_call", "audio"):
        if not _is_off(message.get(key)):
            raise unsupported(f"{where}.{key}")
    content = message.get("content")
    if content is None and role == "assistant":
        return {"role": "assistant", "content": ""}
    return {"role": _ROLES[role], "content": text_content(content, f"{where}.content")}


def text_content(
    content: Any,
    where: str,
    kinds: Sequence[str] = ("text",),
    *,
    sep: str = ".",
    media: Collection[str] = (),
) -> str:
    """The text of a message's ``content`` at ``where``: a string, or a list of parts of the
    ``kinds`` (joined with newlines; part ``j`` is ``{where}{sep}[{j}]``, and a part of a type
    in ``media`` is an ``unsupported_parameter``)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise invalid_type(where, f"a string or an array of {kinds[0]} parts")
    texts = []
    for part_where, part in _each_object(content, where, sep):
        kind = part.get("type")
        if kind not in kinds:
            reads = " or ".join(f"'{k}'" for k in kinds)
            raise RequestError(
                f"Invalid content part type {kind!r} in '{part_where}': this model reads text "
                f"only ({reads} parts).",
                param=f"{part_where}.type",
                code="unsupported_parameter" if kind in media else "invalid_value",
            )
        text = part.get("text")
        if not isinstance(text, str):
            raise invalid_type(f"{part_where}.text", "a string")
        texts.append(text)
    return "\n".join(texts)


def format_kind(value: Any, param: str) -> str:
    """The ``type`` of the response format object ``param`` (chat's ``response_format``, the
    Responses API's ``text.format``): ``text``, ``json_object`` or ``json_schema``."""
    if not isinstance(value, Mapping):
        raise invalid_type(param, "an object")
    kind = value.get("type")
    if kind not in ("text", "json_object", "json_schema"):
        raise invalid_value(
            f"{param}.type", kind, "supported: 'text', 'json_object', 'json_schema'"
        )
    return str(kind)


def json_schema_spec(
    spec: Mapping[str, Any], param: str, *, schema_required: bool = False
) -> tuple[str, Mapping[str, Any] | None]:
    """The ``name`` and ``schema`` of the JSON schema format ``param`` (``None``: no schema,
    any JSON object; a :class:`RequestError` instead when ``schema_required``)."""
    name = spec.get("name")
    if not isinstance(name, str) or not name:
        raise missing(f"{param}.name")
    schema = spec.get("schema")
    if isinstance(schema, Mapping):
        return name, schema
    if schema_required:
        code = "missing_required_parameter" if schema is None else "invalid_type"
        raise missing(f"{param}.schema", " (a JSON schema object)", code=code)
    if schema is not None:
        raise invalid_type(f"{param}.schema", "an object")
    return name, None


def _response_format(value: Any) -> Mapping[str, Any] | bool | None:
    if value is None:
        return None
    kind = format_kind(value, "response_format")
    if kind != "json_schema":
        return True if kind == "json_object" else None
    spec = value.get("json_schema")
    if not isinstance(spec, Mapping):
        raise missing("response_format.json_schema")
    _, schema = json_schema_spec(spec, "response_format.json_schema")
    return True if schema is None else schema


# -- responses ------------------------------------------------------------------------------------


def _usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def chat_completion_body(
    model: str,
    content: str,
    finish_reason: FinishReason,
    prompt_tokens: int,
    completion_tokens: int,
    fingerprint: str | None = None,
    cached_tokens: int = 0,
) -> dict[str, Any]:
    """A ``chat.completion`` object, in OpenAI's shape; ``cached_tokens`` of the prompt's were
    not evaluated again (found in the KV cache)."""
    return {
        "id": "chatcmpl-" + secrets.token_hex(12),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": content,
                    "refusal": None,
                    "annotations": [],
                },
                "logprobs": None,
                "finish_reason": finish_reason,
            }
        ],
        "usage": _usage(prompt_tokens, completion_tokens, cached_tokens),
        "service_tier": "default",
        "system_fingerprint": fingerprint,
    }


def text_completion_body(
    model: str,
    text: str,
    finish_reason: FinishReason,
    prompt_tokens: int,
    completion_tokens: int,
    fingerprint: str | None = None,
) -> dict[str, Any]:
    """A ``text_completion`` object, in OpenAI's shape."""
    usage = _usage(prompt_tokens, completion_tokens, 0)
    return {
        "id": "cmpl-" + secrets.token_hex(12),
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish_reason}],
        "usage": {
            key: usage[key] for key in ("prompt_tokens", "completion_tokens", "total_tokens")
        },
        "system_fingerprint": fingerprint,
    }


def stop_position(text: str, stops: Sequence[str], start: int) -> int:
    """Where the first of ``stops`` begins in ``text`` (searching from ``start`` minus the longest
    stop, so a stop string split over tokens is found), or -1."""
    best = -1
    for stop in stops:
        found = text.find(stop, max(0, start - len(stop) + 1))
        if found != -1 and (best == -1 or found < best):
            best = found
    return best


# -- the chat template ----------------------------------------------------------------------------


class ChatTemplate:
    """A Jinja chat template (a GGUF's ``tokenizer.chat_template`` or the ``chat_template``
    option), rendered as Hugging Face's ``apply_chat_template`` and llama-cpp-python's
    ``Jinja2ChatFormatter`` do: a sandbox, ``trim_blocks``/``lstrip_blocks``, ``loopcontrols``,
    ``raise_exception``, ``strftime_now``, a ``tojson`` that keeps non-ASCII characters, and
    ``add_generation_prompt=True``.

    Building one compiles the template (:class:`ValueError` for a syntax error); rendering is
    thread-safe.
    """

    def __init__(self, source: str, bos_token: str = "", eos_token: str = "") -> None:
        import jinja2
        import jinja2.ext
        import jinja2.sandbox

        class _IgnoreGenerationTags(jinja2.ext.Extension):
            """Pass-through for Hugging Face's ``{% generation %}`` training tag."""

            tags = {"generation"}  # noqa: RUF012 (jinja2's declared interface)

            def parse(self, parser: Any) -> Any:
                parser.stream.skip(1)
                return parser.parse_statements(("name:endgeneration",), drop_needle=True)

        env = jinja2.sandbox.ImmutableSandboxedEnvironment(
            loader=jinja2.BaseLoader(),
            trim_blocks=True,
            lstrip_blocks=True,
            extensions=[_IgnoreGenerationTags, jinja2.ext.loopcontrols],
        )
        env.filters["tojson"] = _tojson
        env.globals["raise_exception"] = _raise_exception
        env.globals["strftime_now"] = _strftime_now
        try:
            self._template = env.from_string(source)
        except jinja2.TemplateError as exc:
            raise ValueError(f"the chat template is not valid Jinja: {exc}") from None
        self._errors: tuple[type[Exception], ...] = (jinja2.TemplateError, ValueError, TypeError)
        self.source = source
        self.bos_token = bos_token
        self.eos_token = eos_token

    def render(self, messages: list[dict[str, str]]) -> str:
        """The prompt text of ``messages``; :class:`RequestError` when the template rejects
        them (e.g. roles that do not alternate)."""
        try:
            return self._template.render(
                messages=messages,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
                add_generation_prompt=True,
                tools=None,
                functions=None,
            )
        except self._errors as exc:
            raise RequestError(
                f"The model's chat template rejected the messages: {exc}", param="messages"
            ) from None


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    import json

    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _raise_exception(message: str) -> None:
    raise ValueError(message)


def _strftime_now(fmt: str) -> str:
    import datetime

    return datetime.datetime.now().strftime(fmt)
