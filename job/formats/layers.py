"""An image's layers read top-down, each once: a file is listed as soon as the pass over its layer reaches it.

gzip layers (what ``docker push`` and ``skopeo copy --dest-compress`` write) have no random access: listing one
means inflating it whole. Listing every layer first and then copying the files read each layer that holds model
files twice. Read from the top layer down instead, an entry is checked against the layers above it, all read by
then: an entry none of them hides is in the flattened image, so its file is listed, and served, as its layer's
pass reaches it.

What the layers above hide (:class:`Cover`), as the OCI image spec's changesets apply from the bottom up: a path
whited out (``.wh.<name>``) and everything under it; everything under an opaque directory (``.wh..wh..opq``);
everything under a path an upper entry makes a non-directory (a file or link replaces a directory and its
contents); the path of an upper entry unless both are directories (directories merge); and a non-directory
where an upper entry needs a directory (it has entries below).

The cover only decides what is listed early. At the end, the layers' entries are applied bottom-up with
:meth:`ModelTree.apply`, the one definition of the flattened tree (links resolved, its refusals): a file listed
early must be there with the same bytes or the listing is refused, as for a tar.gz read as a stream; what is
there and was not listed (links, hard links into lower layers) comes after, served by a later pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import TypeVar

from job.formats.tree import Member, ModelTree, StreamedFiles, TreeFile

__all__ = ["Cover", "StreamedLayers"]

T = TypeVar("T")
_OPAQUE = ".wh..wh..opq"


@dataclass(slots=True)
class Cover:
    """What some layers hide of the layers below them (see the module docstring); paths are normalised."""

    entries: dict[str, bool] = field(default_factory=dict)
    """Every entry's path -> True while every entry there is a directory."""
    needed: set[str] = field(default_factory=set)
    """The parents of every entry: directories these layers need (a whiteout needs none: :meth:`ModelTree.apply`
    does not make its parent a directory)."""
    gone: set[str] = field(default_factory=set)
    """Whited-out paths (``.wh.<name>``)."""
    opaque: set[str] = field(default_factory=set)
    """Opaque directories (``.wh..wh..opq``): what lower layers hold below them is hidden."""

    def note(self, path: str, *, is_dir: bool) -> None:
        """An entry of these layers."""
        self.entries[path] = self.entries.get(path, True) and is_dir
        self._need_parents(path)

    def note_whiteout(self, path: str) -> None:
        """A whiteout of these layers (its own path, ``<dir>/.wh.<name>``)."""
        parent, _, base = path.rpartition("/")
        if base == _OPAQUE:
            self.opaque.add(parent)
        else:
            self.gone.add(f"{parent}/{base[4:]}" if parent else base[4:])

    def _need_parents(self, path: str) -> None:
        i = path.rfind("/")
        while i > 0 and (parent := path[:i]) not in self.needed:
            self.needed.add(parent)
            i = path.rfind("/", 0, i)

    def merge(self, other: Cover) -> None:
        """Take in the cover of a layer below those of this one."""
        for path, is_dir in other.entries.items():
            self.entries[path] = self.entries.get(path, True) and is_dir
        self.needed |= other.needed
        self.gone |= other.gone
        self.opaque |= other.opaque

    def hides(self, path: str, *, is_dir: bool) -> bool:
        """Whether an entry of a lower layer at ``path`` is hidden by these layers."""
        if path in self.gone or "" in self.opaque or "" in self.gone:
            return True
        i = path.find("/")
        while i != -1:
            above = path[:i]
            if above in self.gone or above in self.opaque or self.entries.get(above) is False:
                return True
            i = path.find("/", i + 1)
        upper = self.entries.get(path)
        if upper is not None:
            return not (is_dir and upper)
        return not is_dir and path in self.needed


class StreamedLayers(StreamedFiles[T]):
    """The files of an image's layers, read from the top layer down (see the module docstring).

    ``tree`` is an empty :class:`ModelTree` with whiteouts; :meth:`begin_layer` starts the next layer down,
    :meth:`add` takes its entries in tar order and returns the path of a file to list now, :meth:`rest` applies
    every layer to ``tree`` and returns what it holds beyond the files listed (checking those are still there).
    """

    def __init__(self, tree: ModelTree[T]) -> None:
        super().__init__(tree)
        self._above = Cover()  # the layers read before the current one
        self._layer = Cover()
        self._layers: list[list[tuple[Member, T]]] = []  # top layer first; the entries that reach the root only

    def begin_layer(self) -> None:
        """Entries from now on are the next layer down."""
        self._above.merge(self._layer)
        self._layer = Cover()
        self._layers.append([])

    def _reaches_root(self, path: str) -> bool:
        root = self.tree.root
        return self.tree.inside(path) or not path or root.startswith(path + "/")

    def add(self, member: Member, payload: T) -> PurePosixPath | None:
        path = self.tree.normalize(member.name)  # an unsafe name is refused at once, wherever it is
        parent, _, base = path.rpartition("/")
        if base.startswith(".wh."):
            target = parent if base == _OPAQUE else f"{parent}/{base[4:]}" if parent else base[4:]
            if self._reaches_root(target):
                self._layers[-1].append((member, payload))
                self._layer.note_whiteout(path)
            return None
        if not path or not self._reaches_root(path):
            return None
        self._layers[-1].append((member, payload))
        is_dir = member.kind == "dir"
        self._layer.note(path, is_dir=is_dir)
        if not self.tree.inside(path) or path == self.tree.root:
            return None
        self.tree.check_kind(member)
        if member.kind != "file" or self._above.hides(path, is_dir=is_dir):
            return None
        relative = self.tree.relative(path)
        if gone := next((p for p in relative.parents if p in self.listed), None):
            raise self._replaced(gone)
        self.listed[relative] = payload
        return relative

    def rest(self) -> list[TreeFile[T]]:
        for entries in reversed(self._layers):
            self.tree.apply(entries)
        self._layers = []
        return super().rest()
