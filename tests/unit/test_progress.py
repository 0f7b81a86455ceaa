"""The progress reporter: interval lines, file-end lines, summary, and nothing per chunk."""

from __future__ import annotations

import asyncio
import logging

import pytest

from job.engine.progress import ProgressReporter, ProgressSnapshot, format_bytes, format_duration


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.calls = 0

    def __call__(self) -> float:
        self.calls += 1
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "job.engine.progress"]


@pytest.fixture(autouse=True)
def _capture(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="job.engine.progress")


def test_format_bytes_and_duration() -> None:
    assert format_bytes(0) == "0 B"
    assert format_bytes(999) == "999 B"
    assert format_bytes(1500) == "1.50 kB"
    assert format_bytes(12_345_678) == "12.3 MB"
    assert format_bytes(400e9) == "400 GB"
    assert format_bytes(5e18) == "5000 PB"
    assert format_duration(45.4) == "45s"
    assert format_duration(185) == "3m05s"
    assert format_duration(3720) == "1h02m"


def test_snapshot_figures() -> None:
    snap = ProgressSnapshot(files_done=1, files_total=4, bytes_done=300_000_000, bytes_total=1_000_000_000, elapsed=2)
    assert snap.percent == 30.0
    assert snap.rate == 150e6
    assert snap.eta == pytest.approx(700e6 / 150e6)
    assert snap.describe() == "300 MB of 1.00 GB (30.0%), 1 of 4 files, 150.0 MB/s, ETA 5s"
    unknown = ProgressSnapshot(files_done=0, files_total=1, bytes_done=10, bytes_total=None, elapsed=0)
    assert unknown.percent is None and unknown.eta is None and unknown.rate == 0
    assert unknown.describe() == "10 B (total unknown), 0 of 1 files, 0.0 MB/s"
    empty = ProgressSnapshot(files_done=1, files_total=1, bytes_done=0, bytes_total=0, elapsed=1)
    assert empty.percent == 100.0


def test_nothing_is_logged_per_chunk(clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    reporter = ProgressReporter(interval=5, clock=clock)
    reporter.start(files=1, total_bytes=10_000_000)
    for _ in range(10_000):
        reporter.advance(1000)
    assert lines(caplog) == ["transferring 1 files, 10.0 MB"]
    assert reporter.bytes_done == 10_000_000


def test_a_line_per_interval(clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    reporter = ProgressReporter(interval=5, clock=clock)
    reporter.start(files=2, total_bytes=1_000_000_000)
    clock.now += 4.9
    reporter.advance(100_000_000)
    assert len(lines(caplog)) == 1
    clock.now += 0.1  # 5 s since start
    reporter.advance(100_000_000)
    assert lines(caplog)[-1] == "progress: 200 MB of 1.00 GB (20.0%), 0 of 2 files, 40.0 MB/s, ETA 20s"
    for _ in range(100):  # the same instant: no second line
        reporter.advance(1)
    clock.now += 5
    reporter.advance(0)
    assert len(lines(caplog)) == 3
    record = caplog.records[-1]
    assert record.__dict__["event"] == "progress" and record.__dict__["bytes_done"] == 200_000_100


def test_tick_logs_a_stalled_transfer(clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    reporter = ProgressReporter(interval=5, clock=clock)
    reporter.start(files=1, total_bytes=100)
    reporter.tick()
    assert len(lines(caplog)) == 1
    clock.now += 6
    reporter.tick()
    assert lines(caplog)[-1].startswith("progress: 0 B of 100 B (0.0%)")


def test_a_line_at_each_file_end_and_the_summary(clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    reporter = ProgressReporter(interval=5, clock=clock)
    reporter.start(files=2, total_bytes=3000)
    reporter.advance(1000)
    clock.now += 1
    reporter.file_done("sub/config.json", 1000)
    assert lines(caplog)[-1] == (
        "done sub/config.json (1.00 kB); 1.00 kB of 3.00 kB (33.3%), 1 of 2 files, 0.0 MB/s, ETA 2s"
    )
    reporter.advance(2000)
    clock.now += 1
    reporter.file_done("model.bin", 2000)
    snap = reporter.finish()
    assert snap.files_done == 2 and snap.bytes_done == 3000 and snap.elapsed == 2
    assert lines(caplog)[-1] == "transferred 2 files, 3.00 kB in 2.0 s (0.0 MB/s)"
    assert caplog.records[-1].__dict__["event"] == "summary"


def test_files_counted_as_a_one_pass_source_lists_them(clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    reporter = ProgressReporter(interval=5, clock=clock)
    reporter.start(files=None, total_bytes=None)
    assert lines(caplog) == ["transferring the files as the source lists them (it is read once)"]
    reporter.listed(1000)
    reporter.advance(1000)
    reporter.file_done("a.bin", 1000)
    assert lines(caplog)[-1] == "done a.bin (1.00 kB); 1.00 kB (still listing), 1 of 1+ files, 0.0 MB/s"
    reporter.listed(2000)
    reporter.listing_done()
    assert (reporter.files_total, reporter.bytes_total) == (2, 3000)
    reporter.start(files=None, total_bytes=None)
    reporter.listed(None)  # a size not known: no byte total
    reporter.listing_done()
    assert reporter.bytes_total is None


def test_a_file_end_line_postpones_the_next_interval_line(clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    reporter = ProgressReporter(interval=5, clock=clock)
    reporter.start(files=2, total_bytes=20)
    clock.now += 4
    reporter.file_done("a", 10)
    clock.now += 2
    reporter.advance(10)  # 6 s after start, 2 s after the file line
    assert len(lines(caplog)) == 2


def test_interval_from_the_engine_unless_set(clock: FakeClock) -> None:
    default = ProgressReporter(clock=clock)
    assert default.interval == 5.0
    default.start(files=1, total_bytes=1, interval=2.0)
    assert default.interval == 2.0
    fixed = ProgressReporter(interval=7.0, clock=clock)
    fixed.start(files=1, total_bytes=1, interval=2.0)
    assert fixed.interval == 7.0
    with pytest.raises(ValueError):
        ProgressReporter(interval=0)


async def test_ticker_runs_until_cancelled(clock: FakeClock) -> None:
    reporter = ProgressReporter(interval=0.001, clock=clock)
    task = asyncio.create_task(reporter.run_ticker())
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
