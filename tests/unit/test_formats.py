"""job.formats: the one tar scanner, gzip reader and model tree that archives and image layers share.

The safety rules are tested once here, over both ways the readers use the tree: an archive (root ``""``, no
whiteouts, absolute link targets refused) and a modelcar image (root ``models``, whiteouts, absolute targets from
the image root).
"""

from __future__ import annotations

import gzip
import io
import tarfile
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath

import pytest

from job.errors import SourceError
from job.formats.gzip import PIECE, inflate
from job.formats.layers import StreamedLayers
from job.formats.tar import RangedInput, StreamInput, TarEntry, scan_tar
from job.formats.tree import ModelTree
from job.model import safe_relative_path
from job.oci.modelcar import ModelLayer

Layer = Sequence[tuple[str, str, bytes | str | None]]
"""``(name, kind, data or link target)`` entries of one layer (or a whole archive)."""


async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


def make_tar(
    entries: Sequence[tuple[str, bytes, bytes | str | None]], fmt: int = tarfile.PAX_FORMAT, **pax: str
) -> bytes:
    """``(name, tar type, data or link target)`` entries as an uncompressed tar (``pax``: a global pax header)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=fmt, pax_headers=pax or None) as tar:
        for name, kind, payload in entries:
            info = tarfile.TarInfo(name)
            info.type = kind
            if isinstance(payload, str):
                info.linkname = payload
                tar.addfile(info)
            elif payload is not None:
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
            else:
                tar.addfile(info)
    return raw.getvalue()


async def scan_ranged(data: bytes) -> tuple[list[TarEntry], int]:
    async def fetch(start: int, length: int) -> bytes:
        return data[start : start + length]

    ranged = RangedInput(fetch, len(data), "test")
    entries = [e async for e in scan_tar(ranged, "test")]
    return entries, ranged.requests


async def scan_streamed(data: bytes, piece: int = 100) -> list[TarEntry]:
    pieces = [data[i : i + piece] for i in range(0, len(data), piece)]
    return [e async for e in scan_tar(StreamInput(chunks(*pieces), "test"), "test")]


# --- tar ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT])
async def test_scan_reads_headers_and_data_offsets_ranged_and_streamed(fmt: int) -> None:
    long = "models/" + "n" * 90 + "/file.bin" if fmt != tarfile.USTAR_FORMAT else "models/file.bin"
    data = make_tar(
        [
            ("models/", tarfile.DIRTYPE, None),
            (long, tarfile.REGTYPE, b"x" * 700),
            ("models/l", tarfile.SYMTYPE, "file.bin"),
        ],
        fmt,
    )
    ranged, _ = await scan_ranged(data)
    assert ranged == await scan_streamed(data)
    assert [(e.name.rstrip("/"), e.kind, e.size) for e in ranged] == [
        ("models", "dir", 0),
        (long, "file", 700),
        ("models/l", "symlink", 0),
    ]
    assert data[ranged[1].offset : ranged[1].offset + 700] == b"x" * 700
    assert ranged[2].link == "file.bin"


async def test_pax_global_headers_apply_to_every_later_entry() -> None:
    data = make_tar([("a", tarfile.REGTYPE, b"1"), ("b", tarfile.REGTYPE, b"2")], comment="x", path="renamed")
    assert [e.name for e in await scan_streamed(data)] == ["renamed", "renamed"]


@pytest.mark.parametrize(
    ("tar_type", "kind"),
    [(tarfile.CHRTYPE, "character device"), (tarfile.FIFOTYPE, "fifo"), (tarfile.GNUTYPE_SPARSE, "GNU sparse file")],
)
async def test_special_entries_are_named_for_what_they_are(tar_type: bytes, kind: str) -> None:
    data = make_tar([("x", tar_type, None), ("after", tarfile.REGTYPE, b"ok")], tarfile.GNU_FORMAT)
    assert [(e.name, e.kind) for e in await scan_streamed(data)] == [("x", kind), ("after", "file")]


async def test_pax_sparse_files_are_named_sparse() -> None:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("s")
        info.size, info.pax_headers = 2, {"GNU.sparse.major": "1", "GNU.sparse.minor": "0"}
        tar.addfile(info, io.BytesIO(b"ab"))
    assert [e.kind for e in await scan_streamed(raw.getvalue())] == ["GNU sparse file"]


async def test_listing_a_big_tar_reads_kilobytes() -> None:
    big = 50 * 1024 * 1024
    layer = ModelLayer(__import__("pathlib").PurePosixPath("sub/w.bin"), big)
    fetched: list[int] = []

    async def fetch(start: int, length: int) -> bytes:
        fetched.append(length)
        whole = layer.header + bytes(big + layer.padding + 1024)  # bytes() are cheap zeros
        return whole[start : start + length]

    entries = [e async for e in scan_tar(RangedInput(fetch, layer.layer_size, "test"), "test")]
    assert [e.name.rstrip("/") for e in entries] == ["models", "models/sub", "models/sub/w.bin"]
    assert len(fetched) == 2 and sum(fetched) < 64 * 1024


@pytest.mark.parametrize("cut", [700, 1024 + 100, 512 * 3 + 10])
async def test_a_truncated_tar_is_an_error_ranged_and_streamed(cut: int) -> None:
    data = make_tar([("a", tarfile.REGTYPE, b"x" * 1000), ("b", tarfile.REGTYPE, b"y")])[:cut]
    with pytest.raises(SourceError, match="ends"):
        await scan_ranged(data)
    with pytest.raises(SourceError, match="ends"):
        await scan_streamed(data)


async def test_not_a_tar_and_a_huge_extended_header_are_errors() -> None:
    with pytest.raises(SourceError, match="no valid tar header at byte 0"):
        await scan_streamed(b"hello world" * 100)
    data = make_tar([("n" * 200, tarfile.REGTYPE, b"x")], tarfile.GNU_FORMAT)
    huge = bytearray(data)
    info = tarfile.TarInfo.frombuf(bytes(huge[:512]), "utf-8", "surrogateescape")
    assert info.type == tarfile.GNUTYPE_LONGNAME
    info.size = 2 * 1024 * 1024
    huge[:512] = info.tobuf(tarfile.GNU_FORMAT)[:512]
    with pytest.raises(SourceError, match="extended header"):
        await scan_streamed(bytes(huge))


# --- gzip -----------------------------------------------------------------------------------------------------


async def test_gzip_members_padding_and_truncation() -> None:
    data = make_tar([("models/a", tarfile.REGTYPE, b"A" * 3000), ("models/b", tarfile.REGTYPE, b"B")])
    packed = gzip.compress(data[:5000]) + gzip.compress(data[5000:]) + bytes(1024)  # two members, like pigz
    pieces = [packed[i : i + 100] for i in range(0, len(packed), 100)]
    entries = [e async for e in scan_tar(StreamInput(inflate(chunks(*pieces), "test"), "test"), "test")]
    assert [(e.name, e.size) for e in entries] == [("models/a", 3000), ("models/b", 1)]
    with pytest.raises(SourceError, match="ends early"):
        _ = [c async for c in inflate(chunks(packed[:-1100]), "test")]
    with pytest.raises(SourceError, match="not valid gzip data"):
        _ = [c async for c in inflate(chunks(b"\x1f\x8b" + b"junk" * 100), "test")]


async def test_plain_data_passes_only_when_asked() -> None:
    assert [c async for c in inflate(chunks(b"plain", b" tar"), "test", plain_passes=True)] == [b"plain", b" tar"]
    with pytest.raises(SourceError, match="not valid gzip data"):
        _ = [c async for c in inflate(chunks(b"plain"), "test")]


async def test_inflated_pieces_are_bounded() -> None:
    bomb = gzip.compress(bytes(5 * PIECE))
    sizes = [len(c) async for c in inflate(chunks(bomb), "test")]
    assert sum(sizes) == 5 * PIECE and max(sizes) <= PIECE


# --- the tree: one set of rules for archives and images -----------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    name: str
    kind: str
    link: str = ""


def archive(*entries: tuple[str, str, str] | tuple[str, str]) -> dict[str, int]:
    """An archive's tree: ``(name, kind[, link])`` entries, path -> the index of the entry whose bytes it gets."""
    tree: ModelTree[int] = ModelTree(what="unpacking x.tar")
    for index, e in enumerate(entries):
        tree.add(Entry(*e), index)
    return {str(f.path): f.payload for f in tree.files()}


