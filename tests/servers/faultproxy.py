"""A fault-injecting TCP proxy on 127.0.0.1: between the job and a real server, it breaks chosen requests.

:class:`FaultProxy` listens on a free port of 127.0.0.1 and forwards every connection to one upstream
(SeaweedFS, distribution, the http test server, the Model Registry stand-in). It reads each request's head
(HTTP/1.1, bodies framed by ``Content-Length`` or chunked; clients here do not pipeline), so a fault can
target requests by method and path, and the rest pass through byte for byte. Faults (:class:`Fault`):

* ``reset``: relay ``after`` bytes of the response (head included), then reset the connection (RST, via
  ``SO_LINGER`` 0); with ``direction="request"`` it is the upload that breaks after ``after`` request bytes;
* ``truncate``: relay ``after`` bytes of the response, then close cleanly (FIN): a body cut short;
* ``status``: answer the request itself (``status``, e.g. 503 or 429, with ``Retry-After`` and a body in the
  server's error format) and close; the request is read but never reaches the server;
* ``stall``: relay ``after`` bytes, then send nothing for ``seconds`` (beyond the client's read timeout),
  then reset;
* ``hold``: never forward the request; keep the connection silent for ``seconds``, then reset (to catch the
  job at a known point: kill tests).

A :class:`Rule` fires for ``times`` matching requests after letting ``skip`` of them through, counts what
it did (``fired``), sets ``event`` when it fires (tests wait on it, bounded), and may call ``on_fire`` (in
the proxy's thread, at the moment the fault takes effect: after the ``after`` bytes) to change the world
then (replace a source object mid-transfer).

Everything is bounded: a stall or hold lasts at most :data:`MAX_STALL` seconds, a connection at most
:data:`CONNECTION_DEADLINE`, and the proxy accepts at most :data:`MAX_CONNECTIONS`. It runs its own event
loop in a daemon thread; :meth:`FaultProxy.stop` cancels every connection and joins the thread.

Fixtures (in ``tests/integration/conftest.py``, session scoped, one proxy per upstream; call ``.clear()``
first): ``s3_proxy`` (SeaweedFS), ``oci_proxy`` (distribution, plain http), ``http_proxy`` (the http test
server's origin), ``registry_proxy`` (the Model Registry stand-in).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import struct
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

MAX_STALL = 30.0
CONNECTION_DEADLINE = 300.0
MAX_CONNECTIONS = 5000
HEAD_LIMIT = 64 * 1024
PIECE = 64 * 1024

Kind = Literal["reset", "truncate", "status", "stall", "hold"]
_REASONS = {200: "OK", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 408: "Request Timeout",
            429: "Too Many Requests", 500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable",
            504: "Gateway Timeout"}  # fmt: skip


@dataclass(frozen=True)
class Fault:
    """What happens to a matching request (see the module docstring)."""

    kind: Kind
    after: int = 0
    status: int = 503
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""
    seconds: float = 0.0
    direction: Literal["response", "request"] = "response"


def reset(after: int = 0, *, direction: Literal["response", "request"] = "response") -> Fault:
    """Reset the connection after ``after`` bytes of the response (or of the request)."""
    return Fault("reset", after=after, direction=direction)


def truncate(after: int) -> Fault:
    """Close the connection cleanly after ``after`` bytes of the response."""
    return Fault("truncate", after=after)


def status(code: int, *, retry_after: str | None = None, body: bytes = b"", content_type: str = "text/plain") -> Fault:
    """Answer ``code`` without reaching the server, with ``Retry-After`` when given."""
    headers = {"Content-Type": content_type}
    if retry_after is not None:
        headers["Retry-After"] = retry_after
    return Fault("status", status=code, headers=headers, body=body)


def s3_slow_down(*, retry_after: str | None = None) -> Fault:
    """S3's throttling answer: 503 SlowDown in S3's XML error format."""
    body = b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"  # fmt: skip
    return status(503, retry_after=retry_after, body=body, content_type="application/xml")


def stall(seconds: float, *, after: int = 0) -> Fault:
    """Relay ``after`` bytes of the response, then nothing for ``seconds``, then reset."""
    return Fault("stall", after=after, seconds=seconds)


def hold(seconds: float) -> Fault:
    """Swallow the request and stay silent for ``seconds``, then reset."""
    return Fault("hold", seconds=seconds)


@dataclass
class Rule:
    """A fault for the requests matching ``method`` ("*": any) and ``path`` (``re.search`` on the target)."""

    fault: Fault
    method: str = "*"
    path: str = ""
    times: int = 1
    skip: int = 0
    on_fire: Callable[[Seen], None] | None = None
    header: tuple[str, str | None] | None = None
    """``(name, regex)``: the request must also have this header, matching (``re.search``); ``(name, None)``: the
    request must not have it."""
    fired: int = 0
    matched: int = 0
    event: threading.Event = field(default_factory=threading.Event)

    def matches(self, method: str, target: str, headers: Mapping[str, str]) -> bool:
        if self.method not in ("*", method) or re.search(self.path, target) is None:
            return False
        if self.header is not None:
            value = headers.get(self.header[0].lower())
            if self.header[1] is None:
                return value is None
            return value is not None and re.search(self.header[1], value) is not None
        return True


@dataclass(frozen=True)
class Seen:
    """One request the proxy read: method, target (path and query), and the fault it got, if any."""

    method: str
    target: str
    fault: Kind | None


class _Cut(Exception):
    """The request-direction budget of a ``reset`` fault ran out."""


class _Relay:
    """The response direction of one connection, armed with at most one fault."""

    def __init__(self) -> None:
        self.fault: Fault | None = None
        self.count = 0
        self.finished = asyncio.Event()
        self.on_cut: Callable[[], None] | None = None

    def arm(self, fault: Fault, on_cut: Callable[[], None]) -> None:
        self.fault, self.count, self.on_cut = fault, 0, on_cut


def _rst(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP reset rather than a FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def _read_head(reader: asyncio.StreamReader) -> bytes | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    except (asyncio.LimitOverrunError, ConnectionError):
        return None
    return head


def _parse(head: bytes) -> tuple[str, str, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    method, target, _ = [*lines[0].split(" ", 2), "", ""][:3]
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if ":" in line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    return method.upper(), target, headers


async def _copy_body(
    reader: asyncio.StreamReader, headers: Mapping[str, str], send: Callable[[bytes], None] | None
) -> None:
    """Read the request body (``Content-Length`` or chunked) and pass each piece to ``send`` (None: drop it)."""
    if headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            line = await reader.readuntil(b"\r\n")
            if send:
                send(line)
            size = int(line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while True:  # trailers, up to the empty line
                    trailer = await reader.readuntil(b"\r\n")
                    if send:
                        send(trailer)
                    if trailer == b"\r\n":
                        return
            data = await reader.readexactly(size + 2)
            if send:
                send(data)
    remaining = int(headers.get("content-length", "0") or 0)
    while remaining > 0:
        data = await reader.read(min(PIECE, remaining))
        if not data:
            raise ConnectionError("the client closed while sending its body")
        remaining -= len(data)
        if send:
            send(data)


class FaultProxy:
    """See the module docstring. ``with FaultProxy(port) as proxy:`` or :meth:`start` / :meth:`stop`."""

    def __init__(self, upstream_port: int, *, upstream_host: str = "127.0.0.1", name: str = "proxy") -> None:
        self.upstream = (upstream_host, upstream_port)
        self.name = name
        self.port = 0
        self.connections = 0
        self.requests: list[Seen] = []
        self._rules: list[Rule] = []
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"faultproxy-{name}", daemon=True)
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    # --- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> FaultProxy:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self._thread.start()
        self.port = asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=10)

    async def _start(self) -> int:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0, limit=HEAD_LIMIT)
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(timeout=20)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    async def _stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    @property
    def host(self) -> str:
        """``127.0.0.1:PORT``."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://{self.host}"

    # --- rules -------------------------------------------------------------------------------

    def add(
        self,
        fault: Fault,
        *,
        method: str = "*",
        path: str = "",
        times: int = 1,
        skip: int = 0,
        on_fire: Callable[[Seen], None] | None = None,
        header: tuple[str, str | None] | None = None,
    ) -> Rule:
        """Break the next ``times`` requests matching ``method``, ``path`` and ``header`` (after ``skip`` of them)."""
        rule = Rule(fault, method.upper(), path, times, skip, on_fire, header)
        with self._lock:
            self._rules.append(rule)
        return rule

    def clear(self) -> None:
        """Drop every rule and forget the request log."""
        with self._lock:
            self._rules.clear()
            self.requests.clear()

    def _match(self, method: str, target: str, headers: Mapping[str, str]) -> Rule | None:
        with self._lock:
            for rule in self._rules:
                if rule.fired < rule.times and rule.matches(method, target, headers):
                    rule.matched += 1
                    if rule.matched > rule.skip:
                        rule.fired += 1
                        return rule
        return None

    def seen(self, method: str = "*", path: str = "") -> list[Seen]:
        """The logged requests with this method whose target matches ``path``."""
        with self._lock:
            return [s for s in self.requests if method in ("*", s.method) and re.search(path, s.target)]

    # --- one connection ----------------------------------------------------------------------

    async def _handle(self, client_reader: asyncio.StreamReader, client: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)  # type: ignore[arg-type]
        self.connections += 1
        upstream: asyncio.StreamWriter | None = None
        relay: asyncio.Task[None] | None = None
        state = _Relay()
        try:
            if self.connections > MAX_CONNECTIONS:
                return
            async with asyncio.timeout(CONNECTION_DEADLINE):
                first = await client_reader.read(1)
                if not first:
                    return
                if not first.isalpha():  # not HTTP/1.1 (a TLS ClientHello starts with 0x16): bytes pass as they are
                    await self._pipe(first, client_reader, client)
                    return
                while not state.finished.is_set():
                    head = await _read_head(client_reader)
                    if head is None:
                        return
                    head, first = first + head, b""
                    method, target, headers = _parse(head)
                    rule = self._match(method, target, headers)
                    fault = rule.fault if rule is not None else None
                    seen = Seen(method, target, fault.kind if fault else None)
                    with self._lock:
                        self.requests.append(seen)
                    if rule is not None:
                        rule.event.set()
                    if (
                        rule is not None
                        and rule.on_fire is not None
                        and fault is not None
                        and fault.kind in ("status", "hold")
                    ):
                        rule.on_fire(seen)
                    if fault is not None and fault.kind in ("status", "hold"):
                        await self._answer_itself(fault, method, headers, client_reader, client)
                        return
                    if upstream is None:
                        upstream_reader, upstream = await asyncio.open_connection(*self.upstream, limit=HEAD_LIMIT)
                        relay = asyncio.create_task(self._relay(upstream_reader, client, state))
                    if fault is not None and fault.direction == "request":
                        await self._forward(head, headers, client_reader, upstream, limit=fault.after)
                        if rule is not None and rule.on_fire is not None:
                            rule.on_fire(seen)
                        _rst(client)
                        return
                    if fault is not None:
                        assert rule is not None
                        state.arm(fault, lambda rule=rule, seen=seen: rule.on_fire(seen) if rule.on_fire else None)
                    await self._forward(head, headers, client_reader, upstream)
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError, _Cut, OSError):
            pass
        finally:
            if relay is not None:
                relay.cancel()
                await asyncio.gather(relay, return_exceptions=True)
            if upstream is not None:
                upstream.transport.abort()
            if not client.transport.is_closing():
                client.transport.abort()
            self._tasks.discard(task)  # type: ignore[arg-type]

    async def _pipe(self, first: bytes, client_reader: asyncio.StreamReader, client: asyncio.StreamWriter) -> None:
        """Pass a connection through untouched, both ways (no faults: it is not HTTP we can read)."""
        upstream_reader, upstream = await asyncio.open_connection(*self.upstream)

        async def copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError, OSError):
                while data := await reader.read(PIECE):
                    writer.write(data)
                    await writer.drain()
            writer.close()

        upstream.write(first)
        try:
            await asyncio.gather(copy(client_reader, upstream), copy(upstream_reader, client))
        finally:
            upstream.transport.abort()

    async def _answer_itself(
        self,
        fault: Fault,
        method: str,
        headers: Mapping[str, str],
        reader: asyncio.StreamReader,
        client: asyncio.StreamWriter,
    ) -> None:
        if fault.kind == "hold":
            await asyncio.sleep(min(fault.seconds, MAX_STALL))
            _rst(client)
            return
        # Read the body first (unless the client waits for 100-continue), so that closing does not reset a
        # connection with unread bytes and the client sees the answer rather than ECONNRESET.
        if headers.get("expect", "").lower() != "100-continue":
            await _copy_body(reader, headers, None)
        body = b"" if method == "HEAD" else fault.body
        lines = [f"HTTP/1.1 {fault.status} {_REASONS.get(fault.status, 'Error')}"]
        lines += [f"{k}: {v}" for k, v in fault.headers.items()]
        lines += [f"Content-Length: {len(fault.body)}", "Connection: close", "", ""]
        client.write("\r\n".join(lines).encode("latin-1") + body)
        await client.drain()
        client.close()

    async def _forward(
        self,
        head: bytes,
        headers: Mapping[str, str],
        reader: asyncio.StreamReader,
        upstream: asyncio.StreamWriter,
        *,
        limit: int | None = None,
    ) -> None:
        sent = 0

        def send(data: bytes) -> None:
            nonlocal sent
            if limit is not None and sent + len(data) >= limit:
                upstream.write(data[: max(0, limit - sent)])
                raise _Cut
            sent += len(data)
            upstream.write(data)

        try:
            send(head)
            await _copy_body(reader, headers, send)
        except _Cut:
            return
        await upstream.drain()

    async def _relay(self, upstream: asyncio.StreamReader, client: asyncio.StreamWriter, state: _Relay) -> None:
        try:
            while True:
                data = await upstream.read(PIECE)
                if not data:
                    break
                fault = state.fault
                if fault is None or state.count + len(data) < fault.after:
                    state.count += len(data)
                    client.write(data)
                    await client.drain()
                    continue
                client.write(data[: fault.after - state.count])
                await client.drain()
                if state.on_cut is not None:
                    state.on_cut()  # the world changes at the moment of the fault (a source replaced mid-body)
                if fault.kind == "truncate":
                    client.close()
                elif fault.kind == "stall":
                    await asyncio.sleep(min(fault.seconds, MAX_STALL))
                    _rst(client)
                else:
                    _rst(client)
                return
            client.close()  # the server closed: so does the client's side
        except (ConnectionError, OSError):
            _rst(client)
        finally:
            state.finished.set()
