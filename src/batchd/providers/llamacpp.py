"""The ``llamacpp`` provider: a GGUF model run in-process with llama.cpp (llama-cpp-python's
low-level API), for ``/v1/chat/completions``, ``/v1/completions`` and ``/v1/responses`` (run as
the chat request it converts to, see :mod:`batchd.providers.llamacpp_responses`).

A route::

    [[models]]
    name = "SmolLM2-135M-Instruct"
    provider = "llamacpp"
    model_path = "/models/SmolLM2-135M-Instruct.Q4_1.gguf"
    group_size = 8

Options (``[[models]]`` keys besides ``name`` and ``provider``):

``model_path`` (required)
    The GGUF file. :meth:`LlamaCppProvider.start` checks that it exists, is a GGUF and that
    llama.cpp can read its metadata, and that it has a chat template (or ``chat_template`` is
    set): a :class:`~batchd.errors.ConfigError` otherwise, before the server accepts requests.
``n_ctx`` (2048)
    Tokens per sequence, prompt and completion together. A prompt that leaves no room for one
    completion token is a 400 ``context_length_exceeded``; generation stops with
    ``finish_reason: "length"`` when the context is full.
``group_size`` (8)
    Requests decoded together by one instance (its llama.cpp sequence slots, ``n_seq_max``), and
    the most the engine hands :meth:`~LlamaCppProvider.execute` at once.
``instances`` ("auto")
    Copies of the model, each with its own context and its own thread. The engine keeps two
    groups per instance in flight: the second waits in the instance's queue, and each slot that
    a finished sequence frees takes its next request at the next step (continuous batching), so
    the slots stay full instead of idling until the longest answer of a group ends. ``"auto"``
    (:func:`auto_instances`): one instance per CPU this process may use, at most
    :data:`AUTO_MAX_INSTANCES`, and no more copies of the GGUF file than fit in
    :data:`AUTO_WEIGHTS_BUDGET` together: a small model gets one single-threaded instance per
    core, a model of 1 GiB or more one instance with every core. On a CPU, single-threaded
    instances were faster and far steadier than one instance whose llama.cpp threads wait for
    each other at every step, and collapse when anything else takes a core (README,
    Performance). Each instance also holds a KV cache of ``n_ctx`` x ``group_size`` tokens.
``n_threads`` (the CPUs this process may use, divided by ``instances``)
    llama.cpp's threads per instance.
``chat_template`` (the GGUF's ``tokenizer.chat_template``)
    A Jinja chat template that replaces the model's.
``max_tokens`` (512)
    The completion length of a request that sets no ``max_tokens``/``max_completion_tokens``
    (always bounded by what is left of ``n_ctx``).
``repack`` ("auto")
    Let llama.cpp repack weights into its CPU-specific layouts (its "extra buffer types":
    AVX/ARM repacking, Intel AMX). ``"auto"`` turns it off where this llama.cpp build would use
    AMX but the machine cannot run it: some virtual machines report AMX without enabling it, and
    the first batch of two tokens or more then kills the process with SIGILL. The check runs
    once per model file, in a subprocess, and only on builds with AMX.

How requests run: each instance owns one :class:`~batchd.providers.llamacpp_decode.Decoder` (a
model, a context with ``group_size`` sequence slots and one KV stream per sequence) and ONE
thread (``ThreadPoolExecutor(max_workers=1)``) that makes every llama.cpp call for it: llama.cpp
called from several threads, even one at a time, ran at half speed here. The model is loaded
lazily, in that thread, by the first request. :meth:`~LlamaCppProvider.execute` parses each
request on the event loop (a bad one is a 400 result at once, see
:mod:`batchd.providers.llamacpp_params`), hands the others to the least busy instance and awaits
their answers. The instance's thread admits requests into free slots (rendering the chat
template, tokenizing, building samplers there) and decodes all of its sequences together, one
token per sequence per ``llama_decode``, until none is left; requests that arrive meanwhile (the
synchronous ``POST /v1/chat/completions`` route, another batch) join at the next step. A
request whose caller gave up (a cancelled batch) leaves its slot at the next step.

Answers are ``chat.completion``/``text_completion``/``response`` objects in OpenAI's shape;
``usage`` counts the prompt's tokens (the rendered template) and the tokens sampled, the
end-of-generation token included. A request error is a result with HTTP status 400 and OpenAI's
error body, never an exception; :meth:`execute` raises only when the model cannot be loaded at
all or on a bug.

The ``local`` extra (``pip install "batchd[local]"``) brings llama-cpp-python; this module
imports it only when a route uses it.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import hashlib
import logging
import os
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, ClassVar, Literal

from pydantic import Field, PlainValidator

from batchd.errors import ConfigError
from batchd.providers.base import (
    DispatchLimits,
    Provider,
    ProviderOptions,
    ProviderRequest,
    ProviderResult,
)
from batchd.providers.llamacpp_decode import (
    Decoder,
    DecoderSettings,
    LoadError,
    ModelInfo,
    read_model_info,
)
from batchd.providers.llamacpp_decode import Sequence as DecodedSequence
from batchd.providers.llamacpp_params import (
    CHAT,
    COMPLETIONS,
    RESPONSES,
    ChatTemplate,
    Job,
    RequestError,
    chat_completion_body,
    parse_request,
    text_completion_body,
)
from batchd.providers.llamacpp_responses import (
    ResponsesRequest,
    parse_responses,
    response_result,
)

__all__ = ["LlamaCppOptions", "LlamaCppProvider", "auto_instances"]

logger = logging.getLogger("batchd.providers.llamacpp")

_GGUF_MAGIC = b"GGUF"
_PROBE_TIMEOUT = 600.0
#: Results of the AMX probe per model file (path, size, mtime): whether repacking is safe.
_repack_checked: dict[tuple[str, int, int], bool] = {}

# Loads the model with llama.cpp's extra buffer types and decodes a batch of 8 tokens: the
# matrix products that would run on AMX. A SIGILL kills this child, not the server.
_PROBE = """
import ctypes, sys
import llama_cpp as ll
quiet = ll.llama_log_callback(lambda *a: None)
ll.llama_log_set(quiet, ctypes.c_void_p(0))
ll.llama_backend_init()
params = ll.llama_model_default_params()
params.use_extra_bufts = True
model = ll.llama_model_load_from_file(sys.argv[1].encode(), params)
if not model:
    sys.exit(3)
