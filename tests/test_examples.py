"""The examples run as a user runs them: subprocesses, their printed results checked."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from batchd.providers.embedded import CHAT_MODEL, EMBEDDING_MODEL, embedded_routes

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
MOVIES_CSV = Path(__file__).resolve().parents[2] / "shared" / "data" / "imdb_top_1000.csv"


def run_example(*args: str, timeout: float = 300) -> list[str]:
    out = subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout.splitlines()


def needs_embedded(model: str, backend: str) -> None:
    if model not in {route.name for route in embedded_routes()}:
        pytest.skip(f"the embedded {model} is not installed: pip install 'batchd[local]'")
    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} is not installed: pip install 'batchd[local]'")


def needs_movies() -> None:
    if not MOVIES_CSV.is_file():
        pytest.skip(f"the IMDb data set is absent: {MOVIES_CSV} not found (../shared/data)")


def check_quickstart(lines: list[str], model: str) -> None:
    start = next(i for i, line in enumerate(lines) if line.startswith("batch of 3"))
    assert lines[start] == f"batch of 3 chat requests for {model}"
    summary = next(line for line in lines[start:] if line.startswith("batch batch_"))
    assert summary.endswith(": completed, 3 of 3 completed, 0 failed"), summary
    answers = dict(line.split(": ", 1) for line in lines if line.startswith("request-"))
    assert sorted(answers) == ["request-1", "request-2", "request-3"]
    assert all(answer.strip() for answer in answers.values())


def test_quickstart_with_the_stand_in_upstream() -> None:
    lines = run_example(str(EXAMPLES / "quickstart.py"), "--stand-in")
    assert lines[0].startswith("using the stand-in upstream at http://")
    check_quickstart(lines, "gpt-4o-mini")


def test_quickstart_on_the_embedded_model() -> None:
    needs_embedded(CHAT_MODEL, "llama_cpp")
    check_quickstart(run_example(str(EXAMPLES / "quickstart.py")), CHAT_MODEL)


def test_movies_example_categorises_and_joins() -> None:
    needs_embedded(CHAT_MODEL, "llama_cpp")
    needs_movies()
    lines = run_example(str(EXAMPLES / "movies.py"), "--limit", "6")
    assert lines[0] == f"categorising 6 movies with {CHAT_MODEL}"
    assert any(line.startswith("batch batch_") and ": completed;" in line for line in lines)
    table = [line for line in lines if " | " in line]
    assert table[0].startswith("The Shawshank Redemption")
    assert len(table) == 6
    finished = next(line for line in lines if "answers finished as JSON" in line)
    assert finished.endswith("of 6 answers finished as JSON; 0 errors"), finished


def test_embeddings_example_finds_neighbours() -> None:
    needs_embedded(EMBEDDING_MODEL, "sentence_transformers")
    needs_movies()
    query = "two prisoners become friends over many years"
    lines = run_example(str(EXAMPLES / "embeddings.py"), "--limit", "60", "--query", query)
    assert lines[0] == f"embedding 60 overviews with {EMBEDDING_MODEL}"
    assert any(line.startswith("batch batch_") and "0 errors" in line for line in lines)
    header = lines.index(f"60 vectors of 384 dimensions; nearest to {query!r}:")
    neighbours = [line.split(maxsplit=1)[1] for line in lines[header + 1 : header + 6]]
    assert neighbours[0] == "The Shawshank Redemption"  # its overview, paraphrased
