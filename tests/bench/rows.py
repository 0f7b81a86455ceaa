"""The rows of the table: which route each runs, with which tool, on which fresh destination, and how its result is
checked afterwards.

``python -m tests.bench.run --list`` prints the row ids. model-sync rows run one ``model-sync`` step with the
environment a Job manifest would set; the peers' steps come from :mod:`tests.bench.peers`; the registry floor has
no steps (:func:`tests.bench.runs.push_floor` pushes it from the bench process). Each run's result is checked: the
objects and sizes in the destination bucket, or the layer count of the pushed manifest (kept for the table).

The many-files rows (``s3-oci-many/*``: :meth:`tests.bench.model.Model.many`, more files than an image's layer
budget) and the serving rows (``s3-dir/*``, ``oci-dir/*``: :mod:`tests.bench.serving_rows`) are opt-in: they run
when ``--only`` names them, not in the default table.
"""

from __future__ import annotations

import fnmatch
import json
import shlex
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from tests.bench.model import LARGE_FILES, MANY_FILES, Model
from tests.bench.peers import Step, s5cmd_s3_to_s3, skopeo_s5cmd_oci_to_s3, upstream_to_oci
from tests.bench.stack import (
    BIG_PREFIX,
    DST_BUCKET,
    DST_PREFIX,
    MANY_PREFIX,
    MODEL_PREFIX,
    SRC_BUCKET,
    Bench,
    endpoint,
    model_sync_argv,
    s3_keys,
)
from tests.servers.registry import Registry
from tests.servers.s3 import S3Server

FLOOR_STREAMS = 2
"""Upload streams of the registry floor row."""
OCI_MAX_LAYERS = 64
"""model-sync's default layer budget for a whole image (``MODEL_SYNC_DESTINATION_OCI_MAX_LAYERS``)."""
MANIFEST_TYPES = "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json"


@dataclass
class Run:
    """What one run of a row can use: the bench, its scratch dir, its fresh destination."""

    bench: Bench
    index: int
    work: Path
    dst_s3: S3Server | None = None
    dst_oci: Registry | None = None
    dst_dir: Path | None = None
    layers: int | None = None
    """The pushed image's layer count (base included), once the check has read its manifest."""

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
    """``oci``, ``s3`` or ``dir`` (an empty directory): which fresh destination every run gets."""
    steps: Callable[[Run], list[Step]] | None
    """None: the registry floor (pushed from this process)."""
    check: Callable[[Run], None] | None = None
    baseline: str | None = None
    """For a peer: the model-sync row it is compared with."""
    needs: frozenset[str] = frozenset()
    """Setup it needs: ``disk`` (the model on local disk), ``targz``, ``image`` (the source modelcar), ``imagegz``
    (it again, gzip), ``many`` or ``tiny`` (the many-files or 8-byte model in the source S3, not the ``--size-mib`` one)."""
    opt_in: bool = False
    """Run only when ``--only`` names it (a model of its own, about a minute a run)."""


# --- what a row's steps use ----------------------------------------------------------------------------------


def oci_dest(run: Run) -> dict[str, str]:
    """The run's fresh registry as model-sync's destination, with the source registry's base image."""
    assert run.bench.src_oci is not None
    return {
        "MODEL_SYNC_DESTINATION_TYPE": "oci",
        "MODEL_SYNC_DESTINATION_OCI_URI": run.target_ref,
        "MODEL_SYNC_DESTINATION_OCI_BASE_IMAGE": run.bench.src_oci.base,
        "MODEL_SYNC_DESTINATION_OCI_ENABLE_TLS_VERIFY": "false",
    }


def s3_dest(run: Run) -> dict[str, str]:
    """The run's fresh SeaweedFS as model-sync's destination."""
    assert run.dst_s3 is not None
    return {
        "MODEL_SYNC_DESTINATION_TYPE": "s3",
        "MODEL_SYNC_DESTINATION_AWS_BUCKET": DST_BUCKET,
        "MODEL_SYNC_DESTINATION_AWS_KEY": DST_PREFIX,
        **s3_keys("DESTINATION", run.dst_s3),
    }


def model_sync(run: Run, source: dict[str, str], dest: dict[str, str]) -> list[Step]:
    """One model-sync step: ``python -m job`` with the Job's env vars."""
    return [Step("model-sync", model_sync_argv(), run.bench.model_sync_env(source, dest, run.work))]


def _dst_s3(run: Run) -> S3Server:
    assert run.dst_s3 is not None
    return run.dst_s3


# --- checks ----------------------------------------------------------------------------------------------------


