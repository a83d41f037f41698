"""Fault configuration and the deterministic fault decision of the fake upstream.

A request's fault is a pure function of ``(config, body digest, attempt number of that body,
marker strings in the body)``, so a test can predict it with :func:`decide` in-process.

Precedence, first match wins:

1. a marker in the request text (``messages``/``prompt``/``input``): ``FAULT:<kind>`` faults every
   attempt, ``FAULT:<kind>x<N>`` only attempts 1..N (later attempts fall through to 2. and 3.);
2. ``fail_first_n``: attempts 1..N of every body get ``fail_first_kind``;
3. the probabilities: one uniform draw ``u`` in [0, 1) from sha256(seed, digest, attempt) is
   compared with the cumulative ``p_500``, ``p_429``, ``p_hang``, ``p_reset``, ``p_malformed``
   (in that order).
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "FAULT_KINDS",
    "PROBABILITIES",
    "Decision",
    "FaultConfig",
    "decide",
    "find_marker",
    "uniform",
]

#: Every fault kind; ``"400"`` only through a marker or ``fail_first_kind``.
FAULT_KINDS: tuple[str, ...] = ("500", "429", "hang", "reset", "malformed", "400")
#: Probability field → fault kind, in the order of the cumulative draw.
PROBABILITIES: tuple[tuple[str, str], ...] = (
    ("p_500", "500"),
    ("p_429", "429"),
    ("p_hang", "hang"),
    ("p_reset", "reset"),
    ("p_malformed", "malformed"),
)
_MARKER = re.compile(r"FAULT:(500|429|hang|reset|malformed|400)(?:x(\d+))?(?!\w)")


@dataclass(frozen=True)
class FaultConfig:
    """What the upstream does to requests; every field is a CLI flag and a ``/_control`` key."""

    latency_ms: float = 0.0
    """Fixed delay before every answer (and before a fault)."""
    jitter_ms: float = 0.0
    """Extra delay, uniform in [0, jitter_ms), deterministic per (seed, digest, attempt)."""
    p_500: float = 0.0
    p_429: float = 0.0
    p_hang: float = 0.0
    p_reset: float = 0.0
    p_malformed: float = 0.0
    retry_after: float = 1.0
    """Seconds sent in ``Retry-After`` (and as ``retry-after-ms``) with a 429."""
    hang_s: float = 3600.0
    """How long a hung request sleeps before its connection is reset."""
    fail_first_n: int = 0
    """Attempts 1..N of every body fail with ``fail_first_kind``."""
    fail_first_kind: str = "500"
    seed: int = 0
    markers: bool = True
    """Honour ``FAULT:<kind>`` markers in request text."""
    api_key: str | None = None
    """When set, requests without ``Authorization: Bearer <api_key>`` get a 401."""
    capacity: int = 0
    """A hidden capacity: a request that finds this many in flight already gets a 429 at once,
    with no ``Retry-After`` (0: no limit)."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def updated(self, changes: Mapping[str, Any]) -> FaultConfig:
        """A validated copy with ``changes`` applied; ``ValueError`` names the offending key."""
        fields = {f.name: f for f in dataclasses.fields(self)}
        values = self.to_dict()
        for key, value in changes.items():
            if key not in fields:
                raise ValueError(f"unknown setting {key!r}; known: {', '.join(sorted(fields))}")
            values[key] = _coerce(key, fields[key].type, value)
        config = FaultConfig(**values)
        config.validate()
        return config

    def validate(self) -> None:
        for name, _ in PROBABILITIES:
            p = getattr(self, name)
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be within [0, 1], got {p}")
        total = sum(getattr(self, name) for name, _ in PROBABILITIES)
        if total > 1.0 + 1e-9:
            raise ValueError(f"the fault probabilities add up to {total}, more than 1")
        for name in ("latency_ms", "jitter_ms", "retry_after", "hang_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if self.capacity < 0:
            raise ValueError("capacity must not be negative")
        if self.fail_first_n < 0:
            raise ValueError("fail_first_n must not be negative")
        if self.fail_first_kind not in FAULT_KINDS:
            raise ValueError(f"fail_first_kind must be one of {', '.join(FAULT_KINDS)}")


def _coerce(key: str, annotation: Any, value: Any) -> Any:
    kind = str(annotation)
    if kind == "bool":
        if isinstance(value, bool):
            return value
        raise ValueError(f"{key} must be a boolean")
    if kind == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ValueError(f"{key} must be an integer")
    if kind == "float":
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise ValueError(f"{key} must be a number")
    if kind == "str":
        if isinstance(value, str):
            return value
        raise ValueError(f"{key} must be a string")
    if value is None or isinstance(value, str):  # str | None
        return value
    raise ValueError(f"{key} must be a string or null")


@dataclass(frozen=True)
class Decision:
    fault: str | None
    """One of :data:`FAULT_KINDS`, or None for a normal answer."""
    reason: str
    """``"marker"``, ``"fail_first_n"``, ``"random"`` or ``"none"``."""
    latency_s: float


def uniform(seed: int, digest: str, attempt: int, salt: str = "fault") -> float:
    """A deterministic draw in [0, 1) for one attempt of one body."""
    data = f"{salt}:{seed}:{digest}:{attempt}".encode()
    return int.from_bytes(hashlib.sha256(data).digest()[:8], "big") / 2.0**64


def find_marker(texts: Iterable[str]) -> tuple[str, int | None] | None:
    """The first ``FAULT:<kind>[x<N>]`` marker: ``(kind, N or None)``."""
    for text in texts:
        if "FAULT:" not in text:
            continue
        match = _MARKER.search(text)
        if match:
            return match.group(1), int(match.group(2)) if match.group(2) else None
    return None


def decide(config: FaultConfig, digest: str, attempt: int, texts: Iterable[str] = ()) -> Decision:
    """The fault for attempt ``attempt`` (1-based) of the body with ``digest``."""
    latency = config.latency_ms
    if config.jitter_ms:
        latency += config.jitter_ms * uniform(config.seed, digest, attempt, "jitter")
    latency_s = latency / 1000.0
    if config.markers:
        marker = find_marker(texts)
        if marker is not None:
            kind, limit = marker
            if limit is None or attempt <= limit:
                return Decision(kind, "marker", latency_s)
    if attempt <= config.fail_first_n:
        return Decision(config.fail_first_kind, "fail_first_n", latency_s)
    u = uniform(config.seed, digest, attempt)
    edge = 0.0
    for name, kind in PROBABILITIES:
        edge += getattr(config, name)
        if u < edge:
            return Decision(kind, "random", latency_s)
    return Decision(None, "none", latency_s)
