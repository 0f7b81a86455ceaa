"""Process-wide settings of the libraries model-sync runs on, made once when the ``job`` package is imported.

Each one is a measured cost per byte or per start (README, Performance); each is checked by
``tests/unit/test_tuning.py``, so a library upgrade that moves what it relies on fails a test instead of
quietly costing CPU again.

* **Modules never used, never imported.** httpx imports its command-line client (click, rich, pygments)
  whenever they are installed, and model-signing's dependencies install them: about 60 ms of every start.
  botocore probes for ``urllib3.contrib.pyopenssl`` (pyOpenSSL and cryptography, also installed for
  signing) only to take the stdlib's ``ssl.SSLContext`` back from it: about 40 ms. A ``None`` entry in
  ``sys.modules`` makes such an import fail at once (the language's own "not available" marker), and both
  libraries fall back to what they do without those packages: httpx's ``main`` prints how to install its
  CLI, botocore uses ``ssl.SSLContext`` directly. Signing imports pyOpenSSL itself, which is unaffected.
* **Reads of 1 MiB.** asyncio's socket transport asks the kernel for at most 256 KiB per read and
  httpcore (under httpx) hands on at most 64 KiB per read, so a GiB crossed the event loop, the HTTP
  parser and every stream stage of the pipeline 4,096 to 16,384 times. Both are class attributes with
  no other setting; 1 MiB makes most reads whatever the socket holds. Memory stays bounded: a read
  returns at most what arrived, and one read per connection is in flight.
* **Body bytes handed on, not copied.** h11 (under httpcore) appended every received read to a bytearray,
  sliced it out twice (one slice only to test that it was not empty) and httpcore copied the slice into
  ``bytes``: four copies of each downloaded byte (README, Performance, has what they cost). The
  :class:`PassThroughBuffer` holds a read that arrives at an empty buffer as it is and hands it on whole
  when the body reader takes all of it, so ``bytes()`` of it is the same object: no copy. Anything else
  (header lines, a read split between two events) takes h11's own path on a bytearray, as before.
* **No probe for a missing sniffio.** httpcore tries ``import sniffio`` for each connection and lock it
  makes; anyio 4 no longer installs sniffio, so each try searched the whole module path and failed, 200
  times and more per GiB moved. Where sniffio is not installed, a ``None`` entry fails the import at once,
  and httpcore takes its answer for that case, asyncio.
* **No CA bundle loaded for TLS contexts nobody uses.** aiohttp, imported by aiobotocore for an S3 side,
  builds two default TLS contexts when it is imported, each loading the system's CA bundle (README,
  Performance, has what that cost at every S3 job's start). aiobotocore uses neither for verifying: it
  passes its own context for a verified ``https`` endpoint (with the bundle botocore chooses:
  ``AWS_CA_BUNDLE``, the config, certifi) and ``ssl=False`` otherwise, which aiohttp serves with its
  unverified context, where CAs play no part. While that import runs
  (:func:`unused_tls_defaults`, in ``job/s3/__init__.py``) loading the default verify paths does nothing; were
  aiohttp's verified default ever used, it would trust no CA and refuse, never accept.
* **No page faults per chunk.** glibc's malloc serves blocks over 128 KiB (rising with use, but not
  reliably) with ``mmap`` and returns freed heap tops to the kernel, so each 256 KiB-1 MiB chunk of a
  transfer was freshly mapped and zeroed by the kernel: 400,000 minor faults and 1-2 s of system CPU per
  GiB of tar.gz read. ``mallopt`` keeps blocks up to :data:`MMAP_THRESHOLD` on the heap and up to
  :data:`TRIM_THRESHOLD` of free heap mapped. A C library without ``mallopt`` (musl) is left as it is.
* **No full collection while bytes move.** In a process that runs one job (the console script,
  :func:`one_job`), what is alive when the transfer starts (settings, clients, botocore's S3 model) lives
  to the end; :func:`settled`, called by the engine then, freezes it, so the cyclic collector no longer
  walks it: the full collection that came during every transfer (0.09-0.13 CPU-s in the lab) does not
  come, and the one the interpreter makes at exit finds little. Young objects are collected as before.
  Elsewhere (tests, a library caller) :func:`settled` does nothing.
"""

from __future__ import annotations

import asyncio.selector_events
import contextlib
import ctypes
import gc
import importlib.util
import ssl
import sys
from collections.abc import Iterator

