"""The multi-sequence decoder of the ``llamacpp`` provider (see :mod:`batchd.providers.llamacpp`).

One :class:`Decoder` owns one llama.cpp model and one context with ``n_seq`` sequence slots. It is
thread-confined: every call, from loading to freeing, comes from the one thread of its instance.
It decodes like llama.cpp's own server does (continuous batching):

* a request admitted to a free slot becomes a :class:`Sequence` (its prompt rendered with the
  chat template and tokenized, its sampler chain built, a grammar for the JSON modes);
* each :meth:`Decoder.step` is one ``llama_decode`` of one batch holding the last sampled token
  of every generating sequence and as many prompt tokens of newly admitted ones as fit in
  ``n_batch`` (a long prompt is spread over steps); logits only where a token will be sampled;
* each sequence then samples its next token with its own sampler chain, and ends on an
  end-of-generation token, a stop string, ``max_tokens`` or a full context; its cells are removed
  from the KV cache and its slot is free for the next request.

The context has one KV stream per sequence (``kv_unified = false``): a sequence attends to its own
cells only, so its logits do not depend on what else is in the batch; greedy answers are the same
alone or in a group.

Grammar-constrained sampling (the JSON modes) uses llama.cpp's rejection trick
(``common_sampler_sample``): sample without the grammar, check the chosen token alone against
it, and only when it is rejected apply the grammar to the whole vocabulary and sample again.
Applying a grammar to 49,152 candidates costs far more than the forward pass of a small model.
"""

from __future__ import annotations

import codecs
import ctypes
import logging
import math
import re
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from batchd.errors import ProviderError
from batchd.providers.llamacpp_params import (
    COMPLETIONS,
    FinishReason,
    Job,
    RequestError,
    Sampling,
    stop_position,
)

if TYPE_CHECKING:
    from batchd.providers.llamacpp_params import ChatTemplate

__all__ = ["Decoder", "DecoderSettings", "LoadError", "ModelInfo", "Sequence", "read_model_info"]

logger = logging.getLogger("batchd.providers.llamacpp")
native_logger = logging.getLogger("batchd.providers.llamacpp.native")

_GRAMMAR_CACHE = 64  # parsed grammars kept per decoder (cloned for each sequence)
_SCHEMA_CACHE = 256  # JSON schema -> GBNF conversions kept per process
_schema_grammars: OrderedDict[str, str] = OrderedDict()
# JSON strings must not hold raw control characters (json.loads rejects them); the converter's
# "char" rule lets them through, llama.cpp's own converter does not.
_CHAR_RULE = re.compile(r'^char ::= \[\^"\\\\\]', re.MULTILINE)
_STRICT_CHAR_RULE = r'char ::= [^"\\\\\\x7F\\x00-\\x1F]'


class LoadError(ProviderError):
    """llama.cpp could not load the model or create its context."""


# -- llama.cpp logging ------------------------------------------------------------------------

_log_callback: Any = None


def quiet_llama_logs() -> None:
    """Route llama.cpp's log lines (model loading, warnings) to ``logging`` at DEBUG level."""
    global _log_callback
    if _log_callback is not None:
        return
    import llama_cpp

    def log(level: int, text: bytes | None, user_data: Any) -> None:
        if text and native_logger.isEnabledFor(logging.DEBUG):
            line = text.decode("utf-8", "replace").rstrip()
            if line:
                native_logger.debug("%s", line)

    _log_callback = llama_cpp.llama_log_callback(log)
    llama_cpp.llama_log_set(_log_callback, ctypes.c_void_p(0))
    llama_cpp.llama_backend_init()


# -- model metadata (at start) -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """What :meth:`start` needs to know about a GGUF: its vocabulary-only load."""

    chat_template: str | None
    bos_token: str
    eos_token: str
    n_vocab: int
    n_ctx_train: int


def _token_text(vocab: Any, token: int) -> str:
    import llama_cpp

    if token < 0:
        return ""
    text = llama_cpp.llama_vocab_get_text(vocab, token)
    return text.decode("utf-8", "replace") if text else ""


