"""The Destination contract (``job/destinations/base.py``), checked on every destination against real servers.

The same tests run over ``s3`` (SeaweedFS), ``oci`` (distribution, a modelcar on the busybox base) and ``pvc`` (a
local directory), each writing to a target of its own (``destination_case`` in ``conftest.py``):

1. ``put`` of every file, then ``commit``, gives the destination's uri (again when repeated), and a client that
   is not model-sync's (boto3; httpx and ``tarfile`` for the modelcar; plain Python for the directory) reads the
   model back;
2. a ``put`` whose stream fails midway raises the stream's own error, and after ``abort()`` nothing of the
   file is left: no object, manifest or file a reader could take, and no unfinished upload (an S3 multipart
   upload, a registry upload session, a ``.part`` file); the same after a ``put`` that was cancelled;
3. ``abort()`` is idempotent and never raises: twice on an unused destination, twice after a failure;
4. ``lookup()`` returns None for a file never written, and, on a new destination object for the target of an
   earlier successful run (a rerun), an ``Uploaded`` of the right size for each unchanged file, None for a
   changed one. Every destination supports skipping (see their ``lookup`` docstrings).
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
from collections.abc import Sequence
from pathlib import PurePosixPath

import pytest

from job.destinations.base import Destination
from job.model import ObjectInfo, Uploaded
from job.s3.parts import MiB
from tests.contract.cases import MODEL, DestinationCase, objects, stalled, stream
from tests.fakes import sha256_of

pytestmark = pytest.mark.integration

OCI_SESSIONS_LEFT_OPEN = (
    "OciDestination cancels a broken upload with DELETE on the session's Location from POST, whose _state "
    "says offset 0; distribution has already stored the bytes the interrupted PATCH carried, answers 404 "
    "BLOB_UPLOAD_INVALID ('upload resumed at wrong offest') and keeps the session and its partial data under "
    "_uploads/ (purged only after a week by default)"
)
SIZES = {"300KB": 300_000, "12MiB": 12 * MiB}
"""A failing file that fits in one S3 part, and one that needs a multipart upload (5 MiB parts)."""


def known_bug(request: pytest.FixtureRequest, case: DestinationCase, name: str, reason: str) -> None:
    """Mark this test an expected failure (strict) for the destination ``name``."""
    if case.name == name:
        request.applymarker(pytest.mark.xfail(strict=True, reason=reason))


async def put_all(destination: Destination, infos: Sequence[ObjectInfo]) -> list[Uploaded]:
    """Every file put at once, as the engine does (several puts in flight)."""
    puts = [destination.put(obj, stream(MODEL[obj.path.as_posix()])) for obj in infos]
    return list(await asyncio.gather(*puts))


async def fail_a_put(destination: Destination, size: int) -> None:
    """A put whose stream breaks after two thirds of the file raises the stream's own error."""
    data = random.Random(size).randbytes(size)
    broken = ConnectionResetError("the source went away")
    obj = ObjectInfo(PurePosixPath("sub/broken.bin"), size, digest=sha256_of(data))
    with pytest.raises(ConnectionResetError) as caught:
        await destination.put(obj, stream(data, fail_after=size * 2 // 3, error=broken))
    assert caught.value is broken  # the stream's own error, not one a client library wrapped it in


async def fail_a_put_then_abort(destination: Destination, size: int) -> None:
    """:func:`fail_a_put`, then ``abort()`` and ``close()``, as the engine unwinds a failed transfer."""
    try:
        await fail_a_put(destination, size)
        await destination.abort()
    finally:
        await destination.close()


# --- 1. put, commit, read back --------------------------------------------------------------------------------


async def test_put_every_file_then_commit_gives_the_model(destination_case: DestinationCase) -> None:
    destination = destination_case.make()
    infos = objects()
    try:
        uploaded = await put_all(destination, infos)
        assert [u.obj for u in uploaded] == infos
        assert [u.size for u in uploaded] == [len(MODEL[obj.path.as_posix()]) for obj in infos]
        assert all(u.sha256 in (None, u.obj.digest) for u in uploaded)
        committed = await destination.commit(uploaded)
        assert committed.uri == destination_case.uri
        assert await destination.commit(uploaded) == committed  # safe to repeat
    finally:
        await destination.close()
    assert destination_case.read_back() == MODEL
    assert destination_case.open_uploads() == []


# --- 2. a failed put leaves nothing -------------------------------------------------------------------------------


@pytest.mark.parametrize("size", SIZES.values(), ids=SIZES.keys())
async def test_a_failed_put_raises_and_leaves_no_file(destination_case: DestinationCase, size: int) -> None:
    await fail_a_put_then_abort(destination_case.make(), size)
    assert destination_case.stored() == []


@pytest.mark.parametrize("size", SIZES.values(), ids=SIZES.keys())
async def test_a_failed_put_leaves_no_unfinished_upload(
    destination_case: DestinationCase, size: int, request: pytest.FixtureRequest
) -> None:
    known_bug(request, destination_case, "oci", OCI_SESSIONS_LEFT_OPEN)
    await fail_a_put_then_abort(destination_case.make(), size)
    assert destination_case.open_uploads() == []


async def test_a_cancelled_put_leaves_nothing_after_abort(
    destination_case: DestinationCase, request: pytest.FixtureRequest
) -> None:
    known_bug(request, destination_case, "oci", OCI_SESSIONS_LEFT_OPEN)
    destination = destination_case.make()
    started = asyncio.Event()
    obj = ObjectInfo(PurePosixPath("big.bin"), 20 * MiB)
    try:
        # More than one S3 part before the stall: the multipart upload (or the upload session) exists.
        task = asyncio.create_task(destination.put(obj, stalled(bytes(6 * MiB), started.set)))
        async with asyncio.timeout(60):
            await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await destination.abort()
    finally:
        await destination.close()
    assert destination_case.stored() == []
    assert destination_case.open_uploads() == []


# --- 3. abort is idempotent and never raises -------------------------------------------------------------------


async def test_abort_twice_on_an_unused_destination(destination_case: DestinationCase) -> None:
    destination = destination_case.make()
    try:
        await destination.abort()
        await destination.abort()
    finally:
        await destination.close()
    assert destination_case.stored() == []


async def test_abort_twice_after_a_failure(destination_case: DestinationCase) -> None:
    destination = destination_case.make()
    first = objects()[0]
    try:
        assert (await destination.put(first, stream(MODEL[first.path.as_posix()]))).size == first.size
        await fail_a_put(destination, SIZES["12MiB"])
        await destination.abort()
        await destination.abort()
    finally:
        await destination.close()
    assert not any(line.startswith("manifest") for line in destination_case.stored())  # never committed


# --- 4. lookup --------------------------------------------------------------------------------------------------


async def test_lookup_finds_what_an_earlier_run_wrote(destination_case: DestinationCase) -> None:
    infos = objects()
    first = destination_case.make()
    try:
        assert [await first.lookup(obj) for obj in infos] == [None] * len(infos)  # nothing written yet
        await first.commit(await put_all(first, infos))
    finally:
        await first.close()

    rerun = destination_case.make()  # the retried pod: a new process, a new destination object
    try:
        for obj in infos:
            found = await rerun.lookup(obj)
            assert found is not None, obj.path
            assert (found.obj.path, found.size) == (obj.path, obj.size)
        changed = dataclasses.replace(infos[0], digest=sha256_of(b"other bytes"))
        assert await rerun.lookup(changed) is None
        never = ObjectInfo(PurePosixPath("never/written.bin"), 10, digest=sha256_of(b"0123456789"))
        assert await rerun.lookup(never) is None
    finally:
        await rerun.close()
