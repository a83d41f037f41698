"""The ``instant`` provider of ``bench/result_path.py``: precomputed results, returned at once.

A provider with no model and no upstream, so that a batch through ``batchd run`` or ``batchd
serve`` costs only what the batch layer itself does with each result (reading the input, the
result objects, the journal, finalization, the files). It serves two endpoints:

``/v1/embeddings``
    The request's vector is row ``index % pool`` of a seeded numpy array (``dimensions``
    float32 values per row, unit vectors, as sentence-transformers models give), turned into the
    response body as the ``sentence-transformers`` provider does today: float vectors as the
    shortest decimals of the float32 values, ``encoding_format: "base64"`` as the little-endian
    float32 bytes in base64, the rows of a group encoded at once (its ``encode_rows`` and
    ``embeddings_body``).
``/v1/chat/completions``
    A ``chat.completion`` body whose answer (``answer_tokens`` words, one token each) is one
    of ``pool`` precomputed answers; a body of its own (id) per request, the message shared.

The data come from :func:`vectors` and :func:`chat_answers`, which the benchmark's floor calls
with the same arguments, so both write the same results.

The provider runs on the event loop (no thread: nothing blocks) and counts the CPU time of its
own :meth:`InstantProvider.execute` calls (``time.thread_time``); with ``stats_path`` set it
writes them, with the wall and process-CPU time of its first call, as one JSON object to that
file when it is closed.

Registered for the subprocesses with an entry point in the ``batchd.providers`` group, from a
directory put on their ``PYTHONPATH`` (:func:`plugin_dir`): nothing is installed.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import orjson
from numpy.typing import NDArray
from pydantic import Field

from batchd.providers import (
    DispatchLimits,
    Provider,
    ProviderOptions,
    ProviderRequest,
    ProviderResult,
)
from batchd.providers.sentence_transformers import embeddings_body, encode_rows

__all__ = [
    "MODULE",
    "InstantOptions",
    "InstantProvider",
    "chat_answers",
    "chat_body",
    "embedding_tokens",
    "plugin_dir",
    "vectors",
]

EMBEDDINGS = "/v1/embeddings"
CHAT = "/v1/chat/completions"
MODULE = "batchd_bench_instant"
"""The module name of this file in the plugin directory."""
CREATED = 1_767_225_600
_TEXT = (
    "the a batch of results is written once to the journal and then copied into output file "
    "engine model answer request line token vector quick brown fox jumps over lazy dog while "
    "every core works on its own share and nothing waits for disk or network at all here"
)
_WORDS = _TEXT.split(" ")


def vectors(dimensions: int, pool: int, seed: int = 0) -> NDArray[np.float32]:
    """``pool`` unit vectors of ``dimensions`` float32 values (C order, little-endian)."""
    rng = np.random.default_rng(seed + dimensions)
    rows = rng.standard_normal((pool, dimensions), dtype=np.float32)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    return np.ascontiguousarray(rows, dtype="<f4")


def embedding_tokens(index: int) -> int:
    """The prompt tokens of request ``index`` (8 to 39)."""
    return 8 + index % 32


def chat_answers(tokens: int, pool: int, seed: int = 0) -> list[str]:
    """``pool`` answers of ``tokens`` words each (short English words: one token a word)."""
    rng = np.random.default_rng(seed + 7919)
    picks = rng.integers(0, len(_WORDS), size=(pool, tokens))
    return [" ".join(_WORDS[i] for i in row).capitalize() + "." for row in picks]


def chat_body(index: int, model: str, answer: str, tokens: int) -> dict[str, Any]:
    """The ``chat.completion`` body of request ``index`` (the fake upstream's shape)."""
    prompt = 20 + index % 16
    return {
        "id": f"chatcmpl-{index:024d}",
        "object": "chat.completion",
        "created": CREATED,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": answer,
                    "refusal": None,
                    "annotations": [],
                },
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": tokens,
            "total_tokens": prompt + tokens,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
        },
        "service_tier": "default",
        "system_fingerprint": "fp_instant",
    }


