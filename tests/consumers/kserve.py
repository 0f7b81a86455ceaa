"""KServe's storage initializer (PyPI ``kserve-storage`` 0.21.0, venv ``.tools/consumers/kserve``).

:func:`kserve_download` runs ``Storage.download(uri, out_dir)`` in that venv's Python, in a subprocess with
only the environment given (plus ``PATH``/``HOME``), as the storage-initializer container runs it.

What 0.21.0 does (read in its source, ``kserve_storage/kserve_storage.py``):

* ``s3://bucket/prefix``: boto3. Env ``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
  ``AWS_DEFAULT_REGION``, ``S3_VERIFY_SSL`` (``0``/``false`` turns TLS verification off; ``S3_USE_HTTPS`` is
  not read). It lists the prefix as a plain string prefix (no implied ``/``: ``s3://b/m`` also takes
  ``m2/x``), skips keys ending in ``/`` and 0-byte objects, downloads in a process pool, and unpacks a
  single ``.tar``/``.zip`` object. :func:`s3_env` builds the env for a :class:`~tests.servers.s3.S3Server`.
* ``oci://registry/repo:tag`` (KServe's oci+fetch): pure Python, no external tool. oras-py
  (``OrasClient(insecure=...)``: ``insecure`` means plain http) fetches the manifest, resolves an index to
  ``linux/<this arch>``, streams every gzip or uncompressed tar layer and extracts only entries under
  ``models/`` into ``out_dir`` with ``tarfile``'s ``filter="data"`` (zstd layers are refused; an image with
  nothing under ``models/`` is an error). Env: ``KSERVE_OCI_INSECURE_REGISTRY=true`` for a plain-http
  registry (:data:`OCI_INSECURE_ENV`); credentials come only from a docker ``config.json`` at
  ``KSERVE_OCI_DOCKER_CONFIG`` (default ``/mnt/oci-fetch-auth/config.json``; anonymous when absent); a CA
  via ``CA_BUNDLE_VOLUME_MOUNT_POINT`` (``<dir>/cabundle.crt``). It works offline against the test
  registries. ``filter="data"`` needs Python >= 3.11.4 (Debian bookworm's own python3 is 3.11.2 without
  it; this machine kind's python3 is 3.11.7): on an older venv the ``oci://`` call is reported as an
  unavailable consumer instead of a ``TypeError``.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

from tests.consumers import ConsumerError, run, venv_python
from tests.servers import server_unavailable
from tests.servers.s3 import S3Server

DOWNLOAD_TIMEOUT = 300.0
OCI_INSECURE_ENV: dict[str, str] = {"KSERVE_OCI_INSECURE_REGISTRY": "true"}
"""Env for an ``oci://`` uri on a plain-http registry."""
_NO_TAR_FILTER = 3

_SCRIPT = f"""
import sys, tarfile
uri, out = sys.argv[1], sys.argv[2]
if uri.startswith("oci://") and not hasattr(tarfile, "data_filter"):
    print("Python " + sys.version.split()[0] + " has no tarfile filter='data' (needs >= 3.11.4)", file=sys.stderr)
    sys.exit({_NO_TAR_FILTER})
from kserve_storage import Storage
Storage.download(uri, out)
"""


def s3_env(server: S3Server, *, region: str = "us-east-1") -> dict[str, str]:
    """The storage initializer's S3 env for ``server`` (http endpoint, its credentials, no TLS verify)."""
    return {
        "AWS_ENDPOINT_URL": server.endpoint_url,
        "AWS_ACCESS_KEY_ID": server.access_key,
        "AWS_SECRET_ACCESS_KEY": server.secret_key,
        "AWS_DEFAULT_REGION": region,
        "S3_VERIFY_SSL": "0",
    }


def kserve_download(
    uri: str, out_dir: Path, env: Mapping[str, str] | None = None, *, timeout: float = DOWNLOAD_TIMEOUT
) -> None:
    """``Storage.download(uri, out_dir)`` by kserve-storage, with ``env`` (see :func:`s3_env`,
    :data:`OCI_INSECURE_ENV`). Raise :class:`~tests.consumers.ConsumerError` with its log's tail when it fails."""
    python = venv_python("kserve")
    out_dir.mkdir(parents=True, exist_ok=True)
    # A HOME of its own: caches and configs it may read or write stay out of the real home.
    with tempfile.TemporaryDirectory(prefix="consumer-kserve-home-") as home:
        full_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": home, "PYTHONDONTWRITEBYTECODE": "1"}
        full_env.update(env or {})
        try:
            run("kserve-storage download", [python, "-c", _SCRIPT, uri, out_dir], timeout=timeout, env=full_env)
        except ConsumerError as exc:
            if exc.returncode == _NO_TAR_FILTER:
                server_unavailable("KServe's oci:// storage initializer", exc.output.strip())
            raise
