"""Embedding vectors as JSON, straight from numpy: the rows of an output file's ``embedding``.

The output of an embeddings request carries each float32 value as the shortest decimals that
give back the same float32 (what OpenAI sends). orjson writes a float32 row that way in C
(``OPT_SERIALIZE_NUMPY``), about 4x faster than building a list of Python floats and encoding
that, which is what batchd did first (35 µs of the 14 µs budget of a 384-dim result). Its digits
are the same; only its notation differs for two ranges, where its float32 writer and its float64
writer (the one a list of Python floats goes through) disagree:

- ``0 < |x| < 1e-5``: ``0.000007630131`` where the float64 writer says ``7.630131e-6``;
- ``|x| >= 1e13``: ``-7.0262058e+13`` where it says ``-70262058000000.0``.

Output files must not change with the encoder (``tests/test_result_bytes.py``), so a row with
such a value (a unit vector of 384 dimensions has one in about 1 row in 10) is written in
pieces: the runs between them by the numpy writer, each odd value by the float64 writer from
its float32 decimals. :func:`float_rows` hands the rows back as :class:`orjson.Fragment`\\ s,
which ``orjson.dumps`` copies into the journal record (and into a synchronous answer) as they
are: no Python float is ever made. ``tests/test_vectors.py`` checks the bytes against the
list-of-floats encoding on random bit patterns, both ranges' edges and unit vectors.
"""

from __future__ import annotations

import base64
from typing import TYPE_CHECKING

import orjson

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

__all__ = ["base64_rows", "float_rows"]

_NUMPY = orjson.OPT_SERIALIZE_NUMPY
_SMALL = 1e-5  # below this (and not 0), the float32 writer leaves out the exponent
_LARGE = 1e13  # from this up, the float32 writer uses an exponent


def float_rows(vectors: NDArray[np.float32]) -> list[orjson.Fragment]:
    """Each row of a 2-d float32 array as a JSON array of its values' shortest decimals, byte
    for byte what ``orjson.dumps(list_of_python_floats)`` writes for the same decimals."""
    import numpy as np

    dumps = orjson.dumps
    fragment = orjson.Fragment
    magnitude = np.abs(vectors)
    odd = ((magnitude < _SMALL) & (magnitude > 0)) | (magnitude >= _LARGE)
    odd_rows: list[bool] = odd.any(axis=1).tolist()  # type: ignore[assignment]
    rows: list[orjson.Fragment] = []
    for number, row in enumerate(vectors):
        if not odd_rows[number]:
            rows.append(fragment(dumps(row, option=_NUMPY)))
            continue
        parts: list[bytes] = []
        start = 0
        for column in np.flatnonzero(odd[number]).tolist():
            if column > start:
                parts.append(dumps(row[start:column], option=_NUMPY)[1:-1])
            # the float32's shortest decimals, read back as a Python float and written as one
            parts.append(dumps(float(dumps(row[column], option=_NUMPY))))
            start = column + 1
        if start < len(row):
            parts.append(dumps(row[start:], option=_NUMPY)[1:-1])
        rows.append(fragment(b"[" + b",".join(parts) + b"]"))
    return rows


def base64_rows(vectors: NDArray[np.float32]) -> list[str]:
    """Each row's little-endian float32 bytes in base64 (``encoding_format: "base64"``): one
    ``b64encode`` over all rows when a row's bytes are a multiple of 3 (no padding inside)."""
    import numpy as np

    raw = np.ascontiguousarray(vectors, dtype="<f4")
    width = raw.shape[1] * 4 if raw.ndim == 2 else 0
    if width and width % 3 == 0:
        encoded = base64.b64encode(raw.tobytes()).decode("ascii")
        step = width // 3 * 4
        return [encoded[i : i + step] for i in range(0, len(encoded), step)]
    return [base64.b64encode(row.tobytes()).decode("ascii") for row in raw]
