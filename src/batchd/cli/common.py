"""What the ``batchd`` commands share: the ``--config`` option, the one-route options of
``run`` and ``serve`` (``--model``, ``--upstream``, ``--upstream-model``), :func:`fail` and
:func:`load_settings`. It imports no command module (each of them imports this one;
:mod:`batchd.cli.main` assembles them)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

if TYPE_CHECKING:
    from batchd.config import Settings

__all__ = [
    "UPSTREAM_KEY_ENV",
    "ConfigOption",
    "DataDirOption",
    "LogFormatOption",
    "ModelOption",
    "UpstreamModelOption",
    "UpstreamOption",
    "fail",
    "load_settings",
    "route_overrides",
]

#: The environment variable holding the key of ``--upstream`` (sent if it is set).
UPSTREAM_KEY_ENV = "UPSTREAM_API_KEY"

DataDirOption = Annotated[
    Path | None,
    typer.Option(
        help="The data directory of the server, e.g. --data-dir ./batchd-data. Default: as for "
        "`batchd serve` (BATCHD_DATA_DIR, the config file, the user data directory); with "
        "database_url set, that database.",
        file_okay=False,
    ),
]
"""The data directory of the commands that work on a server's store (keys, webhooks)."""

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        envvar="BATCHD_CONFIG",
        help="TOML config file with settings and the [[models]] routing table, "
        "e.g. --config batchd.toml. Also BATCHD_CONFIG.",
        dir_okay=False,
    ),
]

LogFormatOption = Annotated[
    str | None,
    typer.Option(
        "--log-format",
        help="text, or json: one JSON object per log line (timestamp, level, logger, message "
        "and the access log's fields), e.g. --log-format json for a log collector. Default "
        "text; BATCHD_LOG_FORMAT.",
        show_default=False,
    ),
]


ModelOption = Annotated[
    str | None,
    typer.Option(
        "--model",
        help="Serve every request with this route (a [[models]] name or alias, or an embedded "
        "model), whatever its body.model, e.g. --model SmolLM2-135M-Instruct for a file written "
        "for another model (vLLM's run-batch --model). Answers name the model that answered.",
    ),
]
UpstreamOption = Annotated[
    str | None,
    typer.Option(
        "--upstream",
        help="Serve every request with an OpenAI-compatible server, no config file needed, e.g. "
        "--upstream http://127.0.0.1:8000/v1 (vLLM, llama.cpp server, SGLang, Ollama…). Its key, "
        f"if it needs one, in {UPSTREAM_KEY_ENV}.",
    ),
]
UpstreamModelOption = Annotated[
    str | None,
    typer.Option(
        "--upstream-model",
        help="With --upstream: the model name sent upstream in every body.model, e.g. "
        "--upstream-model Qwen/Qwen2.5-7B-Instruct. Default: each line's own body.model.",
    ),
]


def route_overrides(
    model: str | None, upstream: str | None, upstream_model: str | None
) -> dict[str, Any]:
    """The settings that ``--model`` / ``--upstream`` / ``--upstream-model`` stand for: one
    route serving every request (none when no option is given). A usage error ends the
    command."""
    if upstream_model is not None and upstream is None:
        fail("--upstream-model needs --upstream URL (the server to send the requests to)")
    if upstream is None:
        return {} if model is None else {"force_model": model}
    if model is not None:
        fail(
            "give --model ROUTE or --upstream URL, not both: --upstream makes the one route "
            "(name the model sent upstream with --upstream-model)"
        )
    if not upstream.startswith(("http://", "https://")):
        fail(f"--upstream {upstream!r} is not an http(s) URL, e.g. http://127.0.0.1:8000/v1")
    name = upstream_model or "upstream"
    route: dict[str, Any] = {"name": name, "provider": "openai", "base_url": upstream}
    if upstream_model is not None:
        route["upstream_model"] = upstream_model
    if os.environ.get(UPSTREAM_KEY_ENV):
        route["api_key_env"] = UPSTREAM_KEY_ENV
    return {"models": [route], "force_model": name, "embedded_models": False}


def fail(message: str, code: int = 2) -> NoReturn:
    """End the command with ``batchd: message`` on stderr and exit status ``code``."""
    typer.echo(f"batchd: {message}", err=True)
    raise typer.Exit(code)


def load_settings(config: Path | None, data_dir: Path | None) -> Settings:
    """The settings of ``config`` with ``data_dir`` (``batchd keys``, ``batchd webhooks``); one
    that cannot be loaded ends the command with :func:`fail`."""
    from batchd.config import Settings
    from batchd.errors import BatchdError

    try:
        return Settings.load(config, data_dir=data_dir)
    except BatchdError as exc:
        fail(str(exc))
