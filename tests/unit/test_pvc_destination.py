"""Destination pvc: files land as ``.part`` then renamed, planted symlinks never redirect a write, reruns skip."""

from __future__ import annotations

import asyncio
import errno
import os
import stat
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path, PurePosixPath

import pytest

import job.destinations.pvc as pvc
from job.destinations.pvc import XATTR_SOURCE, PvcDestination
from job.engine.transfer import TransferSettings, transfer
from job.errors import DestinationError
from job.model import ObjectInfo, source_identity
from job.retry import RetrySettings, is_retryable
from tests.fakes import FailingStream, MemorySource, sha256_of

TREE = {
    "config.json": b'{"model_type": "llama"}',
    "sub/deep/model.safetensors": bytes(range(256)) * 400,
    "sub/tokenizer.json": b"tokens " * 100,
    "empty.txt": b"",
}
DIGESTS = {path: sha256_of(data) for path, data in TREE.items()}
SETTINGS = TransferSettings(parallel_files=3, retry=RetrySettings(initial_wait=0.001, max_wait=0.002))


def files_below(root: Path) -> dict[str, bytes]:
    """Every file below ``root`` (symlinks not followed), read with plain Python."""
    found: dict[str, bytes] = {}
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            path = Path(dirpath) / name
            found[path.relative_to(root).as_posix()] = b"<link>" if path.is_symlink() else path.read_bytes()
    return found


def info(path: str, data: bytes, *, digest: bool = True, etag: str | None = None) -> ObjectInfo:
    return ObjectInfo(PurePosixPath(path), len(data), digest=sha256_of(data) if digest else None, etag=etag)


async def put(dest: PvcDestination, obj: ObjectInfo, data: bytes) -> None:
    uploaded = await dest.put(obj, FailingStream(data, chunk_size=1000))
    assert uploaded.size == len(data)


@pytest.fixture
def umask_077() -> Iterator[None]:
    """A restrictive umask, to show the modes do not depend on it."""
    old = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(old)


def xattrs_supported(directory: Path) -> bool:
    probe = directory / ".xattr-probe"
    probe.write_bytes(b"")
    try:
        os.setxattr(probe, XATTR_SOURCE, b"x")
    except OSError:
        return False
    finally:
        probe.unlink()
    return True


# --- the happy path ----------------------------------------------------------------------------------------