def image(*layers: Sequence[tuple[str, str, str] | tuple[str, str]]) -> dict[str, int]:
    """An image's tree over ``models``: one list of entries per layer; payload ``1000 * layer + index``.

    Flattened twice, both ways the OCI source reads an image: applied bottom-up, and read top-down as a stream
    (:class:`StreamedLayers`, gzip layers read once); they must give the same files or the same refusal."""
    tree: ModelTree[int] = ModelTree("models", what="reading image", whiteouts=True, absolute_links=True)
    try:
        for n, entries in enumerate(layers):
            tree.apply((Entry(*e), 1000 * n + i) for i, e in enumerate(entries))
        files = {str(f.path): f.payload for f in tree.files()}
    except SourceError as refused:
        with pytest.raises(SourceError) as top_down:
            streamed_image(*layers)
        assert str(top_down.value) == str(refused)
        raise
    assert streamed_image(*layers) == files
    return files


def streamed_image(*layers: Sequence[tuple[str, str, str] | tuple[str, str]]) -> dict[str, int]:
    """:func:`image` read top-down: the files listed as their layer is read, then the rest."""
    streamed: StreamedLayers[int] = StreamedLayers(
        ModelTree("models", what="reading image", whiteouts=True, absolute_links=True)
    )
    for n, entries in reversed(list(enumerate(layers))):
        streamed.begin_layer()
        for i, e in enumerate(entries):
            streamed.add(Entry(*e), 1000 * n + i)
    rest = streamed.rest()
    return {str(path): payload for path, payload in streamed.listed.items()} | {str(f.path): f.payload for f in rest}


