"""batchd.providers.vectors: embedding rows written straight from numpy, byte for byte what the
list-of-Python-floats encoding writes."""

from __future__ import annotations

import base64

import numpy as np
import orjson
import pytest
from numpy.typing import NDArray

from batchd.providers.vectors import base64_rows, float_rows


def reference(vectors: NDArray[np.float32]) -> list[bytes]:
    """The first encoding: the float32 rows' shortest decimals read back as Python floats, then
    each row's list encoded by orjson's float64 writer."""
    lists = orjson.loads(orjson.dumps(vectors, option=orjson.OPT_SERIALIZE_NUMPY))
    return [orjson.dumps(row) for row in lists]


def encoded(vectors: NDArray[np.float32]) -> list[bytes]:
    return [orjson.dumps(row) for row in float_rows(vectors)]


def test_random_bit_patterns() -> None:
    """Every finite float32 shape: subnormals, huge values, both signs."""
    rng = np.random.default_rng(7)
    bits = rng.integers(0, 2**32, size=400_000, dtype=np.uint64).astype(np.uint32)
    values = bits.view(np.float32)
    values = values[np.isfinite(values)]
    rows = values[: len(values) // 100 * 100].reshape(-1, 100)
    assert encoded(rows) == reference(rows)


@pytest.mark.parametrize(
    ("low", "high"),
    [(1e-7, 1e-3), (1e12, 1e18), (1e-45, 1e-37), (0.5, 2e9), (9.99, 10.01), (99.99, 100.01)],
)
def test_the_edges_of_the_odd_ranges(low: float, high: float) -> None:
    """Dense around 1e-5 and 1e13 (where the two writers' notations part) and around numbers
    whose decimals hold ``0.00000`` after an integer part (``10.000001``)."""
    line = np.linspace(low, high, 100_000, dtype=np.float64).astype(np.float32)
    values = np.concatenate([line, -line, np.nextafter(line, np.float32(np.inf))])
    rows = values.reshape(-1, 100)
    assert encoded(rows) == reference(rows)


def test_special_values_and_shapes() -> None:
    special = np.array(
        [[0.0, -0.0, 1e-5, -1e-5, 9.9999e-6, 1e13, 1e16, 3.4028235e38, 1.1754944e-38, 1e-45]],
        dtype=np.float32,
    )
    assert encoded(special) == reference(special)
    odd_at_ends = np.array([[7.6e-6, 0.5, 0.25, -8.1e14]], dtype=np.float32)
    assert encoded(odd_at_ends) == reference(odd_at_ends)
    assert encoded(np.array([[2e-6]], dtype=np.float32)) == [b"[2e-6]"]
    assert encoded(np.zeros((0, 4), dtype=np.float32)) == []


def test_unit_vectors_in_a_body() -> None:
    """Fragments spliced by orjson into a whole body give the same bytes as the floats."""
    rng = np.random.default_rng(3)
    for dimensions in (384, 1536):
        rows = rng.standard_normal((300, dimensions)).astype(np.float32)
        rows /= np.linalg.norm(rows, axis=1, keepdims=True)
        body = {"data": [{"embedding": row} for row in float_rows(rows)]}
        floats = orjson.loads(orjson.dumps(rows, option=orjson.OPT_SERIALIZE_NUMPY))
        expected = {"data": [{"embedding": row} for row in floats]}
        assert orjson.dumps(body) == orjson.dumps(expected)
        assert orjson.loads(orjson.dumps(body))["data"][0]["embedding"] == floats[0]


@pytest.mark.parametrize("dimensions", [384, 1536, 5, 7])
def test_base64_rows(dimensions: int) -> None:
    """One encode over all rows (rows of a multiple of 3 bytes) or one per row: the same."""
    rows = np.random.default_rng(1).standard_normal((9, dimensions)).astype(np.float32)
    expected = [base64.b64encode(row.astype("<f4").tobytes()).decode() for row in rows]
    assert base64_rows(rows) == expected
    assert base64_rows(rows[:, :3]) == [
        base64.b64encode(row.astype("<f4").tobytes()).decode() for row in rows[:, :3]
    ]
