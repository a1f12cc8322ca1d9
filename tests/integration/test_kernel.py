"""What the kernel is asked and what it keeps: no OPENDIR, listings kept in the kernel's cache until the
daemon says they changed, and a ceiling on the inode numbers the daemon holds for the kernel.

Requests are counted by the daemon (``kernel`` in ``.nccidfs/status.json``)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nccidfs.config import DEFAULT_ATTR_TIMEOUT
from nccidfs.demo.warehouse import DemoObject
from tests.mounting import (
    BUCKET,
    PREFIX,
    MountedDaemon,
    create_bucket,
    daemon_env,
    s3_client,
    seed_demo_bucket,
    within,
)

pytestmark = pytest.mark.fuse
NEW_NAME = "data_2021-03-04.json"


@pytest.fixture(scope="module")
def bucket(s3_endpoint: str, warehouse: list[DemoObject]) -> str:
    return seed_demo_bucket(s3_endpoint, f"{BUCKET}-kernel", warehouse)


@pytest.fixture
def mount(tmp_path: Path, s3_endpoint: str, bucket: str) -> Iterator[MountedDaemon]:
    with MountedDaemon(tmp_path / "mnt", s3_endpoint, tmp_path / "cache", tmp_path / "daemon.log", bucket=bucket,
                       extra=["--no-prefetch"]) as daemon:
        yield daemon


def requests(mount: MountedDaemon) -> dict[str, int]:
    """FUSE requests the daemon answered so far, by kind (reading the status file adds its own few)."""
    counts = json.loads((mount.mountpoint / ".nccidfs" / "status.json").read_text())["kernel"]
    assert isinstance(counts, dict)
    return counts


def listings(mount: MountedDaemon) -> int:
    counts = requests(mount)
    return counts.get("readdir", 0) + counts.get("readdirplus", 0)


def find_files(root: Path) -> list[str]:
    return sorted(subprocess.run(["find", str(root), "-type", "f"], capture_output=True, text=True,
                                 check=True).stdout.splitlines())


def test_a_walk_sends_no_opendir_and_the_second_walk_is_served_by_the_kernel(
        mount: MountedDaemon, warehouse: list[DemoObject]) -> None:
    root = mount.mountpoint / "xray-metadata"
    first = find_files(root)
    assert len(first) == sum(o.key.startswith(f"{PREFIX}xray-metadata/") for o in warehouse)
    after_first = requests(mount)
    directories = int(subprocess.run(f"find {root} -type d | wc -l", shell=True, capture_output=True,
                                     text=True, check=True).stdout)
    # One OPENDIR at most (answered ENOSYS: the kernel sends none after it) and no RELEASEDIR at all.
    assert after_first.get("opendir", 0) <= 1 and after_first.get("releasedir", 0) == 0
    # A listing with sub-directories' attributes, and the read that finds its end: two a directory.
    assert after_first.get("readdirplus", 0) + after_first.get("readdir", 0) <= 2 * directories + 2
    before = listings(mount)
    assert find_files(root) == first
    assert listings(mount) == before, "the second walk's listings came from the kernel's cache"


def test_a_second_walk_within_the_listing_ttl_sends_no_lookup(mount: MountedDaemon) -> None:
    """Names are kept by the kernel until their listing is past its TTL, not only for the 5 s floor."""
    root = mount.mountpoint / "xray-metadata"
    first = find_files(root)
    time.sleep(DEFAULT_ATTR_TIMEOUT + 1)
    before = requests(mount)
    assert find_files(root) == first
    after = requests(mount)
    assert after.get("lookup", 0) == before.get("lookup", 0), "the kernel asked again for names it was given"
    assert after.get("getattr", 0) == before.get("getattr", 0)


@pytest.mark.parametrize("how", ["refresh", "sighup"])
def test_refresh_and_sighup_make_the_kernel_forget_the_names_it_keeps(
        mount: MountedDaemon, s3_endpoint: str, bucket: str, how: str) -> None:
    client = s3_client(s3_endpoint)
    folder = mount.mountpoint / "data" / "Covid992"
    key = f"{PREFIX}data/Covid992/{NEW_NAME}"
    client.put_object(Bucket=bucket, Key=key, Body=b'{"Pseudonym": "Covid992"}')
    try:
        nccidfs_refresh(mount, folder)  # the upload shows
        path = folder / NEW_NAME
        assert path.stat().st_size > 0
        client.delete_object(Bucket=bucket, Key=key)
        assert path.exists(), "the kernel keeps the name while its listing is fresh"
        if how == "refresh":
            nccidfs_refresh(mount, folder)
        else:
            assert mount.process is not None
            mount.process.send_signal(signal.SIGHUP)
        # Well within the 5 s the kernel kept names for before: the daemon told it to forget them.
        assert within(1.0, lambda: not path.exists()), f"{how} left the name in the kernel's cache"
    finally:
        client.delete_object(Bucket=bucket, Key=key)


def nccidfs_refresh(mount: MountedDaemon, path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "nccidfs", "refresh", str(mount.mountpoint), str(path)],
                            capture_output=True, text=True, timeout=60, env=daemon_env())
    assert result.returncode == 0, result.stderr


def test_refresh_and_sighup_drop_the_listing_the_kernel_keeps(mount: MountedDaemon, s3_endpoint: str,
                                                              bucket: str) -> None:
    client = s3_client(s3_endpoint)
    folder = mount.mountpoint / "data" / "Covid992"
    before = set(os.listdir(folder))
    read = listings(mount)
    assert set(os.listdir(folder)) == before
    assert listings(mount) == read, "the second ls was served by the kernel"
    key = f"{PREFIX}data/Covid992/{NEW_NAME}"
    client.put_object(Bucket=bucket, Key=key, Body=b'{"Pseudonym": "Covid992"}')
    try:
        assert NEW_NAME not in os.listdir(folder), "the listing is trusted for --listing-ttl"
        result = subprocess.run([sys.executable, "-m", "nccidfs", "refresh", str(mount.mountpoint), str(folder)],
                                capture_output=True, text=True, timeout=60, env=daemon_env())
        assert result.returncode == 0, result.stderr
        assert NEW_NAME in os.listdir(folder)
        client.delete_object(Bucket=bucket, Key=key)
        assert mount.process is not None
        mount.process.send_signal(signal.SIGHUP)
        assert within(5.0, lambda: NEW_NAME not in os.listdir(folder)), "SIGHUP left the kernel's listing"
    finally:
        client.delete_object(Bucket=bucket, Key=key)


def test_a_listing_past_its_ttl_is_dropped_from_the_kernel_when_it_changed(
        tmp_path: Path, s3_endpoint: str, bucket: str) -> None:
    client = s3_client(s3_endpoint)
    key = f"{PREFIX}data/Covid849/{NEW_NAME}"
    with MountedDaemon(tmp_path / "mnt", s3_endpoint, tmp_path / "cache", tmp_path / "log", bucket=bucket,
                       extra=["--listing-ttl", "1", "--no-prefetch"]) as daemon:
        folder = daemon.mountpoint / "data" / "Covid849"
        before = set(os.listdir(folder))
        read = listings(daemon)
        assert set(os.listdir(folder)) == before and listings(daemon) == read
        client.put_object(Bucket=bucket, Key=key, Body=b'{"Pseudonym": "Covid849"}')
        try:
            time.sleep(1.5)
            # Past the TTL the kernel's listing is served once more while the folder is listed again.
            assert within(3.0, lambda: NEW_NAME in os.listdir(folder))
            read = listings(daemon)
            time.sleep(1.5)
            assert NEW_NAME in os.listdir(folder)
            assert within(3.0, lambda: set(os.listdir(folder)) == before | {NEW_NAME})
            assert listings(daemon) - read <= 2, "an unchanged listing stays in the kernel's cache"
        finally:
            client.delete_object(Bucket=bucket, Key=key)


def test_a_stat_walk_past_the_ceiling_has_the_kernel_forget_the_oldest_files(
        tmp_path: Path, s3_endpoint: str, bucket_name: str) -> None:
    ceiling, patients, images = 100, 20, 20
    create_bucket(s3_endpoint, bucket_name, ((f"{PREFIX}ct/Covid{p}/1.2/1.3/{i:03d}.dcm", b"x")
                                             for p in range(patients) for i in range(images)))
    with MountedDaemon(tmp_path / "mnt", s3_endpoint, tmp_path / "cache", tmp_path / "log", bucket=bucket_name,
                       extra=["--max-inodes", str(ceiling), "--no-prefetch"]) as daemon:
        files = subprocess.run(["find", str(daemon.mountpoint / "ct"), "-type", "f", "-size", "+0"],
                               capture_output=True, text=True, check=True).stdout.splitlines()
        assert len(files) == patients * images
        counts = requests(daemon)
        assert counts["lookup"] >= patients * images
        assert within(5.0, lambda: requests(daemon)["inodes"] <= ceiling)
        assert requests(daemon).get("forget", 0) + requests(daemon).get("forget_multi", 0) > 0
        assert all(os.stat(path).st_size == 1 for path in files[:images]), "a file given up is found again"
        assert daemon.unexpected_log_lines() == []
