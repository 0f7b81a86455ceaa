"""Measuring one step of a run: a process tree from start to reaping, sampled every ``SAMPLE_INTERVAL``.

:func:`run_step` runs a :class:`~tests.bench.peers.Step` and fills a :class:`StepResult`: wall seconds, CPU seconds
of the tree (``wait4``), peak RSS (the largest sum of VmRSS over the tree at one sample, or a process's own VmHWM),
the peak size of the watched scratch directories, and the bytes the tree wrote (``/proc/self/io``, which the kernel
folds into the parent when it reaps a child). :class:`CpuSnapshot` reads the CPU seconds of this process, of every
server it started and of the whole machine, so a step's server CPU and the noise from other work can be told
apart; :func:`settle` waits for the machine to go quiet before a run.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.bench.peers import REPO, Step

SAMPLE_INTERVAL = 0.05


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