async def test_round_trip_through_the_engine(tmp_path: Path, umask_077: None) -> None:
    root = tmp_path / "claim" / "models" / "m"  # created, parents too
    dest = PvcDestination(root, uri="pvc://claim/models/m")
    result = await transfer(MemorySource(TREE, chunk_size=100, digests=DIGESTS), dest, SETTINGS)

    assert files_below(root) == TREE  # no .part left
    assert result.committed.uri == "pvc://claim/models/m"
    assert [u.sha256 for u in result.uploaded] == [DIGESTS[p] for p in TREE]  # filled in by the engine
    assert [u.detail for u in result.uploaded] == [root / p for p in TREE]
    assert not any(u.skipped for u in result.uploaded)
    # modes: exactly 0644 and 0755 although the umask is 077
    for path in TREE:
        assert stat.S_IMODE((root / path).stat().st_mode) == 0o644, path
    for folder in (root, root / "sub", root / "sub" / "deep"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o755, folder


async def test_uri_defaults_to_the_root_and_commit_is_repeatable(tmp_path: Path) -> None:
    dest = PvcDestination(tmp_path)
    obj = info("a.bin", b"abc")
    await put(dest, obj, b"abc")
    first = await dest.commit([])
    assert first.uri == str(tmp_path)
    assert await dest.commit([]) == first
    await dest.close()


async def test_the_root_may_be_a_symlink(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "mnt-models").symlink_to(real)  # as KServe's mounts can be
    await transfer(MemorySource(TREE), PvcDestination(tmp_path / "mnt-models"), SETTINGS)
    assert files_below(real) == TREE


async def test_writes_as_part_then_renames(tmp_path: Path) -> None:
    dest = PvcDestination(tmp_path, write_size=1)
    data = b"x" * 10
    more = asyncio.Event()
    written = asyncio.Event()

    async def gated() -> AsyncIterator[bytes]:
        yield data[:5]
        written.set()
        await more.wait()
        yield data[5:]

    task = asyncio.create_task(dest.put(info("sub/w.bin", data), gated()))
    await written.wait()  # the stream is asked for more only once the first batch was written
    assert files_below(tmp_path) == {"sub/w.bin.part": data[:5]}
    more.set()
    uploaded = await task
    assert (uploaded.size, uploaded.sha256, uploaded.detail) == (10, None, tmp_path / "sub" / "w.bin")
    assert files_below(tmp_path) == {"sub/w.bin": data}


async def test_tiny_chunks_are_written_in_batches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    writes: list[int] = []
    real = pvc._write_all

    def counting(fd: int, chunks: list[bytes]) -> None:
        writes.append(len(chunks))
        real(fd, chunks)

    monkeypatch.setattr(pvc, "_write_all", counting)
    data = os.urandom(100_000)
    dest = PvcDestination(tmp_path, write_size=64 * 1024)
    await dest.put(info("w.bin", data), FailingStream(data, chunk_size=4))
    assert (tmp_path / "w.bin").read_bytes() == data
    assert len(writes) == 2  # not 25,000 thread hops
    assert sum(writes) == 25_000


# --- failures leave nothing ----------------------------------------------------------------------------------


async def test_a_failing_stream_leaves_neither_file_nor_part(tmp_path: Path) -> None:
    data = os.urandom(50_000)
    broken = ConnectionResetError("the source went away")
    dest = PvcDestination(tmp_path, write_size=1000)
    with pytest.raises(ConnectionResetError) as caught:
        await dest.put(info("sub/w.bin", data), FailingStream(data, chunk_size=1000, fail_after=30_000, error=broken))
    assert caught.value is broken  # the stream's own error
    await dest.abort()
    assert files_below(tmp_path) == {}


async def test_a_wrong_digest_through_the_engine_leaves_nothing(tmp_path: Path) -> None:
    source = MemorySource({"w.bin": b"actual bytes"}, digests={"w.bin": sha256_of(b"listed bytes")})
    with pytest.raises(Exception, match="sha256"):
        await transfer(source, PvcDestination(tmp_path), SETTINGS)
    assert files_below(tmp_path) == {}


async def test_cancellation_removes_the_part(tmp_path: Path) -> None:
    dest = PvcDestination(tmp_path, write_size=1)
    started = asyncio.Event()

    async def stalled() -> AsyncIterator[bytes]:
        yield b"x" * 1000
        started.set()
        await asyncio.Event().wait()
        yield b""  # pragma: no cover

    task = asyncio.create_task(dest.put(ObjectInfo(PurePosixPath("sub/big.bin"), 10_000), stalled()))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await dest.abort()
    await dest.abort()  # idempotent
    await dest.close()
    assert files_below(tmp_path) == {}


async def test_cancellation_during_a_write_cleans_up_once_it_returned(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    entered, release = threading.Event(), threading.Event()
    real = pvc._write_all

    def slow(fd: int, chunks: list[bytes]) -> None:
        entered.set()
        release.wait(10)
        real(fd, chunks)

    monkeypatch.setattr(pvc, "_write_all", slow)
    dest = PvcDestination(tmp_path, write_size=1)
    task = asyncio.create_task(dest.put(ObjectInfo(PurePosixPath("w.bin"), 3), FailingStream(b"abc", chunk_size=3)))
    await asyncio.to_thread(entered.wait, 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (tmp_path / "w.bin.part").exists()  # still being written by the thread: not closed under it
    release.set()
    await dest.abort()  # waits for the write, then the .part is gone
    assert files_below(tmp_path) == {}


async def test_disk_errors_name_the_file_and_are_not_retried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(fd: int, chunks: list[bytes]) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(pvc, "_write_all", full)
    source = MemorySource({"sub/w.bin": b"weights"})
    with pytest.raises(DestinationError) as caught:
        await transfer(source, PvcDestination(tmp_path), SETTINGS)
    assert str(caught.value) == f"writing sub/w.bin to {tmp_path}: No space left on device"
    assert not is_retryable(caught.value)
    assert source.opened == [("sub/w.bin", 0)]  # one try
    assert files_below(tmp_path) == {}


# --- hostile directories -----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["sub/x", "sub/deeper/x"])
async def test_a_planted_directory_symlink_is_never_followed(tmp_path: Path, path: str) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "sub").symlink_to(outside)
    dest = PvcDestination(root)
    with pytest.raises(DestinationError, match=rf"^writing {path} to {root}: sub is a symlink \(to '{outside}'\)"):
        await put(dest, info(path, b"evil"), b"evil")
    assert list(outside.iterdir()) == []
    # through the engine as well: the listing fails on that file, nothing lands outside
    with pytest.raises(DestinationError, match="sub is a symlink"):
        await transfer(MemorySource({"ok.txt": b"ok", path: b"evil"}), PvcDestination(root), SETTINGS)
    assert list(outside.iterdir()) == []


async def test_a_symlink_inside_the_root_is_not_followed_either(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "alias").symlink_to(tmp_path / "real")
    with pytest.raises(DestinationError, match="alias is a symlink"):
        await put(PvcDestination(tmp_path), info("alias/x", b"x"), b"x")
    assert list((tmp_path / "real").iterdir()) == []


async def test_a_file_where_a_directory_must_be(tmp_path: Path) -> None:
    (tmp_path / "sub").write_bytes(b"a file")
    with pytest.raises(DestinationError, match="writing sub/x to .*: sub is not a directory"):
        await put(PvcDestination(tmp_path), info("sub/x", b"x"), b"x")


async def test_a_final_name_that_is_a_symlink_is_replaced_not_written_through(tmp_path: Path) -> None:
    root, target = tmp_path / "root", tmp_path / "target.txt"
    root.mkdir()
    target.write_bytes(b"keep me")
    (root / "config.json").symlink_to(target)
    await put(PvcDestination(root), info("config.json", b"new"), b"new")
    assert not (root / "config.json").is_symlink()
    assert (root / "config.json").read_bytes() == b"new"
    assert target.read_bytes() == b"keep me"


async def test_a_directory_where_the_file_goes_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "w.bin").mkdir()
    with pytest.raises(DestinationError, match="writing w.bin to .*: a directory of that name is in the way"):
        await put(PvcDestination(tmp_path), info("w.bin", b"x"), b"x")
    assert files_below(tmp_path) == {}


async def test_a_planted_part_symlink_is_removed_not_followed(tmp_path: Path) -> None:
    root, target = tmp_path / "root", tmp_path / "target.txt"
    root.mkdir()
    target.write_bytes(b"keep me")
    (root / "w.bin.part").symlink_to(target)
    await put(PvcDestination(root), info("w.bin", b"new"), b"new")
    assert files_below(root) == {"w.bin": b"new"}
    assert target.read_bytes() == b"keep me"


async def test_a_listing_with_x_and_x_part_is_refused(tmp_path: Path) -> None:
    source = MemorySource({"w.bin": b"a", "w.bin.part": b"b"})
    with pytest.raises(DestinationError, match=r"w.bin.part .*temporary name of w.bin"):
        await transfer(source, PvcDestination(tmp_path), SETTINGS)


async def test_x_and_x_part_are_refused_also_when_planned_one_by_one(tmp_path: Path) -> None:
    # A one-pass source (a tar.gz) is planned file by file: the check spans the calls, in either order.
    for first, second in (("w.bin", "w.bin.part"), ("w.bin.part", "w.bin")):
        destination = PvcDestination(tmp_path)
        await destination.plan([ObjectInfo(PurePosixPath(first), 1)])
        with pytest.raises(DestinationError, match=r"w.bin.part .*temporary name of w.bin"):
            await destination.plan([ObjectInfo(PurePosixPath(second), 1)], taken=1)


# --- reruns --------------------------------------------------------------------------------------------------


async def test_a_stale_part_from_a_killed_try_does_not_break_a_rerun(tmp_path: Path) -> None:
    (tmp_path / "sub" / "deep").mkdir(parents=True)
    (tmp_path / "sub" / "deep" / "model.safetensors.part").write_bytes(b"half of it")
    await transfer(MemorySource(TREE, digests=DIGESTS), PvcDestination(tmp_path), SETTINGS)
    assert files_below(tmp_path) == TREE


async def test_a_rerun_skips_identical_files_by_sha256(tmp_path: Path) -> None:
    await transfer(MemorySource(TREE, digests=DIGESTS), PvcDestination(tmp_path), SETTINGS)
    rerun = MemorySource(TREE, digests=DIGESTS)
    result = await transfer(rerun, PvcDestination(tmp_path), SETTINGS)
    assert rerun.opened == []  # nothing read again
    assert all(u.skipped for u in result.uploaded)
    assert [u.sha256 for u in result.uploaded] == [DIGESTS[p] for p in TREE]
    assert files_below(tmp_path) == TREE


async def test_a_rerun_rewrites_a_file_whose_content_differs(tmp_path: Path) -> None:
    await transfer(MemorySource(TREE, digests=DIGESTS), PvcDestination(tmp_path), SETTINGS)
    # damaged on disk, same size: its sha256 no longer matches the listed one
    (tmp_path / "config.json").write_bytes(b"X" * len(TREE["config.json"]))
    # a new version at the source, same size
    changed = dict(TREE, **{"sub/tokenizer.json": b"TOKENS " * 100})
    rerun = MemorySource(changed, digests={p: sha256_of(d) for p, d in changed.items()})
    result = await transfer(rerun, PvcDestination(tmp_path), SETTINGS)
    assert sorted(path for path, _ in rerun.opened) == ["config.json", "sub/tokenizer.json"]
    assert [str(u.obj.path) for u in result.uploaded if not u.skipped] == ["config.json", "sub/tokenizer.json"]
    assert files_below(tmp_path) == changed


async def test_lookup_finds_nothing_for_a_missing_root_and_does_not_create_it(tmp_path: Path) -> None:
    dest = PvcDestination(tmp_path / "missing")
    assert await dest.lookup(info("a.bin", b"abc")) is None
    assert not (tmp_path / "missing").exists()


async def test_lookup_ignores_symlinks_and_wrong_sizes(tmp_path: Path) -> None:
    (tmp_path / "real.bin").write_bytes(b"abc")
    (tmp_path / "link.bin").symlink_to(tmp_path / "real.bin")
    dest = PvcDestination(tmp_path)
    assert await dest.lookup(info("real.bin", b"abc")) is not None
    assert await dest.lookup(info("link.bin", b"abc")) is None  # a link is never taken for the file
    assert await dest.lookup(info("real.bin", b"abcd")) is None
    assert await dest.lookup(ObjectInfo(PurePosixPath("real.bin"), 3)) is None  # no identity: cannot tell


async def test_a_rerun_skips_by_the_source_identity_xattr(tmp_path: Path) -> None:
    if not xattrs_supported(tmp_path):
        pytest.skip(f"the file system of {tmp_path} has no user xattrs: nothing records the source identity")
    etags = {path: f'"etag-{i}"' for i, path in enumerate(TREE)}
    await transfer(MemorySource(TREE, etags=etags), PvcDestination(tmp_path), SETTINGS)  # no digests listed
    obj = info("config.json", TREE["config.json"], digest=False, etag=etags["config.json"])
    assert os.getxattr(tmp_path / "config.json", XATTR_SOURCE) == str(source_identity(obj)).encode()

    rerun = MemorySource(TREE, etags=etags)
    result = await transfer(rerun, PvcDestination(tmp_path), SETTINGS)
    assert rerun.opened == []
    assert all(u.skipped and u.sha256 is None for u in result.uploaded)

    newer = MemorySource(TREE, etags=dict(etags, **{"config.json": '"etag-new"'}))
    result = await transfer(newer, PvcDestination(tmp_path), SETTINGS)
    assert [path for path, _ in newer.opened] == ["config.json"]
    assert files_below(tmp_path) == TREE


async def test_without_xattrs_files_are_sent_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def unsupported(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))

    monkeypatch.setattr(os, "setxattr", unsupported)
    etags = {path: f'"etag-{i}"' for i, path in enumerate(TREE)}
    await transfer(MemorySource(TREE, etags=etags), PvcDestination(tmp_path), SETTINGS)  # best effort: no error
    assert files_below(tmp_path) == TREE
    monkeypatch.undo()
    rerun = MemorySource(TREE, etags=etags)
    await transfer(rerun, PvcDestination(tmp_path), SETTINGS)
    assert sorted(path for path, _ in rerun.opened) == sorted(TREE)
