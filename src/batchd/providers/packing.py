"""Packed embeddings: the inputs of several batch lines sent as one upstream request.

An ``openai`` route with ``pack_inputs`` above 1 (default 64) takes embeddings batches in groups
of ``pack_inputs`` lines (:meth:`~batchd.providers.openai_http.OpenAIProvider.group_size`) and
:func:`plan` packs them: lines whose bodies are the same but for ``input`` (model,
``encoding_format``, ``dimensions``, ``user``) go together, in line order, as long as the pack
holds at most ``pack_inputs`` inputs and about ``pack_tokens`` tokens (UTF-8 bytes / 4 of the
texts, or the token arrays' lengths). One upstream request answers the pack; :func:`split` gives
each line its own answer: its vectors (``index`` from 0 again), the answer's ``model``, and its
share of the answer's ``usage`` (the upstream counts the pack's tokens only: each line gets a
part in proportion to its estimated tokens, the parts adding up to the pack's count).

A line that cannot be packed (a pack of one, more inputs than ``pack_inputs``, an ``input`` that
is not a string, token array or list of them) is sent as it is. A packed request that fails with
a retryable error (429, 5xx, a timeout) fails each of its lines the same way, and the engine
retries them one by one; any other failure (a 400 for one bad input, an answer that does not
hold one vector per input) sends every line of the pack alone, so one bad input fails only its
own line.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from batchd.providers.base import ProviderRequest, ProviderResult

__all__ = ["EMBEDDINGS", "Pack", "plan", "send_packed", "split"]

EMBEDDINGS = "/v1/embeddings"
_MAX_INPUTS = 2048  # what OpenAI takes in one embeddings request

Send = Callable[[ProviderRequest], Awaitable[ProviderResult]]


@dataclass(slots=True)
class Pack:
    """Lines of a group (their positions) sent as one request with ``body``."""

    slots: list[int]
    sizes: list[int]  # inputs of each line
    weights: list[int]  # estimated tokens of each line
    body: dict[str, Any]


def _inputs(value: Any) -> list[Any] | None:
    """A line's ``input`` as a list of inputs, or ``None`` when it is not one OpenAI takes."""
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not value:
        return None
    if all(isinstance(item, str) for item in value):
        return value
    if all(isinstance(item, int) and not isinstance(item, bool) for item in value):
        return [value]  # one token array
    if all(isinstance(item, list) and item for item in value):
        return value
    return None


def _tokens(item: Any) -> int:
    return len(item.encode()) // 4 + 1 if isinstance(item, str) else len(item)


def plan(
    group: Sequence[ProviderRequest], max_inputs: int, max_tokens: int
) -> tuple[list[Pack], list[int]]:
    """The packs of ``group`` (two lines or more each) and the positions of the lines sent
    alone."""
    max_inputs = min(max_inputs, _MAX_INPUTS)
    open_packs: dict[bytes, Pack] = {}  # the pack that lines with this body join
    packs: list[Pack] = []
    alone: list[int] = []
    for slot, request in enumerate(group):
        body = request.body
        inputs = _inputs(body.get("input")) if isinstance(body, Mapping) else None
        if inputs is None or len(inputs) > max_inputs:
            alone.append(slot)
            continue
        rest = {key: value for key, value in body.items() if key != "input"}
        key = orjson.dumps(rest, option=orjson.OPT_SORT_KEYS)
        weight = sum(map(_tokens, inputs))
        pack = open_packs.get(key)
        if (
            pack is not None
            and sum(pack.sizes) + len(inputs) <= max_inputs
            and sum(pack.weights) + weight <= max_tokens
        ):
            pack.slots.append(slot)
            pack.sizes.append(len(inputs))
            pack.weights.append(weight)
            pack.body["input"].extend(inputs)
            continue
        pack = open_packs[key] = Pack([slot], [len(inputs)], [weight], {**rest, "input": inputs[:]})
        packs.append(pack)
    for pack in [pack for pack in packs if len(pack.slots) == 1]:
        alone.append(pack.slots[0])
        packs.remove(pack)
    alone.sort()
    return packs, alone


def _shares(total: int, weights: Sequence[int]) -> list[int]:
    """``total`` cut in parts proportional to ``weights`` (largest remainders), adding up."""
    whole = sum(weights)  # every line weighs 1 or more
    exact = [total * weight / whole for weight in weights]
    parts = [int(value) for value in exact]
    for i in sorted(range(len(exact)), key=lambda i: parts[i] - exact[i])[: total - sum(parts)]:
        parts[i] += 1
    return parts


def split(pack: Pack, body: Any) -> list[dict[str, Any]] | None:
    """Each line's answer from the pack's answer, or ``None`` when it is not one vector per
    input with a usage."""
    if not isinstance(body, dict):
        return None
    data, usage = body.get("data"), body.get("usage")
    total = sum(pack.sizes)
    if not isinstance(data, list) or len(data) != total or not isinstance(usage, dict):
        return None
    if not all(isinstance(item, dict) for item in data):
        return None
    indexes = [item.get("index") for item in data]
    if sorted(i for i in indexes if isinstance(i, int)) != list(range(total)):
        return None
    data = sorted(data, key=lambda item: item["index"])
    prompt = usage.get("prompt_tokens")
    if not isinstance(prompt, int):
        return None
    answers: list[dict[str, Any]] = []
    start = 0
    for size, tokens in zip(pack.sizes, _shares(prompt, pack.weights), strict=True):
        items = [{**item, "index": i} for i, item in enumerate(data[start : start + size])]
        start += size
        answer = {key: value for key, value in body.items() if key not in ("data", "usage")}
        answers.append(
            {
                "object": answer.pop("object", "list"),
                "data": items,
                **answer,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )
    return answers


async def send_packed(
    group: Sequence[ProviderRequest], send: Send, max_inputs: int, max_tokens: int
) -> list[ProviderResult]:
    """The results of an embeddings group, its lines packed (see the module docstring)."""
    packs, alone = plan(group, max_inputs, max_tokens)
    results: list[ProviderResult | None] = [None] * len(group)

    async def one(slot: int) -> None:
        results[slot] = await send(group[slot])

    async def packed(pack: Pack) -> None:
        first = group[pack.slots[0]]
        answer = await send(dataclasses.replace(first, body=pack.body))
        if answer.ok:
            bodies = split(pack, answer.body)
            if bodies is not None:
                for slot, body in zip(pack.slots, bodies, strict=True):
                    results[slot] = ProviderResult.success(
                        group[slot].index, answer.status_code or 200, body, answer.request_id
                    )
                return
        elif answer.retryable:
            for slot in pack.slots:
                results[slot] = dataclasses.replace(answer, index=group[slot].index)
            return
        await asyncio.gather(*(one(slot) for slot in pack.slots))

    await asyncio.gather(*(packed(pack) for pack in packs), *(one(slot) for slot in alone))
    done = [result for result in results if result is not None]
    assert len(done) == len(group)
    return done
