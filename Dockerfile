# model-sync: the container image of a Kubernetes Job (see samples/).
#
#   docker build \
#     --build-arg VCS_REF=$(git rev-parse --short HEAD) \
#     --build-arg BUILD_DATE=$(date -u +"%Y-%m-%dT%H:%M:%SZ") \
#     -t ghcr.io/example/model-sync:$(git rev-parse --short HEAD) .
#
# The builder stage makes /opt/venv: exactly poetry.lock's main group (pinned, hash-checked, no
# dev tool), then the project's wheel. The final stage copies only /opt/venv. The builder's RUN
# lines are executed verbatim (paths mapped to a temp dir) by tests/integration/test_install.py,
# and tests/unit/test_dockerfile.py checks the rest; keep both in step with this file.

# ---------------------------------------------------------------------------------------------
FROM python:3.11-slim AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    POETRY_NO_INTERACTION=1 \
    POETRY_VIRTUALENVS_CREATE=false

# Poetry (the version the Makefile pins), in its own venv: it checks that the lock matches
# pyproject.toml and builds the project's wheel. It never reaches the final stage.
RUN python -m venv /opt/poetry \
 && /opt/poetry/bin/pip install --no-cache-dir poetry==2.5.1

WORKDIR /src
COPY pyproject.toml poetry.lock README.md ./

# 1. The lock must match pyproject.toml.
# 2. The lock's main group as pinned, hash-checked requirements: what `poetry export --only main`
#    writes (export needs a plugin). A package is listed when its `groups` include "main", which
#    poetry computes as the closure of [project].dependencies; dev-only packages never are.
# 3. The runtime venv, without pip: the builder's pip installs into it (--python), with --no-deps
#    because the list is already the whole closure.
RUN /opt/poetry/bin/poetry check --lock \
 && python -c 'import tomllib; \
lock = tomllib.load(open("poetry.lock", "rb")); \
marker = lambda p: (p.get("markers") or {}).get("main") if isinstance(p.get("markers"), dict) else p.get("markers"); \
lines = [p["name"] + "==" + p["version"] + (" ; " + marker(p) if marker(p) else "") + "".join(" --hash=" + f["hash"] for f in p["files"]) for p in lock["package"] if "main" in p["groups"]]; \
print("\n".join(lines))' > requirements.txt \
 && python -m venv --without-pip /opt/venv \
 && pip --python /opt/venv/bin/python install --no-cache-dir --no-deps --require-hashes -r requirements.txt

# The project last, so a code change reuses the dependency layer. `pip check` proves the lock's
# main group satisfies every requirement of the installed distributions.
COPY job ./job
RUN /opt/poetry/bin/poetry build --format wheel \
 && pip --python /opt/venv/bin/python install --no-cache-dir --no-deps dist/model_sync-*.whl \
 && pip --python /opt/venv/bin/python check

# ---------------------------------------------------------------------------------------------
# Runtime: the same base (the venv's interpreter is /usr/local/bin/python3.11), /opt/venv, no
# compiler, no poetry, no pip cache. Works with readOnlyRootFilesystem: true: .pyc files were
# written at install time and none are written at run time; HOME and the scratch dir
# (MODEL_SYNC_STORAGE_PATH, only used to spool a zip the server cannot range) are under /tmp,
# which the samples mount as an emptyDir.
FROM python:3.11-slim

COPY --from=builder /opt/venv /opt/venv

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp

# The distroless "nonroot" ids; numeric so runAsNonRoot can verify them without /etc/passwd.
USER 65532:65532
WORKDIR /tmp

# Last, so a new revision or date does not invalidate the layers above.
ARG VCS_REF=unknown
ARG BUILD_DATE=unknown
ARG SOURCE_URL=https://github.com/example/model-sync
LABEL org.opencontainers.image.title="model-sync" \
      org.opencontainers.image.description="Stream an ML model from S3, http(s), hf://, OCI or a PVC into S3 or a KServe modelcar image, and record it in Kubeflow Model Registry." \
      org.opencontainers.image.source="${SOURCE_URL}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.revision="${VCS_REF}" \
      org.opencontainers.image.created="${BUILD_DATE}" \
      org.opencontainers.image.base.name="docker.io/library/python:3.11-slim"

ENTRYPOINT ["model-sync"]
