"""Model aliases and one-route runs: the names requests may use, and what answers say.

A route answers to its aliases (the embedded models to the cookbooks' names); ``/v1/models``
lists them; answers name the model that really answered, never the alias; ``model_not_found``
lists the served names. ``batchd run --model`` / ``--upstream`` serve a file written for another
model (vLLM's own example batch file) with no editing and no config file.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import OpenAI

from batchd.config import ModelNames, ModelRoute, Settings
from batchd.embedded_models import CHAT_ALIASES, CHAT_MODEL, EMBEDDING_ALIASES, EMBEDDING_MODEL
from batchd.errors import ConfigError
from batchd.providers.table import ModelTable
from batchd.validation import Validator
from tests.cookbook import cookbook_task
from tests.engine_support import chat_body, model_route, request_line, to_jsonl, wait_for_batch
from tests.serverproc import BatchdServer, batchd, write_config
from tests.upstream import answers
from tests.upstream.process import UpstreamProcess

#: vLLM's example batch file for ``vllm run-batch`` (examples/offline_inference/openai_batch/
#: openai_example_batch.jsonl in vllm-project/vllm, Apache-2.0), as it is.
VLLM_EXAMPLE = Path(__file__).with_name("data") / "vllm_openai_example_batch.jsonl"
VLLM_MODEL = "meta-llama/Meta-Llama-3-8B-Instruct"
TOPICS = ("a heist", "two lovers in Paris", "a haunted house", "a space station")


def route(name: str, *aliases: str) -> ModelRoute:
    return ModelRoute(name=name, provider="openai", base_url="http://x/v1", aliases=aliases)


def local_extra() -> None:
    if not Settings.load(embedded_models=True).models:
        pytest.skip("the local extra (embedded models) is not installed")


# -- names ------------------------------------------------------------------------------------


def test_aliases_resolve_to_their_route() -> None:
    names = ModelNames([route("a", "gpt-4o-mini", "gpt-4o"), route("b")])
    assert [names.resolve(n) for n in ("a", "gpt-4o-mini", "gpt-4o", "b", "c")] == [
        "a",
        "a",
        "a",
        "b",
        None,
    ]
    assert "gpt-4o" in names
    assert "c" not in names
    assert 7 not in names
    assert names.listed() == [
        "'a'",
        "'b'",
        "'gpt-4o-mini' (alias of 'a')",
        "'gpt-4o' (alias of 'a')",
    ]


def test_a_forced_route_serves_every_name() -> None:
    names = ModelNames([route("a", "x"), route("b")], force="x")
    assert names.force == "a"
    assert names.resolve("anything") == names.resolve("b") == "a"


def test_the_hint_lists_at_most_20_names() -> None:
    names = ModelNames([route(f"m{i:02d}") for i in range(25)])
    hint = names.hint("nope")
    assert "'m19'" in hint
    assert "'m20'" not in hint
    assert "and 5 more" in hint
    assert "named 'nope'" in hint
    assert "No models are configured" in ModelNames([]).hint("x")


@pytest.mark.parametrize(
    ("models", "clash"),
    [
        ([route("a", "x"), route("b", "x")], "'x'"),
        ([route("a"), route("b", "a")], "'a'"),
        ([route("a", "a")], "'a'"),
    ],
)
def test_a_name_used_twice_is_a_config_error(
    tmp_path: Path, models: list[ModelRoute], clash: str
) -> None:
    with pytest.raises(ConfigError, match=clash):
        Settings.load(data_dir=tmp_path, models=models)


def test_a_forced_route_must_exist(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--model 'zzz' names no route; the routes are: 'a'"):
        Settings.load(data_dir=tmp_path, models=[route("a")], force_model="zzz")
    forced = Settings.load(data_dir=tmp_path, models=[route("a", "x")], force_model="x")
    assert forced.route("whatever") == forced.models[0]


def test_the_embedded_models_answer_to_the_cookbook_names(tmp_path: Path) -> None:
    local_extra()
    settings = Settings.load(data_dir=tmp_path)
    for alias in CHAT_ALIASES:
        assert settings.route(alias).name == CHAT_MODEL  # type: ignore[union-attr]
    for alias in EMBEDDING_ALIASES:
        assert settings.route(alias).name == EMBEDDING_MODEL  # type: ignore[union-attr]


def test_embedded_models_beside_configured_routes(tmp_path: Path) -> None:
    local_extra()
    mine = route("upstream-chat", "gpt-4o-mini")
    only_mine = Settings.load(data_dir=tmp_path, models=[mine])
    assert [r.name for r in only_mine.models] == ["upstream-chat"]
    both = Settings.load(data_dir=tmp_path, models=[mine], embedded_models=True)
    assert [r.name for r in both.models] == ["upstream-chat", EMBEDDING_MODEL, CHAT_MODEL]
    # The configured route keeps its alias; the embedded chat model keeps the others.
    assert both.route("gpt-4o-mini").name == "upstream-chat"  # type: ignore[union-attr]
    assert both.route("gpt-4o").name == CHAT_MODEL  # type: ignore[union-attr]
    assert Settings.load(data_dir=tmp_path, embedded_models=False).models == ()


def test_the_table_iterates_routes_and_finds_aliases() -> None:
    sentinel: Any = object()
    table = ModelTable({"a": sentinel}, ModelNames([route("a", "x")]))
    assert list(table) == ["a"]
    assert len(table) == 1
    assert table["x"] is sentinel
    assert table.get("x") is sentinel
    assert "x" in table
    assert table.get("y") is None
    assert table.aliases == {"x": "a"}


# -- validation ---------------------------------------------------------------------------------


def validate(models: ModelNames, *model_names: str) -> Any:
    validator = Validator(endpoint="/v1/chat/completions", models=models, max_requests=100)
    for i, name in enumerate(model_names, 1):
        line = request_line(f"r{i}", chat_body("hi", model=name))
        validator.feed(i, json.dumps(line).encode())
    return validator.finish()


def test_validation_accepts_aliases_and_lists_the_served_names() -> None:
    names = ModelNames([route("a", "gpt-4o-mini")])
    assert validate(names, "gpt-4o-mini", "gpt-4o-mini").ok
    failed = validate(names, "gpt-4o-mini", "gpt-5")
    (error,) = failed.errors
    assert error["code"] == "model_not_found"
    assert error["line"] == 2
    assert "'a', 'gpt-4o-mini' (alias of 'a')" in error["message"]


def test_a_forced_route_accepts_any_and_mixed_models() -> None:
    names = ModelNames([route("a")], force="a")
    result = validate(names, "one", "two", "one")
    assert result.ok
    assert result.total == 3


# -- end to end ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpstreamProcess]:
    with UpstreamProcess(tmp_path_factory.mktemp("routing-upstream"), latency_ms=2) as up:
        yield up


def test_an_aliased_upstream_route_answers_with_its_own_name(
    tmp_path: Path, upstream: UpstreamProcess
) -> None:
    config = write_config(
        tmp_path / "batchd.toml",
        models=[model_route(upstream, name="upstream-chat", aliases=["gpt-4o-mini", "gpt-4o"])],
    )
    server = BatchdServer(tmp_path / "data", config).start()
    client = OpenAI(base_url=server.api_url, api_key="-", max_retries=0)
    try:
        assert [m.id for m in client.models.list()] == ["upstream-chat", "gpt-4o-mini", "gpt-4o"]
        assert client.models.retrieve("gpt-4o").id == "gpt-4o"
        chat = client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
        )
        assert chat.model == "upstream-chat"  # who answered, never the alias
        # The OpenAI cookbook's movie tasks, unchanged ("model": "gpt-4o-mini", JSON mode).
        lines = [cookbook_task(i, f"A film about {topic}.") for i, topic in enumerate(TOPICS)]
        uploaded = client.files.create(file=("b.jsonl", to_jsonl(lines)), purpose="batch")
        batch = client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        done = wait_for_batch(client, server, batch.id)
        assert done["model"] == "gpt-4o-mini"
        text = client.files.content(done["output_file_id"]).text
        output = [json.loads(x) for x in text.splitlines()]
        assert [line["custom_id"] for line in output] == [t["custom_id"] for t in lines]
        for line, task in zip(output, lines, strict=True):
            body = line["response"]["body"]
            assert body["model"] == "upstream-chat"
            sent = {**task["body"], "model": "upstream-chat"}  # the route's name went upstream
            assert body["choices"][0]["message"]["content"] == answers.chat_content(sent)
            assert isinstance(json.loads(body["choices"][0]["message"]["content"]), dict)
        missing = httpx.post(
            f"{server.api_url}/chat/completions",
            json={"model": "gpt-5", "messages": [{"role": "user", "content": "x"}]},
        )
        assert missing.status_code == 404
        message = missing.json()["error"]["message"]
        assert "'gpt-4o-mini' (alias of 'upstream-chat')" in message
        assert "model upstream-chat: provider openai (aliases: gpt-4o-mini, gpt-4o)" in server.log()
    finally:
        client.close()
        server.stop()


def run_file(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> Any:
    out = tmp_path / "out.jsonl"
    args = ("run", str(VLLM_EXAMPLE), "-o", str(out), "--progress-interval", "0.2", *args)
    return batchd(*args, env=env, timeout=600, cwd=tmp_path), out


def test_vllms_example_file_fails_without_a_route_and_says_so(
    tmp_path: Path, upstream: UpstreamProcess
) -> None:
    config = write_config(tmp_path / "batchd.toml", models=[model_route(upstream)])
    done, _ = run_file(tmp_path, "--config", str(config))
    assert done.returncode == 1
    assert "model_not_found" in done.stderr
    assert "'gpt-4o-mini'" in done.stderr


def test_vllms_example_file_through_upstream(tmp_path: Path, upstream: UpstreamProcess) -> None:
    done, out = run_file(tmp_path, "--upstream", upstream.api_url)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [line["custom_id"] for line in lines] == ["request-1", "request-2"]
    sent = [json.loads(x)["body"] for x in VLLM_EXAMPLE.read_text().splitlines()]
    # The body went upstream as it is (the upstream's deterministic answer proves it).
    for line, body in zip(lines, sent, strict=True):
        assert line["response"]["body"] == answers.chat_completion(body)
        assert line["response"]["body"]["model"] == VLLM_MODEL
    renamed, out2 = run_file(
        tmp_path, "--upstream", upstream.api_url, "--upstream-model", "gpt-4o-mini"
    )
    assert renamed.returncode == 0, renamed.stderr
    models = {json.loads(x)["response"]["body"]["model"] for x in out2.read_text().splitlines()}
    assert models == {"gpt-4o-mini"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--upstream-model", "x"], "--upstream-model needs --upstream"),
        (["--upstream", "http://x/v1", "--model", "m"], "not both"),
        (["--upstream", "ftp://x"], "is not an http(s) URL"),
        (["--model", "no-such-route"], "--model 'no-such-route' names no route"),
    ],
)
def test_one_route_usage_errors(tmp_path: Path, args: list[str], message: str) -> None:
    done, _ = run_file(tmp_path, *args)
    assert done.returncode == 2
    assert message in done.stderr


def test_vllms_example_file_on_the_embedded_model(tmp_path: Path) -> None:
    local_extra()
    done, out = run_file(tmp_path, "--model", "gpt-4o-mini")
    assert done.returncode == 0, done.stderr
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [line["custom_id"] for line in lines] == ["request-1", "request-2"]
    for line in lines:
        body = line["response"]["body"]
        assert body["model"] == CHAT_MODEL  # the model that answered
        assert body["choices"][0]["message"]["content"]


def test_the_vllm_example_is_stored_as_published() -> None:
    lines = [json.loads(x) for x in VLLM_EXAMPLE.read_text().splitlines()]
    assert [(x["custom_id"], x["body"]["model"]) for x in lines] == [
        ("request-1", VLLM_MODEL),
        ("request-2", VLLM_MODEL),
    ]


def test_serve_with_upstream_is_a_one_route_server(
    tmp_path: Path, upstream: UpstreamProcess
) -> None:
    server = OneRouteServer(tmp_path / "data", ["--upstream", upstream.api_url]).start()
    client = OpenAI(base_url=server.api_url, api_key="-", max_retries=0)
    try:
        assert [m.id for m in client.models.list()] == ["upstream"]
        body = json.loads(VLLM_EXAMPLE.read_text().splitlines()[0])["body"]
        chat = client.chat.completions.create(**body)
        assert chat.model == VLLM_MODEL  # sent as it is: the upstream answered for it
        assert chat.choices[0].message.content == answers.chat_content(body)
    finally:
        client.close()
        server.stop()


class OneRouteServer(BatchdServer):
    """``batchd serve`` with extra options and no config file."""

    def __init__(self, data_dir: Path, extra: list[str]) -> None:
        super().__init__(data_dir)
        self.extra = extra

    def command(self) -> list[str]:
        return [*super().command(), *self.extra]
