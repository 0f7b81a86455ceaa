"""The model tree an archive or an image's layers hold, and the one set of safety rules for what may be in it.

:class:`ModelTree` applies entries (tar or zip, described by :class:`Member`) in order and lists the files under
its ``root`` (``models`` for a modelcar image, ``""`` for an archive), each with the payload its caller gave (where
its bytes are). The rules, the same for every reader:

* Names: an absolute path, a ``..`` component, a NUL, a backslash or any other control character is refused,
  wherever the entry is. Paths are normalised (``./a//b`` is ``a/b``); a later entry of the same path replaces an
  earlier one, as extracting does; directories merge.
* Kinds: under the root, only files, directories, symlinks and hard links are allowed; a device, fifo, socket or
  sparse file there is refused. Outside the root (the rest of a base image) such entries are ignored.
* Links: a hard link names an earlier file under the root. A symlink is resolved at the end, through other
  symlinks (at most 40 hops, Linux's ELOOP limit), relative to its folder; an absolute target is resolved from
  the image's root (``absolute_links``) or refused (an archive). It must land on a file or a directory under the
  root, whose bytes (or files) are listed under the link's name; one that leaves the root or dangles is refused.
* Layers (``whiteouts``): the OCI image spec's changesets: in each layer, whiteouts (``.wh.<name>``, and
  ``.wh..wh..opq`` for a whole directory) apply first, against lower layers only, then the layer's entries.
* Bounds: at most ``max_files`` files are listed, links expanded included, so a small archive of links to
  directories cannot list millions of files.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Generic, Protocol, TypeVar

from job.errors import SourceError
from job.model import safe_relative_path

__all__ = ["MAX_FILES", "MAX_HOPS", "Member", "ModelTree", "StreamedFiles", "TreeFile"]

MAX_HOPS = 40
MAX_FILES = 100_000
"""Files a tree may list (links expanded included) unless told otherwise (``MODEL_SYNC_MAX_FILES``): far above any
real model."""
_ALLOWED = ("file", "dir", "symlink", "hardlink")
T = TypeVar("T")


class Member(Protocol):
    """What the tree needs of an archive entry."""

    @property
    def name(self) -> str: ...

    @property
    def kind(self) -> str:
        """``file``, ``dir``, ``symlink``, ``hardlink``, or what else it is in words (``fifo``, ...)."""
        ...

    @property
    def link(self) -> str:
        """A link's target as written in the archive."""
        ...


@dataclass(frozen=True, slots=True)
class TreeFile(Generic[T]):
    """One file of the tree: its path below the root, where its bytes are, and whether a link named it."""

    path: PurePosixPath
    payload: T
    alias: bool = False


@dataclass(frozen=True, slots=True)
class _Node(Generic[T]):
    kind: str  # "file", "dir", "symlink"
    entry: str  # the entry's name, for messages
    payload: T | None = None
    target: str = ""
    alias: bool = False


