"""The ``sentence-transformers`` provider: ``/v1/embeddings`` computed in-process.

A route such as ::

    [[models]]
    name = "all-MiniLM-L6-v2"
    provider = "sentence-transformers"
    model_path = "/models/all-MiniLM-L6-v2"   # a local directory; nothing is downloaded

serves OpenAI's embeddings API from a `sentence-transformers <https://sbert.net>`_ model, for
batches and for the synchronous ``POST /v1/embeddings``. It needs the ``local`` extra
(``pip install "batchd[local]"``); this module imports torch and sentence-transformers only
when the model is loaded, so it imports fine without them.

Options (the extra keys of the route):

======================  ===========  ==========================================================
option                  default      meaning
======================  ===========  ==========================================================
``model_path``          (required)   a local model directory (``modules.json``/``config.json``),
                                     loaded with ``local_files_only=True``
``device``              ``"cpu"``    torch device of every instance (``"cuda"``, ``"cuda:1"``…)
``batch_size``          32           inputs per forward pass
``group_size``          512          requests per :meth:`execute` call (the engine's group)
``instances``           1            model copies, each a pipeline of three threads (below)
``truncate_dimensions`` ``false``    allow ``dimensions`` below the native size (Matryoshka
                                     models): the vector is cut (and normalised again when
                                     vectors are unit vectors)
``normalize``           model's own  ``true``/``false`` forces unit vectors on/off; unset does
                                     what the model's ``modules.json`` does (its Normalize)
======================  ===========  ==========================================================

Why these defaults (all-MiniLM-L6-v2 on a 2-core CPU, ``bench/embeddings.py``): the inputs of a
whole group are sorted by token count before they are cut into batches, so a bigger group
pads less: over 5,000 IMDb overviews (10-70 tokens) batches of 32 cut from sorted groups of
512 hold 5 % padding, from groups of 256 10 % (sentence-transformers' own ``encode``, sorting
all 5,000 by characters: 17 %). 512 is also the most a group can be: the engine reads the
input 512 lines at a time. ``batch_size`` 16, 32 and 64 ran within the noise of each other
(~180 sentences/s) and 128 slower; 32 keeps a group at 16 batches. On a GPU raise
``batch_size`` (128-512): padding matters less there than the number of forward passes.

Requests are OpenAI's: ``input`` is a string, a list of strings, a list of token ids or a list
of token-id lists (at most 2048 inputs). Token ids are ids of *this model's own tokenizer*
(not OpenAI's ``cl100k_base``): they are taken as the text's tokens without special tokens,
which are added as the tokenizer adds them to a text ([CLS] … [SEP] for BERT); an id outside
the vocabulary is a 400. Every input is truncated to the model's ``max_seq_length`` tokens, as
sentence-transformers does. ``encoding_format`` is ``"float"`` (default) or ``"base64"`` (the
little-endian float32 bytes, as OpenAI sends them; the OpenAI SDKs ask for it by default).
``dimensions`` may always name the native size; a smaller one needs ``truncate_dimensions``.
``user`` and ``model`` are ignored (the engine matched ``model`` to this route); any other key
is a 400, as on OpenAI. ``usage.prompt_tokens`` counts the tokens the model saw: special
tokens included, after truncation. Float vectors carry the shortest decimals that give back
the same float32 values (what OpenAI sends, and about 40 % less JSON than float64 digits).

A bad request is a result, never an exception: a 400 with OpenAI's ``invalid_request_error``
body (the ``param`` names the culprit), written to the batch's error file. :meth:`execute`
raises only when the model cannot be used at all (it failed to load: the error says why).

Execution: each instance is a pipeline of three stages, each a thread of its own (a one-worker
executor) that holds one group at a time, so up to three groups per instance are in flight (the
engine's ``max_concurrency``): *prepare* parses the requests and tokenizes every text of the
group in one tokenizer call (the group padded to its longest; the first group loads the model,
once: a failed load is tried again after :data:`_RELOAD_AFTER` seconds at the earliest), sorts
the inputs by token count and cuts them into ``batch_size`` batches, each trimmed to its own
longest (the same features as tokenizing the batch alone); *encode* runs the forward passes;
*write* encodes the vectors as JSON or base64 and builds the answers, in request order. So a
group is tokenized while the one before it is on the model and the one before that is being
written: on a GPU the tokenizer (which releases the GIL) and the JSON no longer leave the
device idle. Nothing blocking runs on the event loop. A group cancelled in a stage finishes
that stage in its thread (torch cannot be interrupted). On CPU the instances share torch's
threads, so a second instance rarely helps there; on a GPU it adds a second pipeline.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from pydantic import Field

from batchd.errors import ConfigError
from batchd.providers.base import (
    DispatchLimits,
    Provider,
    ProviderOptions,
    ProviderRequest,
    ProviderResult,
)
from batchd.providers.vectors import base64_rows, float_rows

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

__all__ = [
    "SentenceTransformersOptions",
    "SentenceTransformersProvider",
    "embeddings_body",
    "encode_rows",
]

logger = logging.getLogger(__name__)
_T = TypeVar("_T")

ENDPOINT = "/v1/embeddings"
MAX_INPUTS = 2048  # inputs per request, as OpenAI allows
_BODY_KEYS = frozenset({"model", "input", "encoding_format", "dimensions", "user"})
_MODEL_FILES = ("modules.json", "config.json", "config_sentence_transformers.json")
_RELOAD_AFTER = 30.0  # seconds before a failed model load is tried again
_INSTALL_HINT = 'pip install "batchd[local]"'
# One model loads at a time: the first load imports torch and transformers, which two threads
# had better not do at once.
_LOAD_LOCK = threading.Lock()


class SentenceTransformersOptions(ProviderOptions):
    """Settings of a ``sentence-transformers`` route (see the module docstring)."""

    model_path: str = Field(min_length=1)
    device: str = Field(default="cpu", min_length=1)
    batch_size: int = Field(default=32, ge=1)
    group_size: int = Field(default=512, ge=1)
    instances: int = Field(default=1, ge=1)
    truncate_dimensions: bool = False
    normalize: bool | None = None


class _Invalid(Exception):
    """A request parameter that is not acceptable: becomes a 400 result."""

    def __init__(self, message: str, param: str | None, code: str) -> None:
        super().__init__(message)
        self.message, self.param, self.code = message, param, code


def _bad_input(message: str, code: str = "invalid_value") -> _Invalid:
    return _Invalid(message, "input", code)


def _invalid_result(index: int, error: _Invalid) -> ProviderResult:
    kind = "invalid_request_error"
    error_body = {"message": error.message, "type": kind, "param": error.param, "code": error.code}
    body = {"error": error_body}
    return ProviderResult.failure(
        index, error.code, error.message, retryable=False, status_code=400, body=body
    )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


_STAGES = ("prepare", "encode", "write")  # an instance's pipeline, a thread each
_Batch = tuple[list[int], dict[str, Any]]  # rows of the group's inputs, their features


@dataclass(slots=True)
class _Tokens:
    """A group's inputs, tokenized: :meth:`_Model.tokenize` to :meth:`_Model.encode`."""

    size: int
    batches: list[_Batch]
    counts: list[int]  # each input's token count (special tokens included, after truncation)


