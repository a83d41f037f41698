"""The parser of Message Batches' inline requests against ``orjson.loads`` of the whole body.

``batchd.service.message_requests.InlineRequests`` (ijson's C coroutines chained by hand, in
1 MiB chunks) against the baseline, ``orjson.loads`` of the whole body and ``orjson.dumps`` of
each line, and ijson's own ``items`` generator doing nothing with the requests (the floor).
The body: a Message Batches create body of 100,000 requests, params ~540 bytes each (model,
max_tokens, a system string, 2 messages, temperature): ~54 MB. Times are the best of 5 runs,
interleaved; memory is measured in a fresh process per variant (the growth of ru_maxrss over
the process once the body was read, and the tracemalloc peak). Prints each figure and the ratios
parser / baseline.

    python bench/inline_requests.py                  # time and memory
    python bench/inline_requests.py --alternatives   # the designs measured against each other
"""

from __future__ import annotations

import io
import os
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from types import SimpleNamespace

import ijson  # type: ignore[import-untyped]
import orjson

from batchd.service.message_requests import InlineRequests

N = 100_000
CHUNK = 1 << 20
OPT = orjson.OPT_APPEND_NEWLINE


def make_body(n: int = N) -> bytes:
    requests = []
    for i in range(n):
        requests.append(
            {
                "custom_id": f"request-{i:06d}",
                "params": {
                    "model": "claude-haiku-4-5",
                    "max_tokens": 1024,
                    "system": "You are a concise assistant. Answer in one short paragraph, plain "
                    "text, no lists, and cite nothing you are not sure of; keep the tone "
                    "neutral and friendly.",
                    "messages": [
                        {
                            "role": "user",
                            "content": f"Summarise ticket #{i}: the customer reports that the "
                            "export button does nothing on Firefox 128 since the last update; "
                            f"caché clears did not help. Priority {i % 5}.",
                        },
                        {"role": "assistant", "content": "Understood. Here is the summary: "},
                    ],
                    "temperature": 0.2 + (i % 7) / 10,
                },
            }
        )
    return orjson.dumps({"requests": requests})


def line(item: dict) -> bytes:  # type: ignore[type-arg]
    body = {"custom_id": item["custom_id"], "method": "POST", "url": "/v1/messages"}
    body["body"] = item["params"]
    return orjson.dumps(body, option=OPT)


# --- the variants (each returns the bytes of JSONL it produced) ---


def inline(body: bytes) -> int:
    parser = InlineRequests(max_requests=N)
    view = memoryview(body)
    out = 0
    for start in range(0, len(body), CHUNK):
        out += len(parser.feed(bytes(view[start : start + CHUNK])))
    out += len(parser.finish())
    assert parser.count == N
    return out


def orjson_whole(body: bytes) -> int:
    data = orjson.loads(body)
    return sum(len(line(item)) for item in data["requests"])


def ijson_items_gen(body: bytes) -> int:
    """ijson's own items parse (its C generator), nothing done with the items."""
    it = ijson.items(io.BytesIO(body), "requests.item", use_float=True, buf_size=CHUNK)
    return sum(1 for _ in it)


def _chunks(body: bytes):  # type: ignore[no-untyped-def]
    view = memoryview(body)
    for start in range(0, len(body), CHUNK):
        yield bytes(view[start : start + CHUNK])


def items_coro_lines(body: bytes) -> int:
    """ijson.items_coro (chained through bound send methods) + the lines, no checks."""
    out = ijson.sendable_list()
    coro = ijson.items_coro(out, "requests.item", use_float=True)
    n = 0
    for chunk in _chunks(body):
        coro.send(chunk)
        n += len(b"".join(map(line, out)))
        del out[:]
    coro.close()
    return n + len(b"".join(map(line, out)))


def c_chain_lines(body: bytes) -> int:
    """The C coroutines chained by hand (as InlineRequests does) + the lines, no checks."""
    B = ijson.get_backend("yajl2_c")
    out: list[object] = []
    items = B.items_basecoro(SimpleNamespace(send=out), "requests.item")
    parse = B.parse_basecoro(SimpleNamespace(send=items))
    coro = B.basic_parse_basecoro(SimpleNamespace(send=parse), use_float=True)
    n = 0
    for chunk in _chunks(body):
        coro.send(chunk)
        n += len(b"".join(map(line, out)))  # type: ignore[arg-type]
        del out[:]
    coro.close()
    return n + len(b"".join(map(line, out)))  # type: ignore[arg-type]


