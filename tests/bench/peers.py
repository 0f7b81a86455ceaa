"""The peers model-sync is measured against: what users script instead, built as timed steps.

Each pipeline is a list of :class:`Step` (one process each, run one after the other by :mod:`tests.bench.run`,
which times every step and samples its process tree):

* **upstream-style modelcar** (Kubeflow's async-upload job): boto3 downloads every object to disk, one after the
  other (``download_file``, as ``jobs/async-upload/job/download.py`` does); ``skopeo copy`` pulls the base image into
  an OCI layout *in its own directory* (upstream pulls it into the model's folder, which puts the base image's
  blobs under ``/models``); ``olot`` adds one uncompressed tar layer per model file (``--root-dir`` keeps folders);
  ``skopeo copy`` pushes the layout, gzip-compressing each layer on the way, as upstream's skopeo backend does.
* **s5cmd** for s3 -> s3 across two endpoints: download to disk, then upload (s5cmd talks to one endpoint a run).
* **skopeo + s5cmd** for oci -> s3: pull the image into an OCI layout, untar its layers (GNU tar), upload
  ``models/`` with s5cmd.

Run as a module it holds the two steps that are Python: ``download`` (the upstream job's S3 download) and
``extract`` (untar an OCI layout's layers)::

    python -m tests.bench.peers download --endpoint URL --bucket B --prefix P --dest DIR   # keys from AWS_* env
    python -m tests.bench.peers extract LAYOUT TAG OUT
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

VENV_BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[2]


class MissingTool(RuntimeError):
    """A program a pipeline needs is not installed."""


def tool(name: str) -> str:
    """The path of ``name``: the venv's bin dir first (s5cmd, olot, weed come from the bench group), then PATH."""
    candidate = VENV_BIN / name
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        hint = {
            "s5cmd": "poetry install --with bench",
            "olot": "poetry install --with bench",
            "skopeo": "apt-get install skopeo",
            "tar": "apt-get install tar",
        }.get(name, "install it")
        raise MissingTool(f"{name} is not installed ({hint})")
    return found


@dataclass(frozen=True)
class Step:
    """One process of a pipeline: a name for the table, its argv and its full environment."""

    name: str
    argv: list[str]
    env: dict[str, str] | None = None


@dataclass(frozen=True)
class S3Endpoint:
    """An S3 endpoint and the keys it accepts."""

    url: str
    access_key: str
    secret_key: str
    region: str = "us-east-1"

    def env(self) -> dict[str, str]:
        """``os.environ`` plus this endpoint's keys and region, as the AWS SDKs read them."""
        return {
            **os.environ,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": self.region,
            "AWS_DEFAULT_REGION": self.region,
        }


def _python(*args: str) -> list[str]:
    return [sys.executable, "-m", "tests.bench.peers", *args]


