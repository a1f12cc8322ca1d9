"""A bucket seeded with every kind of bad key mounts, serves its good files, and lets nothing escape."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.mounting import PREFIX, MountedDaemon, create_bucket

pytestmark = pytest.mark.fuse

GOOD = {
    f"{PREFIX}ct/Covid1/1.2/1.3/good.dcm": b"good image",
    f"{PREFIX}ct/Covid1/1.2/1.3/other.dcm": b"other image",
    f"{PREFIX}data/Covid1/status_2020-05-01.json": b'{"Pseudonym": "Covid1"}',
}
# Each bad key, and the warning it must produce once.
BAD = [
    f"{PREFIX}ct/Covid1/1.2/1.3/../../../../../escape.dcm",
    f"{PREFIX}ct/Covid1/1.2/1.3/./dot.dcm",
    f"{PREFIX}ct/Covid1/1.2/1.3//empty-segment.dcm",
    f"{PREFIX}ct/Covid1/1.2/1.3/{'x' * 300}.dcm",
    f"{PREFIX}ct/Covid1/1.2/1.3/bell\x07name.dcm",
    f"{PREFIX}ct/../outside.dcm",
]
MARKERS = [f"{PREFIX}ct/Covid1/", f"{PREFIX}ct/Covid1/1.2/1.3/"]  # directory markers: the directory itself
BOTH = {f"{PREFIX}ct/Covid1/1.2/both": b"an object", f"{PREFIX}ct/Covid1/1.2/both/inside.dcm": b"inside"}


def test_bad_keys_are_skipped_and_good_files_served(tmp_path: Path, s3_endpoint: str, bucket_name: str) -> None:
    objects = {**GOOD, **BOTH, **{key: b"bad" for key in BAD}, **{key: b"" for key in MARKERS}}
    create_bucket(s3_endpoint, bucket_name, objects.items())
    with MountedDaemon(tmp_path / "mnt", s3_endpoint, tmp_path / "cache", tmp_path / "log",
                       bucket=bucket_name) as daemon:
        root = daemon.mountpoint
        series = root / "ct/Covid1/1.2/1.3"
        assert sorted(os.listdir(series)) == ["good.dcm", "other.dcm"]
        assert sorted(os.listdir(root / "ct")) == ["Covid1"]
        assert sorted(os.listdir(root / "ct/Covid1/1.2")) == ["1.3", "both"]
        assert (root / "ct/Covid1/1.2/both").is_dir()
        assert (root / "ct/Covid1/1.2/both/inside.dcm").read_bytes() == b"inside"
        for key, body in GOOD.items():
            assert (root / key[len(PREFIX):]).read_bytes() == body
        found = {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}
        assert found == {k[len(PREFIX):] for k in GOOD} | {"ct/Covid1/1.2/both/inside.dcm"}
        warnings = [line for line in daemon.log().splitlines() if " WARNING " in line]
        assert len(warnings) == len(BAD) + 1, "one warning per bad key and one for the object/prefix clash"
        os.listdir(series)
        assert len([line for line in daemon.log().splitlines() if " WARNING " in line]) == len(warnings)
        assert not (tmp_path / "escape.dcm").exists() and not (tmp_path / "outside.dcm").exists()
        assert all(p.name.endswith((".data", ".map", ".sqlite3", "-wal", "-shm", ".sock", ".TAG", "lock"))
                   or p.is_dir()
                   for p in (tmp_path / "cache").rglob("*"))


def test_without_allow_other_only_the_mounting_user_can_read(tmp_path: Path, s3_endpoint: str,
                                                             bucket_name: str) -> None:
    import subprocess

    create_bucket(s3_endpoint, bucket_name, GOOD.items())
    with MountedDaemon(tmp_path / "mnt", s3_endpoint, tmp_path / "cache", tmp_path / "log",
                       bucket=bucket_name) as daemon:
        os.chmod(tmp_path, 0o755)
        other = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "ls",
                                str(daemon.mountpoint)], capture_output=True, text=True)
        assert other.returncode != 0 and "Permission denied" in other.stderr
        assert sorted(os.listdir(daemon.mountpoint)) == ["ct", "data"]
        mode = (tmp_path / "cache").stat().st_mode & 0o777
        assert mode == 0o700