class InstantOptions(ProviderOptions):
    """Settings of an ``instant`` route."""

    serves: Literal["embeddings", "chat", "both"] = "both"
    """What :meth:`InstantProvider.start` prepares (the vectors, the answers or both)."""
    dimensions: int = Field(default=384, ge=1)
    pool: int = Field(default=8192, ge=1)
    """Distinct vectors (and answers); request ``i`` gets number ``i % pool``."""
    answer_tokens: int = Field(default=300, ge=1)
    seed: int = 0
    group_size: int = Field(default=512, ge=1)
    max_concurrency: int = Field(default=1, ge=1)
    stats_path: str = ""


class InstantProvider(Provider):
    """Embeddings and chat answers from precomputed data, at once (see the module docstring)."""

    name: ClassVar[str] = "instant"
    endpoints: ClassVar[frozenset[str]] = frozenset({EMBEDDINGS, CHAT})
    Options: ClassVar[type[ProviderOptions]] = InstantOptions

    options: InstantOptions

    def __init__(self, model: str, options: InstantOptions) -> None:
        super().__init__(model, options)
        self._vectors: NDArray[np.float32] | None = None
        self._answers: list[str] = []
        self.cpu_s = 0.0
        self.calls = 0
        self.results = 0
        self.first: tuple[float, float] | None = None  # (wall, process CPU) at the first call

    def limits(self) -> DispatchLimits:
        options = self.options
        return DispatchLimits(
            max_concurrency=options.max_concurrency,
            group_size=options.group_size,
            upstream=self.model,
        )

    async def start(self) -> None:
        options = self.options
        if options.serves != "chat":
            self._vectors = vectors(options.dimensions, options.pool, options.seed)
        if options.serves != "embeddings":
            self._answers = chat_answers(options.answer_tokens, options.pool, options.seed)

    async def close(self) -> None:
        if not self.options.stats_path:
            return
        stats = {
            "calls": self.calls,
            "results": self.results,
            "cpu_s": self.cpu_s,
            "first_wall": None if self.first is None else self.first[0],
            "first_process_cpu": None if self.first is None else self.first[1],
        }
        with open(self.options.stats_path, "wb") as fh:  # noqa: ASYNC230 - once, at close
            fh.write(orjson.dumps(stats))

    async def execute(self, group: Sequence[ProviderRequest]) -> list[ProviderResult]:
        started = time.thread_time()
        if self.first is None:
            self.first = (time.time(), time.process_time())
        # as the sentence-transformers provider does: a group's rows encoded at once
        rows: dict[bool, list[Any]] = {}
        if self._vectors is not None:
            for as_base64 in (False, True):
                picks = [
                    request.index % len(self._vectors)
                    for request in group
                    if request.endpoint == EMBEDDINGS
                    and (request.body.get("encoding_format") == "base64") == as_base64
                ]
                if picks:
                    encoded = encode_rows(self._vectors[picks], as_base64=as_base64)
                    rows[as_base64] = encoded[::-1]  # popped in request order
        results = [self._one(request, rows) for request in group]
        self.cpu_s += time.thread_time() - started
        self.calls += 1
        self.results += len(group)
        return results

    def _one(self, request: ProviderRequest, rows: dict[bool, list[Any]]) -> ProviderResult:
        if request.endpoint == EMBEDDINGS and self._vectors is not None:
            encoded = rows[request.body.get("encoding_format") == "base64"].pop()
            # the sentence-transformers provider's own body: the bench measures the real code
            body = embeddings_body(self.model, [encoded], embedding_tokens(request.index))
        elif request.endpoint == CHAT and self._answers:
            answer = self._answers[request.index % len(self._answers)]
            body = chat_body(request.index, self.model, answer, self.options.answer_tokens)
        else:
            message = f"route {self.model!r} does not serve {request.endpoint}"
            return ProviderResult.failure(
                request.index, "unsupported_endpoint", message, retryable=False
            )
        return ProviderResult.success(request.index, 200, body)


def plugin_dir(where: Path) -> Path:
    """A directory that makes this provider ``provider = "instant"`` for a process with it on
    its ``PYTHONPATH``: this file as :data:`MODULE` and a ``dist-info`` whose
    ``entry_points.txt`` names it in the ``batchd.providers`` group (nothing installed)."""
    where.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(Path(__file__), where / f"{MODULE}.py")
    info = where / f"{MODULE}-0.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {MODULE}\nVersion: 0\n")
    (info / "entry_points.txt").write_text(
        f"[batchd.providers]\ninstant = {MODULE}:InstantProvider\n"
    )
    return where
