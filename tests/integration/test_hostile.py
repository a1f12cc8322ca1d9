"""A mount of a hostile S3 server: each misbehaving folder gives EIO in bounded time and memory, and the
rest of the mount, status and SIGTERM keep working."""

from __future__ import annotations

import errno
import json
import os
import time
from pathlib import Path

import pytest

from tests.hostile import HostileS3
from tests.mounting import PREFIX, MountedDaemon

TIMEOUT = 3.0
SLACK = 2.0
BUCKET = "hostile-bucket"
MIB = 1024 * 1024
SERIES = f"{PREFIX}ct/Covid1/1.2/1.3"
OBJECTS = {
    f"{PREFIX}data/Covid1/status_2020-05-01.json": b'{"ok": 1}',
    f"{SERIES}/big.dcm": b"\1" * (3 * MIB),  # not DICOM, no twin
    f"{SERIES}/twin.dcm": b"\1" * 100,
    f"{PREFIX}ct-metadata/Covid1/1.2/1.3/twin.json": b"[" * (3 * MIB),
}


def peak_rss(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))) * 1024


@pytest.mark.fuse
def test_a_hostile_server_costs_each_bad_folder_one_eio_and_nothing_more(tmp_path: Path) -> None:
    with HostileS3(OBJECTS, BUCKET) as server:
        endpoint = server.endpoint_url.replace("http://", "http://user:secret@")
        daemon = MountedDaemon(tmp_path / "mnt", endpoint, tmp_path / "cache", tmp_path / "log", bucket=BUCKET,
                               extra=["--timeout", str(TIMEOUT)])
        with daemon:
            mnt = daemon.mountpoint
            assert daemon.process is not None
            for folder in ("endless", "notoken", "malformed", "drip"):
                started = time.monotonic()
                with pytest.raises(OSError) as failure:
                    os.listdir(mnt / folder)
                assert failure.value.errno == errno.EIO, folder
                assert time.monotonic() - started < TIMEOUT + SLACK, folder
            assert server.lists["endless"] <= 4  # two pages per attempt: the repeated token stops it
            assert peak_rss(daemon.process.pid) < 400 * MIB

            assert (mnt / "data" / "Covid1" / "status_2020-05-01.json").read_bytes() == b'{"ok": 1}'

            series = mnt / "ct" / "Covid1" / "1.2" / "1.3"
            assert os.listxattr(series / "big.dcm") == [] and os.listxattr(series / "twin.dcm") == []
            status = json.loads((mnt / ".nccidfs" / "status.json").read_bytes())
            assert status["s3"]["bytes_fetched"] <= 1.2 * MIB  # of 6 MiB: one capped header read
            assert status["endpoint_url"] == server.endpoint_url

            started = time.monotonic()
            daemon.stop()
            assert time.monotonic() - started < 5 and daemon.returncode == 0
            assert not os.path.ismount(mnt)
    assert "secret" not in daemon.log()
    assert not [line for line in daemon.log().splitlines() if line.startswith("Traceback")]
