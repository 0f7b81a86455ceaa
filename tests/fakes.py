"""In-memory Source and Destination for engine and orchestration tests.

They follow the contracts in ``job.sources.base`` and ``job.destinations.base`` and record what the
engine did to them, so a test can assert call order, concurrency and cleanup without a server:

* :class:`FailingStream`: an ``AsyncIterator[bytes]`` over some bytes, in fixed-size chunks, that can
  wait on an event before its first chunk and raise an error after ``fail_after`` bytes.
* :class:`MemorySource`: ``{path: bytes}`` listed in the given order; per-path failures, gates, lying
  sizes and listed digests.
* :class:`MemoryDestination`: stores what it is given; records ``put``/``commit``/``abort``/``close``
  calls and the peak number of concurrent puts; can refuse a path (``UploadRejected``), hold puts on an
  event, stop reading a stream early, misreport what it wrote, fail ``commit`` or ``abort``.

Only events are used for coordination (no sleeps): e.g. ``await dest.wait_in_flight(3)`` then
``hold.set()``.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import PurePosixPath

from job.destinations.base import OneFilePerPut
from job.errors import UploadRejected
from job.model import Committed, ObjectInfo, Uploaded


def sha256_of(data: bytes) -> str:
    """``sha256:<hex>`` of ``data``, as the engine and destinations write digests."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def connection_reset(path: str) -> BaseException:
    """The default source failure: what a dropped TCP connection looks like to a client library."""
    return ConnectionResetError(f"connection reset by peer while reading {path}")


class FailingStream:
    """Yield ``data`` in ``chunk_size`` pieces; optionally wait for ``gate`` first, fail after ``fail_after``.

    With ``fail_after=n`` the stream yields exactly ``n`` bytes, then raises ``error`` (the last chunk
    before the failure is cut so the count is exact). ``sent`` keeps every chunk yielded, so a test can
    check the consumer got the very same objects.
    """

    def __init__(
        self,
        data: bytes,
        *,
        chunk_size: int = 4,
        fail_after: int | None = None,
        error: BaseException | None = None,
        gate: asyncio.Event | None = None,
    ) -> None:
        if chunk_size < 1:
            raise ValueError("chunk_size must be >= 1")
        self.data = data
        self.chunk_size = chunk_size
        self.fail_after = fail_after
        self.error = error if error is not None else ConnectionResetError("connection reset by peer")
        self.gate = gate
        self.position = 0
        self.sent: list[bytes] = []

    def __aiter__(self) -> FailingStream:
        return self

    async def __anext__(self) -> bytes:
        if self.gate is not None:
            await self.gate.wait()
            self.gate = None
        end = min(len(self.data), self.position + self.chunk_size)
        if self.fail_after is not None:
            if self.position >= self.fail_after:
                raise self.error
            end = min(end, self.fail_after)
        if self.position >= end:
            raise StopAsyncIteration
        chunk = self.data[self.position : end]
        self.position = end
        self.sent.append(chunk)
        await asyncio.sleep(0)  # yield to the loop like a network read would
        return chunk