cparams = ll.llama_context_default_params()
cparams.n_ctx = 64
cparams.n_batch = cparams.n_ubatch = 8
cparams.n_threads = cparams.n_threads_batch = 1
ctx = ll.llama_init_from_model(model, cparams)
tokens = (ll.llama_token * 8)(*([max(ll.llama_vocab_bos(ll.llama_model_get_vocab(model)), 0)] * 8))
sys.exit(0 if ll.llama_decode(ctx, ll.llama_batch_get_one(tokens, 8)) == 0 else 4)
"""


def _instances(value: object) -> int | Literal["auto"]:
    if value == "auto":
        return "auto"
    if type(value) is int and 1 <= value <= 64:  # (not True, which is an int too)
        return value
    raise ValueError(f"got {value!r}: give 'auto' or a number of model copies from 1 to 64")


class LlamaCppOptions(ProviderOptions):
    """Settings of a ``llamacpp`` route (see the module docstring)."""

    model_path: str = Field(min_length=1)
    n_ctx: int = Field(default=2048, ge=16)
    group_size: int = Field(default=8, ge=1, le=256)
    instances: Annotated[int | Literal["auto"], PlainValidator(_instances)] = "auto"
    n_threads: int | None = Field(default=None, ge=1)
    chat_template: str | None = Field(default=None, min_length=1)
    max_tokens: int = Field(default=512, ge=1)
    repack: bool | Literal["auto"] = "auto"


#: ``instances = "auto"`` starts at most this many instances...
AUTO_MAX_INSTANCES = 8
#: ...and only as many copies of the GGUF file as fit in this many bytes together.
AUTO_WEIGHTS_BUDGET = 1 << 30


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def auto_instances(model_bytes: int, cpus: int) -> int:
    """The instances of ``instances = "auto"`` for a GGUF file of ``model_bytes``: one per CPU,
    at most :data:`AUTO_MAX_INSTANCES` and :data:`AUTO_WEIGHTS_BUDGET` // ``model_bytes``, at
    least one."""
    return max(1, min(cpus, AUTO_MAX_INSTANCES, AUTO_WEIGHTS_BUDGET // max(model_bytes, 1)))


def _failure(index: int, exc: RequestError) -> ProviderResult:
    return ProviderResult.failure(
        index,
        exc.code or "invalid_request_error",
        exc.message,
        retryable=False,
        status_code=400,
        body=exc.body(),
    )


class _Work:
    """A request handed to an instance: the parsed job and the future of its result."""

    __slots__ = ("future", "index", "job")

    def __init__(self, index: int, job: Job) -> None:
        self.index = index
        self.job = job
        self.future: concurrent.futures.Future[ProviderResult] = concurrent.futures.Future()


class _Instance:
    """One model copy: a decoder and the one thread that makes every llama.cpp call for it."""

    def __init__(self, provider: LlamaCppProvider, number: int, settings: DecoderSettings) -> None:
        self._provider = provider
        self._settings = settings
        self.template: ChatTemplate | None = None
        self.executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"llamacpp-{provider.model}-{number}"
        )
        self._lock = threading.Lock()
        self._pending: collections.deque[_Work] = collections.deque()
        self._running = False  # a _drain job is queued or running
        self._closed = False
        self.load = 0  # requests submitted and not answered yet
        self._decoder: Decoder | None = None
        self._admitting: list[_Work] = []  # taken from _pending, not in the decoder yet

    def submit(self, work: list[_Work]) -> None:
        with self._lock:
            if self._closed:
                raise RuntimeError(f"{self._provider!r} is closed")
            self._pending.extend(work)
            self.load += len(work)
            if not self._running:
                self._running = True
                self.executor.submit(self._drain)

    def close(self) -> None:
        with self._lock:
            self._closed = True

    def free(self) -> None:
        """Free the decoder (in the instance's thread, after the last _drain)."""
        decoder, self._decoder = self._decoder, None
        if decoder is not None:
            decoder.close()

    # -- the instance's thread ------------------------------------------------------------------

    def _answer(self, work: _Work, result: ProviderResult) -> None:
        with self._lock:
            self.load -= 1
        with contextlib.suppress(concurrent.futures.InvalidStateError):  # cancelled meanwhile
            work.future.set_result(result)

    def _drain(self) -> None:
        """Admit and decode until no request is left (runs in the instance's thread)."""
        try:
            self._decode_all()
        except BaseException as exc:  # a bug, or a model that cannot load: every caller learns
            with self._lock:
                self._running = False
                unanswered = [*self._admitting, *self._pending]
                if self._decoder is not None:
                    unanswered += [seq.ticket for seq in self._decoder.live]
                self._admitting, self._pending = [], collections.deque()
                pending = list({id(work): work for work in unanswered}.values())  # once each
                self.load -= len(pending)
            if self._decoder is not None and not isinstance(exc, LoadError):
                logger.exception("model %s: the decoder failed", self._provider.model)
                self.free()  # its state is unknown: the next request loads it again
            for work in pending:
                with contextlib.suppress(concurrent.futures.InvalidStateError):
                    work.future.set_exception(
                        exc if isinstance(exc, LoadError) else RuntimeError(f"decoder: {exc!r}")
                    )

    def _prepare(self, decoder: Decoder, work: _Work) -> DecodedSequence | None:
        try:
            return decoder.prepare(work.job, work)
        except RequestError as exc:
            self._answer(work, _failure(work.index, exc))
            return None

    def _decode_all(self) -> None:
        if self._decoder is None:
            self._decoder = Decoder(self._settings, self.template)
        decoder = self._decoder
        provider = self._provider
        while True:
            with self._lock:
                closed = self._closed
                admitted = self._admitting
                while self._pending and len(admitted) < decoder.free_slots and not closed:
                    admitted.append(self._pending.popleft())
                if not admitted and not decoder.live and (closed or not self._pending):
                    self._running = False
                    pending, self._pending = list(self._pending), collections.deque()
                    break
            for seq in decoder.live:  # callers that gave up (a cancelled batch)
                if seq.ticket.future.done():
                    decoder.release(seq)
                    with self._lock:
                        self.load -= 1
            while admitted:
                work = admitted[0]
                if work.future.done():  # cancelled before it started
                    with self._lock:
                        self.load -= 1
                elif (prepared := self._prepare(decoder, work)) is not None:
                    decoder.admit(prepared)
                admitted.pop(0)
            if closed:
                for seq in decoder.live:
                    decoder.release(seq)
                    self._answer(seq.ticket, provider.closed_result(seq.ticket.index))
                continue
            for seq in decoder.step():
                self._answer(seq.ticket, provider.result_of(seq))
        for work in pending:  # closed: requests that never started
            self._answer(work, provider.closed_result(work.index))


class LlamaCppProvider(Provider):
    """Runs chat and text completions on a local GGUF model (see the module docstring)."""

    name: ClassVar[str] = "llamacpp"
    endpoints: ClassVar[frozenset[str]] = frozenset({CHAT, COMPLETIONS, RESPONSES})
    Options: ClassVar[type[ProviderOptions]] = LlamaCppOptions
    streaming: ClassVar[bool] = False

    options: LlamaCppOptions

    def __init__(self, model: str, options: LlamaCppOptions) -> None:
        super().__init__(model, options)
        self._instances: list[_Instance] = []
        self.info: ModelInfo | None = None
        self._fingerprint: str | None = None
        self._instance_count: int | None = None

    def instance_count(self) -> int:
        """``instances``, or for ``"auto"`` :func:`auto_instances` of the model file's size (one
        when the file cannot be read: :meth:`start` says why)."""
        if self._instance_count is None:
            instances = self.options.instances
            if instances == "auto":
                try:
                    size = Path(self.options.model_path).expanduser().stat().st_size
                except OSError:
                    size = AUTO_WEIGHTS_BUDGET
                instances = auto_instances(size, _cpu_count())
            self._instance_count = instances
        return self._instance_count

    def limits(self) -> DispatchLimits:
        return DispatchLimits(
            max_concurrency=2 * self.instance_count(),  # see ``instances`` above
            group_size=self.options.group_size,
            upstream=self.model,
        )

    # -- lifecycle ------------------------------------------------------------------------------

    def _error(self, message: str) -> ConfigError:
        return ConfigError(f"model {self.model!r} (provider 'llamacpp'): {message}")

    def _check_file(self) -> Path:
        path = Path(self.options.model_path).expanduser()
        try:
            with path.open("rb") as fh:
                magic = fh.read(4)
        except FileNotFoundError:
            raise self._error(f"model_path {str(path)!r} does not exist") from None
        except IsADirectoryError:
            raise self._error(f"model_path {str(path)!r} is a directory, not a GGUF file") from None
        except OSError as exc:
            raise self._error(f"model_path {str(path)!r} cannot be read: {exc}") from None
        if magic != _GGUF_MAGIC:
            raise self._error(
                f"model_path {str(path)!r} is not a GGUF file (it does not start with the "
                "bytes 'GGUF'); llama.cpp needs a .gguf model"
            )
        return path

    async def start(self) -> None:
        if self._instances:
            return
        path = self._check_file()
        try:
            import llama_cpp
        except ImportError as exc:
            raise self._error(
                f'llama-cpp-python is not installed ({exc}): pip install "batchd[local]"'
            ) from None
        options = self.options
        repack = options.repack
        if repack == "auto":
            repack = await _repack_is_safe(path)
        instances = self.instance_count()
        n_threads = options.n_threads or max(1, _cpu_count() // instances)
        settings = DecoderSettings(
            path=str(path),
            n_ctx=options.n_ctx,
            n_seq=options.group_size,
            n_threads=n_threads,
            n_batch=max(512, options.group_size),
            default_max_tokens=options.max_tokens,
            repack=bool(repack),
        )
        self._instances = [_Instance(self, i, settings) for i in range(instances)]
        try:
            # The metadata is read in the first instance's thread, as every llama.cpp call is.
            first = self._instances[0].executor
            try:
                info = await asyncio.wrap_future(first.submit(read_model_info, str(path)))
            except LoadError as exc:
                raise self._error(str(exc)) from None
            template = self._template(info)
        except BaseException:
            await self.close()
            raise
        for instance in self._instances:
            instance.template = template
        self.info = info
        stat = path.stat()
        digest = hashlib.sha256(
            f"{llama_cpp.__version__}|{path.name}|{stat.st_size}|{options.n_ctx}".encode()
        )
        self._fingerprint = "fp_" + digest.hexdigest()[:10]
        if options.n_ctx > info.n_ctx_train > 0:
            logger.warning(
                "model %s: n_ctx %d is more than the %d tokens %s was trained on",
                self.model,
                options.n_ctx,
                info.n_ctx_train,
                path.name,
            )
        logger.info(
            "model %s: %s, %d instance(s) x %d sequences of %d tokens, %d threads each%s",
            self.model,
            path.name,
            instances,
            options.group_size,
            options.n_ctx,
            n_threads,
            "" if repack else ", no weight repacking",
        )

    def _template(self, info: ModelInfo) -> ChatTemplate:
        source = self.options.chat_template or info.chat_template
        if source is None:
            raise self._error(
                f"{self.options.model_path!r} has no chat template (no tokenizer.chat_template "
                "in its metadata): set the chat_template option to a Jinja chat template"
            )
        try:
            return ChatTemplate(source, info.bos_token, info.eos_token)
        except ValueError as exc:
            which = "the chat_template option" if self.options.chat_template else "the GGUF's"
            raise self._error(f"{which} chat template: {exc}") from None

    async def close(self) -> None:
        instances, self._instances = self._instances, []
        for instance in instances:
            instance.close()
        for instance in instances:
            # Queued after the last _drain: it frees the model in the thread that loaded it.
            await asyncio.wrap_future(instance.executor.submit(instance.free))
            instance.executor.shutdown(wait=False)

    # -- requests -------------------------------------------------------------------------------

    async def execute(self, group: Sequence[ProviderRequest]) -> list[ProviderResult]:
        if not self._instances:
            raise RuntimeError(f"{self!r} is not started")
        results: list[ProviderResult | None] = [None] * len(group)
        work: list[tuple[int, _Work]] = []
        responses: dict[int, ResponsesRequest] = {}  # position -> its Responses request
        for position, request in enumerate(group):
            try:
                if request.endpoint == RESPONSES:  # run as a chat request
                    job, responses[position] = parse_responses(request.body)
                else:
                    job = parse_request(request.endpoint, request.body)
            except RequestError as exc:
                results[position] = _failure(request.index, exc)
            else:
                work.append((position, _Work(request.index, job)))
        if work:
            instance = min(self._instances, key=lambda i: i.load)
            instance.submit([w for _, w in work])
            futures = [asyncio.wrap_future(w.future) for _, w in work]
            answers = await asyncio.gather(*futures, return_exceptions=True)
            for (position, _), answer in zip(work, answers, strict=True):
                if isinstance(answer, LoadError):
                    raise RuntimeError(f"model {self.model!r}: {answer}") from None
                if isinstance(answer, BaseException):
                    raise answer
                converted = responses.get(position)
                results[position] = (
                    answer if converted is None else response_result(answer, converted)
                )
        assert all(r is not None for r in results)
        return [r for r in results if r is not None]

    def result_of(self, seq: DecodedSequence) -> ProviderResult:
        """The result of a finished sequence (called in an instance's thread)."""
        index = seq.ticket.index
        if seq.error is not None:
            return ProviderResult.failure(
                index,
                "server_error",
                f"model {self.model!r}: {seq.error}",
                retryable=True,
                status_code=500,
                body={
                    "error": {
                        "message": f"The model failed to answer: {seq.error}.",
                        "type": "server_error",
                        "param": None,
                        "code": None,
                    }
                },
            )
        assert seq.finish is not None
        if seq.job.endpoint == CHAT:
            body = chat_completion_body(
                self.model,
                seq.content,
                seq.finish,
                seq.prompt_tokens,
                seq.generated,
                self._fingerprint,
                cached_tokens=seq.cached,
            )
        else:
            body = text_completion_body(
                self.model,
                seq.content,
                seq.finish,
                seq.prompt_tokens,
                seq.generated,
                self._fingerprint,
            )
        return ProviderResult.success(index, 200, body)

    def closed_result(self, index: int) -> ProviderResult:
        return ProviderResult.failure(
            index,
            "provider_closed",
            f"model {self.model!r} was shut down before the request finished",
            retryable=True,
        )


def _file_key(path: Path) -> tuple[str, int, int]:
    stat = path.stat()
    return (str(path.resolve()), stat.st_size, int(stat.st_mtime))


async def _repack_is_safe(path: Path) -> bool:
    """Whether llama.cpp's weight repacking can run here (see the ``repack`` option)."""
    import llama_cpp

    if b"AMX_INT8 = 1" not in llama_cpp.llama_print_system_info():
        return True
    key = _file_key(path)
    known = _repack_checked.get(key)
    if known is not None:
        return known
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _PROBE,
        str(path),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        code = await asyncio.wait_for(proc.wait(), _PROBE_TIMEOUT)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        code = None
    safe = code == 0
    if not safe:
        logger.warning(
            "llama.cpp's AMX kernels failed on this machine (probe exit status %s): loading %s "
            "without weight repacking (set repack = true or false to skip this check)",
            code,
            path.name,
        )
    _repack_checked[key] = safe
    return safe
