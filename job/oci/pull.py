"""What reading an image needs: the platform an index is resolved for and its entry, a layer's compression, a blob
checked against its digest as it streams. Used by ``job.sources.oci``."""

from __future__ import annotations

import hashlib
import platform as host_platform
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from job.errors import IntegrityError, SourceNotFound
from job.oci.protocol import image_entries
from job.oci.reference import checked_digest

__all__ = ["default_platform", "layer_compression", "pick_platform", "verified_blob"]

_MACHINE_ARCH = {
    "x86_64": "amd64",
    "amd64": "amd64",
    "aarch64": "arm64",
    "arm64": "arm64",
    "ppc64le": "ppc64le",
    "s390x": "s390x",
}


def default_platform() -> str:
    """``linux/<arch>`` of this machine, in OCI's names (x86_64 -> amd64, aarch64 -> arm64)."""
    machine = host_platform.machine().lower()
    return f"linux/{_MACHINE_ARCH.get(machine, machine)}"


def pick_platform(index: dict[str, Any], platform: str, uri: str) -> str:
    """The digest of the entry of ``index`` for ``platform`` (``os/arch[/variant]``); a lone entry that names no
    platform is taken. ``SourceNotFound`` names the platforms the index has."""
    os_name, _, rest = platform.partition("/")
    arch, _, variant = rest.partition("/")
    entries = image_entries(index, nested=True)
    for entry in entries:
        p = entry.get("platform") or {}
        if p.get("os") == os_name and p.get("architecture") == arch and (not variant or p.get("variant") == variant):
            return checked_digest(entry.get("digest"), f"reading {uri}: the index entry for {platform}")
    if len(entries) == 1 and not entries[0].get("platform"):
        return checked_digest(entries[0].get("digest"), f"reading {uri}: the index entry")
    offered = sorted(
        {
            "/".join(filter(None, [(e.get("platform") or {}).get(k) for k in ("os", "architecture", "variant")]))
            for e in entries
        }
    )
    raise SourceNotFound(
        f"reading {uri}: no manifest for platform {platform} (it has {', '.join(offered) or 'none'})", uri=uri
    )


def layer_compression(media_type: str) -> str | None:
    """``"tar"``, ``"gzip"`` or ``"zstd"`` for a tar layer media type (OCI or Docker); None otherwise."""
    if media_type.endswith(("diff.tar.gzip", ".tar+gzip")):
        return "gzip"
    if media_type.endswith((".tar+zstd", "diff.tar.zstd")):
        return "zstd"
    if media_type.endswith((".layer.v1.tar", "diff.tar")):
        return "tar"
    return None


async def verified_blob(body: AsyncIterator[bytes], digest: str, size: int, what: str) -> AsyncGenerator[bytes, None]:
    """The blob's bytes, hashed as they pass; at its end, its size and digest must be the manifest's, else
    ``IntegrityError``: a registry serving other bytes under a digest."""
    algorithm, _, expected = digest.partition(":")
    hasher = hashlib.new(algorithm)
    position = 0
    async for chunk in body:
        hasher.update(chunk)
        position += len(chunk)
        yield chunk
    if position != size or hasher.hexdigest() != expected:
        raise IntegrityError(f"{what}: the registry sent {position} bytes hashing to {algorithm}:{hasher.hexdigest()}")
