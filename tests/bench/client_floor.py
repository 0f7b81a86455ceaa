"""The client floor of s3 -> oci: the least CPU any client pays on this machine to move the model's bytes.

``python -I -S tests/bench/client_floor.py REGISTRY_HOST REPOSITORY STREAMS URL...`` reads each URL (a presigned
GET of one model file on the bench's S3 server) and pushes its bytes to ``REGISTRY_HOST`` as one blob, ``STREAMS``
files at a time, as model-sync does with its default ``MODEL_SYNC_PARALLEL_FILES``. What it does per byte is
what every s3 -> oci client must do: the kernel copies it out of one socket and into another, and sha256 hashes
it once (the blob's digest, which the registry checks). Nothing else touches it: each file is read with
``recv_into`` into one reused 1 MiB buffer, hashed and sent from that buffer, by the standard library's
``http.client`` on plain blocking sockets, one thread per stream. No HTTP library, no event loop, no tar
framing, no Model Registry, no settings; ``-I -S`` keeps even ``site`` out of the start.

So its client CPU (the bench measures it as it measures model-sync's) is the floor of the issue's "client CPU per
GiB" target in the same run: what is left once everything model-sync adds is taken away.

``python -I tests/bench/client_floor.py --gunzip REGISTRY_HOST REPOSITORY URL`` is the uri (tar.gz) -> oci floor:
one GET of the archive, inflated by zlib-ng (as model-sync inflates it; ``-I`` without ``-S``, so the venv's
``zlib_ng`` is found), the tar it holds hashed and pushed as one blob in a chunked ``PATCH``: the same socket
copies and sha256 per byte, plus the inflate (and the CRC32 gzip checks) that the format asks of any reader.
"""

from __future__ import annotations

import hashlib
import http.client
import sys
import threading
from urllib.parse import urlsplit

BUFFER = 1024 * 1024
"""Bytes read and sent at a time (model-sync's ``job.tuning.READ_SIZE``)."""


def _path(url: str) -> str:
    parts = urlsplit(url)
    return parts.path + (f"?{parts.query}" if parts.query else "")


def _answer(conn: http.client.HTTPConnection, status: int, what: str) -> http.client.HTTPResponse:
    response = conn.getresponse()
    response.read()
    if response.status != status:
        raise RuntimeError(f"{what}: HTTP {response.status}, expected {status}")
    return response


def start_blob(registry: http.client.HTTPConnection, repo: str, framing: tuple[str, str]) -> None:
    """``POST`` an upload to ``repo``, then send the headers of its one ``PATCH``; the body goes by
    ``registry.send``. ``framing``: ``("Content-Length", "<size>")`` or ``("Transfer-Encoding", "chunked")``."""
    registry.request("POST", f"/v2/{repo}/blobs/uploads/", headers={"Content-Length": "0"})
    location = _path(_answer(registry, 202, "POST upload").headers["Location"])
    registry.putrequest("PATCH", location, skip_accept_encoding=True)
    registry.putheader("Content-Type", "application/octet-stream")
    registry.putheader(*framing)
    registry.endheaders()


def finish_blob(registry: http.client.HTTPConnection, digest: str) -> None:
    """The ``PATCH``'s answer, then ``PUT ?digest=``: the registry checks the bytes against ``digest``."""
    location = _path(_answer(registry, 202, "PATCH").headers["Location"])
    separator = "&" if "?" in location else "?"
    registry.request("PUT", f"{location}{separator}digest={digest}", headers={"Content-Length": "0"})
    _answer(registry, 201, "PUT ?digest=")


def copy(url: str, source: http.client.HTTPConnection, registry: http.client.HTTPConnection, repo: str) -> int:
    """One file: GET it, push it as one blob (POST, one PATCH with Content-Length, PUT ?digest=); its size."""
    source.request("GET", _path(url))
    body = source.getresponse()
    if body.status != 200:
        raise RuntimeError(f"GET {urlsplit(url).path}: HTTP {body.status}")
    size = int(body.headers["Content-Length"])
    start_blob(registry, repo, ("Content-Length", str(size)))
    buffer = bytearray(BUFFER)
    view = memoryview(buffer)
    digest = hashlib.sha256()
    done = 0
    while done < size:
        n = body.readinto(view)
        if not n:
            raise RuntimeError(f"GET {urlsplit(url).path}: ended after {done} of {size} bytes")
        digest.update(view[:n])
        registry.send(view[:n])
        done += n
    finish_blob(registry, "sha256:" + digest.hexdigest())
    return size


def copy_gunzip(url: str, host: str, repo: str) -> int:
    """The archive at ``url``, inflated, pushed as one blob (POST, one chunked PATCH, PUT ?digest=); its size."""
    from zlib_ng import zlib_ng

    parts = urlsplit(url)
    source = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=300)
    registry = http.client.HTTPConnection(host, timeout=300)
    try:
        source.request("GET", _path(url))
        body = source.getresponse()
        if body.status != 200:
            raise RuntimeError(f"GET {parts.path}: HTTP {body.status}")
        start_blob(registry, repo, ("Transfer-Encoding", "chunked"))
        buffer = bytearray(BUFFER)
        view = memoryview(buffer)
        decoder = zlib_ng.decompressobj(wbits=31)
        digest = hashlib.sha256()
        size = 0

        def push(out: bytes) -> None:
            nonlocal size
            if out:
                digest.update(out)
                registry.send(b"%x\r\n" % len(out))
                registry.send(out)
                registry.send(b"\r\n")
                size += len(out)

        while not decoder.eof:
            n = body.readinto(view)
            if not n:
                raise RuntimeError(f"GET {parts.path}: the gzip stream ends early")
            data: bytes | memoryview = view[:n]
            while data and not decoder.eof:  # at most BUFFER bytes out per call, as model-sync's inflate
                out = decoder.decompress(data, BUFFER)
                push(out)
                data = decoder.unconsumed_tail
                while not data and len(out) == BUFFER and not decoder.eof:
                    out = decoder.decompress(b"", BUFFER)
                    push(out)
        registry.send(b"0\r\n\r\n")
        finish_blob(registry, "sha256:" + digest.hexdigest())
        return size
    finally:
        source.close()
        registry.close()


def _tune_malloc() -> None:
    """glibc's malloc thresholds as model-sync sets them (``job.tuning``): a 1 MiB piece of inflated output is
    not a fresh ``mmap`` whose pages the kernel faults in and zeroes each time."""
    import ctypes

    mallopt = ctypes.CDLL(None).mallopt
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    mallopt(-3, 4 * BUFFER)  # M_MMAP_THRESHOLD
    mallopt(-1, 32 * BUFFER)  # M_TRIM_THRESHOLD


def main(argv: list[str]) -> int:
    _tune_malloc()
    if argv[0] == "--gunzip":
        copy_gunzip(argv[3], argv[1], argv[2])
        return 0
    host, repo, streams, urls = argv[0], argv[1], int(argv[2]), argv[3:]
    order = list(urls)
    errors: list[BaseException] = []
    lock = threading.Lock()

    def worker() -> None:
        source = registry = None
        try:
            while True:
                with lock:
                    if not order or errors:
                        return
                    url = order.pop(0)
                if source is None:
                    parts = urlsplit(url)
                    source = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=300)
                    registry = http.client.HTTPConnection(host, timeout=300)
                assert registry is not None
                copy(url, source, registry, repo)
        except BaseException as exc:
            errors.append(exc)
        finally:
            for conn in (source, registry):
                if conn is not None:
                    conn.close()

    threads = [threading.Thread(target=worker) for _ in range(streams)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        print(f"client floor: {errors[0]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