def check_s3(run: Run, files: dict[str, int] | None = None) -> None:
    """The destination bucket holds exactly the model's files, with their sizes."""
    assert run.dst_s3 is not None
    client = run.dst_s3.client()
    found: dict[str, int] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=DST_BUCKET, Prefix=DST_PREFIX):
        for obj in page.get("Contents", []):
            found[obj["Key"][len(DST_PREFIX) :]] = int(obj["Size"])
    want = files if files is not None else run.bench.model.files
    if found != want:
        missing = sorted(set(want) - set(found))[:3]
        extra = sorted(set(found) - set(want))[:3]
        raise AssertionError(f"s3://{DST_BUCKET}/{DST_PREFIX} differs from the model: missing {missing}, extra {extra}")


def pushed_layers(run: Run) -> list[dict[str, Any]]:
    """The layer descriptors of the manifest the run pushed (``GET /v2/<repo>/manifests/<tag>``); keeps their
    count in ``run.layers``."""
    assert run.dst_oci is not None
    repo, _, tag = run.target_ref.partition("/")[2].rpartition(":")
    request = urllib.request.Request(
        f"http://{run.dst_oci.host}/v2/{repo}/manifests/{tag}", headers={"Accept": MANIFEST_TYPES}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        layers: list[dict[str, Any]] = json.load(response).get("layers", [])
    run.layers = len(layers)
    return layers


def check_oci(run: Run, files: int | None = None) -> None:
    """The pushed manifest has the base layer plus one layer per model file."""
    found = len(pushed_layers(run))
    want = 1 + (files if files is not None else len(run.bench.model.files))
    if found != want:
        raise AssertionError(f"{run.target_ref}: {found} layers, expected {want}")


def check_oci_budget(run: Run, model: Model, budget: int = OCI_MAX_LAYERS) -> None:
    """The pushed manifest has at most ``budget`` layers, and the files its model layers list (a layer's title,
    or a packed layer's ``model-sync.files``) are the model's, when every model layer lists them."""
    layers = pushed_layers(run)
    if not 1 < len(layers) <= budget:
        raise AssertionError(f"{run.target_ref}: {len(layers)} layers, expected 2..{budget} (the layer budget)")
    listed: list[str] = []
    for layer in layers[1:]:
        notes = layer.get("annotations") or {}
        if "org.opencontainers.image.title" in notes:
            listed.append(notes["org.opencontainers.image.title"])
        elif "model-sync.files" in notes:
            listed += json.loads(notes["model-sync.files"])
        else:
            return  # the lists were left out (a manifest too big with them): nothing to compare
    if sorted(listed) != sorted(model.files):
        missing, extra = sorted(set(model.files) - set(listed))[:3], sorted(set(listed) - set(model.files))[:3]
        raise AssertionError(
            f"{run.target_ref}: the layers' files differ from the model: missing {missing}, extra {extra}"
        )


# --- the table -------------------------------------------------------------------------------------------------


def all_rows(bench: Bench) -> list[Row]:
    """Every row the bench knows, in table order."""
    from tests.bench.capped_rows import capped_rows
    from tests.bench.floor_rows import client_floor_row, gunzip_floor_row, start_rows
    from tests.bench.gzip_rows import gzip_rows
    from tests.bench.serving_rows import serving_rows  # imports this module: not at the top
    from tests.bench.signed_rows import signed_rows

    model = bench.model
    files = list(model.files)
    ms = "model-sync"
    return [
        Row(
            "s3-oci/model-sync",
            "s3->oci",
            ms,
            "oci",
            lambda r: model_sync(r, bench.s3_source(), oci_dest(r)),
            check_oci,
        ),
        Row(
            "s3-oci/upstream",
            "s3->oci",
            "upstream-style (boto3 + olot + skopeo)",
            "oci",
            lambda r: upstream_to_oci(
                work=r.work,
                files=files,
                base_ref=bench.base_image(),
                target_ref=r.target_ref,
                s3=(endpoint(bench.source_s3()), SRC_BUCKET, MODEL_PREFIX),
            ),
            check_oci,
            baseline="s3-oci/model-sync",
        ),
        Row("s3-oci/floor", "s3->oci", f"registry floor ({FLOOR_STREAMS} streams from memory)", "oci", None),
        client_floor_row(bench),
        Row(
            "s3-s3/model-sync",
            "s3->s3",
            ms,
            "s3",
            lambda r: model_sync(r, bench.s3_source(), s3_dest(r)),
            check_s3,
        ),
        Row(
            "s3-s3/s5cmd",
            "s3->s3",
            "s5cmd download + upload",
            "s3",
            lambda r: s5cmd_s3_to_s3(
                work=r.work,
                src=endpoint(bench.source_s3()),
                src_bucket=SRC_BUCKET,
                src_prefix=MODEL_PREFIX,
                dst=endpoint(_dst_s3(r)),
                dst_bucket=DST_BUCKET,
                dst_prefix=DST_PREFIX,
            ),
            check_s3,
            baseline="s3-s3/model-sync",
        ),
        Row(
            "oci-s3/model-sync",
            "oci->s3",
            ms,
            "s3",
            lambda r: model_sync(r, bench.oci_source(), s3_dest(r)),
            check_s3,
            needs=frozenset({"image"}),
        ),
        Row(
            "oci-s3/skopeo+s5cmd",
            "oci->s3",
            "skopeo pull + tar + s5cmd upload",
            "s3",
            lambda r: skopeo_s5cmd_oci_to_s3(
                work=r.work,
                source_ref=bench.source_image(),
                dst=endpoint(_dst_s3(r)),
                bucket=DST_BUCKET,
                prefix=DST_PREFIX,
            ),
            check_s3,
            baseline="oci-s3/model-sync",
            needs=frozenset({"image"}),
        ),
        Row(
            "uri-oci/model-sync",
            "uri(tar.gz)->oci",
            ms,
            "oci",
            lambda r: model_sync(r, bench.uri_source(), oci_dest(r)),
            check_oci,
            needs=frozenset({"targz"}),
        ),
        gunzip_floor_row(bench),
        Row(
            "pvc-oci/model-sync",
            "pvc->oci",
            ms,
            "oci",
            lambda r: model_sync(r, bench.pvc_source(), oci_dest(r)),
            check_oci,
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
                base_ref=bench.base_image(),
                target_ref=r.target_ref,
                model_dir=bench.model_root(),
            ),
            check_oci,
            baseline="pvc-oci/model-sync",
            needs=frozenset({"disk"}),
        ),
        *start_rows(bench),
        *signed_rows(bench),
        *many_rows(bench),
        *serving_rows(bench),
        *gzip_rows(bench),
        *capped_rows(bench),
    ]