def read_model_info(path: str) -> ModelInfo:
    """Load ``path``'s vocabulary and metadata only (fast, no weights); :class:`LoadError` when
    llama.cpp cannot read it."""
    import llama_cpp

    quiet_llama_logs()
    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    model = llama_cpp.llama_model_load_from_file(path.encode(), params)
    if not model:
        raise LoadError(f"llama.cpp cannot load {path} (see the debug log for why)")
    try:
        vocab = llama_cpp.llama_model_get_vocab(model)
        template = llama_cpp.llama_model_chat_template(model, None)
        return ModelInfo(
            chat_template=template.decode("utf-8") if template else None,
            bos_token=_token_text(vocab, llama_cpp.llama_vocab_bos(vocab)),
            eos_token=_token_text(vocab, llama_cpp.llama_vocab_eos(vocab)),
            n_vocab=llama_cpp.llama_vocab_n_tokens(vocab),
            n_ctx_train=llama_cpp.llama_model_n_ctx_train(model),
        )
    finally:
        llama_cpp.llama_model_free(model)


def json_grammar(schema: Mapping[str, Any] | bool) -> str:
    """The GBNF grammar of a JSON mode: any JSON object (``True``) or a JSON schema.

    :class:`RequestError` for a schema the converter does not support.
    """
    import json

    from llama_cpp import llama_grammar

    if schema is True or schema is False:
        return llama_grammar.JSON_GBNF
    key = json.dumps(schema, sort_keys=True)
    cached = _schema_grammars.get(key)
    if cached is not None:
        _schema_grammars.move_to_end(key)
        return cached
    try:
        grammar = llama_grammar.json_schema_to_gbnf(key)
    except Exception as exc:  # the converter asserts, raises KeyError, ValueError…
        raise RequestError(
            f"Invalid schema for response_format: {exc or type(exc).__name__}",
            param="response_format.json_schema.schema",
        ) from None
    grammar = _CHAR_RULE.sub(_STRICT_CHAR_RULE, grammar)
    _schema_grammars[key] = grammar
    if len(_schema_grammars) > _SCHEMA_CACHE:
        _schema_grammars.popitem(last=False)
    return grammar


# -- sequences --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DecoderSettings:
    path: str
    n_ctx: int
    """Tokens per sequence (prompt + completion)."""
    n_seq: int
    n_threads: int
    n_batch: int
    default_max_tokens: int
    repack: bool


@dataclass(eq=False, slots=True)
class Sequence:
    """One request being decoded in a slot of a :class:`Decoder`."""

    job: Job
    ticket: Any
    """The caller's handle for the answer (the instance's future); the decoder never reads it."""
    prompt: list[int]
    max_new: int
    limited_by_context: bool
    chain: Any
    grammar: Any
    slot: int = -1
    n_past: int = 0
    """Tokens of this sequence in the KV cache."""
    last: int = -1
    """The last sampled token, fed at the next step."""
    out_index: int = -1
    """Where in the current batch this sequence's logits are; -1 if none."""
    generated: int = 0
    fed: list[int] = field(default_factory=list)
    """The sampled tokens fed back (in the KV cache after the prompt)."""
    cached: int = 0
    """Prompt tokens found in the slot's KV cache (left by the slot's last request)."""
    content: str = ""
    decoder: Any = field(default_factory=lambda: codecs.getincrementaldecoder("utf-8")("replace"))
    finish: FinishReason | None = None
    error: str | None = None
    """Set when decoding failed (the answer is an error, not ``content``)."""

    @property
    def prompt_tokens(self) -> int:
        return len(self.prompt)


def _common_prefix(a: list[int], b: list[int]) -> int:
    """The length of the longest common start of ``a`` and ``b``."""
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    i = 0
    while a[i] == b[i]:  # they differ before n
        i += 1
    return i


def _slot(seq: Sequence) -> int:
    return seq.slot