@dataclass(slots=True)
class _Parsed:
    inputs: list[str] | list[list[int]]
    base64: bool
    dimensions: int | None  # None: the native size


@dataclass(slots=True)
class _Job:
    """A group on its way through an instance's pipeline."""

    group: list[ProviderRequest]
    model: _Model
    results: list[ProviderResult | None]  # a slot's result where it is known already
    parsed: list[tuple[int, _Parsed, int]]  # slot, request, its first input's row
    tokens: _Tokens | None  # None: no valid input in the group
    vectors: NDArray[np.float32] | None = None
    counts: list[int] | None = None


class _Model:
    """A loaded model and what is known of it; used by its instance's stages: :meth:`tokenize`
    in the prepare thread, :meth:`encode` in the encode thread."""

    def __init__(self, options: SentenceTransformersOptions, path: Path) -> None:
        # Nothing is downloaded at run time: the Hugging Face libraries read this when imported
        # (model_path is a local directory; local_files_only below covers an earlier import).
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import numpy
        import torch
        from sentence_transformers import SentenceTransformer

        with contextlib.suppress(Exception):  # no progress bars in a server's log
            importlib.import_module("transformers.utils.logging").disable_progress_bar()
        self.np, self.torch = numpy, torch
        model = SentenceTransformer(str(path), device=options.device, local_files_only=True)
        model.eval()
        tokenizer = getattr(model, "tokenizer", None)
        if tokenizer is None or not callable(tokenizer):
            raise RuntimeError("the model has no text tokenizer (not a text embedding model?)")
        get_dimension = getattr(model, "get_embedding_dimension", None)
        dimension = (get_dimension or model.get_sentence_embedding_dimension)()
        if dimension is None:
            raise RuntimeError("the model does not say the size of its embeddings")
        self.dimension = int(dimension)
        self.max_length = int(model.max_seq_length or tokenizer.model_max_length)
        self.vocab_size = len(tokenizer)
        self.model, self.tokenizer, self.device = model, tokenizer, model.device
        self.batch_size = options.batch_size
        self.prefix, self.suffix = _special_tokens(tokenizer)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.token_types = "token_type_ids" in tokenizer.model_input_names
        self.left_pad = getattr(tokenizer, "padding_side", "right") == "left"
        self.left_truncate = getattr(tokenizer, "truncation_side", "right") == "left"
        modules = list(model.children())
        has_normalize = bool(modules) and type(modules[-1]).__name__ == "Normalize"
        self.normalized = has_normalize if options.normalize is None else options.normalize
        # Run the modules one by one only to leave out the model's own Normalize.
        self.modules = modules[:-1] if has_normalize and options.normalize is False else None
        self.post_normalize = options.normalize is True and not has_normalize
        prompt_name = getattr(model, "default_prompt_name", None)
        self.prompt = (getattr(model, "prompts", None) or {}).get(prompt_name) or None

    def tokenize(self, inputs: Sequence[str | list[int]]) -> _Tokens:
        """``inputs`` tokenized once and cut into batches of about one length (little padding),
        longest first: what :meth:`encode` runs. Any thread; the tokenizer releases the GIL."""
        counts = [0] * len(inputs)
        texts = [item for item in inputs if isinstance(item, str)]
        rows = [i for i, item in enumerate(inputs) if isinstance(item, str)]
        arrays = [i for i, item in enumerate(inputs) if not isinstance(item, str)]
        batches = self._text_batches(rows, texts) if texts else []
        arrays.sort(key=lambda i: -len(inputs[i]))
        for start in range(0, len(arrays), self.batch_size):
            rows = arrays[start : start + self.batch_size]
            batches.append((rows, self._id_features([inputs[i] for i in rows])))
        for rows, features in batches:
            mask = features.get("attention_mask")
            if mask is None:
                lengths = [int(features["input_ids"].shape[1])] * len(rows)
            else:
                lengths = mask.sum(dim=1).tolist()
            for row, length in zip(rows, lengths, strict=True):
                counts[row] = int(length)
        return _Tokens(len(inputs), batches, counts)

    def encode(self, tokens: _Tokens) -> tuple[NDArray[np.float32], list[int]]:
        """The vectors of :meth:`tokenize`'s inputs (rows in their order) and each one's token
        count: the forward passes, in the instance's model thread."""
        out = self.np.empty((tokens.size, self.dimension), dtype=self.np.float32)
        with self.torch.inference_mode():
            for rows, features in tokens.batches:
                out[rows] = self._forward(features).float().cpu().numpy()
        return out, tokens.counts

    def _text_batches(self, rows: list[int], texts: list[str]) -> list[_Batch]:
        """The texts tokenized in one call (the whole group padded to its longest), sorted by
        token count and cut into batches, each trimmed to its own longest: the same features as
        tokenizing each batch alone, with one tokenizer call instead of one to sort and one per
        batch (on a GPU the tokenizer, not the model, is the limit). Features that are not one
        row per text or one value for all (a model with other inputs) are tokenized batch by
        batch instead, sorted by characters."""
        torch, size, count = self.torch, self.batch_size, len(texts)
        features = self._text_features(texts)
        per_row = {
            key
            for key, value in features.items()
            if isinstance(value, torch.Tensor) and value.dim() == 2 and value.shape[0] == count
        }
        shared = all(
            key in per_row or value is None or isinstance(value, str | int | float | bool)
            for key, value in features.items()
        )
        if "attention_mask" not in per_row or not shared:
            order = sorted(range(count), key=lambda j: -len(texts[j]))
            return [
                ([rows[j] for j in part], self._text_features([texts[j] for j in part]))
                for part in (order[start : start + size] for start in range(0, count, size))
            ]
        mask = features["attention_mask"]
        lengths = mask.sum(dim=1).tolist()
        order = sorted(range(count), key=lambda j: -lengths[j])
        full = int(mask.shape[1])
        batches: list[_Batch] = []
        for start in range(0, count, size):
            part = order[start : start + size]
            width = int(lengths[part[0]])  # the longest of the batch: sorted longest first
            cols = slice(full - width, full) if self.left_pad else slice(0, width)
            picked = torch.tensor(part, dtype=torch.long)
            batch = {
                key: value.index_select(0, picked)[:, cols].contiguous()
                if key in per_row
                else value
                for key, value in features.items()
            }
            batches.append(([rows[j] for j in part], batch))
        return batches

    def _text_features(self, texts: list[Any]) -> dict[str, Any]:
        preprocess = getattr(self.model, "preprocess", None)
        if preprocess is not None:
            features: dict[str, Any] = preprocess(texts, prompt=self.prompt)
            return features
        if self.prompt:  # sentence-transformers < 6
            texts = [self.prompt + text for text in texts]
        tokenized: dict[str, Any] = self.model.tokenize(texts)
        return tokenized

    def _id_features(self, arrays: list[Any]) -> dict[str, Any]:
        torch = self.torch
        room = max(1, self.max_length - len(self.prefix) - len(self.suffix))
        seqs = [
            self.prefix + (ids[-room:] if self.left_truncate else ids[:room]) + self.suffix
            for ids in arrays
        ]
        width = max(len(seq) for seq in seqs)
        input_ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for row, seq in enumerate(seqs):
            cols = slice(width - len(seq), width) if self.left_pad else slice(0, len(seq))
            input_ids[row, cols] = torch.tensor(seq, dtype=torch.long)
            mask[row, cols] = 1
        features = {"input_ids": input_ids, "attention_mask": mask}
        if self.token_types:
            features["token_type_ids"] = torch.zeros_like(input_ids)
        return features

    def _forward(self, features: dict[str, Any]) -> Any:
        torch = self.torch
        features = {
            key: value.to(self.device) if isinstance(value, torch.Tensor) else value
            for key, value in features.items()
        }
        if self.modules is None:
            features = self.model(features)
        else:
            for module in self.modules:
                features = module(features)
        embeddings = features["sentence_embedding"]
        if self.post_normalize:
            embeddings = torch.nn.functional.normalize(embeddings, p=2, dim=1)
        return embeddings


