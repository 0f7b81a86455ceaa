"""``make demo``: one real sync, end to end, on a local stack, then what it produced.

Starts the Model Registry stand-in, SeaweedFS (S3) and CNCF distribution (an OCI registry) on
127.0.0.1, pushes a busybox base image, uploads a small model of nested files to S3, runs
``model-sync`` as a Kubernetes Job would (env vars only, create_model, s3 -> oci), and shows the
registry entries, the pushed image's layers pulled back with skopeo, and the KServe
InferenceService that would serve it. Everything it started is stopped at the end.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx

from tests.servers.registry import _with_base as push_base
from tests.servers.registry import build_base_layout, distribution, skopeo_inspect, skopeo_pull, unpack_rootfs
from tests.servers.s3 import seaweedfs
from tests.standin.model_registry import ModelRegistryStandin

MODEL = {
    "config.json": b'{"architectures": ["DemoForSequenceClassification"], "hidden_size": 64}\n',
    "tokenizer/vocab.txt": b"[PAD]\n[UNK]\nhello\nworld\n",
    "tokenizer/config.json": b'{"do_lower_case": true}\n',
    "model.safetensors": os.urandom(3 * 1024 * 1024),
}
METADATA = {
    "RegisteredModel.name": "demo-sentiment",
    "RegisteredModel.description": "A model moved by make demo",
    "ModelVersion.name": "1.0.0",
    "ModelVersion.custom_properties": '{"accuracy": 0.93, "epochs": 3, "tags": ["demo", "nlp"]}',
    "ModelArtifact.model_format_name": "onnx",
    "ModelArtifact.model_format_version": "1",
}


def step(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m", flush=True)


def main() -> int:
    with (
        tempfile.TemporaryDirectory(prefix="model-sync-demo-") as tmp,
        ModelRegistryStandin() as registry,
        seaweedfs(buckets=("models",)) as s3,
        distribution("plain") as oci,
    ):
        work = Path(tmp)
        step("local stack")
        print(f"Model Registry stand-in  {registry.url}")
        print(f"S3 (SeaweedFS)           {s3.endpoint_url}")
        print(f"OCI registry             {oci.host}")
        (work / "base").mkdir()
        build_base_layout(work / "base")
        push_base(oci, work / "base")
        print(f"base image               {oci.base}")

        step("upload a model to s3://models/demo/")
        client = s3.client()
        for path, data in MODEL.items():
            client.put_object(Bucket="models", Key=f"demo/{path}", Body=data)
            print(f"  {path:24} {len(data):>9} bytes")

        metadata = work / "model-metadata"  # what a mounted ConfigMap looks like
        metadata.mkdir()
        for key, value in METADATA.items():
            (metadata / key).write_text(value)
        target = f"{oci.host}/models/demo-sentiment:1.0.0"
        env = {
            "MODEL_SYNC_MODEL_UPLOAD_INTENT": "create_model",
            "MODEL_SYNC_METADATA_CONFIGMAP_PATH": str(metadata),
            "MODEL_SYNC_JOB_ID": "demo-job-uid",
            "MODEL_SYNC_SOURCE_TYPE": "s3",
            "MODEL_SYNC_SOURCE_AWS_BUCKET": "models",
            "MODEL_SYNC_SOURCE_AWS_KEY": "demo/",
            "MODEL_SYNC_SOURCE_AWS_ENDPOINT": s3.endpoint_url,
            "MODEL_SYNC_SOURCE_AWS_REGION": "us-east-1",
            "MODEL_SYNC_SOURCE_AWS_ACCESS_KEY_ID": s3.access_key,
            "MODEL_SYNC_SOURCE_AWS_SECRET_ACCESS_KEY": s3.secret_key,
            "MODEL_SYNC_DESTINATION_TYPE": "oci",
            "MODEL_SYNC_DESTINATION_OCI_URI": target,
            "MODEL_SYNC_DESTINATION_OCI_BASE_IMAGE": oci.base,
            "MODEL_SYNC_DESTINATION_OCI_ENABLE_TLS_VERIFY": "false",
            "MODEL_SYNC_REGISTRY_SERVER_ADDRESS": registry.url,
            "MODEL_SYNC_REGISTRY_AUTHOR": "make-demo",
            "TERMINATION_MESSAGE_PATH": str(work / "termination-log"),
        }
        step("run model-sync as a Job would (env vars only)")
        for key, value in env.items():
            shown = "***" if "SECRET" in key else value
            print(f"  {key}={shown}")
        clean = {k: v for k, v in os.environ.items() if not k.startswith("MODEL_SYNC_")}
        job = subprocess.run(
            [str(Path(sys.executable).parent / "model-sync")], env={**clean, **env}, timeout=300, check=False
        )
        message = (work / "termination-log").read_text()
        print(f"exit code {job.returncode}; termination message: {message}")
        if job.returncode != 0:
            return job.returncode
        result = json.loads(message)

        step("Model Registry entries")
        api = httpx.Client(base_url=registry.api_url)
        for path in (
            f"/registered_models/{result['RegisteredModel']['id']}",
            f"/model_versions/{result['ModelVersion']['id']}",
            f"/model_artifacts/{result['ModelArtifact']['id']}",
        ):
            entity = api.get(path).json()
            shown = {k: entity[k] for k in ("id", "name", "state", "uri", "modelFormatName") if k in entity}
            print(f"  GET {path}: {json.dumps(shown)}")
            for key, value in entity.get("customProperties", {}).items():
                print(f"      {key}: {json.dumps(value)}")

        step(f"the image, pulled back with skopeo: {target}")
        manifest = skopeo_inspect(oci, target, raw=True)
        for layer in manifest["layers"]:
            title = layer.get("annotations", {}).get("org.opencontainers.image.title", "(base image)")
            print(f"  {layer['digest'][:19]}  {layer['size']:>9}  {layer['mediaType'].rsplit('.', 1)[-1]:8} {title}")
        rootfs = unpack_rootfs(skopeo_pull(oci, target, work / "pulled"))
        models = sorted(p for p in rootfs if p.startswith("models/") and rootfs[p].kind == "file")
        print(f"  /models in the unpacked image: {', '.join(models)}")
        same = all(rootfs[f"models/{path}"].data == data for path, data in MODEL.items())
        print(f"  byte for byte equal to the source: {same}")

        step("serve it with KServe (modelcar)")
        print(
            f"""apiVersion: serving.kserve.io/v1beta1
kind: InferenceService
metadata:
  name: demo-sentiment
spec:
  predictor:
    model:
      modelFormat:
        name: onnx
      storageUri: {result["uri"]}"""
        )
        step("stopping the local stack")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
