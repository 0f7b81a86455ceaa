"""The transfer engine on the in-memory fakes: round trip, first error wins, abort once, caps, cancellation."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import PurePosixPath

import pytest

from job.engine.listing import ListingChecks
from job.engine.progress import ProgressReporter
from job.engine.transfer import TransferResult, TransferSettings, check_listing, transfer
from job.errors import ConfigError, DestinationError, IntegrityError, SourceError, UploadRejected
from job.model import ObjectInfo, Uploaded
from job.retry import RetrySettings
from tests.fakes import MemoryDestination, MemorySource, sha256_of

TREE = {
    "config.json": b'{"model_type": "llama"}',
    "sub/config.json": b'{"nested": true}',
    "sub/deep/model.safetensors": bytes(range(256)) * 40,
    "empty.txt": b"",
    "tokenizer.json": b"tokens " * 100,
}

# Sources fail with ConnectionResetError, which the engine retries (a file at most 3 times): no long waits here.
SETTINGS = TransferSettings(parallel_files=3, retry=RetrySettings(initial_wait=0.001, max_wait=0.002))


async def run(source: MemorySource, dest: MemoryDestination, settings: TransferSettings = SETTINGS) -> TransferResult:
    return await transfer(source, dest, settings)


def assert_cleaned_up(source: MemorySource, dest: MemoryDestination) -> None:
    """After a failure: abort exactly once, nothing committed, both ends closed once, abort before close."""
    assert dest.abort_calls == 1
    assert dest.commits == []
    assert "commit" not in dest.calls
    assert source.close_calls == 1
    assert dest.close_calls == 1
    assert dest.calls.index("abort") < dest.calls.index("close")
    assert source.open_now == 0


# --- the happy path ---------------------------------------------------------------------------------


async def test_round_trip_of_a_nested_tree() -> None:
    source = MemorySource(TREE, chunk_size=100)
    dest = MemoryDestination()
    result = await run(source, dest)

    assert dest.stored == TREE
    assert result.files == len(TREE)
    assert result.bytes == sum(len(v) for v in TREE.values())
    assert result.seconds >= 0
    assert result.committed.uri == dest.uri and result.committed.digest
    assert [str(u.obj.path) for u in result.uploaded] == list(TREE)  # listing order
    assert dest.commits == [result.uploaded]
    assert {str(u.obj.path): u.sha256 for u in result.uploaded} == {p: sha256_of(d) for p, d in TREE.items()}
    assert {str(u.obj.path): u.size for u in result.uploaded} == {p: len(d) for p, d in TREE.items()}
    assert dest.calls[-2:] == ["commit", "close"] and dest.abort_calls == 0
    assert source.close_calls == 1 and source.open_now == 0
    assert source.opened == [(p, 0) for p in TREE]  # every file opened once, from the start


async def test_engine_fills_in_the_digest_for_a_destination_that_does_not_hash() -> None:
    dest = MemoryDestination(report_sha256=False)
    digests = {path: sha256_of(data) for path, data in TREE.items()}
    result = await run(MemorySource(TREE, digests=digests), dest)
    assert [u.sha256 for u in result.uploaded] == list(digests.values())
    assert dest.commits[0] == result.uploaded


async def test_engine_hashes_nothing_when_the_source_lists_no_sha256() -> None:
    # The whole-file sha256 would check nothing: no listed digest, and the destination has its own.
    dest = MemoryDestination(report_sha256=False)
    result = await run(MemorySource(TREE), dest)
    assert [u.sha256 for u in result.uploaded] == [None] * len(TREE)


async def test_listed_digests_that_match_and_unknown_sizes_pass() -> None:
    source = MemorySource(TREE, digests={"config.json": sha256_of(TREE["config.json"])}, sizes={"tokenizer.json": None})
    result = await run(source, MemoryDestination())
    assert result.bytes == sum(len(v) for v in TREE.values())


# --- concurrency -------------------------------------------------------------------------------------


@pytest.mark.parametrize("parallel_files", [1, 3])
async def test_files_cap_holds(parallel_files: int) -> None:
    files = {f"shard-{i:02d}.bin": bytes([i]) * 50 for i in range(20)}
    hold = asyncio.Event()
    dest = MemoryDestination(hold=hold)
    task = asyncio.create_task(run(MemorySource(files), dest, TransferSettings(parallel_files=parallel_files)))
    await dest.wait_in_flight(parallel_files)
    for _ in range(20):  # let the loop run: nobody else may start while the first ones are held
        await asyncio.sleep(0)
    assert dest.started == list(files)[:parallel_files]
    hold.set()
    result = await task
    assert dest.max_in_flight == parallel_files
    assert dest.started == list(files)  # started in listing order
    assert result.files == 20 and dest.stored == files


# --- failures: first error wins, siblings cancelled, abort once -------------------------------------


async def test_first_error_cancels_the_other_puts_and_aborts_once() -> None:
    gate = asyncio.Event()
    source = MemorySource({"a": b"a" * 10, "b": b"b" * 10, "c": b"c" * 10}, fail_after={"a": 3}, gates={"a": gate})
    dest = MemoryDestination(hold=asyncio.Event(), hold_paths={"b", "c"})
    task = asyncio.create_task(run(source, dest))
    await dest.wait_in_flight(3)
    gate.set()
    with pytest.raises(SourceError) as caught:
        await task
    assert type(caught.value) is SourceError  # one error, not an ExceptionGroup
    assert (
        str(caught.value) == "reading a from the source: ConnectionResetError: connection reset by peer while reading a"
    )
    assert caught.value.path == "a"
    assert isinstance(caught.value.__cause__, ConnectionResetError)
    assert sorted(dest.cancelled) == ["b", "c"]
    assert dest.finished == []
    assert_cleaned_up(source, dest)


class BreaksWhenCancelled(MemoryDestination):
    """A destination that turns its cancellation into an error of its own (a badly behaved client)."""

    async def put(self, obj: ObjectInfo, data: AsyncIterator[bytes]) -> Uploaded:
        try:
            return await super().put(obj, data)
        except asyncio.CancelledError:
            raise DestinationError(f"uploading {obj.path}: connection closed") from None


async def test_the_first_error_is_raised_not_a_later_one() -> None:
    dest = BreaksWhenCancelled(refuse={"a"}, hold=asyncio.Event(), hold_paths={"b", "c"})
    source = MemorySource({"b": b"1", "c": b"2", "a": b"3"})
    with pytest.raises(UploadRejected) as caught:
        await run(source, dest)
    assert caught.value.status == 403 and "uploading a" in str(caught.value)
    assert_cleaned_up(source, dest)


async def test_destination_refusal_surfaces_as_the_destination_error() -> None:
    source = MemorySource(TREE)
    dest = MemoryDestination(refuse={"sub/config.json"})
    with pytest.raises(UploadRejected, match=r"uploading sub/config.json .*403 DENIED"):
        await run(source, dest, TransferSettings(parallel_files=1))
    assert_cleaned_up(source, dest)


class WrapsEverything(MemoryDestination):
    """A destination whose client wraps whatever the request body raised (as some HTTP stacks do)."""

    async def put(self, obj: ObjectInfo, data: AsyncIterator[bytes]) -> Uploaded:
        try:
            return await super().put(obj, data)
        except Exception as exc:
            raise DestinationError(f"uploading {obj.path}: request failed") from exc


async def test_source_failure_is_a_source_error_even_if_the_destination_wrapped_it() -> None:
    source = MemorySource({"w.bin": b"x" * 100}, fail_after={"w.bin": 40})
    dest = WrapsEverything()
    with pytest.raises(SourceError, match="reading w.bin from the source"):
        await run(source, dest)
    assert_cleaned_up(source, dest)


async def test_opening_failure_is_a_source_error() -> None:
    class CannotOpen(MemorySource):
        def open(self, obj: ObjectInfo, *, offset: int = 0) -> MemorySource:  # type: ignore[override]
            raise OSError(5, "Input/output error")

    source = CannotOpen({"a": b"1"})
    dest = MemoryDestination()
    with pytest.raises(SourceError, match=r"opening a at the source: OSError: \[Errno 5\] Input/output error"):
        await run(source, dest)
    assert_cleaned_up(source, dest)


@pytest.mark.parametrize(
    ("listed", "expected"),
    [(30, r"got 20 bytes, expected 30"), (10, r"sent more than the 10 bytes")],
    ids=["short-read", "long-read"],
)
async def test_size_mismatch_is_an_integrity_error(listed: int, expected: str) -> None:
    source = MemorySource({"m.bin": b"0123456789" * 2}, sizes={"m.bin": listed})
    dest = MemoryDestination()
    with pytest.raises(IntegrityError, match=rf"m.bin.*{expected}"):
        await run(source, dest)
    assert_cleaned_up(source, dest)


async def test_digest_mismatch_is_an_integrity_error() -> None:
    source = MemorySource({"m.bin": b"data"}, digests={"m.bin": sha256_of(b"other")})
    dest = MemoryDestination()
    with pytest.raises(IntegrityError, match="m.bin.*sha256"):
        await run(source, dest)
    assert_cleaned_up(source, dest)


@pytest.mark.parametrize(
    ("dest", "expected"),
    [
        (MemoryDestination(stop_after={"m.bin": 4}), "stopped reading after 4 bytes of 20"),
        (MemoryDestination(tamper=lambda u: replace(u, size=u.size + 1)), "reports 21 bytes, 20 were sent"),
        (MemoryDestination(tamper=lambda u: replace(u, sha256=sha256_of(b"x"))), "the bytes sent hash to"),
    ],
    ids=["did-not-consume", "wrong-size", "wrong-sha256"],
)
async def test_destination_that_misreports_is_an_integrity_error(dest: MemoryDestination, expected: str) -> None:
    data = b"0123456789" * 2
    source = MemorySource({"m.bin": data}, digests={"m.bin": sha256_of(data)})
    with pytest.raises(IntegrityError, match=expected):
        await run(source, dest)
    assert_cleaned_up(source, dest)


async def test_commit_failure_aborts_once() -> None:
    source = MemorySource(TREE)
    dest = MemoryDestination(commit_error=DestinationError("pushing the manifest: 500"))
    with pytest.raises(DestinationError, match="manifest"):
        await run(source, dest)
    assert dest.abort_calls == 1 and dest.close_calls == 1 and source.close_calls == 1


async def test_abort_errors_are_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    source = MemorySource({"a": b"1"})
    dest = MemoryDestination(refuse={"a"}, abort_error=RuntimeError("session gone"))
    with pytest.raises(UploadRejected):
        await run(source, dest)
    assert "aborting the destination did not complete: RuntimeError: session gone" in caplog.text
    assert dest.abort_calls == 1 and dest.close_calls == 1


async def test_close_errors_are_logged_and_do_not_undo_a_commit(caplog: pytest.LogCaptureFixture) -> None:
    class BadClose(MemorySource):
        async def close(self) -> None:
            await super().close()
            raise RuntimeError("session already closed")

    source = BadClose({"a": b"1"})
    dest = MemoryDestination()
    result = await run(source, dest)
    assert result.files == 1 and dest.close_calls == 1 and source.close_calls == 1
    assert "closing the source did not complete: RuntimeError: session already closed" in caplog.text


# --- cancellation ------------------------------------------------------------------------------------


async def test_cancelling_the_transfer_aborts_once_after_the_puts_unwound_and_closes_both() -> None:
    source = MemorySource({"a": b"1" * 10, "b": b"2" * 10, "c": b"3" * 10})
    dest = MemoryDestination(hold=asyncio.Event())
    in_flight_at_abort: list[int] = []
    real_abort = dest.abort

    async def abort() -> None:
        in_flight_at_abort.append(dest.in_flight)
        await real_abort()

    dest.abort = abort  # type: ignore[method-assign]
    task = asyncio.create_task(run(source, dest, TransferSettings(parallel_files=2)))
    await dest.wait_in_flight(2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sorted(dest.cancelled) == ["a", "b"]
    assert in_flight_at_abort == [0]
    assert_cleaned_up(source, dest)


async def test_abort_is_shielded_from_a_second_cancellation() -> None:
    abort_hold = asyncio.Event()
    source = MemorySource({"a": b"1"})
    dest = MemoryDestination(hold=asyncio.Event(), abort_hold=abort_hold)
    task = asyncio.create_task(run(source, dest))
    await dest.wait_in_flight(1)
    task.cancel()
    await dest.aborting.wait()
    task.cancel()  # SIGTERM twice, or a timeout firing during cleanup
    await asyncio.sleep(0)
    assert not task.done()
    abort_hold.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert dest.abort_done.is_set()  # abort ran to its end
    assert_cleaned_up(source, dest)


async def test_a_stuck_abort_is_given_up_after_the_cleanup_timeout(caplog: pytest.LogCaptureFixture) -> None:
    source = MemorySource({"a": b"1"})
    dest = MemoryDestination(refuse={"a"}, abort_hold=asyncio.Event())  # never set
    with pytest.raises(UploadRejected):
        await run(source, dest, TransferSettings(cleanup_timeout=0.01))
    assert "aborting the destination did not complete: timed out after" in caplog.text
    assert dest.close_calls == 1 and source.close_calls == 1


# --- the listing -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({}, "source holds no files"),
        ([("a.bin", b"1"), ("a.bin", b"2")], "source lists a.bin twice"),
        ({"a": b"1", "a/b": b"2"}, "source lists a both as a file and as a directory of a/b"),
        ({"x/y/z": b"1", "x/y": b"2"}, "source lists x/y both as a file and as a directory of x/y/z"),
        ({"../etc/passwd": b"1"}, "'..' would escape"),
    ],
    ids=["empty", "duplicate", "file-then-dir", "dir-then-file", "unsafe"],
)
async def test_bad_listings_are_refused_before_any_byte_moves(
    files: dict[str, bytes] | list[tuple[str, bytes]], message: str
) -> None:
    source = MemorySource(files)
    dest = MemoryDestination()
    with pytest.raises(SourceError, match=message):
        await run(source, dest)
    assert source.opened == [] and dest.started == []
    assert_cleaned_up(source, dest)


async def test_listing_failure_is_a_source_error() -> None:
    source = MemorySource({"a": b"1"}, list_error=TimeoutError("read timed out"))
    dest = MemoryDestination()
    with pytest.raises(SourceError, match="listing the source: TimeoutError: read timed out"):
        await run(source, dest)
    assert_cleaned_up(source, dest)


def test_a_one_pass_listing_may_name_a_file_again_but_never_as_a_directory() -> None:
    checks = ListingChecks(again=True)
    for path in ("a/b", "c", "a/b"):  # a later version of a/b (an archive's replaced entry)
        checks.add(ObjectInfo(path=PurePosixPath(path), size=1))
    with pytest.raises(SourceError, match="source lists c both as a file and as a directory of c/d"):
        checks.add(ObjectInfo(path=PurePosixPath("c/d"), size=1))
    with pytest.raises(SourceError, match="source lists a both as a file and as a directory of a/b"):
        checks.add(ObjectInfo(path=PurePosixPath("a"), size=1))
    with pytest.raises(SourceError, match="source lists x twice"):
        check_listing([ObjectInfo(path=PurePosixPath("x"), size=1)] * 2)


def test_check_listing_accepts_siblings_with_common_prefixes() -> None:
    paths = ["a", "ab/c", "a.json", "sub/config.json", "config.json", "sub/deeper/config.json"]
    check_listing([ObjectInfo(path=PurePosixPath(p), size=1) for p in paths])
    with pytest.raises(SourceError, match="negative size"):
        check_listing([ObjectInfo(path=PurePosixPath("a"), size=-1)])


# --- progress ----------------------------------------------------------------------------------------


async def test_progress_logs_each_file_end_and_a_summary_but_nothing_per_chunk(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="job.engine.progress")
    frozen = ProgressReporter(interval=5, clock=lambda: 100.0)
    source = MemorySource(TREE, chunk_size=1)  # thousands of chunks
    await transfer(source, MemoryDestination(), SETTINGS, progress=frozen)
    messages = [r.getMessage() for r in caplog.records if r.name == "job.engine.progress"]
    assert messages[0] == "transferring 5 files, 11.0 kB"
    assert sorted(m.split(" ")[1] for m in messages[1:-1]) == sorted(TREE)
    assert all(m.startswith("done ") for m in messages[1:-1])
    assert messages[-1] == "transferred 5 files, 11.0 kB in 0.0 s (0.0 MB/s)"


async def test_progress_interval_lines_while_bytes_flow(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="job.engine.progress")
    ticks = iter(range(1_000_000))
    reporter = ProgressReporter(clock=lambda: float(next(ticks)))  # one second per clock reading
    source = MemorySource({"big.bin": b"x" * 100}, chunk_size=10)
    await transfer(source, MemoryDestination(), TransferSettings(progress_interval=3), progress=reporter)
    assert reporter.interval == 3  # taken from the settings, since the reporter set none
    messages = [r.getMessage() for r in caplog.records if r.name == "job.engine.progress"]
    progress_lines = [m for m in messages if m.startswith("progress: ")]
    assert 2 <= len(progress_lines) < 10  # some lines over ~12 fake seconds, fewer than the 10 chunks
    assert progress_lines[0].startswith("progress: 30 B of 100 B (30.0%), 0 of 1 files")
    assert messages[-2].startswith("done big.bin (100 B); 100 B of 100 B (100.0%), 1 of 1 files")


# --- settings ----------------------------------------------------------------------------------------


def test_settings_are_validated() -> None:
    with pytest.raises(ConfigError, match="parallel_files"):
        TransferSettings(parallel_files=0)
    with pytest.raises(ConfigError):
        TransferSettings(progress_interval=0)


async def test_a_listing_over_max_files_stops_at_the_bound() -> None:
    """A source that lists without end (a hostile server, a broken one) ends in one line, not in memory."""
    source = MemorySource({f"f{i}": b"x" for i in range(50)})
    destination = MemoryDestination()
    with pytest.raises(SourceError, match=r"more than 10 files \(MODEL_SYNC_MAX_FILES\)"):
        await transfer(source, destination, TransferSettings(max_files=10))
    assert destination.calls == ["abort", "close"]
