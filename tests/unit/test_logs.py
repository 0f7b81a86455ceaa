"""Pod logs: text for people, JSON lines for pipelines, and secrets masked whatever the path."""

from __future__ import annotations

import json
import logging

import pytest

from job.logs import configure_logging


@pytest.fixture(autouse=True)
def restore_root_logger() -> object:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield None
    root.handlers[:] = handlers
    root.setLevel(level)


def test_json_lines_carry_extra_fields(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("INFO", "json")
    logging.getLogger("job.pipeline").info("done: %d files", 3, extra={"bytes": 42, "uri": "oci://r/m:1"})
    line = capsys.readouterr().err.strip()
    doc = json.loads(line)
    assert doc["level"] == "INFO" and doc["logger"] == "job.pipeline"
    assert doc["message"] == "done: 3 files"
    assert doc["bytes"] == 42 and doc["uri"] == "oci://r/m:1"
    assert doc["time"].endswith("Z")


def test_text_lines_are_one_per_event(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("INFO", "text")
    logging.getLogger("job.engine.progress").info("moved %s", "a")
    logging.getLogger("job.engine.progress").debug("not shown")
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].endswith("INFO  job.engine.progress: moved a")


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_known_secrets_are_masked_in_messages_args_and_tracebacks(fmt: str, capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("INFO", fmt, secrets=["s3cr3t-token-value"])
    log = logging.getLogger("job.test")
    log.warning("header Authorization: Bearer %s", "s3cr3t-token-value")
    try:
        raise RuntimeError("server said: bad token s3cr3t-token-value")
    except RuntimeError:
        log.exception("failed")
    err = capsys.readouterr().err
    assert "s3cr3t-token-value" not in err
    assert "***" in err


def test_libraries_that_log_urls_are_quiet() -> None:
    configure_logging("DEBUG", "text")
    assert logging.getLogger("httpx").getEffectiveLevel() >= logging.WARNING
    assert logging.getLogger("botocore").getEffectiveLevel() >= logging.WARNING


def test_every_printed_form_of_a_secret_is_masked(capsys: pytest.CaptureFixture[str]) -> None:
    """An HTTP library printing ``repr(b'Bearer tok\\n')`` must not show the token (nor its JSON form)."""
    redactor = configure_logging("INFO", "text", ["tok-\u00e9-secret\n"])
    log = logging.getLogger("job.test")
    log.info("raw %s", "tok-\u00e9-secret\n")
    log.info("repr %r", "tok-\u00e9-secret\n")
    log.info("bytes %r", "Bearer tok-\u00e9-secret\n".encode())
    log.info("json %s", json.dumps({"t": "tok-\u00e9-secret\n"}))
    err = capsys.readouterr().err
    assert "secret" not in err, err
    assert redactor.redact(repr(b"Bearer tok-\xc3\xa9-secret\n")) == "b'Bearer ***'"