def many_rows(bench: Bench) -> list[Row]:
    """s3 -> oci on the many-files model (under ``s3://models/many/``): model-sync within its layer budget, and
    the upstream-style pipeline, which makes one layer per file. Opt-in (``--only 's3-oci-many/*'``)."""
    route = f"s3->oci {MANY_FILES} small files + {LARGE_FILES} shards"
    needs = frozenset({"many"})
    return [
        Row(
            "s3-oci-many/model-sync",
            route,
            "model-sync",
            "oci",
            lambda r: model_sync(r, bench.s3_source(MANY_PREFIX), oci_dest(r)),
            lambda r: check_oci_budget(r, bench.many),
            needs=needs,
            opt_in=True,
        ),
        Row(
            "s3-oci-many/upstream",
            route,
            "upstream-style (boto3 + olot + skopeo)",
            "oci",
            lambda r: upstream_to_oci(
                work=r.work,
                files=list(bench.many.files),
                base_ref=bench.base_image(),
                target_ref=r.target_ref,
                s3=(endpoint(bench.source_s3()), SRC_BUCKET, MANY_PREFIX),
            ),
            lambda r: check_oci(r, len(bench.many.files)),
            baseline="s3-oci-many/model-sync",
            needs=needs,
            opt_in=True,
        ),
    ]


def flat_row(bench: Bench, flat_mib: int, big: Model) -> Row:
    """model-sync s3 -> oci on the big model (streamed into ``s3://models/big/``)."""
    return Row(
        f"s3-oci@{flat_mib}/model-sync",
        f"s3->oci {flat_mib} MiB",
        "model-sync",
        "oci",
        lambda r: model_sync(r, bench.s3_source(BIG_PREFIX), oci_dest(r)),
        lambda r: check_oci(r, len(big.files)),
    )


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
                ms = len(model_sync_argv())  # what follows it (the initializer's uri and dir) is kept
                return [Step(step.name, [*argv, *step.argv[ms:]], step.env) for step in base.steps(run)]

            out.append(replace(row, id=f"{row.id}[{name}]", tool=f"model-sync [{name}]", steps=steps, baseline=row.id))
    return out


def select(rows: Sequence[Row], only: str) -> list[Row]:
    """The rows whose id matches one of the comma-separated globs (when empty: all but the opt-in rows)."""
    globs = [g.strip() for g in only.split(",") if g.strip()]
    if not globs:
        return [r for r in rows if not r.opt_in]
    return [r for r in rows if any(fnmatch.fnmatchcase(r.id, g) for g in globs)]
