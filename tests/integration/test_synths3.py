"""Against synths3 (shared/scale/): the warehouse's real shape and its per-folder listing policy.

synths3 refuses a listing of ``training/`` like the warehouse's IAM policy does for single-modality users,
so this checks that the root is built by probing the known folders. Skipped where shared/ is absent.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.mounting import MountedDaemon

pytestmark = pytest.mark.fuse
SYNTHS3 = Path(__file__).resolve().parents[3] / "shared" / "scale" / "synths3.py"


@contextmanager
def serving(scale: float) -> Iterator[str]:
    """synths3 at ``scale`` on a free loopback port, stopped on exit; skips where shared/ is absent."""
    if not SYNTHS3.exists():
        pytest.skip("shared/scale/synths3.py is not beside the repository")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, str(SYNTHS3), "--scale", str(scale), "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                requests(endpoint)
                break
            except OSError:
                assert time.monotonic() < deadline, "synths3 did not start"
                time.sleep(0.1)
        yield endpoint
    finally:
        server.terminate()
        server.wait(10)


@pytest.fixture(scope="module")
def synths3() -> Iterator[str]:
    with serving(0.002) as endpoint:
        yield endpoint


def requests(endpoint: str) -> dict[str, int]:
    return dict(json.loads(urllib.request.urlopen(f"{endpoint}/_stats?reset=1").read())["requests"])


def test_root_is_built_from_the_folders_the_policy_allows(tmp_path: Path, synths3: str) -> None:
    with MountedDaemon(tmp_path / "mnt", synths3, tmp_path / "cache", tmp_path / "log") as daemon:
        assert sorted(os.listdir(daemon.mountpoint)) == ["ct", "ct-metadata", "data", "mri", "mri-metadata",
                                                         "xray", "xray-metadata"]
        requests(synths3)
        files = subprocess.run(["find", str(daemon.mountpoint / "ct-metadata"), "-type", "f"], capture_output=True,
                               text=True, check=True).stdout.splitlines()
        assert files and all(name.endswith(".json") for name in files)
        counts = requests(synths3)
        assert counts.get("HeadObject", 0) == 0 and counts.get("GetObject", 0) == 0
        first = Path(files[0])
        assert json.loads(first.read_bytes())
        assert daemon.unexpected_log_lines() == []


def test_ls_l_of_a_folder_of_100000_names_takes_seconds_with_memory_bounded(tmp_path: Path) -> None:
    # At scale 5, data/ holds about 98,500 patient folders: far more than --max-listing-entries, so the
    # listing is served from the index row by row, each lookup one B-tree probe.
    with serving(5.0) as endpoint, MountedDaemon(tmp_path / "mnt", endpoint, tmp_path / "cache", tmp_path / "log",
                                                 extra=["--max-listing-entries", "1000"]) as daemon:
        started = time.monotonic()
        listing = subprocess.run(["ls", "-l", str(daemon.mountpoint / "data")], capture_output=True, text=True,
                                 check=True, timeout=120).stdout.splitlines()
        seconds = time.monotonic() - started
        assert len(listing) - 1 > 95_000
        requests(endpoint)
        started = time.monotonic()
        again = subprocess.run(["ls", "-l", str(daemon.mountpoint / "data")], capture_output=True, text=True,
                               check=True, timeout=120).stdout.splitlines()
        warm = time.monotonic() - started
        assert len(again) == len(listing)
        assert requests(endpoint).get("ListObjectsV2", 0) == 0, "a second ls -l listed S3 again"
        assert process_rss_mib(daemon) < 300
        print(f"BIGFOLDER: ls -l of {len(listing) - 1} names: {seconds:.1f} s cold, {warm:.1f} s warm")
        assert seconds < 60 and warm < 30


def process_rss_mib(daemon: MountedDaemon) -> float:
    assert daemon.process is not None
    for line in Path(f"/proc/{daemon.process.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")
