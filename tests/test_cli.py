"""``batchd`` as a user runs it: help texts and start-up errors that say what to do."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.serverproc import batchd


def test_help_explains_every_serve_option() -> None:
    out = batchd("serve", "--help")
    assert out.returncode == 0
    for option in ("--host", "--port", "--data-dir", "--config", "--log-level"):
        assert option in out.stdout
    for env in ("BATCHD_HOST", "BATCHD_PORT", "BATCHD_DATA_DIR", "BATCHD_CONFIG"):
        assert env in out.stdout
    assert "[[models]]" in out.stdout


def test_version() -> None:
    out = batchd("--version")
    assert out.returncode == 0
    assert out.stdout.startswith("batchd ")


def test_bad_config_is_reported_without_a_traceback(tmp_path: Path) -> None:
    config = tmp_path / "batchd.toml"
    config.write_text("port = 'eighty'\n")
    out = batchd("serve", "--config", str(config), "--data-dir", str(tmp_path / "d"))
    assert out.returncode == 2
    assert "invalid configuration" in out.stderr
    assert "port" in out.stderr
    assert "Traceback" not in out.stderr


def test_config_file_from_the_environment(tmp_path: Path) -> None:
    config = tmp_path / "batchd.toml"
    config.write_text("colour = 'red'\n")
    out = batchd("serve", env={"BATCHD_CONFIG": str(config), "BATCHD_DATA_DIR": str(tmp_path)})
    assert out.returncode == 2
    assert "colour" in out.stderr


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_data_dir_is_reported(tmp_path: Path) -> None:
    locked = tmp_path / "ro"
    locked.mkdir(mode=0o500)
    out = batchd("serve", "--data-dir", str(locked / "data"))
    assert out.returncode == 2
    assert "cannot use the data directory" in out.stderr


def test_data_dir_that_is_a_file_is_reported(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    out = batchd("serve", "--data-dir", str(not_a_dir / "data"))
    assert out.returncode == 2
    assert "cannot use the data directory" in out.stderr
    assert "Traceback" not in out.stderr
