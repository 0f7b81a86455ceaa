"""Logging for pod logs: one line per event, text for people or JSON lines for log pipelines.

Secrets are kept out of logs by construction (SecretStr, no headers or query strings in
messages); :class:`RedactSecrets` is the safety net that masks any known secret value that still
reaches a record, e.g. inside a library's exception text.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterable
from typing import Any

from job.redaction import SecretMask

# Attributes every LogRecord has; anything else was passed with `extra=` and goes into JSON lines.
_RECORD_ATTRS = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class RedactSecrets(logging.Filter):
    """Mask known secret values (:class:`job.redaction.SecretMask`) in a record's message and arguments."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self._mask = SecretMask(secrets)

    def add(self, secrets: Iterable[str]) -> None:
        """Register more values to mask."""
        self._mask.add(secrets)

    def redact(self, text: str) -> str:
        return self._mask.redact(text)

    def filter(self, record: logging.LogRecord) -> bool:
        if self._mask:
            message = record.getMessage()
            if record.exc_info and record.exc_info[1] is not None:
                # Formatters render the exception later; render it now so it can be redacted too.
                record.exc_text = self.redact(logging.Formatter().formatException(record.exc_info))
                record.exc_info = None
            record.msg, record.args = self.redact(message), None
        return True


class TextFormatter(logging.Formatter):
    """``2026-11-21T12:00:00Z INFO  job.engine.transfer: message``, in UTC."""

    converter = time.gmtime  # type: ignore[assignment]  # typeshed's signature is narrower than gmtime's

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-5s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%SZ")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and any ``extra=`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _RECORD_ATTRS and not key.startswith("_"):
                doc[key] = value
        if record.exc_text:
            doc["exception"] = record.exc_text
        elif record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


def add_secrets(secrets: Iterable[str]) -> None:
    """Mask more values in every log line from now on (a token read again from its file, for one)."""
    for handler in logging.getLogger().handlers:
        for log_filter in handler.filters:
            if isinstance(log_filter, RedactSecrets):
                log_filter.add(secrets)


def configure_logging(level: str = "INFO", fmt: str = "text", secrets: Iterable[str] = ()) -> RedactSecrets:
    """Send all logs to stderr in ``fmt`` at ``level``; return the redaction filter to add secrets to."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    redactor = RedactSecrets(secrets)
    handler.addFilter(redactor)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Libraries that log request lines with URLs (presigned query strings) or headers stay quiet.
    for noisy in ("httpx", "httpcore", "botocore", "aiobotocore", "boto3", "urllib3", "s3transfer"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return redactor
