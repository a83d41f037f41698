"""The apps the fuzz tests drive (one of each for the package), and objects that exist in them."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from batchd.api import create_app
from batchd.config import ApiKeySetting, ProjectLimits
from tests.fuzz.support import (
    CHAT,
    CHAT_LINES,
    KEYS,
    Api,
    CollectErrors,
    app_settings,
    checked,
    serving,
)
from tests.upstream.process import UpstreamProcess

#: A binary file, every byte value and some UTF-8.
BLOB = bytes(range(256)) + b"\r\n\x00\xff" + "é😀".encode()


@pytest.fixture(scope="package")
def fuzz_upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpstreamProcess]:
    with UpstreamProcess(tmp_path_factory.mktemp("fuzz-upstream")) as proc:
        yield proc


@pytest.fixture(scope="package")
def logged_errors() -> Iterator[list[logging.LogRecord]]:
    """What batchd (and asyncio) log at ERROR or above while the package's apps run."""
    errors: list[logging.LogRecord] = []
    handler = CollectErrors(errors)
    loggers = [logging.getLogger("batchd"), logging.getLogger("asyncio")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        if logger.getEffectiveLevel() > logging.ERROR:
            logger.setLevel(logging.ERROR)
    yield errors
    for logger, level in zip(loggers, levels, strict=True):
        logger.removeHandler(handler)
        logger.setLevel(level)


@pytest.fixture(scope="package")
def start_app(
    tmp_path_factory: pytest.TempPathFactory,
    fuzz_upstream: UpstreamProcess,
    logged_errors: list[logging.LogRecord],
) -> Iterator[Callable[..., Api]]:
    """Start an app with these settings (options of :func:`app_settings`), on a data directory
    of its own, served until the package's tests end."""
    with contextlib.ExitStack() as stack:

        def start(**options: Any) -> Api:
            data_dir = tmp_path_factory.mktemp("fuzz-app") / "data"
            settings = app_settings(data_dir, fuzz_upstream.api_url, **options)
            return stack.enter_context(serving(create_app(settings), logged_errors))

        yield start


@pytest.fixture(scope="package")
def api(start_app: Callable[..., Api]) -> Api:
    """The app with no API keys: every request belongs to the default project."""
    return start_app()


@pytest.fixture
def quiet_api(api: Api) -> Iterator[Api]:
    """``api``, nothing logged at ERROR or above before the test nor during it."""
    api.assert_quiet()
    yield api
    api.assert_quiet()


@pytest.fixture(scope="package")
def known(api: Api) -> dict[str, Any]:
    """Objects that exist: a batch file, a binary file, and a batch created on the batch file."""
    batch_file = api.upload(CHAT_LINES, "batch")
    binary_file = api.upload(BLOB, "user_data", "blob.bin")
    response = api.request(
        "POST",
        "/v1/batches",
        json={"input_file_id": batch_file["id"], "endpoint": CHAT, "completion_window": "24h"},
    )
    assert response.status_code == 200, response.text
    return {
        "files": {
            batch_file["id"]: (batch_file, CHAT_LINES),
            binary_file["id"]: (binary_file, BLOB),
        },
        "batch_file": batch_file,
        "binary_file": binary_file,
        "batch": checked(response, "Batch"),
    }


@pytest.fixture(scope="package")
def auth_api(start_app: Callable[..., Api]) -> Api:
    """The app with the API keys of :data:`KEYS`."""
    limits = ProjectLimits(max_active_batches=1, max_batches_per_hour=5, max_stored_bytes=4096)
    keys = (
        ApiKeySetting(key=KEYS["alpha"], project="alpha", limits=limits),
        ApiKeySetting(key=KEYS["beta"], project="beta"),
    )
    served = start_app(api_keys=keys)
    served.assert_quiet()
    return served
