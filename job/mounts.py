"""Where a directory's volume is mounted: for the ``pvc://<claim>/<path>`` uri of a directory on a claim.

KServe's ``storageUri: pvc://<claim>/<path>`` names a path *inside the claim*; the job sees the claim at
its ``mountPath``, perhaps through a ``subPath``. ``/proc/self/mountinfo`` tells both: the mount point
above the directory, and the directory of the volume mounted there (its ``root`` field: ``/`` for the whole
volume, ``/<subPath>`` for a subPath mount).
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath

__all__ = ["MOUNTINFO", "claim_uri", "volume_path"]

MOUNTINFO = Path("/proc/self/mountinfo")


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as ``\\ooo`` octal."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def volume_path(directory: Path, mountinfo: str) -> PurePosixPath:
    """``directory`` (absolute, resolved) as a path inside the volume mounted above it."""
    best: tuple[PurePosixPath, PurePosixPath] | None = None  # (mount point, root inside the volume)
    target = PurePosixPath(directory)
    for line in mountinfo.splitlines():
        fields = line.split()
        if len(fields) < 5:
            continue
        root, point = PurePosixPath(_unescape(fields[3])), PurePosixPath(_unescape(fields[4]))
        if (target == point or point in target.parents) and (best is None or len(point.parts) >= len(best[0].parts)):
            best = (point, root)  # the last of equal mount points is the one on top
    if best is None:
        return target
    point, root = best
    return root / target.relative_to(point)


def claim_uri(claim: str, directory: Path, *, mount_path: Path | None = None, mountinfo: str | None = None) -> str:
    """``pvc://<claim>/<directory inside the claim>``. ``mount_path``: where the claim's root is mounted
    (when given, mountinfo is not read); otherwise found from ``mountinfo`` (default: this process's)."""
    directory = directory.resolve()
    if mount_path is not None:
        inside = PurePosixPath("/") / directory.relative_to(mount_path.resolve())
    else:
        text = mountinfo if mountinfo is not None else MOUNTINFO.read_text(encoding="utf-8", errors="replace")
        inside = volume_path(directory, text)
    rest = inside.as_posix().strip("/")
    return f"pvc://{claim}/{rest}" if rest else f"pvc://{claim}"
