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
   layer count of the pushed manifest, shown in the table). The many-files rows (``s3-oci-many/*``: 2,000 files
   of 4-64 KiB in nested folders plus 4 shards of 24 MiB, more files than an image's layer budget) are opt-in:
   ``--only 's3-oci-many/*'`` runs them. So are the serving rows (``--only 's3-dir/*,oci-dir/*'``,
   :mod:`tests.bench.serving_rows`): model-sync's storage-initializer mode and KServe's ``kserve-storage``
   filling an empty directory from the same ``s3://`` prefix or ``oci://`` modelcar, checked file by file
   (size and sha256, nothing else left in it).
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
   machine. s3 -> oci is reported as a ratio to it. **The client floor** (:mod:`tests.bench.client_floor`) is
   the other side of it: the model's files read from the source S3 and pushed as blobs to a fresh registry by a
   process that does nothing to a byte but copy it between sockets and hash it once (stdlib, ``python -I -S``):
   the least client CPU any s3 -> oci client pays here, measured as model-sync's is (``uri-oci/client-floor``: the
   same for the tar.gz, inflated). **The start rows** put model-sync's start beside its libraries' own:
   ``start/model-sync`` syncs an 8-byte model, ``start/libraries`` only imports the libraries model-sync runs on
   and builds an S3 client (:mod:`tests.bench.floor_rows`).
6. **Report**: a table (median wall, MB/s, CPU, peak RSS, temp disk, peer / model-sync), each peer's steps, the
   targets with PASS/MISS, JSON at ``--json`` and a Markdown copy next to it (``.md``).

``--flat-mib N`` adds one model-sync s3 -> oci run on an N MiB model (streamed into the source S3, never written to
local disk) to check that peak RSS does not grow with the model. ``--profile DIR`` adds one py-spy-recorded run of
each model-sync row (speedscope JSON in DIR, top frames printed). ``--variant NAME=COMMAND`` adds, after each
model-sync row, the same row run by COMMAND (e.g. a script that patches ``job`` and calls ``job.__main__.main``),
to measure a proposed change against the current code in the same rounds. To time another commit, check it out
with ``git worktree add /tmp/old <commit>`` and pass ``old=env PYTHONPATH=/tmp/old .venv/bin/python -P -m job``:
steps run in the checkout, and without ``-P`` Python would put it first on ``sys.path`` and run its ``job``.

Exit code: 0 when every row succeeded, 1 when a row failed (its error is in the table and the JSON), 2 for bad
arguments. Targets are reported, never turned into an exit code: timing on a shared 2-core machine is noisy.

The modules: :mod:`tests.bench.stack` (the local servers, the model in them, model-sync's environment),
:mod:`tests.bench.model` (the generated model), :mod:`tests.bench.rows` (the rows and their checks, with the peers of
:mod:`tests.bench.peers`; the serving rows in :mod:`tests.bench.serving_rows`), :mod:`tests.bench.runs` (one run,
the floor, the flat run, profiles), :mod:`tests.bench.measure` (a process tree's time, CPU, RSS and disk),
:mod:`tests.bench.results` and :mod:`tests.bench.report` (medians, targets, the table, the JSON's metadata); this
one is the command line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from tests.bench.model import MiB
from tests.bench.peers import REPO
from tests.bench.report import evaluate_targets, job_revision, progress_line, render, tool_versions
from tests.bench.results import RowResult, RunResult
from tests.bench.rows import Row, all_rows, select, with_variants
from tests.bench.runs import quiet_run, run_flat, run_profiles
from tests.bench.stack import MODEL_SYNC_COMMAND, Bench, model_sync_argv, say


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m tests.bench.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024, help="model size in MiB (4 large files + small ones)")
    parser.add_argument("--runs", type=int, default=3, help="runs per row; the table shows medians")
    parser.add_argument(
        "--json", type=Path, default=REPO / ".bench" / "results.json", help="where to write the results"
    )
    parser.add_argument(
        "--only",
        default="",
        help="comma-separated globs of row ids, e.g. 's3-oci/*,s3-s3/model-sync' (default: all but s3-oci-many/*, s3-dir/*, oci-dir/*)",
    )
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


def _disk_needed(args: argparse.Namespace, rows: Sequence[Row]) -> int:
    size: int = args.size_mib * MiB
    flat: int = args.flat_mib * MiB
    local = any(r.needs for r in rows)
    # model + tar.gz + source S3 + source image + a run's worst case (download + layers + registry)
    return size * (1 + 2 * local + 4) + 2 * flat


def _many_note(bench: Bench) -> str:
    """The many-files model in one line, for the report's header."""
    many = bench.many
    small = sorted(len(data) for data in many.small.values())
    folders = len({name.rpartition("/")[0] for name in many.small})
    return (
        f"s3->oci many-files rows: {len(many.files)} files, {many.total / MiB:.0f} MiB: {len(small)} of "
        f"{small[0] / 1024:.0f}-{small[-1] / 1024:.0f} KiB in {folders} folders, {len(many.large)} shards of "
        f"{max(many.large.values()) / MiB:.0f} MiB"
    )


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
        rows = with_variants(select(all_rows(bench), args.only), args.variant)
        if args.list:
            print("\n".join(r.id for r in all_rows(bench)))
            return 0
        if not rows:
            print(
                f"no row matches --only {args.only!r}; rows: {', '.join(r.id for r in all_rows(bench))}",
                file=sys.stderr,
            )
            return 2
        free = shutil.disk_usage(work).free
        if free < _disk_needed(args, rows):
            say(
                f"warning: {free / 2**30:.1f} GiB free under {parent}, the bench may need {_disk_needed(args, rows) / 2**30:.1f} GiB"
            )
        say(f"model-sync bench: {args.size_mib} MiB, {args.runs} run(s), rows: {', '.join(r.id for r in rows)}")
        precompile()
        needs: set[str] = set().union(*(r.needs for r in rows))
        if any(not r.needs & {"many", "tiny"} for r in rows):
            needs.add("model")  # the --size-mib model in the source S3
        bench.setup(needs)
        results = {row.id: RowResult(row, bench.model_of(row.needs).total) for row in rows}
        deadline = started + args.max_minutes * 60
        for index in range(args.runs):
            for row in rows:
                if time.monotonic() > deadline:
                    results[row.id].runs.append(
                        RunResult(row.id, index, error=f"not run: past --max-minutes {args.max_minutes:g}")
                    )
                    continue
                run = quiet_run(bench, row, index, deadline=deadline)
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
            **({"many_model": _many_note(bench)} if "many" in needs else {}),
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


if __name__ == "__main__":
    sys.exit(main())
