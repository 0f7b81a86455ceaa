"""Entry point: settings -> logging -> plan -> asyncio.run(sync) -> termination message + exit code.

Exit codes: 0 success; 2 configuration error (no server was contacted); 1 any other failure;
143 stopped by SIGTERM. Kubernetes shows the termination message in ``kubectl describe pod`` and
in the Job's status: on success it is upstream's JSON (plus the recorded uri and digest), on
failure the same one-line error that went to the log.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import sys
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from pydantic import SecretStr

from job.config import JobConfig, OciLocation, S3Location, UriLocation, build_job_config
from job.errors import ModelSyncError
from job.http.proxy import normalise_no_proxy
from job.logs import RedactSecrets, configure_logging
from job.settings.chain import Settings, load_settings
from job.settings.names import unknown_env_settings

if TYPE_CHECKING:
    from job.intents import IntentResult
    from job.serving.initializer import Served

log = logging.getLogger("job")

# Kubernetes reads at most 4096 bytes of the termination message.
TERMINATION_MESSAGE_LIMIT = 4096


def write_termination_message(path: Path, message: str) -> None:
    """Write the message where Kubernetes reads it; outside a pod the path may not exist, which is fine.

    Cut to Kubernetes' 4096 bytes on a character boundary (never half a UTF-8 sequence), and written without
    blocking: a path that is a FIFO nobody reads would otherwise hang the job at its very end.
    """
    data = message.encode("utf-8")[:TERMINATION_MESSAGE_LIMIT].decode("utf-8", "ignore").encode("utf-8")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NONBLOCK, 0o644)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
    except OSError as exc:
        log.debug("no termination message written to %s: %s", path, exc.strerror)


class StopWatchdog:
    """After SIGTERM, the process exits within ``seconds`` even if a cleanup step hangs (a stuck socket,
    a blocked thread): a timer thread writes the termination message and ends the process with 143.

    Graceful cleanup is bounded well inside this (``job.pipeline.STOP_SHARE_*``); this is the backstop
    that keeps the promise to Kubernetes, whose SIGKILL would otherwise leave no termination message.
    """

    def __init__(self, seconds: float, termination_path: Path, *, exit: Callable[[int], object] = os._exit) -> None:
        self.seconds = seconds
        self.termination_path = termination_path
        self._exit = exit
        self._timer: threading.Timer | None = None

    def arm(self) -> None:
        """Start the countdown (once)."""
        if self._timer is None:
            self._timer = threading.Timer(self.seconds, self._expire)
            self._timer.daemon = True
            self._timer.start()

    def disarm(self) -> None:
        """The job ended on its own: no hard exit."""
        if self._timer is not None:
            self._timer.cancel()

    def _expire(self) -> None:
        message = f"stopped by SIGTERM: cleanup did not finish within {self.seconds:.0f} s"
        log.error("%s; exiting now", message)
        write_termination_message(self.termination_path, message)
        for handler in logging.getLogger().handlers:
            handler.flush()
        self._exit(143)


def _secrets_of(settings: Settings | None, config: JobConfig | None) -> Iterable[str]:
    """Every secret value the job holds, and the forms it is sent in (``user:password`` in base64 for Basic
    auth), for the log redactor and the termination message: the safety net behind keeping them out of
    messages in the first place."""
    if settings is not None:
        for name in Settings.model_fields:
            value = getattr(settings, name)
            if isinstance(value, SecretStr):
                yield value.get_secret_value()
    if config is None:
        return
    if config.registry.token is not None:
        yield config.registry.token.get_secret_value()
    for location in (config.source, config.destination):
        if isinstance(location, S3Location):
            for key in (location.access_key_id, location.secret_access_key):
                if key is not None:
                    yield key.get_secret_value()
        elif isinstance(location, UriLocation):
            for header in location.headers.values():
                yield from _header_secrets(header.get_secret_value())
            if location.hf_token is not None:
                yield location.hf_token.get_secret_value()
        elif isinstance(location, OciLocation):
            logins = [(location.username, location.password)]
            if location.docker_config is not None:
                for registry in location.docker_config.registries:
                    login = location.docker_config.lookup(registry)
                    if login is not None:
                        logins.append((login.username, login.password))
            for username, password in logins:
                if password is not None:
                    yield password.get_secret_value()
                    basic = f"{username or ''}:{password.get_secret_value()}".encode()
                    yield base64.b64encode(basic).decode("ascii")


def _header_secrets(value: str) -> Iterable[str]:
    """A header value, and its credential alone (``Bearer abc`` -> ``abc`` too)."""
    yield value
    scheme, _, credential = value.partition(" ")
    if credential and scheme.isalpha():
        yield credential.strip()


def _first_error(exc: BaseException) -> BaseException:
    """The first error inside a (nested) ExceptionGroup, which a TaskGroup raises: the user sees that one
    error's line, never "unhandled errors in a TaskGroup"."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def _initializer_call(argv: Sequence[str]) -> tuple[str, str] | None:
    """KServe's call of a storage initializer: ``model-sync <storage-uri> <dest-dir>``."""
    if len(argv) == 2 and not any(arg.startswith("-") for arg in argv):
        return argv[0], argv[1]
    return None