class MemorySource:
    """A Source over ``{path: bytes}``, listed in the order given.

    ``files`` may also be a sequence of ``(path, bytes)`` pairs, to list a path twice. Options, all keyed
    by path as a string:

    * ``fail_after``: the stream raises ``error(path)`` (default: ``ConnectionResetError``) after n bytes;
    * ``sizes``: the size to *list* instead of the true one (a lying source; ``None`` = unknown);
    * ``digests``: the digest to list (``"sha256:<hex>"``);
    * ``gates``: reading the path waits for the event before the first chunk;
    * ``list_error``: ``list()`` raises it after listing nothing;
    * ``fail_times``: ``{path: n}`` only the first n opens of the path fail (``fail_after``), later ones read
      to the end (a transient failure);
    * ``seekable``: the ``seekable`` attribute the engine reads (resume a broken read at its offset);
    * ``etags``: the ETag to list.

    Records ``opened`` (path, offset), ``streams`` (the :class:`FailingStream` of each open, by path),
    ``open_now`` (streams currently open) and ``close_calls``.
    """

    def __init__(
        self,
        files: Mapping[str, bytes] | Sequence[tuple[str, bytes]],
        *,
        chunk_size: int = 4,
        fail_after: Mapping[str, int] | None = None,
        error: Callable[[str], BaseException] = connection_reset,
        sizes: Mapping[str, int | None] | None = None,
        digests: Mapping[str, str] | None = None,
        gates: Mapping[str, asyncio.Event] | None = None,
        list_error: BaseException | None = None,
        fail_times: Mapping[str, int] | None = None,
        seekable: bool = False,
        etags: Mapping[str, str] | None = None,
    ) -> None:
        self.entries: list[tuple[str, bytes]] = list(files.items() if isinstance(files, Mapping) else files)
        self.files = dict(self.entries)
        self.chunk_size = chunk_size
        self.fail_after = dict(fail_after or {})
        self.error = error
        self.sizes = dict(sizes or {})
        self.digests = dict(digests or {})
        self.gates = dict(gates or {})
        self.list_error = list_error
        self.fail_times = dict(fail_times or {})
        self.seekable = seekable
        self.one_pass = False
        self.etags = dict(etags or {})
        self.opened: list[tuple[str, int]] = []
        self.streams: dict[str, FailingStream] = {}
        self.open_now = 0
        self.close_calls = 0

    def info(self, path: str) -> ObjectInfo:
        """The ObjectInfo this source lists for ``path``."""
        size = self.sizes[path] if path in self.sizes else len(self.files[path])
        return ObjectInfo(path=PurePosixPath(path), size=size, digest=self.digests.get(path), etag=self.etags.get(path))

    async def _list(self) -> AsyncIterator[ObjectInfo]:
        if self.list_error is not None:
            raise self.list_error
        for path, _ in self.entries:
            yield self.info(path)

    def list(self) -> AsyncIterator[ObjectInfo]:
        """Yield every entry in order."""
        return self._list()

    @asynccontextmanager
    async def open(self, obj: ObjectInfo, *, offset: int = 0) -> AsyncIterator[AsyncIterator[bytes]]:
        """Stream the bytes of ``obj`` from ``offset``."""
        path = str(obj.path)
        self.opened.append((path, offset))
        fail_after = self.fail_after.get(path)
        if path in self.fail_times:
            if self.fail_times[path] <= 0:
                fail_after = None
            self.fail_times[path] -= 1
        stream = FailingStream(
            self.files[path][offset:],
            chunk_size=self.chunk_size,
            fail_after=None if fail_after is None else max(0, fail_after - offset),
            error=self.error(path),
            gate=self.gates.get(path),
        )
        self.streams[path] = stream
        self.open_now += 1
        try:
            yield stream
        finally:
            self.open_now -= 1

    async def close(self) -> None:
        """Count the call."""
        self.close_calls += 1


