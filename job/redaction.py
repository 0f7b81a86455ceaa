"""Redaction, one way for the whole job: secrets masked in every form a library prints them, and URL query strings.

Secrets are kept out of messages by construction (SecretStr, no headers or query strings in what we write);
this is the safety net for what still reaches a message, e.g. inside a library's exception text or a server's
echo of what it rejected: :class:`SecretMask` for known secret values, :func:`redact_query` for the query string
of any URL (a presigned URL carries its signature there). The log handler, the termination message, and the
S3, HTTP and Model Registry clients' error messages all use these.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable

__all__ = ["MASK", "SecretMask", "redact_query"]

MASK = "***"
MIN_SECRET = 4
"""Shorter values are not masked: masking "a" would garble every line, and no real secret is that short."""
_QUERY = re.compile(r"(\b[a-z][a-z0-9+.-]*://[^\s?#'\"<>]*)\?[^\s#'\"<>]*", re.IGNORECASE)


def redact_query(text: str) -> str:
    """``text`` with the query string of every URL in it replaced by ``<redacted>``."""
    return _QUERY.sub(r"\1?<redacted>", text)


def _printed_forms(secret: str) -> set[str]:
    """``secret`` as it may appear in a message: raw, stripped, str-repr, bytes-repr and JSON escaped."""
    if not secret:
        return set()
    forms = {secret, secret.strip()}
    for value in tuple(forms):
        forms.add(repr(value)[1:-1])
        forms.add(repr(value.encode("utf-8", "backslashreplace"))[2:-1])
        forms.add(json.dumps(value)[1:-1])
        forms.add(json.dumps(value, ensure_ascii=False)[1:-1])
    forms.discard("")
    return forms


class SecretMask:
    """Known secret values, masked as ``***`` wherever they appear."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: list[str] = []
        self.add(secrets)

    def __bool__(self) -> bool:
        return bool(self._secrets)

    def add(self, secrets: Iterable[str]) -> None:
        """Mask more values, each in every form a library may print it in: as it is, without surrounding white
        space, escaped as in a Python ``repr`` of a str or of bytes (``b'Bearer tok\\n'``), and as in JSON."""
        for secret in secrets:
            for form in _printed_forms(secret):
                if len(form) >= MIN_SECRET and form not in self._secrets:
                    self._secrets.append(form)
        self._secrets.sort(key=len, reverse=True)  # mask the longest first, so a prefix never leaks the rest

    def redact(self, text: str) -> str:
        """``text`` with every known secret masked."""
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        return text
