"""A link where each connection, not the link, is the limit: a TCP proxy that caps every connection's download.

What a CDN's per-connection ceiling or a long round trip with a small TCP window does to one stream, on
127.0.0.1: each connection through the proxy gets at most ``MB_PER_S`` MB/s from the server to the client (the
upload direction is not capped). A reader of one stream at a time is slowed to that rate; one of several streams
at once is not. Used by the opt-in rows of :mod:`tests.bench.capped_rows`::

    python -m tests.bench.capped LISTEN_PORT TARGET_HOST:PORT MB_PER_S
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import Iterator

from tests.servers import free_port, listening

__all__ = ["capped_link"]

_READ = 64 * 1024


@contextlib.contextmanager
def capped_link(target: str, mb_per_s: float) -> Iterator[str]:
    """Run the proxy in front of ``target`` (``host:port``); yield its own ``host:port``; stop it at the end."""
    port = free_port()
    argv = [sys.executable, "-m", "tests.bench.capped", str(port), target, str(mb_per_s)]
    with listening(argv, port, "the capped-link proxy"):
        yield f"127.0.0.1:{port}"


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, rate: float | None) -> None:
    started, moved = time.monotonic(), 0
    try:
        while data := await reader.read(_READ):
            writer.write(data)
            await writer.drain()
            if rate:
                moved += len(data)
                if (ahead := moved / rate - (time.monotonic() - started)) > 0:
                    await asyncio.sleep(ahead)
    except OSError:
        pass
    finally:
        writer.close()


async def _serve(listen: int, target: str, rate: float) -> None:
    host, _, port = target.rpartition(":")

    async def connection(client_in: asyncio.StreamReader, client_out: asyncio.StreamWriter) -> None:
        try:
            server_in, server_out = await asyncio.open_connection(host, int(port))
        except OSError:
            client_out.close()
            return
        await asyncio.gather(_pipe(client_in, server_out, None), _pipe(server_in, client_out, rate))

    server = await asyncio.start_server(connection, "127.0.0.1", listen)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(_serve(int(sys.argv[1]), sys.argv[2], float(sys.argv[3]) * 1e6))
