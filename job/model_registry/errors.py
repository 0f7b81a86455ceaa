"""The Model Registry's failures as ``ModelRegistryError``: one line, the server's own words, never the token.

A non-2xx answer becomes "what we did, to which object: <status> <code>: <server message>", from the
``{code, message}`` body (tests/standin/BEHAVIOURS.md §5) or a plain-text body cut to 200 characters; a transport
error becomes "cannot reach the Model Registry at <origin>". Each function takes the ``redact`` of the client's
:class:`job.model_registry.token.BearerToken`: a server or proxy may echo the token it rejected.
"""

from __future__ import annotations

from collections.abc import Callable

import httpx

from job.errors import ModelRegistryError

__all__ = ["error_body", "retry_cause", "status_error", "unreachable_error"]

MAX_BODY_TEXT = 200
"""Characters of a plain-text error body kept in a message (five times this of a ``{code, message}`` one)."""

Redact = Callable[[str], str]


def error_body(response: httpx.Response) -> tuple[str | None, str] | None:
    """``(code, message)`` from the server's ``{code, message}`` error body (§5), or None if it is not one."""
    try:
        data = response.json()
    except ValueError:
        return None
    if not isinstance(data, dict) or "message" not in data:
        return None
    code = data.get("code")
    message = " ".join(str(data["message"]).split())[: MAX_BODY_TEXT * 5]
    return (str(code) if code else None), message


def status_error(what: str, response: httpx.Response, *, served: str, redact: Redact) -> ModelRegistryError:
    """The error for a non-2xx ``response`` to ``what``; ``served`` names the API prefix(es) a route-less 404
    was asked under."""
    status = response.status_code
    parsed = error_body(response)
    if parsed is not None:
        code, message = parsed
    else:
        code = response.reason_phrase or None
        message = " ".join(response.text.split())[:MAX_BODY_TEXT] or "(empty body)"
        if status == 404:
            # chi's plain-text 404: no such route, so not a missing entity (tests/standin/BEHAVIOURS.md § intro).
            message += f" (is the registry address right, and does it serve {served}?)"
    head = f"{status} {code}" if code else str(status)
    return ModelRegistryError(redact(f"{what}: {head}: {message}"), status=status, code=code)


def unreachable_error(
    what: str, exc: httpx.TransportError, *, origin: str, attempts: int, redact: Redact
) -> ModelRegistryError:
    """The error for ``what`` when every attempt to reach the registry at ``origin`` failed, the last with ``exc``."""
    detail = redact(str(exc)) or "no detail"
    return ModelRegistryError(
        f"{what}: cannot reach the Model Registry at {origin}: {type(exc).__name__}: {detail} "
        f"(after {attempts} attempts)"
    )


def retry_cause(redact: Redact) -> Callable[[BaseException | None], str]:
    """How a retry log line (``job.retry.log_before_sleep``) names the failure: the status, or the redacted error."""

    def cause(exc: BaseException | None) -> str:
        if isinstance(exc, httpx.HTTPStatusError):
            return f"HTTP {exc.response.status_code}"
        return redact(f"{type(exc).__name__}: {exc}")

    return cause
