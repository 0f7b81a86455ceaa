"""The Model Registry bearer token: read again when the kubelet rewrites its file, and masked wherever it is echoed."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from job.logs import RedactSecrets, add_secrets

__all__ = ["BearerToken", "stat_key"]

logger = logging.getLogger(__name__)


def stat_key(path: Path) -> tuple[int, int, int] | None:
    """What tells a rewritten file (kubelet swaps a ``..data`` symlink): inode, mtime, size; None if missing."""
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


class BearerToken:
    """The token a client sends (``value``) and the file it came from (``path``, a projected service-account
    token, which the kubelet rewrites before it expires), if any.

    :meth:`reload` reads the file again when its :func:`stat_key` changed, or when forced (after a 401).
    :meth:`redact` masks every token this object held (``job.logs.RedactSecrets``); a token read again from
    the file is also added to the log redactor (``job.logs.add_secrets``).
    """

    def __init__(self, token: str | None, path: str | os.PathLike[str] | None = None) -> None:
        self.value = token or None
        """The token to send; None for none."""
        self.path = Path(path) if path is not None else None
        self.stat = stat_key(self.path) if self.path is not None else None
        """:func:`stat_key` of the file when it was last read."""
        self._redactor = RedactSecrets([token] if token else [])

    def reload(self, *, force: bool = False) -> str | None:
        """Read the file again if it changed (or if ``force``); the new token, or None when there is none.

        A file that cannot be read or is empty keeps the current token: the request then fails, or not,
        on its own merits.
        """
        if self.path is None:
            return None
        key = stat_key(self.path)
        if key == self.stat and not force:
            return None
        self.stat = key
        try:
            token = self.path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            logger.warning("cannot read the registry token file %s again: %s", self.path, exc.strerror)
            return None
        if not token or token == self.value:
            return None
        self.value = token
        self._redactor.add([token])
        add_secrets([token])
        logger.debug("read a new registry token from %s", self.path)
        return token

    def redact(self, text: str) -> str:
        """``text`` with every token held masked as ``***`` (a server or proxy may echo what it rejected)."""
        return self._redactor.redact(text)
