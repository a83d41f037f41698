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
    assert lines[0].startswith("no --base-url: using the stand-in upstream at http://")
    assert lines[1].startswith("uploaded file-")
    assert lines[2].endswith(": completed, 3 of 3 completed, 0 failed")
    answers = dict(line.split(": ", 1) for line in lines[3:])
    assert sorted(answers) == ["request-1", "request-2", "request-3"]
    assert all(answer.strip() for answer in answers.values())
