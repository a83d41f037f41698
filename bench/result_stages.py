"""How ``bench/result_path.py`` measures a batchd process: its CPU sampled from ``/proc`` (all
threads and the main thread), the stage boundaries from its JSON log and the instant provider's
counters, the CPU per result by stage, and the comparison of an output file with the floor's."""

from __future__ import annotations

import itertools
import json
import os
import re
import resource
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

_IDS = re.compile(rb'"(id|request_id)":"(batch_req_|req_)[0-9a-f]{32}"')


# -- measuring a batchd process -----------------------------------------------------------------


def _stat_cpu(path: str) -> float:
    with open(path) as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Sampler:
    """The CPU of process ``pid`` (all threads, and its main thread: the event loop) every
    ``interval`` s, in a thread: ``(wall, total, main)`` samples."""

    def __init__(self, pid: int, interval: float = 0.01) -> None:
        self.pid = pid
        self.interval = interval
        self.samples: list[tuple[float, float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> tuple[float, float, float] | None:
        try:
            total = _stat_cpu(f"/proc/{self.pid}/stat")
            main = _stat_cpu(f"/proc/{self.pid}/task/{self.pid}/stat")
        except (OSError, IndexError, ValueError):
            return None
        point = (time.time(), total, main)
        self.samples.append(point)
        return point

    def _run(self) -> None:
        while not self._stop.is_set() and self.sample() is not None:
            self._stop.wait(self.interval)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def at(self, wall: float) -> tuple[float, float]:
        """``(total, main)`` CPU seconds at ``wall``, interpolated between samples."""
        samples = self.samples
        if not samples:
            return 0.0, 0.0
        if wall <= samples[0][0]:
            return samples[0][1], samples[0][2]
        for before, after in itertools.pairwise(samples):
            if before[0] <= wall <= after[0]:
                span = after[0] - before[0] or 1.0
                f = (wall - before[0]) / span
                return (
                    before[1] + f * (after[1] - before[1]),
                    before[2] + f * (after[2] - before[2]),
                )
        return samples[-1][1], samples[-1][2]


def log_times(lines: list[str]) -> dict[str, float]:
    """Wall times (epoch s) of the JSON log's first record, a model's ``loaded`` record (the
    sentence-transformers provider's), the ``finalizing`` and the ``completed`` records."""
    found: dict[str, float] = {}
    for text in lines:
        if not text.startswith("{"):
            continue
        try:
            record = json.loads(text)
            when = datetime.fromisoformat(record["timestamp"]).timestamp()
        except (ValueError, KeyError):
            continue
        message = str(record.get("message", ""))
        found.setdefault("first_log", when)
        if ": loaded " in message and " dimensions" in message:
            found.setdefault("loaded", when)
        elif ": finalizing (" in message:
            found["finalizing"] = when
        elif re.search(r"^batch \S+: completed \(", message):
            found["completed"] = when
    return found


def stages(
    n: int,
    sampler: Sampler,
    marks: dict[str, float],
    provider: dict[str, Any],
    order: list[tuple[str, str, str]],
    end_cpu: float | None = None,
) -> dict[str, dict[str, Any]]:
    """Per stage ``(name, from mark, to mark)``: wall s, CPU µs per result (all threads and the
    main thread). ``dispatch`` is split into ``provider`` (its own counters) and
    ``engine+journal`` (the rest)."""
    out: dict[str, dict[str, Any]] = {}
    for name, start, end in order:
        if start not in marks or end not in marks:
            continue
        t0, t1 = marks[start], marks[end]
        c0, m0 = sampler.at(t0)
        c1, m1 = sampler.at(t1)
        if start == "first_call" and provider.get("first_process_cpu") is not None:
            c0 = float(provider["first_process_cpu"])
        if end == "exit" and end_cpu is not None:
            c1 = end_cpu
        out[name] = {
            "wall_s": t1 - t0,
            "cpu_us": 1e6 * max(0.0, c1 - c0) / n,
            "main_cpu_us": 1e6 * max(0.0, m1 - m0) / n,
        }
    if "dispatch" in out:
        dispatch = out.pop("dispatch")
        own = 1e6 * float(provider.get("cpu_s", 0.0)) / n
        out = {
            **{k: v for k, v in out.items() if k in ("startup", "ingest", "upload", "admit")},
            "provider": {"wall_s": None, "cpu_us": own, "main_cpu_us": own},
            "engine+journal": {
                "wall_s": dispatch["wall_s"],
                "cpu_us": dispatch["cpu_us"] - own,
                "main_cpu_us": dispatch["main_cpu_us"] - own,
            },
            **{k: v for k, v in out.items() if k not in ("startup", "ingest", "upload", "admit")},
        }
    return out


def compare(floor_path: Path, path: Path) -> dict[str, Any]:
    """Lines, size, and whether ``path`` is the floor's file with other ids."""
    lines = same = 0
    first_diff: int | None = None
    with open(floor_path, "rb") as a, open(path, "rb") as b:
        for number, (x, y) in enumerate(zip(a, b, strict=False)):
            lines += 1
            if _IDS.sub(rb'"\1":"-"', x) == _IDS.sub(rb'"\1":"-"', y):
                same += 1
            elif first_diff is None:
                first_diff = number
        extra = sum(1 for _ in a) + sum(1 for _ in b)
    return {
        "lines": lines,
        "size": path.stat().st_size,
        "floor_size": floor_path.stat().st_size,
        "identical_but_ids": same == lines and extra == 0,
        "same": same,
        "first_different_line": first_diff,
    }


def provider_stats(path: Path) -> dict[str, Any]:
    stats: dict[str, Any] = orjson.loads(path.read_bytes()) if path.exists() else {}
    return stats


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# -- the two paths ---------------------------------------------------------------------------------


def provider_marks(marks: dict[str, float], path: Path) -> dict[str, Any]:
    """The instant provider's counters (its file at ``path``); its first call, when it made
    one, goes into ``marks`` as ``first_call`` (where the dispatch stage starts)."""
    provider = provider_stats(path)
    if provider.get("first_wall") is not None:
        marks["first_call"] = float(provider["first_wall"])
    return provider