class ModelTree(Generic[T]):
    """The files under ``root`` after applying entries in order (see the module docstring)."""

    def __init__(
        self,
        root: str = "",
        *,
        what: str,
        whiteouts: bool = False,
        absolute_links: bool = False,
        max_files: int = MAX_FILES,
    ) -> None:
        self.root = root.strip("/")
        self.what = what
        self.whiteouts = whiteouts
        self.absolute_links = absolute_links
        self.max_files = max_files
        self._nodes: dict[str, _Node[T]] = {}

    # --- applying entries ---------------------------------------------------------------------------------

    def apply(self, entries: Iterable[tuple[Member, T]]) -> None:
        """Apply one layer (or a whole archive): whiteouts first when the tree has them, then the entries."""
        named = [(self.normalize(m.name), m, payload) for m, payload in entries]
        if self.whiteouts:
            for path, _, _ in named:
                parent, _, base = path.rpartition("/")
                if base == ".wh..wh..opq":
                    self._remove(parent, keep_self=True)
                elif base.startswith(".wh."):
                    self._remove(f"{parent}/{base[4:]}" if parent else base[4:])
        for path, member, payload in named:
            self._add(path, member, payload)

    def add(self, member: Member, payload: T) -> PurePosixPath | None:
        """Apply one entry (an archive read as a stream: refused as soon as it is read).

        Returns the path the tree now lists ``payload`` under when the entry is a file of its own under the root
        (not a link, which is resolved at the end), else None."""
        path = self.normalize(member.name)
        self._add(path, member, payload)
        node = self._nodes.get(path)
        if node is None or node.kind != "file" or node.alias or node.payload is not payload:
            return None
        return self.relative(path)

    def _refuse(self, entry: str, why: str) -> SourceError:
        return SourceError(f"{self.what}: refusing entry {entry!r}: {why}", path=entry)

    def normalize(self, name: str) -> str:
        """``name`` normalised (``./a//b`` is ``a/b``); an unsafe name is refused."""
        if name.startswith("/"):
            raise self._refuse(name, "absolute paths are not allowed")
        if any(ord(c) < 0x20 or c in "\x7f\\" for c in name):
            raise self._refuse(name, "its name holds a control character or a backslash")
        parts = [p for p in name.split("/") if p not in ("", ".")]
        if ".." in parts:
            raise self._refuse(name, "'..' would escape the root")
        return "/".join(parts)

    def inside(self, path: str) -> bool:
        return not self.root or path == self.root or path.startswith(self.root + "/")

    def _add(self, path: str, member: Member, payload: T) -> None:
        base = path.rpartition("/")[2]
        if not path or not self.inside(path) or (self.whiteouts and base.startswith(".wh.")):
            return
        self.check_kind(member)
        if member.kind == "dir":
            self._put(path, _Node("dir", member.name))
        elif member.kind == "file":
            self._put(path, _Node("file", member.name, payload))
        elif member.kind == "symlink":
            if not member.link or "\x00" in member.link or (member.link.startswith("/") and not self.absolute_links):
                raise self._refuse(member.name, f"it links to {member.link!r}, outside {self._root_name()}")
            self._put(path, _Node("symlink", member.name, target=member.link))
        else:  # a hard link: to an earlier file, named from the top of the archive or image
            try:
                target = self.normalize(member.link.lstrip("/") if self.absolute_links else member.link)
            except SourceError:
                raise self._refuse(member.name, f"hard link to {member.link!r}, outside {self._root_name()}") from None
            node = self._nodes.get(target)
            if not self.inside(target) or node is None or node.kind != "file":
                raise self._refuse(member.name, f"hard link to {member.link!r}, which is not a file {self._under()}")
            self._put(path, _Node("file", member.name, node.payload, alias=True))

    def check_kind(self, member: Member) -> None:
        """Refuse an entry of a kind the root may not hold (a device, fifo, socket or sparse file)."""
        if member.kind not in _ALLOWED:
            raise self._refuse(member.name, f"it is a {member.kind}; only files, directories and links are allowed")

    def _put(self, path: str, node: _Node[T]) -> None:
        parts = path.split("/")
        for i in range(1, len(parts)):  # a parent that was a file or a link becomes a directory
            parent = "/".join(parts[:i])
            existing = self._nodes.get(parent)
            if existing is not None and existing.kind != "dir":
                self._remove(parent)
        existing = self._nodes.get(path)
        if node.kind == "dir" and (existing is None or existing.kind == "dir"):
            if existing is None:  # a directory only implied by what is below it so far merges too
                self._nodes[path] = node
            return  # directories merge
        self._remove(path)
        self._nodes[path] = node

    def _remove(self, path: str, *, keep_self: bool = False) -> None:
        prefix = path + "/" if path else ""
        for key in [k for k in self._nodes if k.startswith(prefix) or (k == path and not keep_self)]:
            del self._nodes[key]

    # --- resolving ------------------------------------------------------------------------------------------

    def _root_name(self) -> str:
        return f"/{self.root}" if self.root else "the archive"

    def _under(self) -> str:
        return f"under /{self.root}" if self.root else "in the archive"

    def _join(self, base: str, target: str, entry: str) -> str:
        parts = [] if target.startswith("/") else [p for p in base.split("/") if p]
        for part in target.split("/"):
            if part == "..":
                if not parts:
                    raise self._refuse(entry, f"it links to {target!r}, outside {self._root_name()}")
                parts.pop()
            elif part not in ("", "."):
                parts.append(part)
        return "/".join(parts)

    def _resolve(self, path: str, hops: int = 0) -> str:
        """``path`` with every symlink in it followed; refuses links that leave the root or loop."""
        current = ""
        for part in path.split("/"):
            candidate = f"{current}/{part}" if current else part
            node = self._nodes.get(candidate)
            if node is not None and node.kind == "symlink":
                if hops >= MAX_HOPS:
                    raise self._refuse(node.entry, "its links go round in a loop (too many levels of links)")
                target = self._join(current, node.target, node.entry)
                if not self.inside(target):
                    raise self._refuse(node.entry, f"it links to {node.target!r}, outside {self._root_name()}")
                candidate = self._resolve(target, hops + 1)
            current = candidate
        return current

    def relative(self, path: str) -> PurePosixPath:
        rel = path[len(self.root) + 1 :] if self.root else path
        return safe_relative_path(rel, what=f"file in {self.what}")

    def files(self) -> list[TreeFile[T]]:
        """Every file under the root, links resolved, sorted by path; at most ``max_files``."""
        root = self._nodes.get(self.root) if self.root else None
        if root is not None and root.kind != "dir":
            raise self._refuse(root.entry, f"/{self.root} must be a directory")
        found: dict[PurePosixPath, TreeFile[T]] = {}

        def keep(path: str, node: _Node[T], alias: bool) -> None:
            assert node.payload is not None
            found[self.relative(path)] = TreeFile(self.relative(path), node.payload, alias)
            if len(found) > self.max_files:
                raise SourceError(
                    f"{self.what}: it lists more than {self.max_files} files, links expanded included (MODEL_SYNC_MAX_FILES)"
                )

        for path, node in sorted(self._nodes.items()):
            if node.kind == "file":
                keep(path, node, node.alias)
            elif node.kind == "symlink":
                final = self._resolve(path)
                target = self._nodes.get(final)
                if target is not None and target.kind == "file":
                    keep(path, target, True)
                    continue
                below = [(sub, child) for sub, child in self._nodes.items() if sub.startswith(final + "/")]
                if (target is None or target.kind != "dir") and not below:
                    raise self._refuse(node.entry, f"it links to {node.target!r}, which is not a file or directory")
                for sub, child in below:  # a directory's files, under the link's name
                    if child.kind == "file":
                        keep(path + sub[len(final) :], child, True)
        return sorted(found.values(), key=lambda f: f.path)