def _special_tokens(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The ids the tokenizer puts before and after a single text's own tokens."""
    full = list(tokenizer("a", add_special_tokens=True)["input_ids"])
    bare = list(tokenizer("a", add_special_tokens=False)["input_ids"])
    for start in range(len(full) - len(bare) + 1):
        if bare and full[start : start + len(bare)] == bare:
            return full[:start], full[start + len(bare) :]
    special = set(tokenizer.all_special_ids)
    head = next((i for i, t in enumerate(full) if t not in special), len(full))
    tail = next((i for i, t in enumerate(reversed(full)) if t not in special), 0)
    return full[:head], full[len(full) - tail :]


class _Instance:
    """One model copy and its pipeline: three one-worker executors, one per stage (preparing,
    the forward passes, writing the answers), so that each holds one group at a time."""

    def __init__(self, name: str, options: SentenceTransformersOptions, path: Path) -> None:
        self.name, self.options, self.path = name, options, path
        self.stages = tuple(
            ThreadPoolExecutor(1, thread_name_prefix=f"batchd-embed-{name}-{stage}")
            for stage in _STAGES
        )
        self.groups = 0  # in its pipeline
        self._model: _Model | None = None
        self._failure: tuple[float, BaseException] | None = None

    def model(self) -> _Model:
        """The loaded model (loading it on first use, in the preparing stage's thread)."""
        if self._model is not None:
            return self._model
        if self._failure is not None and time.monotonic() - self._failure[0] < _RELOAD_AFTER:
            raise self._error(self._failure[1])
        started = time.monotonic()
        try:
            with _LOAD_LOCK:
                if self._model is not None:
                    return self._model
                model = _Model(self.options, self.path)
        except Exception as exc:
            self._failure = (time.monotonic(), exc)
            raise self._error(exc) from exc
        self._model, self._failure = model, None
        seconds, dimension, length = time.monotonic() - started, model.dimension, model.max_length
        logger.info(
            "%s: loaded %s on %s in %.1fs (%d dimensions, up to %d tokens)",
            *(self.name, self.path, model.device, seconds, dimension, length),
        )
        return model

    def _error(self, exc: BaseException) -> RuntimeError:
        return RuntimeError(
            f"{self.name}: the sentence-transformers model in {self.path} failed to load "
            f"({type(exc).__name__}: {exc}); check model_path and device"
        )


class SentenceTransformersProvider(Provider):
    """Embeddings from a local sentence-transformers model, grouped and batched in-process."""

    name: ClassVar[str] = "sentence-transformers"
    endpoints: ClassVar[frozenset[str]] = frozenset({ENDPOINT})
    Options: ClassVar[type[ProviderOptions]] = SentenceTransformersOptions

    options: SentenceTransformersOptions

    def __init__(self, model: str, options: SentenceTransformersOptions) -> None:
        super().__init__(model, options)
        self._instances: list[_Instance] = []

    def limits(self) -> DispatchLimits:
        options = self.options
        return DispatchLimits(
            max_concurrency=options.instances * len(_STAGES),  # a group in each stage
            group_size=options.group_size,
            upstream=self.model,
        )

    async def start(self) -> None:
        if self._instances:
            return
        if importlib.util.find_spec("sentence_transformers") is None:
            raise ConfigError(
                f"model {self.model!r}: the sentence-transformers provider needs the "
                f"sentence-transformers package, which is not installed: {_INSTALL_HINT}"
            )
        path = await asyncio.to_thread(_model_dir, self.model, self.options.model_path)
        self._instances = [
            _Instance(f"{self.model}#{number}", self.options, path)
            for number in range(self.options.instances)
        ]

    async def close(self) -> None:
        """Stop the threads: a stage that is running finishes first (in its thread)."""
        instances, self._instances = self._instances, []
        for instance in instances:
            for stage in instance.stages:
                stage.shutdown(wait=False, cancel_futures=True)

    async def execute(self, group: Sequence[ProviderRequest]) -> list[ProviderResult]:
        if not self._instances:
            raise RuntimeError(f"{self!r} is not started")
        if not group:
            return []
        # the instance with the fewest groups in its pipeline; each stage runs one group at a
        # time, in the order they came, so a group prepares while the one before it encodes
        instance = min(self._instances, key=lambda candidate: candidate.groups)
        preparing, encoding, writing = instance.stages
        instance.groups += 1
        try:
            job = await _in(preparing, self._prepare, instance.model, list(group))
            if job.tokens is not None:
                job.vectors, job.counts = await _in(encoding, job.model.encode, job.tokens)
                job.tokens = None  # its tensors are not needed any more
            return await _in(writing, self._write, job)
        finally:
            instance.groups -= 1

    # -- in the stages' threads ------------------------------------------------------------------

    def _prepare(self, load: Callable[[], _Model], group: list[ProviderRequest]) -> _Job:
        """The group's requests parsed (a bad one is its 400 result already) and their inputs
        tokenized, all at once."""
        model = load()
        results: list[ProviderResult | None] = [None] * len(group)
        parsed: list[tuple[int, _Parsed, int]] = []  # slot, request, first input's row
        inputs: list[str | list[int]] = []
        for slot, request in enumerate(group):
            if request.endpoint != ENDPOINT:
                results[slot] = ProviderResult.failure(
                    request.index,
                    "unsupported_endpoint",
                    f"model {self.model!r} does not serve {request.endpoint}",
                    retryable=False,
                )
                continue
            try:
                item = self._parse(request.body, model)
            except _Invalid as error:
                results[slot] = _invalid_result(request.index, error)
                continue
            parsed.append((slot, item, len(inputs)))
            inputs.extend(item.inputs)
        tokens = model.tokenize(inputs) if inputs else None
        return _Job(group, model, results, parsed, tokens)

    def _write(self, job: _Job) -> list[ProviderResult]:
        """The answers of an encoded group, in request order."""
        group, model, results = job.group, job.model, job.results
        vectors, counts = job.vectors, job.counts
        if vectors is not None and counts is not None:
            # the rows of the native size encoded at once, for all requests that want them
            encoded: dict[bool, list[Any]] = {}
            for slot, item, row in job.parsed:
                end = row + len(item.inputs)
                tokens = sum(counts[row:end])
                if item.dimensions is None:
                    if item.base64 not in encoded:
                        encoded[item.base64] = encode_rows(vectors, as_base64=item.base64)
                    rows = encoded[item.base64][row:end]
                else:
                    rows = self._truncated(item, vectors[row:end], model)
                body = embeddings_body(self.model, rows, tokens)
                results[slot] = ProviderResult.success(group[slot].index, 200, body)
        done = [result for result in results if result is not None]
        assert len(done) == len(group)
        return done

    def _parse(self, body: Mapping[str, Any], model: _Model) -> _Parsed:
        if not isinstance(body, Mapping):
            raise _Invalid("The request body must be a JSON object.", None, "invalid_type")
        unknown = next((key for key in body if key not in _BODY_KEYS), None)
        if unknown is not None:
            message = f"Unrecognized request argument supplied: {unknown}"
            raise _Invalid(message, unknown, "unknown_parameter")
        inputs = _parse_input(body.get("input"), model.vocab_size)
        encoding = body.get("encoding_format")
        if encoding not in (None, "float", "base64"):
            message = f"Invalid 'encoding_format' {encoding!r}: use 'float' or 'base64'."
            raise _Invalid(message, "encoding_format", "invalid_value")
        return _Parsed(inputs, encoding == "base64", self._dimensions(body, model.dimension))

    def _dimensions(self, body: Mapping[str, Any], native: int) -> int | None:
        value = body.get("dimensions")
        if value is None or (_is_int(value) and value == native):
            return None
        if not _is_int(value):
            raise _Invalid("'dimensions' must be an integer.", "dimensions", "invalid_type")
        if not self.options.truncate_dimensions:
            message = (
                f"This model only supports dimensions={native}, its native size (a route with "
                "truncate_dimensions = true allows fewer, for Matryoshka-trained models)."
            )
        elif not 1 <= value < native:
            message = f"'dimensions' must be from 1 to {native} for this model, not {value}."
        else:
            dimensions: int = value
            return dimensions
        raise _Invalid(message, "dimensions", "invalid_value")
        return dimensions

    def _truncated(self, item: _Parsed, vectors: NDArray[np.float32], model: _Model) -> list[Any]:
        """The encoded rows of a request that asked for fewer ``dimensions``."""
        np = model.np
        vectors = vectors[:, : item.dimensions]
        if model.normalized:
            norms = np.linalg.norm(vectors, axis=1, keepdims=True)
            vectors = vectors / np.maximum(norms, np.float32(1e-12))
        vectors = np.ascontiguousarray(vectors, dtype="<f4")
        return encode_rows(vectors, as_base64=item.base64)


def encode_rows(vectors: NDArray[np.float32], *, as_base64: bool) -> list[Any]:
    """The ``embedding`` values of float32 rows: base64 of each row's little-endian bytes, or
    the shortest decimals of its values, written in this thread straight from numpy as
    :class:`orjson.Fragment`\\ s (:mod:`batchd.providers.vectors`: ``orjson.dumps`` of the body
    splices them). One call for a whole group: its fixed cost is paid once."""
    return base64_rows(vectors) if as_base64 else float_rows(vectors)


def embeddings_body(model: str, embeddings: Sequence[Any], tokens: int) -> dict[str, Any]:
    """The ``/v1/embeddings`` answer of a request's encoded rows (:func:`encode_rows`).
    ``bench/instant_provider.py`` builds its bodies with it too."""
    return {
        "object": "list",
        "data": [
            {"object": "embedding", "index": i, "embedding": embedding}
            for i, embedding in enumerate(embeddings)
        ],
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


_INPUT_TYPES = (
    "'input' must be a string, an array of strings, an array of token ids (integers) or an "
    "array of token-id arrays"
)


def _parse_input(value: Any, vocab_size: int) -> list[str] | list[list[int]]:
    if value is None:
        raise _bad_input("You must provide an 'input' parameter.", "missing_required_parameter")
    if isinstance(value, str):
        if not value:
            raise _bad_input("'input' must not be an empty string.")
        return [value]
    if not isinstance(value, list):
        raise _bad_input(f"{_INPUT_TYPES}.", "invalid_type")
    if not value:
        raise _bad_input("'input' must not be an empty array.")
    first = value[0]
    if _is_int(first):
        return [_token_ids(value, "'input'", vocab_size)]
    if len(value) > MAX_INPUTS:
        raise _bad_input(f"'input' has {len(value)} items; a request may have {MAX_INPUTS}.")
    if isinstance(first, str):
        for i, text in enumerate(value):
            if not isinstance(text, str):
                raise _bad_input(f"{_INPUT_TYPES}; input[{i}] is not a string.", "invalid_type")
            if not text:
                raise _bad_input(f"input[{i}] is an empty string.")
        texts: list[str] = value
        return texts
    if isinstance(first, list):
        arrays = []
        for i, ids in enumerate(value):
            if not isinstance(ids, list):
                raise _bad_input(f"{_INPUT_TYPES}; input[{i}] is not an array.", "invalid_type")
            arrays.append(_token_ids(ids, f"input[{i}]", vocab_size))
        return arrays
    raise _bad_input(f"{_INPUT_TYPES}.", "invalid_type")


def _token_ids(ids: list[Any], where: str, vocab_size: int) -> list[int]:
    if not ids:
        raise _bad_input(f"{where} is an empty token array.")
    for i, token in enumerate(ids):
        if not _is_int(token):
            raise _bad_input(
                f"{where} must hold token ids (integers); [{i}] does not.", "invalid_type"
            )
        if not 0 <= token < vocab_size:
            raise _bad_input(
                f"{where} holds the token id {token}, outside this model's vocabulary (0 to "
                f"{vocab_size - 1}); token arrays are ids of the model's own tokenizer."
            )
    return ids


def _model_dir(model: str, model_path: str) -> Path:
    """``model_path`` as a directory that holds a model, or a :class:`ConfigError`."""
    path = Path(model_path).expanduser()
    if not path.is_dir():
        raise ConfigError(
            f"model {model!r}: model_path {str(path)!r} is not a directory; download the "
            "model first (e.g. `hf download sentence-transformers/all-MiniLM-L6-v2 --local-dir "
            "DIR`) and set model_path to that directory"
        )
    if not any((path / name).is_file() for name in _MODEL_FILES):
        raise ConfigError(
            f"model {model!r}: model_path {str(path)!r} holds no model (none of "
            f"{', '.join(_MODEL_FILES)}); point it at a sentence-transformers model directory"
        )
    return path


async def _in(stage: ThreadPoolExecutor, function: Callable[..., _T], *args: Any) -> _T:
    """``function(*args)`` run in a stage's thread. Cancelled, the call is dropped if it has
    not started yet; one that has finishes in its thread (torch cannot be interrupted)."""
    return await asyncio.wrap_future(stage.submit(function, *args))
