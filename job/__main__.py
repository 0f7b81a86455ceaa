"""Entry point: settings -> logging -> plan -> asyncio.run(sync) -> termination message + exit code.

Exit codes: 0 success; 2 configuration error (no server was contacted); 1 any other failure;
143 stopped by SIGTERM. Kubernetes shows the termination message in ``kubectl describe pod`` and
in the Job's status: on success it is upstream's JSON (plus the recorded uri and digest), on
failure the same one-line error that went to the log.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import NoReturn

from pydantic import SecretStr

from job.config import JobConfig, Settings, build_job_config, load_settings, unknown_env_settings
from job.errors import ModelSyncError
from job.logs import RedactSecrets, configure_logging

log = logging.getLogger("job")

# Kubernetes reads at most 4096 bytes of the termination message.
TERMINATION_MESSAGE_LIMIT = 4096


def write_termination_message(path: Path, message: str) -> None:
    """Write the message where Kubernetes reads it; outside a pod the path may not exist, which is fine."""
    data = message.encode("utf-8")[:TERMINATION_MESSAGE_LIMIT]
    try:
        with path.open("wb") as f:
            f.write(data)
    except OSError as exc:
        log.debug("no termination message written to %s: %s", path, exc.strerror)


def _secrets_of(settings: Settings | None, config: JobConfig | None) -> Iterable[str]:
    if settings is not None:
        for name in Settings.model_fields:
            value = getattr(settings, name)
            if isinstance(value, SecretStr):
                yield value.get_secret_value()
    if config is not None and config.registry.token is not None:
        yield config.registry.token.get_secret_value()


def run(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> int:
    """Run the job once; return the exit code. Never raises for expected errors."""
    env = os.environ if environ is None else environ
    redactor: RedactSecrets = configure_logging()
    termination_path = Path(env.get("TERMINATION_MESSAGE_PATH", "/dev/termination-log"))
    settings: Settings | None = None
    config: JobConfig | None = None
    try:
        settings = load_settings(argv)
        termination_path = settings.termination_message_path
        redactor = configure_logging(settings.log_level, settings.log_format, _secrets_of(settings, None))
        logging.getLogger("job.model_registry").setLevel(settings.registry_log_level)
        for unknown in unknown_env_settings(env):
            log.warning("ignoring env var %s: it is not a model-sync setting", unknown)
        config = build_job_config(settings, env)
        redactor.add(_secrets_of(None, config))

        from job.pipeline import plan_job, run_until_terminated  # imports the backends' libraries

        plan = plan_job(config)
        result = asyncio.run(run_until_terminated(plan))
    except ModelSyncError as exc:
        message = redactor.redact(str(exc))
        log.error("%s", message)
        write_termination_message(termination_path, message)
        return exc.exit_code
    except KeyboardInterrupt:
        write_termination_message(termination_path, "interrupted")
        return 130
    except Exception as exc:  # a bug: keep the traceback in the log, one line in the termination message
        log.exception("internal error")
        message = redactor.redact(f"internal error: {exc.__class__.__name__}: {exc}")
        write_termination_message(termination_path, " ".join(message.split()))
        return 1
    write_termination_message(termination_path, json.dumps(result.to_termination_message()))
    return 0


def main() -> NoReturn:
    """Console script ``model-sync`` and ``python -m job``."""
    sys.exit(run(sys.argv[1:]))


if __name__ == "__main__":
    main()
