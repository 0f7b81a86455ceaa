"""Transfer progress for pod logs, which are not a TTY: a line now and then, never one per chunk.

:class:`ProgressReporter` receives events from the engine:

* ``start(files=, total_bytes=)`` once the listing is known;
* ``advance(n)`` for every chunk that passed (adds to a counter and compares the clock with the next
  due time: that is all the per-chunk work);
* ``tick()`` from a background ticker (:meth:`ProgressReporter.run_ticker`), so a stalled transfer still
  logs a line per interval;
* ``file_done(path, size)`` when a file is written and checked; ``file_skipped(path, size)`` when an
  earlier try already wrote it; ``rewind(n)`` when a failed try of a file is sent again, so its bytes are
  not counted twice;
* ``finish()`` once at the end: the summary line.

Lines go to the ``job.engine.progress`` logger at INFO: one every ``interval`` seconds while bytes flow and one
at each file's end, with bytes done/total, percent, files, average rate (MB/s, decimal) and ETA. The
numbers also travel as ``extra=`` fields, which the JSON log format emits. The clock is injectable
(``clock=time.monotonic``) so tests drive time by hand.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

DEFAULT_INTERVAL = 5.0

_UNITS = ("B", "kB", "MB", "GB", "TB", "PB")


def format_bytes(n: float) -> str:
    """Decimal units, about three significant digits: ``999 B``, ``1.50 kB``, ``12.3 MB``, ``400 GB``."""
    value = float(n)
    if abs(value) < 1000:
        return f"{int(value)} B"
    for unit in _UNITS[1:]:
        value /= 1000
        if abs(value) < 1000 or unit == _UNITS[-1]:
            break
    digits = 2 if abs(value) < 10 else 1 if abs(value) < 100 else 0
    return f"{value:.{digits}f} {unit}"


def format_duration(seconds: float) -> str:
    """``45s``, ``3m05s``, ``1h02m``."""
    total = max(0, round(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


@dataclass(frozen=True, slots=True)
class ProgressSnapshot:
    """Where the transfer stands; the figures every progress line is made of."""

    files_done: int
    files_total: int
    bytes_done: int
    bytes_total: int | None
    """``None`` when a source could not tell a file's size (http without Content-Length)."""
    elapsed: float
    """Seconds since ``start``."""
    listing: bool = False
    """A one-pass source is still listing: the totals are those listed so far."""

    @property
    def percent(self) -> float | None:
        """Share of the bytes done, or ``None`` when the total is unknown."""
        if self.bytes_total is None:
            return None
        if self.bytes_total == 0:
            return 100.0
        return 100.0 * self.bytes_done / self.bytes_total

    @property
    def rate(self) -> float:
        """Average bytes per second since ``start`` (0 before any time passed)."""
        return self.bytes_done / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def eta(self) -> float | None:
        """Seconds left at the average rate, or ``None`` when the total or the rate is unknown."""
        if self.bytes_total is None or self.rate <= 0:
            return None
        return max(0.0, self.bytes_total - self.bytes_done) / self.rate

    def describe(self) -> str:
        """``1.20 GB of 4.00 GB (30.0%), 3 of 10 files, 150 MB/s, ETA 19s``."""
        if self.bytes_total is None:
            amount = f"{format_bytes(self.bytes_done)} ({'still listing' if self.listing else 'total unknown'})"
        else:
            amount = f"{format_bytes(self.bytes_done)} of {format_bytes(self.bytes_total)} ({self.percent:.1f}%)"
        more = "+" if self.listing else ""
        text = f"{amount}, {self.files_done} of {self.files_total}{more} files, {self.rate / 1e6:.1f} MB/s"
        eta = self.eta
        if eta is not None and self.bytes_done < (self.bytes_total or 0):
            text += f", ETA {format_duration(eta)}"
        return text

    def fields(self) -> dict[str, Any]:
        """The figures as ``extra=`` fields for structured (JSON) log lines."""
        return {
            "files_done": self.files_done,
            "files_total": self.files_total,
            "bytes_done": self.bytes_done,
            "bytes_total": self.bytes_total,
            "elapsed_s": round(self.elapsed, 3),
            "mb_per_s": round(self.rate / 1e6, 3),
        }


