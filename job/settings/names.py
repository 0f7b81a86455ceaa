"""The names of the settings: env vars and args as upstream's async-upload job spells them, and the enums."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from enum import StrEnum
from pathlib import Path
from typing import Literal

ENV_PREFIX = "MODEL_SYNC_"
DEFAULT_METADATA_PATH = Path("/etc/model-metadata")
DEFAULT_SA_TOKEN_PATH = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")
# Kubeflow's Python client reads the token *path* from this env var when no other is named.
DEFAULT_USER_TOKEN_ENVVAR = "KF_PIPELINES_SA_TOKEN_PATH"  # noqa: S105 - a name, not a token

# Fields whose env var does not carry the MODEL_SYNC_ prefix (Kubernetes' own names).
_UNPREFIXED_ENV = {
    "termination_message_path": "TERMINATION_MESSAGE_PATH",
    # Upstream's (kubeflow/hub async-upload) names for a private Sigstore instance.
    "sigstore_tuf_url": "SIGSTORE_TUF_URL",
    "sigstore_fulcio_url": "SIGSTORE_FULCIO_URL",
    "sigstore_rekor_url": "SIGSTORE_REKOR_URL",
    "sigstore_tsa_url": "SIGSTORE_TSA_URL",
}


def env_name(field: str) -> str:
    """The env var of a setting: ``source_aws_bucket`` -> ``MODEL_SYNC_SOURCE_AWS_BUCKET``."""
    return _UNPREFIXED_ENV.get(field, ENV_PREFIX + field.upper())


def arg_name(field: str) -> str:
    """The CLI arg of a setting: ``source_aws_bucket`` -> ``--source-aws-bucket``."""
    return "--" + field.replace("_", "-")


def setting_name(field: str) -> str:
    """How a message names a setting: ``MODEL_SYNC_SOURCE_AWS_BUCKET (--source-aws-bucket)``."""
    return f"{env_name(field)} ({arg_name(field)})"


def unknown_env_settings(environ: Mapping[str, str], fields: Iterable[str]) -> list[str]:
    """``MODEL_SYNC_*`` env vars that name none of ``fields`` (typos), each with a suggestion when one is close."""
    import difflib

    known = {env_name(f) for f in fields}
    notes = []
    for name in sorted(environ):
        if name.startswith(ENV_PREFIX) and name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            notes.append(f"{name} (did you mean {close[0]}?)" if close else name)
    return notes


SourceType = Literal["s3", "uri", "oci", "pvc"]
DestinationType = Literal["s3", "oci", "pvc"]


class Intent(StrEnum):
    """What the job does in the Model Registry once the bytes have moved."""

    CREATE_MODEL = "create_model"
    CREATE_VERSION = "create_version"
    UPDATE_ARTIFACT = "update_artifact"