def both(*entries: tuple[str, str, str] | tuple[str, str]) -> list[dict[str, int]]:
    """The same entries as an archive, and as one image layer under ``models/``."""
    under = [(f"models/{e[0]}", *e[1:]) for e in entries]
    return [archive(*entries), image(under)]


def test_directories_are_skipped_and_names_normalised() -> None:
    assert archive(("./", "dir"), ("./a", "dir"), ("./a//b.txt", "file")) == {"a/b.txt": 2}
    assert image([("models/", "dir"), ("./models/a/./b.txt", "file")]) == {"a/b.txt": 1}


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        (("../x", "file"), "'..' would escape"),
        (("a/../../x", "file"), "'..' would escape"),
        (("/etc/x", "file"), "absolute paths"),
        (("../up", "dir"), "'..' would escape"),
        (("x\n2026-01-01T00:00:00Z ERROR job: forged", "file"), "control character"),
        (("a\\b", "file"), "backslash"),
        (("dev/null", "character device"), "it is a character device"),
        (("p", "fifo"), "it is a fifo"),
        (("s", "GNU sparse file"), "it is a GNU sparse file"),
        (("l", "symlink", "../../etc/passwd"), "outside"),
        (("a/l", "symlink", "../../.."), "outside"),
        (("h", "hardlink", "../h"), "outside"),
        (("h", "hardlink", "nothing"), "hard link"),
        (("l", "symlink", "missing"), "not a file or directory"),
    ],
)
def test_unsafe_entries_are_refused_by_name_in_archives_and_images(bad: tuple[str, ...], why: str) -> None:
    in_image = bad[0] if bad[0].startswith("/") else f"models/{bad[0]}"
    for build in (
        lambda: archive(("ok", "file"), bad),
        lambda: image([("models/ok", "file"), (in_image, *bad[1:])]),
    ):
        with pytest.raises(SourceError, match=why) as info:
            build()
        assert repr(bad[0]) in str(info.value) or repr(in_image) in str(info.value)


def test_absolute_link_targets_are_the_image_root_in_images_and_refused_in_archives() -> None:
    assert image([("models/w.bin", "file"), ("models/abs.bin", "symlink", "/models/w.bin")]) == {
        "abs.bin": 0,
        "w.bin": 0,
    }
    with pytest.raises(SourceError, match="outside /models"):
        image([("models/pw", "symlink", "/etc/passwd")])
    with pytest.raises(SourceError, match="outside the archive"):
        archive(("w.bin", "file"), ("abs.bin", "symlink", "/w.bin"))


def test_links_resolve_to_their_targets() -> None:
    for got in both(
        ("d/a.bin", "file"),
        ("d/b.bin", "file"),
        ("d/sub/c.bin", "file"),
        ("d/link", "symlink", "a.bin"),  # relative to its folder
        ("chain", "symlink", "d/link"),
        ("dirlink", "symlink", "d/sub"),
    ):
        assert got == {"chain": 0, "d/a.bin": 0, "d/b.bin": 1, "d/link": 0, "d/sub/c.bin": 2, "dirlink/c.bin": 2}
    assert archive(("d/b.bin", "file"), ("hard", "hardlink", "./d/b.bin")) == {"d/b.bin": 0, "hard": 0}
    assert image([("models/b.bin", "file"), ("models/hard", "hardlink", "models/b.bin")]) == {"b.bin": 0, "hard": 0}


