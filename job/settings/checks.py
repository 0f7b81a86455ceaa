"""Checks of single values that would otherwise fail only later, inside a library, with a traceback.

A URL with an unclosed IPv6 literal or a port out of range makes ``urllib.parse`` raise ``ValueError`` on
first use; a path component longer than the file system allows makes ``Path.exists()`` raise ``OSError``
(it swallows only "not found"); a file that is a directory, a dangling link or not UTF-8 fails on read.
Each check here turns that into a ``ConfigError`` naming the setting, before any connection. Messages
never echo a URL (it may carry a token, and may be 100 KB long), only what is wrong with it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import SplitResult, urlsplit

from job.errors import ConfigError

__all__ = [
    "MAX_URL_LENGTH",
    "check_bucket",
    "check_url",
    "path_problem",
    "read_text_file",
    "safe_is_dir",
    "safe_is_file",
    "shown",
]

MAX_URL_LENGTH = 8192
"""Longer than any real endpoint or presigned URL, and what most servers take as a request line (nginx's
default ``large_client_header_buffers`` is 8 KiB); httpx's own cap (64 KiB) would fail only at the first call."""
NAME_MAX = 255
"""Bytes in one path component (Linux, ext4/xfs/overlayfs)."""
PATH_MAX = 4096
"""Bytes in a path (Linux)."""

# What any S3 implementation may name a bucket: today's AWS rules are 3-63 lowercase letters, digits, dots and
# hyphens, but buckets made in us-east-1 before 2018 (and some S3-compatible servers) have uppercase letters,
# underscores and up to 255 characters. Refused is what no bucket can be called: a slash, white space, a control
# character, nothing, or more than 255 characters.
_BUCKET = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,254}\Z")


def _invalid(setting: str, why: str) -> ConfigError:
    return ConfigError(f"invalid setting {setting}: {why}")


def check_url(value: str, setting: str, schemes: tuple[str, ...]) -> SplitResult:
    """``value`` split, once checked: not too long, no white space or control character inside, a scheme of
    ``schemes``, a host, a valid IPv6 literal and a port in 1-65535. Raises ConfigError naming ``setting``."""
    if len(value) > MAX_URL_LENGTH:
        raise _invalid(setting, f"the URL is {len(value)} characters long (at most {MAX_URL_LENGTH})")
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise _invalid(setting, "the URL contains white space or a control character (a line break inside it?)")
    if "://" not in value:
        raise _invalid(setting, f"not a URL: expected {schemes[0]}://host[:port][/path]")
    try:
        parts = urlsplit(value)
        port = parts.port  # parsed lazily: raises for a port out of range or not a number
    except ValueError as exc:  # "Invalid IPv6 URL", "Port out of range 0-65535", "Port could not be cast ..."
        raise _invalid(setting, f"not a valid URL ({exc})") from None
    if parts.scheme not in schemes:
        allowed = ", ".join(schemes[:-1]) + f" or {schemes[-1]}" if len(schemes) > 1 else schemes[0]
        raise _invalid(setting, f"scheme {parts.scheme or '(none)'!r} is not {allowed}")
    if not parts.hostname:
        raise _invalid(setting, "the URL names no host")
    if port == 0:
        raise _invalid(setting, "port 0 is not a port to connect to (1-65535)")
    return parts


def check_bucket(value: str, setting: str) -> str:
    """An S3 bucket name any S3 implementation may have (see ``_BUCKET``), or ConfigError naming ``setting``."""
    if not _BUCKET.match(value):
        shown = repr(value) if len(value) <= 100 else f"of {len(value)} characters"
        raise _invalid(
            setting,
            f"bucket name {shown} is not valid: at most 255 letters, digits, dots, hyphens or underscores, "
            "starting with a letter or digit",
        )
    return value


def path_problem(path: Path) -> str | None:
    """Why ``path`` cannot name a file on Linux (too long, a component too long, a NUL), or None."""
    text = os.fsencode(path)
    if b"\0" in text:
        return "the path contains a NUL character"
    if len(text) >= PATH_MAX:
        return f"the path is {len(text)} bytes long (at most {PATH_MAX - 1})"
    if any(len(part) > NAME_MAX for part in text.split(b"/")):
        return f"a component of the path is longer than {NAME_MAX} bytes"
    return None


def safe_is_file(path: Path) -> bool:
    """``Path.is_file()``, False instead of ``OSError`` (a name too long, a permission denied on a parent)."""
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False


def safe_is_dir(path: Path) -> bool:
    """``Path.is_dir()``, False instead of ``OSError``."""
    try:
        return path.is_dir()
    except (OSError, ValueError):
        return False


def shown(path: Path | str, limit: int = 200) -> str:
    """``path`` for a message: cut in the middle when longer than ``limit`` characters."""
    text = str(path)
    return text if len(text) <= limit else f"{text[: limit // 2]}...{text[-limit // 2 :]}"


def read_text_file(path: Path, what: str) -> str:
    """The UTF-8 text of ``path``, or ConfigError starting with ``what``: unreadable (a directory, a dangling
    link, no permission, a name too long) or not UTF-8. Never echoes the content."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{what}: {shown(path)} is not UTF-8 text") from None
    except OSError as exc:
        raise ConfigError(f"{what}: cannot read {shown(path)}: {exc.strerror or exc.__class__.__name__}") from None
    except ValueError:  # an embedded NUL in the path
        raise ConfigError(f"{what}: cannot read {shown(path)}: the path contains a NUL character") from None