class MemoryDestination(OneFilePerPut):
    """A Destination that keeps what it is given in ``stored`` and records how it was called.

    Options:

    * ``refuse``: paths whose ``put`` raises ``UploadRejected`` (status 403) before reading a byte;
    * ``hold``: puts wait for this event before reading (only for ``hold_paths`` when given);
    * ``stop_after``: ``{path: n}`` stop reading the stream after at least n bytes (a broken destination);
    * ``report_sha256=False``: return ``Uploaded.sha256 is None`` (a destination that does not hash);
    * ``tamper``: rewrite each ``Uploaded`` before returning it (a destination that misreports);
    * ``commit_error`` / ``abort_error``: raise these from ``commit`` / ``abort``;
    * ``abort_hold``: ``abort`` waits for this event (to cancel the transfer while it aborts).

    Records: ``calls`` (``"put:<path>"``, ``"commit"``, ``"abort"``, ``"close"``, in order), ``started``,
    ``finished`` and ``cancelled`` puts (paths), ``commits`` (the ``Uploaded`` lists committed),
    ``in_flight`` and ``max_in_flight``; ``aborting`` is set when ``abort`` is entered and
    ``abort_done`` once it returned.
    """

    def __init__(
        self,
        *,
        refuse: Collection[str] = (),
        hold: asyncio.Event | None = None,
        hold_paths: Collection[str] | None = None,
        stop_after: Mapping[str, int] | None = None,
        report_sha256: bool = True,
        tamper: Callable[[Uploaded], Uploaded] | None = None,
        commit_error: BaseException | None = None,
        abort_error: BaseException | None = None,
        abort_hold: asyncio.Event | None = None,
        uri: str = "memory://destination/model",
    ) -> None:
        self.refuse = set(refuse)
        self.hold = hold
        self.hold_paths = None if hold_paths is None else set(hold_paths)
        self.stop_after = dict(stop_after or {})
        self.report_sha256 = report_sha256
        self.tamper = tamper
        self.commit_error = commit_error
        self.abort_error = abort_error
        self.abort_hold = abort_hold
        self.uri = uri
        self.stored: dict[str, bytes] = {}
        self.calls: list[str] = []
        self.started: list[str] = []
        self.finished: list[str] = []
        self.cancelled: list[str] = []
        self.commits: list[list[Uploaded]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.aborting = asyncio.Event()
        self.abort_done = asyncio.Event()
        self._changed = asyncio.Condition()

    @property
    def abort_calls(self) -> int:
        return self.calls.count("abort")

    @property
    def close_calls(self) -> int:
        return self.calls.count("close")

    async def wait_in_flight(self, n: int) -> None:
        """Return once at least ``n`` puts are running at the same time."""
        async with self._changed:
            await self._changed.wait_for(lambda: self.in_flight >= n)

    async def _set_in_flight(self, delta: int) -> None:
        async with self._changed:
            self.in_flight += delta
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            self._changed.notify_all()

    async def lookup(self, obj: ObjectInfo) -> Uploaded | None:
        """Nothing was written by an earlier try."""
        return None

    async def put(self, obj: ObjectInfo, data: AsyncIterator[bytes]) -> Uploaded:
        """Read ``data`` (to its end unless told otherwise) and keep the bytes."""
        path = str(obj.path)
        self.calls.append(f"put:{path}")
        self.started.append(path)
        await self._set_in_flight(+1)
        try:
            if path in self.refuse:
                raise UploadRejected(
                    f"uploading {path} to {self.uri}: 403 DENIED: refused by the fake destination",
                    status=403,
                    code="DENIED",
                    uri=self.uri,
                    path=path,
                )
            if self.hold is not None and (self.hold_paths is None or path in self.hold_paths):
                await self.hold.wait()
            buf = bytearray()
            hasher = hashlib.sha256()
            limit = self.stop_after.get(path)
            async for chunk in data:
                buf += chunk
                hasher.update(chunk)
                if limit is not None and len(buf) >= limit:
                    break
            self.stored[path] = bytes(buf)
            uploaded = Uploaded(
                obj=obj, size=len(buf), sha256="sha256:" + hasher.hexdigest() if self.report_sha256 else None
            )
            if self.tamper is not None:
                uploaded = self.tamper(uploaded)
            self.finished.append(path)
            return uploaded
        except asyncio.CancelledError:
            self.cancelled.append(path)
            raise
        finally:
            # Not awaiting here: a cancelled put must not need the loop to finish unwinding.
            self.in_flight -= 1

    async def commit(self, uploaded: Iterable[Uploaded]) -> Committed:
        """Record the committed list; the digest is the sha256 of the listed paths and digests."""
        self.calls.append("commit")
        if self.commit_error is not None:
            raise self.commit_error
        items = list(uploaded)
        self.commits.append(items)
        manifest = "\n".join(f"{u.obj.path} {u.sha256}" for u in items).encode()
        return Committed(uri=self.uri, digest=sha256_of(manifest))

    async def abort(self) -> None:
        """Record the call; optionally wait for ``abort_hold`` and raise ``abort_error``."""
        self.calls.append("abort")
        self.aborting.set()
        if self.abort_hold is not None:
            await self.abort_hold.wait()
        self.abort_done.set()  # not reached if abort itself was cancelled
        if self.abort_error is not None:
            raise self.abort_error

    async def close(self) -> None:
        """Record the call."""
        self.calls.append("close")