import h11._connection
from h11._receivebuffer import ReceiveBuffer

__all__ = [
    "MMAP_THRESHOLD",
    "NOT_IMPORTED",
    "READ_SIZE",
    "TRIM_THRESHOLD",
    "PassThroughBuffer",
    "apply",
    "one_job",
    "settled",
    "unused_tls_defaults",
]

NOT_IMPORTED = ("httpx._main", "urllib3.contrib.pyopenssl")
"""Modules some library imports if it can, that model-sync never uses (see the module docstring)."""
READ_SIZE = 1024 * 1024
"""Most bytes one socket read returns, in asyncio's transport and in httpcore."""
MMAP_THRESHOLD = 4 * READ_SIZE
"""Blocks up to this size come from malloc's heap, not from a fresh ``mmap``."""
TRIM_THRESHOLD = 32 * READ_SIZE
"""Free heap kept mapped, so that the next chunk reuses it instead of faulting new pages in."""
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's <malloc.h>
_one_job = False


def apply() -> None:
    """Make the settings of the module docstring; safe to call more than once."""
    for name in NOT_IMPORTED:
        sys.modules.setdefault(name, None)  # type: ignore[arg-type]
    if "sniffio" not in sys.modules and importlib.util.find_spec("sniffio") is None:
        sys.modules["sniffio"] = None  # type: ignore[assignment]
    h11._connection.ReceiveBuffer = PassThroughBuffer  # type: ignore[attr-defined]
    asyncio.selector_events._SelectorSocketTransport.max_size = READ_SIZE  # type: ignore[attr-defined]
    import httpcore  # after the entries above: httpcore imports nothing of them, httpx comes later

    httpcore.AsyncHTTP11Connection.READ_NUM_BYTES = READ_SIZE
    _tune_malloc()


def one_job() -> None:
    """This process runs one job, then exits (``job.launch``): :func:`settled` freezes what is alive then."""
    global _one_job
    _one_job = True


def settled() -> None:
    """The transfer starts: in a one-job process, move what is alive out of the collector's reach (``gc.freeze``)."""
    if _one_job:
        gc.freeze()


class PassThroughBuffer(ReceiveBuffer):
    """h11's receive buffer, except that a read arriving at an empty buffer is held as the ``bytes`` it is, and
    handed on as that object when a body reader takes all of it (the module docstring says why).

    ``_data`` is then ``bytes`` until something else is asked of the buffer: every other way out goes
    through :meth:`_extract`, which first turns it back into the bytearray h11's line parsing edits in place.
    Reads and searches (``find``, the regex, indexing, ``len``) work on either.
    """

    def __iadd__(self, byteslike: bytes | bytearray) -> PassThroughBuffer:
        if not self._data and type(byteslike) is bytes:
            self._data = byteslike  # type: ignore[assignment]  # held, not copied
        else:
            self._mutable()
            self._data += byteslike
        return self

    def maybe_extract_at_most(self, count: int) -> bytearray | None:
        data = self._data
        if not data:
            return None
        if count < len(data):
            return self._extract(count)
        self._data = bytearray()
        self._next_line_search = self._multiple_lines_search = 0
        return data  # the whole buffer, given away: bytes as received, or h11's own bytearray

    def _extract(self, count: int) -> bytearray:
        self._mutable()
        return super()._extract(count)

    def _mutable(self) -> None:
        if not isinstance(self._data, bytearray):  # bytes held by __iadd__
            self._data = bytearray(self._data)


@contextlib.contextmanager
def unused_tls_defaults() -> Iterator[None]:
    """While aiohttp is imported: TLS contexts made meanwhile load no default CA certificates (module docstring)."""
    cls = ssl.SSLContext
    own = cls.__dict__.get("set_default_verify_paths")
    cls.set_default_verify_paths = _no_default_verify_paths  # type: ignore[method-assign]
    try:
        yield
    finally:
        if own is None:
            del cls.set_default_verify_paths
        else:  # pragma: no cover - the stdlib inherits it from _ssl._SSLContext
            cls.set_default_verify_paths = own  # type: ignore[method-assign]


def _no_default_verify_paths(self: ssl.SSLContext) -> None:
    return None


def _tune_malloc() -> bool:
    """Set glibc's malloc thresholds; False where the C library has no ``mallopt``."""
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # pragma: no cover - musl, or no dynamic C library
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
