"""The benchmark's model: ``LARGE_FILES`` files of random bytes (weights do not compress) plus the small json and
text files a Hugging Face checkpoint has, one of them in a folder.

It is written to local disk for the rows that read it there (pvc, the ``.tar.gz``, the source modelcar) and put
into the source S3 from there, or, for the ``--flat-mib`` model, streamed into S3 from memory without touching disk.
:meth:`Model.many` is the many-small-files model (a dataset-like tree next to a few shards), for the rows that
measure an image past the OCI destination's layer budget.
"""

from __future__ import annotations

import io
import json
import os
import random
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

KiB = 1024
MiB = 1024 * KiB
LARGE_FILES = 4
PIECE = 16 * MiB
MANY_FILES = 2000
"""Small files of the many-files model."""
MANY_SEED = 20240
"""Seed of the many-small-files model: the same sizes, paths and bytes on every bench."""
UPLOAD_THREADS = 8
"""Parallel ``put_object`` calls for the small files (2,000 of them one by one take most of a setup)."""


@dataclass
class Model:
    """The benchmark's model: large random files plus small text files; ``root`` once written to disk."""

    large: dict[str, int]
    small: dict[str, bytes]
    root: Path | None = None

    @classmethod
    def make(cls, size_mib: int) -> Model:
        """4 files of ``size_mib / 4`` MiB and the small files a Hugging Face checkpoint has."""
        each = max(1, size_mib * MiB // LARGE_FILES)
        large = {f"model-{i:05d}-of-{LARGE_FILES:05d}.safetensors": each for i in range(1, LARGE_FILES + 1)}
        vocab = {f"tok{i}": i for i in range(60_000)}
        small = {
            "config.json": json.dumps({"architectures": ["BenchForCausalLM"], "hidden_size": 4096}).encode(),
            "generation_config.json": b'{"do_sample": true, "temperature": 0.7}\n',
            "tokenizer.json": json.dumps({"model": {"type": "BPE", "vocab": vocab}}).encode(),
            "tokenizer/tokenizer_config.json": b'{"model_max_length": 4096}\n',
            "README.md": b"# bench model\n\nRandom weights for model-sync's benchmark.\n",
        }
        return cls(large, small)

    @classmethod
    def many(cls, small_files: int = MANY_FILES, shard_mib: int = 24, seed: int = MANY_SEED) -> Model:
        """``small_files`` files of 4-64 KiB in 3 folders of 4 subfolders each (sizes and bytes drawn from
        ``seed``), next to 4 shards of ``shard_mib`` MiB: more files than an image's layer budget."""
        rng = random.Random(seed)
        folders = [f"data/{top}/part-{sub}" for top in ("train", "validation", "test") for sub in range(4)]
        small = {
            f"{folders[i % len(folders)]}/item-{i:05d}.bin": rng.randbytes(rng.randint(4 * KiB, 64 * KiB))
            for i in range(small_files)
        }
        large = {f"model-{i:05d}-of-{LARGE_FILES:05d}.safetensors": shard_mib * MiB for i in range(1, LARGE_FILES + 1)}
        return cls(large, small)

    @classmethod
    def tiny(cls) -> Model:
        """One file of 8 bytes: a job's start and end with nothing to move (the ``start/*`` rows)."""
        return cls({}, {"config.json": b'{"a": 1}'})

    @property
    def files(self) -> dict[str, int]:
        """Every file's relative path and size."""
        return {**self.large, **{k: len(v) for k, v in self.small.items()}}

    @property
    def total(self) -> int:
        return sum(self.files.values())

    def write(self, root: Path) -> None:
        """Write the model under ``root`` (random bytes for the large files)."""
        for name, data in self.small.items():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_bytes(data)
        for name, size in self.large.items():
            with (root / name).open("wb") as f:
                for start in range(0, size, PIECE):
                    f.write(os.urandom(min(PIECE, size - start)))
        self.root = root

    def upload(self, client: Any, bucket: str, prefix: str) -> None:
        """Put the model into S3: from ``root`` when written, else random bytes streamed straight from memory."""
        from boto3.s3.transfer import TransferConfig  # type: ignore[import-untyped]

        config = TransferConfig(multipart_threshold=64 * MiB, multipart_chunksize=64 * MiB, max_concurrency=4)
        with ThreadPoolExecutor(UPLOAD_THREADS) as pool:  # boto3 clients are thread-safe
            for done in [
                pool.submit(client.put_object, Bucket=bucket, Key=prefix + k, Body=v) for k, v in self.small.items()
            ]:
                done.result()
        for name, size in self.large.items():
            if self.root is not None:
                client.upload_file(str(self.root / name), bucket, prefix + name, Config=config)
            else:
                client.upload_fileobj(_RandomReader(size), bucket, prefix + name, Config=config)

    def write_targz(self, path: Path) -> None:
        """The model as a ``.tar.gz`` (gzip level 0: random weights get stored blocks at any level anyway, so the
        reader's work is the same as for ``gzip -1``, and writing it takes seconds instead of ~20 s per GiB)."""
        import tarfile

        assert self.root is not None
        with tarfile.open(path, "w:gz", compresslevel=0) as tar:
            tar.add(self.root / "tokenizer", arcname="tokenizer", recursive=False)
            for name in self.files:
                tar.add(self.root / name, arcname=name)


class _RandomReader(io.RawIOBase):
    """A read-only stream of ``size`` random bytes (to upload a big model without writing it to disk)."""

    def __init__(self, size: int) -> None:
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = min(len(buffer), self.left)
        buffer[:n] = os.urandom(n)
        self.left -= n
        return n
