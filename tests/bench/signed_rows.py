"""The price of signing: s3 -> oci with ``MODEL_SYNC_SIGNING_KEY_PATH`` set, next to the same row without.

A signed run hashes every file as it streams (one more sha256 per byte), builds and signs the manifest, and
pushes ``model.sig`` as one more layer and as a referrer of the image. Opt-in (``--only 's3-oci*'``), as the
bench smoke test pins the default rows.
"""

from __future__ import annotations

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.bench.peers import Step
from tests.bench.rows import Row, Run, check_oci, model_sync, oci_dest, pushed_layers
from tests.bench.stack import Bench

__all__ = ["signed_rows"]


def _signed(run: Run, bench: Bench) -> list[Step]:
    key = run.work / "signing-key.pem"
    if not key.exists():
        private = ec.generate_private_key(ec.SECP256R1())
        key.write_bytes(
            private.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    return [
        Step(step.name, step.argv, {**step.env, "MODEL_SYNC_SIGNING_KEY_PATH": str(key)})
        for step in model_sync(run, bench.s3_source(), oci_dest(run))
    ]


def _check_signed(run: Run) -> None:
    """The model's layers, then ``model.sig``'s."""
    check_oci(run, len(run.bench.model.files) + 1)
    last = pushed_layers(run)[-1].get("annotations") or {}
    if last.get("org.opencontainers.image.title") != "model.sig":
        raise AssertionError(f"{run.target_ref}: the last layer is not model.sig: {last}")


def signed_rows(bench: Bench) -> list[Row]:
    return [
        Row(
            "s3-oci/model-sync-signed",
            "s3->oci",
            "model-sync, signed (key)",
            "oci",
            lambda r: _signed(r, bench),
            _check_signed,
            baseline="s3-oci/model-sync",
            opt_in=True,
        )
    ]
