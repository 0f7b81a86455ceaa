"""The pvc:// uri of a directory on a claim (job.mounts), from mountinfo lines as a pod's look."""

from __future__ import annotations

from pathlib import Path

from job.mounts import claim_uri

# A pod: the root overlay, the claim mounted whole at /mnt/pvc, the same claim through a subPath at
# /data, and a mount point with a space (mountinfo writes it \040).
MOUNTINFO = """\
1361 1259 0:179 / / rw,relatime master:446 - overlay overlay rw,lowerdir=/l
1362 1361 0:181 / /proc rw,nosuid,nodev,noexec,relatime - proc proc rw
1389 1361 253:3 / /mnt/pvc rw,relatime - ext4 /dev/rbd0 rw
1390 1361 253:3 /teams/nlp /data rw,relatime - ext4 /dev/rbd0 rw
1391 1361 253:4 / /mnt/my\\040claim rw,relatime - ext4 /dev/rbd1 rw
"""


def test_a_directory_on_a_whole_claim() -> None:
    assert claim_uri("models", Path("/mnt/pvc/llama/v1"), mountinfo=MOUNTINFO) == "pvc://models/llama/v1"
    assert claim_uri("models", Path("/mnt/pvc"), mountinfo=MOUNTINFO) == "pvc://models"


def test_a_subpath_mount_names_the_path_inside_the_claim() -> None:
    assert claim_uri("models", Path("/data/m"), mountinfo=MOUNTINFO) == "pvc://models/teams/nlp/m"


def test_escaped_mount_points_and_an_explicit_mount_path(tmp_path: Path) -> None:
    assert claim_uri("c", Path("/mnt/my claim/x"), mountinfo=MOUNTINFO) == "pvc://c/x"
    (tmp_path / "a" / "b").mkdir(parents=True)
    assert claim_uri("c", tmp_path / "a" / "b", mount_path=tmp_path) == "pvc://c/a/b"


def test_this_process_mountinfo_is_readable(tmp_path: Path) -> None:
    assert claim_uri("c", tmp_path).startswith("pvc://c")