def _serve(
    settings: Settings,
    storage_uri: str,
    directory: str,
    env: Mapping[str, str],
    termination_path: Path,
    redactor: RedactSecrets,
) -> Served:
    """Initializer mode (``job.serving.initializer``): check, then resolve and stream into ``directory``."""
    from job.pipeline import until_terminated  # imports the backends' libraries
    from job.serving.initializer import plan_serving, serve

    log.info("storage initializer: %s -> %s", storage_uri, directory)
    plan = plan_serving(settings, storage_uri, directory, env)
    for config in filter(None, [plan.config]):
        redactor.add(_secrets_of(None, config))
    if plan.registry is not None and plan.registry.token is not None:
        redactor.add([plan.registry.token.get_secret_value()])
    watchdog = StopWatchdog(settings.stop_timeout, termination_path)
    try:
        return asyncio.run(
            until_terminated(
                lambda: serve(plan, on_config=lambda c: redactor.add(_secrets_of(None, c))),
                stop_timeout=settings.stop_timeout,
                on_sigterm=watchdog.arm,
            )
        )
    finally:
        watchdog.disarm()


def run(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> int:
    """Run the job once; return the exit code. Never raises for expected errors."""
    env = os.environ if environ is None else environ
    redactor: RedactSecrets = configure_logging()
    termination_path = Path(env.get("TERMINATION_MESSAGE_PATH", "/dev/termination-log"))
    settings: Settings | None = None
    config: JobConfig | None = None
    if environ is None:
        normalise_no_proxy(os.environ)  # before any client reads it
    serving = _initializer_call(argv)
    try:
        settings = load_settings([] if serving else argv)
        termination_path = settings.termination_message_path
        redactor = configure_logging(settings.log_level, settings.log_format, _secrets_of(settings, None))
        logging.getLogger("job.model_registry").setLevel(settings.registry_log_level)
        for unknown in unknown_env_settings(env, Settings.model_fields):
            log.warning("ignoring env var %s: it is not a model-sync setting", unknown)
        if serving:
            result: IntentResult | Served = _serve(settings, *serving, env, termination_path, redactor)
        else:
            config = build_job_config(settings, env)
            redactor.add(_secrets_of(None, config))

            from job.pipeline import plan_job, run_until_terminated  # imports the backends' libraries

            plan = plan_job(config)
            watchdog = StopWatchdog(config.stop_timeout, termination_path)
            try:
                result = asyncio.run(run_until_terminated(plan, on_sigterm=watchdog.arm))
            finally:
                watchdog.disarm()
    except KeyboardInterrupt:
        write_termination_message(termination_path, "interrupted")
        return 130
    except Exception as exc:
        error = _first_error(exc)
        if isinstance(error, ModelSyncError):
            message = redactor.redact(str(error))
            log.error("%s", message)
            write_termination_message(termination_path, message)
            return error.exit_code
        # A bug: keep the traceback in the log, one line in the termination message.
        log.exception("internal error")
        message = redactor.redact(f"internal error: {error.__class__.__name__}: {error}")
        write_termination_message(termination_path, " ".join(message.split()))
        return 1
    write_termination_message(termination_path, json.dumps(result.to_termination_message()))
    return 0


def main() -> NoReturn:
    """Console script ``model-sync`` and ``python -m job``."""
    sys.exit(run(sys.argv[1:]))


if __name__ == "__main__":
    main()