class ProgressReporter:
    """Count bytes and files as they pass and log a line per interval and per finished file.

    ``interval=None`` takes the interval the engine passes to :meth:`start` (its
    ``TransferSettings.progress_interval``), falling back to 5 s. One reporter serves one transfer.
    """

    def __init__(
        self,
        *,
        interval: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        logger: logging.Logger | None = None,
    ) -> None:
        if interval is not None and interval <= 0:
            raise ValueError(f"progress interval must be > 0 seconds, got {interval}")
        self._interval = interval
        self._clock = clock
        self._log = logger or logging.getLogger("job.engine.progress")
        self.files_total = 0
        self.files_done = 0
        self.bytes_total: int | None = None
        self.bytes_done = 0
        self._listed_bytes: int | None = 0
        self._listing = False
        self._started = clock()
        self._due = float("inf")  # nothing is logged before start()

    @property
    def interval(self) -> float:
        """Seconds between interval lines."""
        return self._interval if self._interval is not None else DEFAULT_INTERVAL

    def start(self, *, files: int | None, total_bytes: int | None, interval: float | None = None) -> None:
        """The listing is known: reset the counters, start the clock and log what is about to move.

        ``files=None``: the files move as the source lists them (a one-pass source); :meth:`listed` counts them
        and :meth:`listing_done` sets the byte total once the listing has ended."""
        if self._interval is None and interval is not None:
            if interval <= 0:
                raise ValueError(f"progress interval must be > 0 seconds, got {interval}")
            self._interval = interval
        self.files_total, self.bytes_total = files or 0, total_bytes
        self._listed_bytes = 0
        self._listing = files is None
        self.files_done = self.bytes_done = 0
        self._started = now = self._clock()
        self._due = now + self.interval
        if files is None:
            self._log.info("transferring the files as the source lists them (it is read once)")
            return
        size = format_bytes(total_bytes) if total_bytes is not None else "an unknown number of bytes"
        self._log.info(
            "transferring %d files, %s", files, size, extra={"files_total": files, "bytes_total": total_bytes}
        )

    def listed(self, size: int | None) -> None:
        """One more file listed while the files already move (after ``start(files=None)``)."""
        self.files_total += 1
        self._listed_bytes = None if size is None or self._listed_bytes is None else self._listed_bytes + size

    def listing_done(self) -> None:
        """The listing ended (after ``start(files=None)``): the byte total is known, when every size was."""
        self.bytes_total, self._listing = self._listed_bytes, False

    def advance(self, n: int) -> None:
        """``n`` more bytes passed. Called once per chunk: a counter and one clock comparison."""
        self.bytes_done += n
        if self._clock() >= self._due:
            self._progress_line()

    def tick(self) -> None:
        """Log an interval line if one is due (the ticker calls this, so stalls still show)."""
        if self._clock() >= self._due:
            self._progress_line()

    def file_done(self, path: PurePosixPath | str, size: int) -> None:
        """One file was written and checked: log it with the overall figures."""
        self.files_done += 1
        snap = self.snapshot()
        self._due = self._started + snap.elapsed + self.interval
        self._log.info(
            "done %s (%s); %s",
            path,
            format_bytes(size),
            snap.describe(),
            extra={"event": "file_done", "path": str(path), "size": size, **snap.fields()},
        )

    def file_skipped(self, path: PurePosixPath | str, size: int) -> None:
        """One file was found at the destination, written by an earlier try: counted as done, not sent."""
        self.bytes_done += size
        self.files_done += 1
        snap = self.snapshot()
        self._log.info(
            "skipped %s (%s): already at the destination from an earlier try; %s",
            path,
            format_bytes(size),
            snap.describe(),
            extra={"event": "file_skipped", "path": str(path), "size": size, **snap.fields()},
        )

    def rewind(self, n: int) -> None:
        """Take back ``n`` bytes of a try that failed: the file is sent again and counted again."""
        self.bytes_done = max(0, self.bytes_done - n)

    def snapshot(self) -> ProgressSnapshot:
        """The figures now."""
        return ProgressSnapshot(
            files_done=self.files_done,
            files_total=self.files_total,
            bytes_done=self.bytes_done,
            bytes_total=self.bytes_total,
            elapsed=self._clock() - self._started,
            listing=self._listing,
        )

    def finish(self) -> ProgressSnapshot:
        """Log the summary line (files, bytes, seconds, MB/s) and return the final figures."""
        snap = self.snapshot()
        self._due = float("inf")
        self._log.info(
            "transferred %d files, %s in %.1f s (%.1f MB/s)",
            snap.files_done,
            format_bytes(snap.bytes_done),
            snap.elapsed,
            snap.rate / 1e6,
            extra={"event": "summary", **snap.fields()},
        )
        return snap

    async def run_ticker(self) -> None:
        """Call :meth:`tick` every interval until cancelled; the engine runs it beside the puts."""
        while True:
            await asyncio.sleep(self.interval)
            self.tick()

    def _progress_line(self) -> None:
        snap = self.snapshot()
        self._due = self._started + snap.elapsed + self.interval
        self._log.info("progress: %s", snap.describe(), extra={"event": "progress", **snap.fields()})
