"""Token usage: what a response body reports, and the sum a batch reports (its ``usage``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["NO_USAGE", "Tokens", "Usage", "usage_tokens"]


def _count(value: object) -> int:
    """A token count as the upstream reported it; anything but a positive int counts 0."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return 0


def _detail(details: object, key: str) -> int:
    return _count(details.get(key)) if isinstance(details, dict) else 0


@dataclass(frozen=True, slots=True)
class Usage:
    """Token usage summed over successful requests, in the shape of the Batch ``usage``."""

    input_tokens: int = 0
    cached_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.input_tokens + other.input_tokens,
            self.cached_tokens + other.cached_tokens,
            self.output_tokens + other.output_tokens,
            self.reasoning_tokens + other.reasoning_tokens,
        )

    @classmethod
    def of_body(cls, body: object) -> Usage:
        """The usage a response body reports (see :func:`usage_tokens`)."""
        tokens = usage_tokens(body)
        return NO_USAGE if tokens is None else cls(*tokens)

    def to_json(self) -> dict[str, Any]:
        """The Batch ``usage`` object (all five keys and both nested ones)."""
        return {
            "input_tokens": self.input_tokens,
            "input_tokens_details": {"cached_tokens": self.cached_tokens},
            "output_tokens": self.output_tokens,
            "output_tokens_details": {"reasoning_tokens": self.reasoning_tokens},
            "total_tokens": self.total_tokens,
        }


NO_USAGE = Usage()

Tokens = tuple[int, int, int, int]
"""``(input, cached, output, reasoning)`` tokens, the fields of :class:`Usage` in order."""


def usage_tokens(body: object) -> Tokens | None:
    """The tokens a response body's ``usage`` reports, or ``None`` when it has none.

    Responses API (``input_tokens``/``output_tokens`` and their details) maps 1:1; Chat and
    Completions map ``prompt_tokens``→input, ``completion_tokens``→output,
    ``prompt_tokens_details.cached_tokens``, ``completion_tokens_details.reasoning_tokens``;
    embeddings report only ``prompt_tokens``, so their output is 0; an Anthropic ``Message``'s
    ``input_tokens`` leave out ``cache_read_input_tokens`` and ``cache_creation_input_tokens``,
    which count as input (the read ones as cached). A tuple, not a
    :class:`Usage`: the journal sums one per result.
    """
    usage = body.get("usage") if isinstance(body, dict) else None
    if not isinstance(usage, dict):
        return None
    if "cache_read_input_tokens" in usage or "cache_creation_input_tokens" in usage:
        # Anthropic's Message: input_tokens leaves out the tokens read from and written to
        # its prompt cache; the Batch usage counts them as input, the read ones as cached
        read = _count(usage.get("cache_read_input_tokens"))
        written = _count(usage.get("cache_creation_input_tokens"))
        return (
            _count(usage.get("input_tokens")) + read + written,
            read,
            _count(usage.get("output_tokens")),
            0,
        )
    if "input_tokens" in usage or "output_tokens" in usage:
        prefix_in, prefix_out = "input_tokens", "output_tokens"
    else:
        prefix_in, prefix_out = "prompt_tokens", "completion_tokens"
    return (
        _count(usage.get(prefix_in)),
        _detail(usage.get(prefix_in + "_details"), "cached_tokens"),
        _count(usage.get(prefix_out)),
        _detail(usage.get(prefix_out + "_details"), "reasoning_tokens"),
    )