def test_a_later_entry_replaces_an_earlier_one() -> None:
    assert archive(("a", "file"), ("b", "file"), ("a", "file")) == {"a": 2, "b": 1}
    assert archive(("a", "symlink", "b"), ("b", "file"), ("a", "file")) == {"a": 2, "b": 1}


def test_looping_links_are_refused() -> None:
    for build in (lambda: archive(("x", "symlink", "y"), ("y", "symlink", "x")),
                  lambda: image([("models/loop", "symlink", "loop")])):  # fmt: skip
        with pytest.raises(SourceError, match="loop"):
            build()


def test_link_expansion_is_bounded() -> None:
    """2,000 files and 1,500 links to their own folder would list 3,000,000 files: refused at the bound."""
    entries: list[tuple[str, str] | tuple[str, str, str]] = [(f"d/f{i}", "file") for i in range(2000)]
    entries += [(f"d/l{i}", "symlink", ".") for i in range(1500)]
    with pytest.raises(SourceError, match="more than 100000 files"):
        archive(*entries)


def test_later_layers_win_whiteouts_and_opaque_directories() -> None:
    files = image(
        [
            ("models/", "dir"),
            ("models/a", "file"),
            ("models/d/x", "file"),
            ("models/d/y", "file"),
            ("etc/passwd", "file"),
        ],
        [("models/a", "file"), ("models/.wh.gone", "file"), ("models/d/.wh..wh..opq", "file"), ("models/d/z", "file")],
        [("./models/b", "file"), ("models/.wh.a", "file")],
    )
    assert files == {"b": 2000, "d/z": 1003}  # a whited out, d's lower files hidden, etc/ ignored


def test_a_layer_read_as_a_stream_whites_out_only_the_layers_below() -> None:
    # Read top-down, a layer's whiteouts come in tar order, after or before its own files, and hide only what the
    # layers below hold, as apply() does for a whole layer; its files are listed as they come, links at the end.
    streamed: StreamedLayers[int] = StreamedLayers(
        ModelTree("models", what="reading image", whiteouts=True, absolute_links=True)
    )
    streamed.begin_layer()
    assert streamed.add(Entry("models/d/y", "file"), 4) == PurePosixPath("d/y")  # a file of its own: its path
    assert streamed.add(Entry("models/d/.wh..wh..opq", "file"), 0) is None
    assert streamed.add(Entry("models/.wh.gone", "file"), 0) is None
    assert streamed.add(Entry("models/a2", "hardlink", "models/a"), 5) is None  # a link: listed at the end
    assert streamed.add(Entry("etc/passwd", "file"), 6) is None  # outside the root
    streamed.begin_layer()
    assert streamed.add(Entry("models/a", "file"), 1) == PurePosixPath("a")
    assert streamed.add(Entry("models/d/x", "file"), 2) is None  # under the opaque directory
    assert streamed.add(Entry("models/gone", "file"), 3) is None  # whited out
    assert {str(f.path): f.payload for f in streamed.rest()} == {"a2": 1}
    assert {str(p): v for p, v in streamed.listed.items()} == {"d/y": 4, "a": 1}


def test_a_directory_entry_merges_with_one_a_lower_layer_only_implied() -> None:
    # A layer written without an entry for models/ itself, under one that has it: the directories merge.
    assert image([("models/a", "file")], [("models/", "dir"), ("models/b", "file")]) == {"a": 0, "b": 1001}


def test_a_whiteout_of_models_itself_hides_the_base_and_devices_outside_models_are_ignored() -> None:
    assert image([("models/base-file", "file"), ("dev/console", "character device")],
                 [(".wh.models", "file"), ("models/m", "file")]) == {"m": 1001}  # fmt: skip


def test_whiteout_names_in_an_archive_are_plain_files() -> None:
    assert archive((".wh.x", "file"), ("x", "file")) == {".wh.x": 0, "x": 1}


@pytest.mark.parametrize(
    "name", ["x\n2026-01-01T00:00:00Z ERROR job: forged", "a\rb", "tab\there", "del\x7f", "nul\x00", "a\\b"]
)
def test_every_source_refuses_control_characters_in_object_paths(name: str) -> None:
    """One rule below every source (S3 keys, Hub paths, pvc names, ORAS titles, archive and layer entries)."""
    with pytest.raises(SourceError, match="control character or a backslash") as info:
        safe_relative_path(name, what="S3 key")
    assert "\n" not in str(info.value) and "\r" not in str(info.value)
