"""Which model files share a layer: the layer budget of a modelcar, as a pure function of the listing.

An image with too many layers pulls but does not start: containers/storage (podman, CRI-O) refuses to
mount more than 127 layers ("max depth exceeded"), Docker's overlay2 stops near 125, and an overlay
mount that is not a container's root file system (KServe's ``oci+native://`` image volumes) fails far
earlier (BuildKit measured about 70 layers). So the model gets at most ``budget`` layers, the budget
being ``MODEL_SYNC_DESTINATION_OCI_MAX_LAYERS`` minus the base image's layers.

:func:`plan_layers` decides, from paths and sizes only (so a rerun, or a second push of the same model,
gives the same layers and digests):

1. **Within the budget** (no more files than layers): one layer per file, in listing order, as always.
2. **Otherwise** files of :data:`BIG_FILE` bytes or more keep a layer of their own (a new version that
   changes one shard re-uploads one layer), and the smaller files are packed together in path order
   (a folder's files stay together), into as few layers as keep each under about :data:`PACK_BYTES`
   and :data:`PACK_FILES` files, as the budget allows.
3. **When even the big files exceed the budget**, neighbours in path order share layers: the slots are
   shared between the big files and the small ones by their bytes, and each side is cut into runs of
   contiguous files whose largest run is as small as it can be.

Groups are lists of indexes into the listing; the files of a group are in path order (the order they
are written into the layer), and groups come in the listing order of their first file.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from pathlib import PurePosixPath

__all__ = ["BIG_FILE", "MAX_LAYERS_LIMIT", "PACK_BYTES", "PACK_FILES", "plan_layers", "tar_weight"]

BIG_FILE = 1024 * 1024
"""A file this large (a weight shard, a tokenizer) keeps a layer of its own while the budget allows:
re-sending it alone costs what it costs anyway. Smaller files (configs, vocabularies, a dataset's many
small files) are packed."""
PACK_BYTES = 64 * 1024 * 1024
"""Small files are packed into layers of about this many bytes at most (while the budget allows) …"""
PACK_FILES = 128
"""… and of about this many files: several packs upload in parallel (a pack's files go one after the
other), and a changed config re-sends one small pack."""
MAX_LAYERS_LIMIT = 127
"""The most layers containers/storage and CRI-O mount (128 fail with "max depth exceeded")."""


def tar_weight(size: int) -> int:
    """The bytes a file takes in a tar stream: a 512-byte header and its bytes padded to 512."""
    return 512 + -(-size // 512) * 512


def plan_layers(files: Sequence[tuple[PurePosixPath, int]], budget: int) -> list[list[int]]:
    """Group ``files`` (path, size) into at most ``budget`` layers (see the module docstring)."""
    if budget < 1:
        raise ValueError(f"a layer budget must be >= 1, got {budget}")
    if len(files) <= budget:
        return [[i] for i in range(len(files))]
    order = sorted(range(len(files)), key=lambda i: files[i][0].parts)
    big = [i for i in order if files[i][1] >= BIG_FILE]
    small = [i for i in order if files[i][1] < BIG_FILE]
    weights = [tar_weight(size) for _, size in files]
    small_bytes = sum(weights[i] for i in small)
    wanted = min(len(small), max(math.ceil(small_bytes / PACK_BYTES), math.ceil(len(small) / PACK_FILES), 1))
    if not big:
        groups = _partition(small, weights, min(wanted, budget))
    elif not small:
        groups = _partition(big, weights, budget)
    elif len(big) < budget:
        groups = [[i] for i in big] + _partition(small, weights, min(wanted, budget - len(big)))
    elif budget == 1:
        groups = [order]
    else:
        share = round(budget * small_bytes / (small_bytes + sum(weights[i] for i in big)))
        small_slots = max(1, min(share, wanted, budget - 1))
        groups = _partition(big, weights, budget - small_slots) + _partition(small, weights, small_slots)
    return sorted(groups, key=min)


def _partition(items: Sequence[int], weights: Sequence[int], slots: int) -> list[list[int]]:
    """Cut ``items`` (in order) into at most ``slots`` contiguous runs whose heaviest run is as light as
    it can be (a binary search on that weight; each try is a greedy cut, found by bisection)."""
    prefix = [0]
    for i in items:
        prefix.append(prefix[-1] + weights[i])

    def cuts(cap: int) -> list[int] | None:
        ends, start = [], 0
        while start < len(items):
            end = bisect.bisect_right(prefix, prefix[start] + cap) - 1
            ends.append(end)
            if len(ends) > slots:
                return None
            start = end
        return ends

    low, high = max(weights[i] for i in items), prefix[-1]
    while low < high:
        middle = (low + high) // 2
        if cuts(middle) is None:
            low = middle + 1
        else:
            high = middle
    ends = cuts(low)
    assert ends is not None
    starts = [0, *ends[:-1]]
    return [list(items[s:e]) for s, e in zip(starts, ends, strict=True)]
