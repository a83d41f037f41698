"""The examples run as a user runs them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_quickstart_runs_the_sdk_workflow() -> None:
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / "quickstart.py")],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    lines = out.stdout.splitlines()
    assert lines[0].startswith("uploaded file-")
    assert "in_progress, 3 requests" in lines[1]
    assert "cancelled, counts BatchRequestCounts(completed=0, failed=3, total=3)" in lines[3]
    error_lines = [line for line in lines if '"batch_cancelled"' in line]
    assert len(error_lines) == 3