class Decoder:
    """A loaded model and its context with ``n_seq`` slots (use from one thread only)."""

    def __init__(self, settings: DecoderSettings, template: ChatTemplate | None) -> None:
        import llama_cpp
        import numpy as np

        quiet_llama_logs()
        self._ll = llama_cpp
        self._np = np
        self.settings = settings
        self._template = template
        self._model: Any = None
        self._ctx: Any = None
        self._grammars: OrderedDict[str, Any] = OrderedDict()
        try:
            self._load()
        except BaseException:
            self.close()
            raise

    def _load(self) -> None:
        ll, np, s = self._ll, self._np, self.settings
        params = ll.llama_model_default_params()
        params.use_extra_bufts = s.repack
        self._model = ll.llama_model_load_from_file(s.path.encode(), params)
        if not self._model:
            raise LoadError(f"llama.cpp cannot load {s.path} (see the debug log for why)")
        cparams = ll.llama_context_default_params()
        cparams.n_ctx = s.n_ctx * s.n_seq
        cparams.n_seq_max = s.n_seq
        cparams.n_batch = s.n_batch
        cparams.n_ubatch = min(s.n_batch, 512)
        cparams.n_outputs_max = max(s.n_seq, 1)
        cparams.n_threads = s.n_threads
        cparams.n_threads_batch = s.n_threads
        cparams.kv_unified = False  # one KV stream per sequence: see the module docstring
        cparams.no_perf = True
        self._ctx = ll.llama_init_from_model(self._model, cparams)
        if not self._ctx:
            raise LoadError(
                f"llama.cpp cannot create a context of {s.n_seq} x {s.n_ctx} tokens for "
                f"{s.path} (out of memory? see the debug log)"
            )
        self._mem = ll.llama_get_memory(self._ctx)
        self._vocab = ll.llama_model_get_vocab(self._model)
        self.n_vocab: int = ll.llama_vocab_n_tokens(self._vocab)
        self.n_ctx: int = min(s.n_ctx, ll.llama_n_ctx_seq(self._ctx))
        self._bos: int = ll.llama_vocab_bos(self._vocab)
        self._add_bos: bool = bool(ll.llama_vocab_get_add_bos(self._vocab))
        self._eog = [bool(ll.llama_vocab_is_eog(self._vocab, t)) for t in range(self.n_vocab)]
        self._pieces: dict[int, bytes] = {}
        self._piece_buf = ctypes.create_string_buffer(256)
        # The batch, over numpy buffers (filled with slice assignments, never llama_batch_free'd).
        n = s.n_batch
        self._tok = np.zeros(n, np.int32)
        self._pos = np.zeros(n, np.int32)
        self._n_seq_id = np.ones(n, np.int32)
        self._seq_id = np.zeros(n, np.int32)
        self._logits = np.zeros(n, np.int8)
        int_p = ctypes.POINTER(ctypes.c_int32)
        base = self._seq_id.ctypes.data
        self._seq_id_ptrs = (int_p * n)(*(ctypes.cast(base + 4 * i, int_p) for i in range(n)))
        self._batch = ll.llama_batch(
            n_tokens=0,
            token=self._tok.ctypes.data_as(int_p),
            embd=None,
            pos=self._pos.ctypes.data_as(int_p),
            n_seq_id=self._n_seq_id.ctypes.data_as(int_p),
            seq_id=ctypes.cast(self._seq_id_ptrs, ctypes.POINTER(int_p)),
            logits=self._logits.ctypes.data_as(ctypes.POINTER(ctypes.c_int8)),
        )
        # Candidates for grammar sampling: llama_token_data {id, logit, p}.
        self._cand_dtype = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])
        self._cand = np.zeros(self.n_vocab, self._cand_dtype)
        self._ids = np.arange(self.n_vocab, dtype=np.int32)
        self._cand_ptr = self._cand.ctypes.data_as(ctypes.POINTER(ll.llama_token_data))
        self._free_slots = list(range(s.n_seq - 1, -1, -1))
        # What each free slot's KV stream still holds: its last sequence's tokens (prompt and
        # fed completion). A new prompt that starts the same (a shared system prompt, the chat
        # template's preamble) reuses those cells instead of evaluating them again.
        self._slot_tokens: dict[int, list[int]] = {}
        self._prefilling: list[Sequence] = []
        self._generating: list[Sequence] = []

    # -- lifecycle ------------------------------------------------------------------------------

    def close(self) -> None:
        """Free every sampler, the context and the model (idempotent)."""
        ll = self._ll
        for seq in [*getattr(self, "_prefilling", ()), *getattr(self, "_generating", ())]:
            self._free_samplers(seq)
        self._prefilling, self._generating = [], []
        for grammar in self._grammars.values():
            ll.llama_sampler_free(grammar)
        self._grammars.clear()
        if self._ctx:
            ll.llama_free(self._ctx)
            self._ctx = None
        if self._model:
            ll.llama_model_free(self._model)
            self._model = None

    @property
    def free_slots(self) -> int:
        return len(self._free_slots)

    @property
    def live(self) -> list[Sequence]:
        return [*self._generating, *self._prefilling]

    # -- admission ------------------------------------------------------------------------------

    def tokenize(self, text: str, *, add_special: bool) -> list[int]:
        ll = self._ll
        raw = text.encode("utf-8")
        size = len(raw) + 8
        while True:
            buf = (ll.llama_token * size)()
            n = ll.llama_tokenize(self._vocab, raw, len(raw), buf, size, add_special, True)
            if n >= 0:
                return list(buf[:n])
            size = -n

    def prepare(self, job: Job, ticket: Any) -> Sequence:
        """The :class:`Sequence` of ``job`` (not admitted yet); :class:`RequestError` for a
        request this model cannot serve (too long, a bad schema or logit bias…)."""
        if job.endpoint == COMPLETIONS:
            assert job.prompt is not None
            prompt = self.tokenize(job.prompt, add_special=True)
            if not prompt and self._bos >= 0:
                prompt = [self._bos]
            param, what = "prompt", "prompt"
        else:
            if self._template is None:  # pragma: no cover - start() requires a template
                raise RequestError("This model has no chat template.", param="messages")
            assert job.messages is not None
            prompt = self.tokenize(self._template.render(job.messages), add_special=False)
            if self._add_bos and self._bos >= 0 and prompt[:1] != [self._bos]:
                prompt.insert(0, self._bos)
            param, what = "messages", "messages"
        if not prompt:
            raise RequestError(f"The {what} is empty.", param=param)
        if len(prompt) >= self.n_ctx:
            raise RequestError(
                f"This model's maximum context length is {self.n_ctx} tokens. However, your "
                f"{what} resulted in {len(prompt)} tokens. Please reduce the length of the "
                f"{what}.",
                param=param,
                code="context_length_exceeded",
            )
        for token in job.sampling.logit_bias:
            if token >= self.n_vocab:
                raise RequestError(
                    f"Invalid key in 'logit_bias': {token} is not a token id of this model "
                    f"(its vocabulary has {self.n_vocab} tokens).",
                    param="logit_bias",
                )
        room = self.n_ctx - len(prompt)
        wanted = job.max_tokens or self.settings.default_max_tokens
        grammar = None
        if job.json_schema is not None:
            grammar = self._grammar(json_grammar(job.json_schema))
        chain = self._chain(job.sampling, min(wanted, room))
        return Sequence(
            job=job,
            ticket=ticket,
            prompt=prompt,
            max_new=min(wanted, room),
            limited_by_context=room < wanted,
            chain=chain,
            grammar=grammar,
        )

    def _grammar(self, text: str) -> Any:
        """A fresh grammar sampler for ``text`` (a clone of a cached parse)."""
        ll = self._ll
        parsed = self._grammars.get(text)
        if parsed is None:
            parsed = ll.llama_sampler_init_grammar(self._vocab, text.encode(), b"root")
            if not parsed:
                raise RequestError(
                    "The response_format schema could not be compiled to a grammar.",
                    param="response_format",
                )
            self._grammars[text] = parsed
            if len(self._grammars) > _GRAMMAR_CACHE:
                ll.llama_sampler_free(self._grammars.popitem(last=False)[1])
        else:
            self._grammars.move_to_end(text)
        return ll.llama_sampler_clone(parsed)

    def _chain(self, sampling: Sampling, max_new: int) -> Any:
        ll = self._ll
        params = ll.llama_sampler_chain_default_params()
        params.no_perf = True
        chain = ll.llama_sampler_chain_init(params)
        add = ll.llama_sampler_chain_add
        if sampling.logit_bias:
            biases = (ll.llama_logit_bias * len(sampling.logit_bias))(
                *(ll.llama_logit_bias(t, b) for t, b in sampling.logit_bias.items())
            )
            add(chain, ll.llama_sampler_init_logit_bias(self.n_vocab, len(biases), biases))
        if sampling.penalised:
            add(
                chain,
                ll.llama_sampler_init_penalties(
                    self.n_vocab,
                    max_new,
                    sampling.repetition_penalty,
                    sampling.frequency_penalty,
                    sampling.presence_penalty,
                ),
            )
        if sampling.greedy:
            add(chain, ll.llama_sampler_init_greedy())
            return chain
        if sampling.top_k > 0:
            add(chain, ll.llama_sampler_init_top_k(sampling.top_k))
        if sampling.top_p < 1.0:
            add(chain, ll.llama_sampler_init_top_p(sampling.top_p, 1))
        if sampling.min_p > 0.0:
            add(chain, ll.llama_sampler_init_min_p(sampling.min_p, 1))
        add(chain, ll.llama_sampler_init_temp(sampling.temperature))
        seed = ll.LLAMA_DEFAULT_SEED if sampling.seed is None else sampling.seed
        add(chain, ll.llama_sampler_init_dist(seed))
        return chain

    def admit(self, seq: Sequence) -> None:
        """Give ``seq`` the free slot whose KV cache holds the longest start of its prompt; the
        rest of the prompt is evaluated by the next steps.

        The reused cells are bit for bit what evaluating those tokens again would give (the
        same tokens at the same positions, alone in the slot's stream, which ``seq_rm`` refills
        from the first freed cell): the answer does not depend on what ran in the slot before.
        """
        best, best_len = -1, -1
        for slot in self._free_slots:  # the longest cached prefix; the lowest slot on a tie
            common = _common_prefix(self._slot_tokens.get(slot, []), seq.prompt)
            if common > best_len or (common == best_len and slot < best):
                best, best_len = slot, common
        self._free_slots.remove(best)
        cached = self._slot_tokens.pop(best, [])
        # At least the prompt's last token is evaluated again: its logits give the first token.
        keep = min(best_len, len(seq.prompt) - 1)
        if keep < len(cached):
            self._ll.llama_memory_seq_rm(self._mem, best, keep if keep > 0 else -1, -1)
        seq.slot = best
        seq.n_past = seq.cached = keep
        self._prefilling.append(seq)

    def release(self, seq: Sequence) -> None:
        """Free ``seq``'s slot and samplers (it finished or was abandoned). Its KV cells stay,
        for a next prompt that starts the same (see :meth:`admit`); a sequence whose decode
        failed leaves none."""
        if seq in self._prefilling:
            self._prefilling.remove(seq)
        if seq in self._generating:
            self._generating.remove(seq)
        self._free_samplers(seq)
        if seq.slot >= 0:
            if seq.error is None:
                self._slot_tokens[seq.slot] = (seq.prompt + seq.fed)[: seq.n_past]
            else:
                self._ll.llama_memory_seq_rm(self._mem, seq.slot, -1, -1)
            self._free_slots.append(seq.slot)
            seq.slot = -1

    def _free_samplers(self, seq: Sequence) -> None:
        ll = self._ll
        if seq.chain:
            ll.llama_sampler_free(seq.chain)
            seq.chain = None
        if seq.grammar:
            ll.llama_sampler_free(seq.grammar)
            seq.grammar = None

    # -- decoding -------------------------------------------------------------------------------

    def step(self) -> list[Sequence]:
        """One ``llama_decode`` and one sampled token per sequence that has logits; the
        sequences that finished (released already)."""
        np = self._np
        n = 0
        ready: list[Sequence] = []  # sequences with logits in this batch
        batched: list[Sequence] = []  # sequences with tokens in this batch
        room = self.settings.n_batch - len(self._generating)  # for prompt tokens
        # In slot order: llama.cpp splits a batch over several KV streams into micro-batches of
        # consecutive sequence ids (one pass over the weights each), so an unordered batch costs
        # up to twice as much.
        for seq in sorted((*self._generating, *self._prefilling), key=_slot):
            start = seq.n_past
            if start >= len(seq.prompt):  # generating: its last sampled token
                self._tok[n] = seq.last
                seq.fed.append(seq.last)
                self._pos[n] = start
                self._seq_id[n] = seq.slot
                self._logits[n] = 1
                seq.out_index = n
                seq.n_past += 1
                n += 1
                ready.append(seq)
                batched.append(seq)
                continue
            k = min(room, len(seq.prompt) - start)
            if k <= 0:
                continue
            self._tok[n : n + k] = seq.prompt[start : start + k]
            self._pos[n : n + k] = np.arange(start, start + k, dtype=np.int32)
            self._seq_id[n : n + k] = seq.slot
            self._logits[n : n + k] = 0
            seq.n_past += k
            n += k
            room -= k
            batched.append(seq)
            if seq.n_past == len(seq.prompt):
                self._logits[n - 1] = 1
                seq.out_index = n - 1
                ready.append(seq)
        if n == 0:
            return []
        self._batch.n_tokens = n
        rc = self._ll.llama_decode(self._ctx, self._batch)
        if rc != 0:
            return self._fail(batched, rc)
        for seq in ready:
            if seq in self._prefilling:
                self._prefilling.remove(seq)
                self._generating.append(seq)
        finished = []
        for seq in ready:
            if self._advance(seq):
                finished.append(seq)
        for seq in finished:
            self.release(seq)
        return finished

    def _fail(self, batched: list[Sequence], rc: int) -> list[Sequence]:
        """``llama_decode`` failed: every sequence in the batch ends with an error (its KV
        cells are gone or inconsistent)."""
        message = (
            "llama.cpp found no room in the KV cache"
            if rc == 1
            else f"llama_decode failed with status {rc}"
        )
        logger.warning("%s; failing the %d sequences of the batch", message, len(batched))
        failed = batched
        for seq in failed:
            seq.error = message
            self.release(seq)
        return failed

    def _advance(self, seq: Sequence) -> bool:
        """Sample ``seq``'s next token from its logits; whether it finished."""
        token = self._sample(seq)
        seq.generated += 1
        if token < 0:  # the grammar allows no token: cannot go on
            seq.error = "the response_format grammar allows no continuation"
            return True
        if self._eog[token]:
            seq.finish = "stop"
            seq.content += seq.decoder.decode(b"", True)
            return True
        piece = self._piece(token)
        if piece:
            before = len(seq.content)
            seq.content += seq.decoder.decode(piece)
            if seq.job.stop:
                at = stop_position(seq.content, seq.job.stop, before)
                if at >= 0:
                    seq.content = seq.content[:at]
                    seq.finish = "stop"
                    return True
        if seq.generated >= seq.max_new:
            seq.finish = "length"
            seq.content += seq.decoder.decode(b"", True)
            return True
        seq.last = token
        return False

    def _piece(self, token: int) -> bytes:
        piece = self._pieces.get(token)
        if piece is None:
            buf = self._piece_buf
            n = self._ll.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, False)
            if n < 0:
                buf = ctypes.create_string_buffer(-n)
                n = self._ll.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, False)
            piece = self._pieces[token] = buf.raw[:n]
        return piece

    def _sample(self, seq: Sequence) -> int:
        ll = self._ll
        if seq.grammar is None:
            # The whole chain in C; it accepts the token itself (penalties' history).
            return int(ll.llama_sampler_sample(seq.chain, self._ctx, seq.out_index))
        cur = self._candidates(seq.out_index)
        ll.llama_sampler_apply(seq.chain, ctypes.byref(cur))
        token = int(cur.data[cur.selected].id)
        if not self._allowed(seq.grammar, token):
            cur = self._candidates(seq.out_index)
            ll.llama_sampler_apply(seq.grammar, ctypes.byref(cur))
            ll.llama_sampler_apply(seq.chain, ctypes.byref(cur))
            token = int(cur.data[cur.selected].id) if cur.selected >= 0 else -1
            if token < 0 or not self._allowed(seq.grammar, token):
                return -1
        if not self._eog[token]:
            # llama.cpp aborts the process on an end-of-generation token the grammar does not
            # accept; the sequence ends on it anyway, so the grammar need not see it.
            ll.llama_sampler_accept(seq.grammar, token)
        ll.llama_sampler_accept(seq.chain, token)
        return token

    def _candidates(self, out_index: int) -> Any:
        """Every token with its logit at batch position ``out_index``, as llama.cpp's
        ``llama_token_data_array`` (over a buffer reused for each call)."""
        ll, np = self._ll, self._np
        logits = np.ctypeslib.as_array(
            ll.llama_get_logits_ith(self._ctx, out_index), shape=(self.n_vocab,)
        )
        cand = self._cand
        cand["id"] = self._ids
        cand["logit"] = logits
        cand["p"] = 0.0
        return ll.llama_token_data_array(
            data=self._cand_ptr, size=self.n_vocab, selected=-1, sorted=False
        )

    def _allowed(self, grammar: Any, token: int) -> bool:
        ll = self._ll
        single = ll.llama_token_data(token, 1.0, 0.0)
        arr = ll.llama_token_data_array(
            data=ctypes.pointer(single), size=1, selected=-1, sorted=False
        )
        ll.llama_sampler_apply(grammar, ctypes.byref(arr))
        return bool(arr.data[0].logit != -math.inf)
