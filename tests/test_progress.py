"""``batchd.cli.progress`` on its own: the plain lines (with a fake clock) and the live bar."""

from __future__ import annotations

import io

from batchd.cli.progress import ProgressDisplay, Snapshot, format_duration


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_format_duration() -> None:
    assert format_duration(0) == "0s"
    assert format_duration(42.4) == "42s"
    assert format_duration(185) == "3m05s"
    assert format_duration(3720) == "1h02m"
    assert format_duration(-3) == "0s"


def test_plain_lines_on_status_changes_and_every_interval() -> None:
    out, clock = io.StringIO(), Clock()
    with ProgressDisplay("in.jsonl", stream=out, live=False, interval=10, clock=clock) as shown:
        shown.update(Snapshot("validating", 0, 0, 0))
        clock.now += 1
        shown.update(Snapshot("in_progress", 1000, 0, 0))  # a new status: printed at once
        clock.now += 5
        shown.update(Snapshot("in_progress", 1000, 300, 20, tokens=6000))  # within the interval
        clock.now += 5
        shown.update(Snapshot("in_progress", 1000, 480, 20, tokens=9000))  # 10 s later
        clock.now += 2
        shown.update(Snapshot("completed", 1000, 980, 20, tokens=20000))
    lines = out.getvalue().splitlines()
    assert lines == [
        "in.jsonl validating: 0/0 done, 0 failed",
        "in.jsonl in_progress: 0/1,000 done, 0 failed, 0.0 req/s",
        # 500 done in the 11 s since the first snapshot, 500 left: 11 s more
        "in.jsonl in_progress: 500/1,000 done, 20 failed, 45.5 req/s, 818 tok/s, ETA 11s",
        "in.jsonl completed: 1,000/1,000 done, 20 failed, 76.9 req/s, 1,538 tok/s",
    ]


def test_the_last_snapshot_is_printed_once_when_closed() -> None:
    out, clock = io.StringIO(), Clock()
    with ProgressDisplay("b", stream=out, live=False, interval=10, clock=clock) as shown:
        shown.update(Snapshot("in_progress", 10, 0, 0))
        clock.now += 1
        shown.update(Snapshot("in_progress", 10, 4, 0))  # not printed yet: within the interval
    assert (
        out.getvalue().splitlines()[-1] == "b in_progress: 4/10 done, 0 failed, 4.0 req/s, ETA 2s"
    )
    assert len(out.getvalue().splitlines()) == 2


def test_a_resumed_run_counts_only_its_own_progress() -> None:
    out, clock = io.StringIO(), Clock()
    with ProgressDisplay("b", stream=out, live=False, interval=1, clock=clock) as shown:
        shown.update(Snapshot("in_progress", 100, 60, 0))  # done before this process started
        clock.now += 2
        shown.update(Snapshot("in_progress", 100, 70, 0))
    assert "5.0 req/s, ETA 6s" in out.getvalue().splitlines()[-1]


def test_the_live_bar_draws_in_place() -> None:
    out = io.StringIO()
    with ProgressDisplay("b", stream=out, live=True) as shown:
        shown.update(Snapshot("in_progress", 10, 5, 1))
        shown.update(Snapshot("completed", 10, 9, 1))
    text = out.getvalue()
    assert "\x1b[" in text  # cursor and colour control: a terminal display
    assert "b completed" in text
    assert "10/10 done, 1 failed" in text