class StreamedFiles(Generic[T]):
    """The files of ``tree`` listed as a stream reaches them (a tar.gz read once; an image's layers read once:
    :class:`job.formats.layers.StreamedLayers`).

    :meth:`add` applies one entry and returns the path of a file to list now (a file of its own; a later entry of
    the same name is listed again, as it replaces the first). :meth:`rest` is what the finished tree holds beyond
    those (links, the files of the layers below). A listed file that a later entry turns into a directory, or
    removes, was already sent: that is refused with its name, as no file system can hold what was sent.
    """

    def __init__(self, tree: ModelTree[T]) -> None:
        self.tree = tree
        self.listed: dict[PurePosixPath, T] = {}

    def add(self, member: Member, payload: T) -> PurePosixPath | None:
        path = self.tree.add(member, payload)
        if path is None:
            return None
        if gone := next((p for p in path.parents if p in self.listed), None):
            raise self._replaced(gone)
        self.listed[path] = payload
        return path

    def rest(self) -> list[TreeFile[T]]:
        """The tree's files not listed by :meth:`add`, sorted by path; checks that every listed one is still there."""
        files = self.tree.files()
        if gone := next(iter(self.listed.keys() - {f.path for f in files}), None):
            raise self._replaced(gone)
        return [f for f in files if self.listed.get(f.path) is not f.payload]

    def _replaced(self, path: PurePosixPath) -> SourceError:
        name = f"{self.tree.root}/{path}" if self.tree.root else str(path)
        return SourceError(
            f"{self.tree.what}: a later entry replaces the file {name} by a directory (or removes it) after its bytes "
            "were read; read as a stream, this cannot be unpacked: repack it without the earlier entry",
            path=name,
        )