def c_chain_plus_parse_coro(body: bytes) -> int:
    """Alternative top-level check: a second pipeline (parse_coro, C-chained) whose events'
    prefixes are checked in Python."""
    B = ijson.get_backend("yajl2_c")
    out: list[object] = []
    events: list[tuple[str, str, object]] = []
    items = B.items_basecoro(SimpleNamespace(send=out), "requests.item")
    parse = B.parse_basecoro(SimpleNamespace(send=items))
    coro = B.basic_parse_basecoro(SimpleNamespace(send=parse), use_float=True)
    parse2 = B.parse_basecoro(SimpleNamespace(send=events))
    coro2 = B.basic_parse_basecoro(SimpleNamespace(send=parse2), use_float=True)
    n = 0
    for chunk in _chunks(body):
        coro.send(chunk)
        coro2.send(chunk)
        for prefix, event, value in events:
            if prefix == "" and event == "map_key" and value != "requests":
                raise ValueError(value)
        del events[:]
        n += len(b"".join(map(line, out)))  # type: ignore[arg-type]
        del out[:]
    coro.close()
    coro2.close()
    return n + len(b"".join(map(line, out)))  # type: ignore[arg-type]


def parse_coro_python_build(body: bytes) -> int:
    """Alternative: one parse_coro pipeline, the requests built in Python from its events."""
    from ijson.common import ObjectBuilder

    B = ijson.get_backend("yajl2_c")
    events: list[tuple[str, str, object]] = []
    parse = B.parse_basecoro(SimpleNamespace(send=events))
    coro = B.basic_parse_basecoro(SimpleNamespace(send=parse), use_float=True)
    n = 0
    builder = None
    for chunk in _chunks(body):
        coro.send(chunk)
        for prefix, event, value in events:
            if builder is not None:
                builder.event(event, value)
                if prefix == "requests.item" and event == "end_map":
                    n += len(line(builder.value))
                    builder = None
            elif prefix == "requests.item" and event == "start_map":
                builder = ObjectBuilder()
                builder.event(event, value)
            elif prefix == "" and event == "map_key" and value != "requests":
                raise ValueError(value)
        del events[:]
    coro.close()
    return n


MAIN = [inline, orjson_whole, ijson_items_gen]
ALTERNATIVES = [
    inline,
    c_chain_lines,
    items_coro_lines,
    c_chain_plus_parse_coro,
    parse_coro_python_build,
]


def timings(body: bytes, variants: list, runs: int) -> dict[str, float]:  # type: ignore[type-arg]
    best = {f.__name__: float("inf") for f in variants}
    for _ in range(runs):
        for f in variants:
            start = time.perf_counter()
            f(body)
            best[f.__name__] = min(best[f.__name__], time.perf_counter() - start)
    for name, seconds in best.items():
        print(
            f"  {name:26s} {seconds:6.3f} s  {len(body) / seconds / 1e6:6.1f} MB/s  "
            f"{N / seconds:8.0f} requests/s"
        )
    return best


def memory_child(path: str, name: str) -> None:
    with open(path, "rb") as file:
        body = file.read()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    globals()[name](body)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tracemalloc.start()
    globals()[name](body)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(
        f"  {name:26s} ru_maxrss growth {(after - before) / 1024:7.1f} MiB   "
        f"tracemalloc peak {peak / 2**20:7.1f} MiB"
    )


def main() -> None:
    if sys.argv[1:2] == ["--memory-child"]:
        memory_child(sys.argv[2], sys.argv[3])
        return
    if sys.argv[1:2] == ["--write-body"]:
        with open(sys.argv[2], "wb") as file:
            file.write(make_body())
        return
    with tempfile.TemporaryDirectory() as tmp:
        # The children are started while this process is small (Linux keeps ru_maxrss across
        # fork and exec): the body is made in a child too.
        path = os.path.join(tmp, "body.json")
        subprocess.run([sys.executable, __file__, "--write-body", path], check=True)
        if "--alternatives" not in sys.argv:
            print("memory (fresh process each, beyond the body's bytes):")
            for f in [inline, orjson_whole]:
                subprocess.run(
                    [sys.executable, __file__, "--memory-child", path, f.__name__], check=True
                )
        with open(path, "rb") as file:
            body = file.read()
    print(f"body: {len(body):,} bytes, {N:,} requests, {len(body) / N:.0f} bytes a request")
    print(
        f"ijson {ijson.__version__} backend {ijson.backend}, chunks of {CHUNK} bytes, "
        f"cpus {os.cpu_count()}"
    )
    assert inline(body) == orjson_whole(body)
    if "--alternatives" in sys.argv:
        print("time, best of 3:")
        timings(body, ALTERNATIVES, 3)
        return
    print("time, best of 5:")
    best = timings(body, MAIN, 5)
    ratio = best["inline"] / best["orjson_whole"]
    print(f"InlineRequests / orjson.loads of the whole body (time): {ratio:.2f}")


if __name__ == "__main__":
    main()
