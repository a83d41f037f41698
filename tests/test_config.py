"""Settings: precedence of options > environment > config file > defaults, and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from batchd.config import MB, Settings, default_data_dir
from batchd.errors import ConfigError


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("BATCHD_HOST", "BATCHD_PORT", "BATCHD_DATA_DIR"):
        monkeypatch.delenv(key, raising=False)
    settings = Settings.load()
    assert (settings.host, settings.port) == ("127.0.0.1", 8080)
    assert settings.data_dir == default_data_dir()
    assert settings.max_batch_file_bytes == 200 * MB
    assert settings.max_requests_per_batch == 50_000
    assert settings.resolved_database_url.endswith("batchd.sqlite3")


def test_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "batchd.toml"
    config.write_text(
        'host = "0.0.0.0"\nport = 1111\nmax_requests_per_batch = 7\n'
        '[[models]]\nname = "m"\nprovider = "openai"\nbase_url = "http://x/v1"\n'
    )
    monkeypatch.setenv("BATCHD_PORT", "2222")
    monkeypatch.delenv("BATCHD_HOST", raising=False)
    settings = Settings.load(config, port=None, data_dir=tmp_path)
    assert settings.host == "0.0.0.0"  # file
    assert settings.port == 2222  # environment beats file
    assert settings.data_dir == tmp_path  # option
    assert Settings.load(config, port=3333).port == 3333  # option beats environment
    route = settings.route("m")
    assert route is not None
    assert route.provider == "openai"
    assert route.options == {"base_url": "http://x/v1"}
    assert settings.route("other") is None


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("port = 'eighty'", "port"),
        ("colour = 'red'", "colour"),
        (
            "[[models]]\nname = 'a'\nprovider = 'openai'\n[[models]]\nname = 'a'\nprovider = 'x'",
            "configured twice",
        ),
        ("[[models]]\nprovider = 'openai'", "models.0.name"),
        ("port = ", "not valid TOML"),
    ],
)
def test_bad_config_names_the_problem(tmp_path: Path, text: str, needle: str) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(text)
    with pytest.raises(ConfigError, match=needle) as info:
        Settings.load(config)
    assert str(config) in str(info.value)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        Settings.load(tmp_path / "nope.toml")


def test_upload_limit_by_purpose() -> None:
    settings = Settings.load(max_batch_file_bytes=10, max_upload_bytes=100)
    assert settings.max_file_bytes("batch") == 10
    assert settings.max_file_bytes("user_data") == 100
    assert settings.max_file_bytes(None) == 100
