"""Kubeflow's Python client (PyPI ``model-registry``) reading back what the job recorded.

Two generations, each in its own venv (``make consumers``): ``0.3.14`` speaks
``/api/model_registry/v1alpha3``, ``0.3.18`` speaks ``/api/model_registry/v1``. :func:`read_back` runs,
in that venv, what a user's notebook would::

    registry = ModelRegistry("http://127.0.0.1", port, author="x", is_secure=False, user_token=token)
    registry.get_registered_model(name)               # its constructor already lists registered models
    registry.get_model_version(name, version)
    registry.get_model_artifact(name, version)        # found by the registered model's *name*

and returns each object as the client parsed it (pydantic ``model_dump(mode="json")``: ``id``, ``name``,
``state``, ``uri``, ``external_id``, ``custom_properties``, ...), or ``None`` where the client returned
``None``. The version and artifact are asked for only when the object above them was found (the client
raises ``StoreError`` otherwise).
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any, Literal

from tests.consumers import run, venv_python

ClientVersion = Literal["0.3.14", "0.3.18"]
READ_TIMEOUT = 120.0

_SCRIPT = """
import json, sys
from model_registry import ModelRegistry

args = json.loads(sys.argv[1])
registry = ModelRegistry(
    args["server"], args["port"], author="x", is_secure=False, user_token=args["token"]
)

def dump(obj):
    return None if obj is None else obj.model_dump(mode="json")

model = registry.get_registered_model(args["model"])
version = registry.get_model_version(args["model"], args["version"]) if model else None
artifact = registry.get_model_artifact(args["model"], args["version"]) if version else None
print(json.dumps({"RegisteredModel": dump(model), "ModelVersion": dump(version), "ModelArtifact": dump(artifact)}))
"""


def read_back(
    version: ClientVersion,
    host: str,
    port: int,
    model_name: str,
    version_name: str,
    token: str | None = "x",
    *,
    timeout: float = READ_TIMEOUT,
) -> dict[str, Any]:
    """``{"RegisteredModel": {...} | None, "ModelVersion": ..., "ModelArtifact": ...}`` as client ``version``
    reads them from the registry at ``host:port`` (``host`` with or without ``http://``).

    Raises :class:`~tests.consumers.ConsumerError` with the client's traceback when it fails (for example
    a 404 from a server that does not serve its API generation).
    """
    python = venv_python(f"mr-{version}")
    server = host if "://" in host else f"http://{host}"
    args = {"server": server, "port": port, "model": model_name, "version": version_name, "token": token}
    with tempfile.TemporaryDirectory(prefix="consumer-mr-home-") as home:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": home, "PYTHONDONTWRITEBYTECODE": "1"}
        result = run(
            f"model-registry {version} client", [python, "-c", _SCRIPT, json.dumps(args)], timeout=timeout, env=env
        )
    found: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return found