def _python_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(extra or os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def _skopeo(*args: str) -> list[str]:
    return [tool("skopeo"), "--insecure-policy", *args]


def upstream_to_oci(
    *,
    work: Path,
    files: Sequence[str],
    base_ref: str,
    target_ref: str,
    s3: tuple[S3Endpoint, str, str] | None = None,
    model_dir: Path | None = None,
) -> list[Step]:
    """The upstream-style modelcar pipeline: [boto3 download,] skopeo pull base, olot, skopeo push.

    ``s3=(endpoint, bucket, prefix)`` downloads the model to ``work/model`` first (route s3 -> oci);
    otherwise ``model_dir`` is the model already on disk (route pvc -> oci). ``files`` are the model's paths
    relative to its root. Registries are plain http (``--*-tls-verify=false``, as upstream passes them).
    """
    steps: list[Step] = []
    if s3 is not None:
        endpoint, bucket, prefix = s3
        model_dir = work / "model"
        steps.append(
            Step(
                "download",
                _python(
                    "download",
                    "--endpoint",
                    endpoint.url,
                    "--bucket",
                    bucket,
                    "--prefix",
                    prefix,
                    "--dest",
                    str(model_dir),
                ),
                _python_env(endpoint.env()),
            )
        )
    if model_dir is None:
        raise ValueError("upstream_to_oci needs s3= or model_dir=")
    layout = work / "base-layout"
    steps.append(
        Step(
            "pull base",
            _skopeo(
                "copy",
                "--quiet",
                "--multi-arch",
                "all",
                "--src-tls-verify=false",
                f"docker://{base_ref}",
                f"oci:{layout}:latest",
            ),
        )
    )
    steps.append(
        Step("olot", [tool("olot"), str(layout), "--root-dir", str(model_dir), *(str(model_dir / f) for f in files)])
    )
    steps.append(
        Step(
            "push",
            _skopeo(
                "copy",
                "--quiet",
                "--multi-arch",
                "all",
                "--dest-tls-verify=false",
                f"oci:{layout}:latest",
                f"docker://{target_ref}",
            ),
        )
    )
    return steps


def s5cmd_s3_to_s3(
    *, work: Path, src: S3Endpoint, src_bucket: str, src_prefix: str, dst: S3Endpoint, dst_bucket: str, dst_prefix: str
) -> list[Step]:
    """s5cmd download from one endpoint to disk, then upload to the other (default concurrency and part size)."""
    local = work / "download"
    return [
        Step(
            "download",
            [tool("s5cmd"), "--endpoint-url", src.url, "cp", f"s3://{src_bucket}/{src_prefix}*", f"{local}/"],
            src.env(),
        ),
        Step(
            "upload",
            [tool("s5cmd"), "--endpoint-url", dst.url, "cp", f"{local}/", f"s3://{dst_bucket}/{dst_prefix}"],
            dst.env(),
        ),
    ]


def skopeo_s5cmd_oci_to_s3(*, work: Path, source_ref: str, dst: S3Endpoint, bucket: str, prefix: str) -> list[Step]:
    """skopeo pulls the modelcar into an OCI layout, GNU tar unpacks its layers, s5cmd uploads ``models/``."""
    layout, tree = work / "layout", work / "tree"
    tool("tar")
    return [
        Step(
            "pull",
            _skopeo("copy", "--quiet", "--src-tls-verify=false", f"docker://{source_ref}", f"oci:{layout}:pulled"),
        ),
        Step("extract", _python("extract", str(layout), "pulled", str(tree)), _python_env()),
        Step(
            "upload",
            [tool("s5cmd"), "--endpoint-url", dst.url, "cp", f"{tree}/models/", f"s3://{bucket}/{prefix}"],
            dst.env(),
        ),
    ]


# --- the Python steps ------------------------------------------------------------------------------------------


def download(endpoint: str, bucket: str, prefix: str, dest: Path) -> int:
    """What the upstream job does for an S3 source: list, then ``download_file`` each object in turn."""
    import boto3  # type: ignore[import-untyped]  # the bench group's boto3, as the upstream job uses
    from botocore.config import Config  # type: ignore[import-untyped]

    client = boto3.client("s3", endpoint_url=endpoint, config=Config(s3={"addressing_style": "path"}))
    count = 0
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            key: str = obj["Key"]
            if key.endswith("/"):
                continue
            local = dest / os.path.relpath(key, prefix)
            local.parent.mkdir(parents=True, exist_ok=True)
            client.download_file(bucket, key, str(local))
            count += 1
    print(f"downloaded {count} objects to {dest}")
    return 0 if count else 1


def extract(layout: Path, tag: str, out: Path) -> int:
    """Untar every layer of the image tagged ``tag`` in the OCI layout, in order, with GNU tar."""
    index: dict[str, Any] = json.loads((layout / "index.json").read_text())
    entry = next(
        m for m in index["manifests"] if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag
    )
    blobs = layout / "blobs" / "sha256"
    manifest = json.loads((blobs / entry["digest"].removeprefix("sha256:")).read_text())
    out.mkdir(parents=True, exist_ok=True)
    for layer in manifest["layers"]:
        blob = blobs / layer["digest"].removeprefix("sha256:")
        subprocess.run([tool("tar"), "-xf", str(blob), "-C", str(out)], check=True, timeout=3600)
    print(f"extracted {len(manifest['layers'])} layers to {out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``download`` or ``extract`` (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m tests.bench.peers", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    dl = sub.add_parser("download", help="the upstream job's S3 download (keys from AWS_* env vars)")
    dl.add_argument("--endpoint", required=True)
    dl.add_argument("--bucket", required=True)
    dl.add_argument("--prefix", required=True)
    dl.add_argument("--dest", type=Path, required=True)
    ex = sub.add_parser("extract", help="untar the layers of an image in an OCI layout")
    ex.add_argument("layout", type=Path)
    ex.add_argument("tag")
    ex.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    if args.command == "download":
        return download(args.endpoint, args.bucket, args.prefix, args.dest)
    return extract(args.layout, args.tag, args.out)


if __name__ == "__main__":
    sys.exit(main())
