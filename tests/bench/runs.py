"""Running a row: one run on a fresh destination (:func:`execute`), run again while other work disturbed it
(:func:`quiet_run`); the registry floor (:func:`push_floor`); the ``--flat-mib`` run (:func:`run_flat`) and the
py-spy profiles (:func:`run_profiles`).

Every run gets a fresh destination (a new distribution or SeaweedFS on an empty data dir, or an empty directory
outside the run's scratch dir) and an empty skopeo blob-info cache, starts once the machine is quiet
(``--settle``), and is checked afterwards. The floor is the same bytes pushed from memory in ``FLOOR_STREAMS``
parallel upload streams (one PATCH per blob, digests computed beforehand) to a fresh registry: what distribution
itself costs on this machine.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from tests.bench.client_floor import finish_blob, start_blob
from tests.bench.measure import CpuSnapshot, StepResult, run_step, settle
from tests.bench.model import PIECE, MiB, Model
from tests.bench.peers import REPO, MissingTool, Step, tool
from tests.bench.report import progress_line
from tests.bench.results import RowResult, RunResult
from tests.bench.rows import FLOOR_STREAMS, Row, Run, flat_row
from tests.bench.stack import BIG_PREFIX, DST_BUCKET, SRC_BUCKET, Bench, quietly, reset_skopeo_cache, say
from tests.servers.registry import distribution
from tests.servers.s3 import seaweedfs

# --- one run -----------------------------------------------------------------------------------------------------


def _account(step: StepResult, before: CpuSnapshot, run: Run) -> None:
    """Fill ``step``'s server and other CPU from ``before`` to now, naming the servers by their role."""
    by_label, step.other_cpu = CpuSnapshot.take().since(before, step.cpu)
    bench = run.bench
    names = {
        f"s3:{_port(bench.src_s3.endpoint_url)}" if bench.src_s3 else "": "source S3",
        f"s3:{_port(run.dst_s3.endpoint_url)}" if run.dst_s3 else "": "destination S3",
        f"registry:{bench.src_oci.root}" if bench.src_oci else "": "source registry",
        f"registry:{run.dst_oci.root}" if run.dst_oci else "": "destination registry",
        "httpd": "http server",
    }
    for label, cpu in by_label.items():
        name = names.get(label, label)
        step.server_cpu[name] = step.server_cpu.get(name, 0.0) + cpu


def quiet_run(bench: Bench, row: Row, index: int, *, deadline: float | None = None) -> RunResult:
    """:func:`execute`, repeated (``--noise-retries`` times at most) while other work on the machine took more
    than ``--max-noise`` cores on average during the run; keeps the quietest successful run."""
    run = execute(bench, row, index)
    while (
        run.ok
        and run.other_cpu > bench.args.max_noise * run.wall
        and run.noisy_retries < bench.args.noise_retries
        and (deadline is None or time.monotonic() < deadline)
    ):
        say(f"    {row.id}: other work took {run.other_cpu:.1f} CPU-s during the run; running it again")
        again = execute(bench, row, index)
        again.noisy_retries = run.noisy_retries + 1
        if not again.ok or again.other_cpu >= run.other_cpu:
            run.noisy_retries = again.noisy_retries
        else:
            run = again
    return run


def execute(bench: Bench, row: Row, index: int, *, wrap: Callable[[Step], Step] | None = None) -> RunResult:
    """Run ``row`` once on a fresh destination; every failure becomes the result's ``error``."""
    result = RunResult(row.id, index)
    reset_skopeo_cache()
    result.settle_wait, result.settle_load = settle(bench.args.settle)
    slug = row.id.replace("/", "-").replace("+", "-")
    run: Run | None = None
    try:
        with contextlib.ExitStack() as stack:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=f"{slug}-{index}-", dir=bench.work)))
            run = Run(bench, index, work)
            if row.dest == "oci":
                bench.need("registry")  # the base image lives there
                run.dst_oci = quietly(distribution("plain"), stack)
            elif row.dest == "dir":  # an empty directory, outside the scratch dir (not temp disk)
                out = stack.enter_context(tempfile.TemporaryDirectory(prefix=f"{slug}-{index}-out-", dir=bench.work))
                run.dst_dir = Path(out) / "models"
                run.dst_dir.mkdir()
            else:
                run.dst_s3 = quietly(seaweedfs(buckets=(DST_BUCKET,)), stack)
            if row.steps is None:
                assert run.dst_oci is not None
                before = CpuSnapshot.take()
                done = StepResult("push from memory", in_process=True)
                done.wall = push_floor(run.dst_oci.host, list(bench.model.files.values()), salt=f"{index}")
                _account(done, before, run)
                result.steps.append(done)
                return result
            for step in row.steps(run):
                if wrap is not None:
                    step = wrap(step)
                before = CpuSnapshot.take()
                done = run_step(step, watch=[work], timeout=bench.timeout_of(row.needs))
                _account(done, before, run)
                result.steps.append(done)
                if done.returncode != 0:
                    tail = done.tail[-1500:] or "(no output)"
                    result.error = f"{step.name} exited {done.returncode}: {tail}"
                    return result
            if row.check is not None:
                row.check(run)
    except MissingTool as exc:
        result.error = str(exc)
    except Exception as exc:  # tests.servers.ServerUnavailable, a failed check, a server's error
        result.error = f"{type(exc).__name__}: {exc}"
    finally:
        result.layers = run.layers if run is not None else None
        for name in bench.shm.glob(f"model-sync-bench-{os.getpid()}-*.log"):
            name.unlink(missing_ok=True)
    return result


def _port(url_or_host: str) -> str:
    return url_or_host.rsplit(":", 1)[-1].strip("/")


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
                start_blob(conn, "bench/floor", ("Content-Length", str(size)))
                for piece in _floor_pieces(size, header, block):
                    conn.send(piece)
                finish_blob(conn, digest)
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


# --- the flat-memory run and profiles --------------------------------------------------------------------------


def run_flat(bench: Bench, flat_mib: int) -> RowResult:
    """Stream an ``flat_mib`` model into the source S3 (no local disk), run model-sync s3->oci on it once."""
    big = Model.make(flat_mib)
    row = flat_row(bench, flat_mib, big)
    result = RowResult(row, big.total)
    try:
        client = bench.source_s3().client(timeout=300)
        t = time.monotonic()
        big.upload(client, SRC_BUCKET, BIG_PREFIX)
        say(
            f"flat check: {big.total / MiB:.0f} MiB streamed to s3://{SRC_BUCKET}/{BIG_PREFIX} in {time.monotonic() - t:.1f} s"
        )
    except Exception as exc:  # tests.servers.ServerUnavailable included
        result.runs.append(RunResult(row.id, 0, error=f"uploading the big model: {type(exc).__name__}: {exc}"))
        return result
    run = quiet_run(bench, row, 0)
    result.runs.append(run)
    say(progress_line(f"[flat] {row.id}", run))
    with contextlib.suppress(Exception):  # free the source's disk; the servers go at the end anyway
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
        run = execute(bench, row, 0, wrap=wrap)
        out = folder / (row.id.replace("/", "_").replace("@", "_") + ".speedscope.json")
        if not run.ok or not out.is_file():
            lines.append(f"{row.id}: profiled run failed: {(run.error or 'no profile written')[:300]}")
            continue
        lines.append(f"{row.id} under py-spy: {run.wall:.2f} s")
        lines += summarize_speedscope(out)
    return lines
