"""Promises kept across state changes, each case through a real mount: odd keys at the root, outages,
restarts, replacements while down, two daemons on one cache, a cache clear in the wrong place."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faultproxy import FaultProxy
from tests.mounting import (
    CACHE_SLACK,
    PREFIX,
    MountedDaemon,
    create_bucket,
    daemon_env,
    du_bytes,
)
from tests.tmpfs import small_tmpfs

pytestmark = pytest.mark.fuse

SERIES = "ct/Covid1/1.2/1.3"


def body(name: str, size: int) -> bytes:
    return random.Random(name).randbytes(size)


def nccidfs(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nccidfs", *args], capture_output=True, text=True, timeout=60,
                          env=daemon_env())


def test_odd_keys_right_under_the_prefix_leave_the_root_usable(tmp_path: Path, s3_endpoint: str,
                                                               bucket_name: str) -> None:
    good = {f"{PREFIX}{SERIES}/a.dcm": b"a" * 10, f"{PREFIX}lead.txt": b"lead"}
    odd = {PREFIX: b"", f"{PREFIX}/lead.txt": b"x", f"{PREFIX}../z": b"y"}
    create_bucket(s3_endpoint, bucket_name, {**good, **odd}.items())
    with MountedDaemon(tmp_path / "mnt", s3_endpoint, tmp_path / "cache", tmp_path / "log",
                       bucket=bucket_name) as daemon:
        assert sorted(os.listdir(daemon.mountpoint)) == ["ct", "lead.txt"]
        assert (daemon.mountpoint / "lead.txt").read_bytes() == b"lead"
        assert (daemon.mountpoint / SERIES / "a.dcm").read_bytes() == b"a" * 10
        warnings = [line for line in daemon.log().splitlines() if " WARNING " in line]
        assert len(warnings) == 2 and all("skipping key" in line for line in warnings), warnings


@pytest.mark.parametrize("outage", ["503", "500", "stall", "dead"])
def test_a_cached_file_is_served_at_once_through_an_outage_past_the_ttl(
        tmp_path: Path, s3_endpoint: str, bucket_name: str, outage: str) -> None:
    files = {f"{SERIES}/cached.dcm": body("cached", 300_000), f"{SERIES}/cold.dcm": body("cold", 300_000)}
    create_bucket(s3_endpoint, bucket_name, ((PREFIX + k, v) for k, v in files.items()))
    with FaultProxy(s3_endpoint) as proxy, MountedDaemon(
            tmp_path / "mnt", proxy.url, tmp_path / "cache", tmp_path / "log", bucket=bucket_name,
            extra=["--listing-ttl", "1", "--timeout", "3", "--no-prefetch"]) as daemon:
        cached = daemon.mountpoint / SERIES / "cached.dcm"
        assert cached.read_bytes() == files[f"{SERIES}/cached.dcm"]
        {"503": lambda: proxy.fail(503, "SlowDown"), "500": lambda: proxy.fail(500, "InternalError"),
         "stall": lambda: proxy.stall(60.0), "dead": proxy.dead}[outage]()
        time.sleep(1.5)  # every listing is now past its TTL
        cached_seconds = []
        for _ in range(3):
            started = time.monotonic()
            with open(cached, "rb", buffering=0) as handle:
                os.posix_fadvise(handle.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
                assert handle.readall() == files[f"{SERIES}/cached.dcm"]
            cached_seconds.append(time.monotonic() - started)
            assert cached_seconds[-1] < 0.5, "a cached file waited on S3"
        started = time.monotonic()
        with pytest.raises(OSError):
            (daemon.mountpoint / SERIES / "cold.dcm").read_bytes()
        uncached = time.monotonic() - started
        assert uncached < 3 + 2.5, "an uncached read must fail within --timeout"
        print(f"OUTAGE {outage}: cached reads {max(cached_seconds) * 1000:.0f} ms at most, "
              f"uncached EIO after {uncached:.1f} s (--timeout 3)")
        proxy.clear()


def test_the_bound_holds_after_a_restart_with_the_whole_directory_counted(
        tmp_path: Path, s3_endpoint: str, bucket_name: str) -> None:
    files = {f"{SERIES}/img{i:02d}.dcm": body(f"img{i}", 1 << 20) for i in range(15)}
    create_bucket(s3_endpoint, bucket_name, ((PREFIX + k, v) for k, v in files.items()))
    args = (tmp_path / "mnt", s3_endpoint, tmp_path / "cache", tmp_path / "log")
    bound = 4 << 20
    with MountedDaemon(*args, bucket=bucket_name, extra=["--cache-size", "4M"]) as daemon:
        for name, data in files.items():
            assert (daemon.mountpoint / name).read_bytes() == data
            assert du_bytes(tmp_path / "cache") <= bound + CACHE_SLACK
    with MountedDaemon(*args, bucket=bucket_name, extra=["--cache-size", "4M"]) as daemon:
        for name in list(files)[:3]:
            assert (daemon.mountpoint / name).read_bytes() == files[name]
            assert du_bytes(tmp_path / "cache") <= bound + CACHE_SLACK
        status = nccidfs("status", str(daemon.mountpoint))
        assert status.returncode == 0, status.stderr
        used = json.loads(status.stdout)["cache"]["used_bytes"]
        assert used == du_bytes(tmp_path / "cache")
    stats = json.loads(nccidfs("cache", "stats", "--cache-dir", str(tmp_path / "cache")).stdout)
    assert stats["used_bytes"] == du_bytes(tmp_path / "cache") <= bound + CACHE_SLACK
    print(f"BOUND: after a restart and 3 reads, du -sb = status = cache stats = {used} bytes (bound {bound})")


@pytest.mark.parametrize("factor", [3.0, 0.25], ids=["longer", "shorter"])
def test_an_object_replaced_while_the_daemon_was_down_reads_new_bytes_first_time(
        tmp_path: Path, s3_endpoint: str, bucket_name: str, factor: float) -> None:
    key = f"{SERIES}/img.dcm"
    old, new = body("old", 200_000), body("new", int(200_000 * factor))
    client = create_bucket(s3_endpoint, bucket_name, [(PREFIX + key, old)])
    args = (tmp_path / "mnt", s3_endpoint, tmp_path / "cache", tmp_path / "log")
    daemon = MountedDaemon(*args, bucket=bucket_name, extra=["--no-prefetch"]).__enter__()
    try:
        assert (daemon.mountpoint / key).read_bytes() == old
        daemon.kill()
        client.put_object(Bucket=bucket_name, Key=PREFIX + key, Body=new)
    finally:
        daemon.stop()
    with MountedDaemon(*args, bucket=bucket_name, extra=["--no-prefetch"]) as daemon:
        path = daemon.mountpoint / key
        assert path.read_bytes() == new
        assert os.stat(path).st_size == len(new)
        assert daemon.unexpected_log_lines() == []


def test_a_second_daemon_on_a_cache_dir_is_refused_and_the_first_keeps_serving(
        tmp_path: Path, s3_endpoint: str, bucket_name: str) -> None:
    data = body("x", 2_000_000)
    create_bucket(s3_endpoint, bucket_name, [(f"{PREFIX}{SERIES}/x.dcm", data)])
    cache = tmp_path / "cache"
    with MountedDaemon(tmp_path / "one", s3_endpoint, cache, tmp_path / "log1", bucket=bucket_name) as first:
        (tmp_path / "two").mkdir()
        second = nccidfs("mount", str(tmp_path / "two"), "-f", "--endpoint-url", s3_endpoint, "--bucket",
                         bucket_name, "--cache-dir", str(cache))
        assert second.returncode != 0
        assert f"in use by the nccidfs mount at {first.mountpoint}" in second.stderr
        assert len(second.stderr.strip().splitlines()) == 1, second.stderr
        assert not os.path.ismount(tmp_path / "two")
        status = nccidfs("status", str(first.mountpoint))
        assert status.returncode == 0 and str(first.mountpoint) in status.stdout
        cleared = nccidfs("cache", "clear", "--cache-dir", str(cache))
        assert cleared.returncode == 2 and "in use" in cleared.stderr
        assert (first.mountpoint / SERIES / "x.dcm").read_bytes() == data


def test_cache_clear_refuses_a_directory_that_is_not_an_nccidfs_cache(tmp_path: Path) -> None:
    project = tmp_path / "project"
    (project / "objects").mkdir(parents=True)
    (project / "objects" / "precious").write_text("work")
    (project / "listings.sqlite3").write_text("not ours")
    result = nccidfs("cache", "clear", "--cache-dir", str(project))
    assert result.returncode == 2 and "not an nccidfs cache directory" in result.stderr
    assert (project / "objects" / "precious").read_text() == "work"
    assert (project / "listings.sqlite3").read_text() == "not ours"


@pytest.mark.parametrize("case", ["world-writable", "other-owner", "not-empty"])
def test_an_unsafe_cache_dir_is_refused_with_one_line(tmp_path: Path, s3_endpoint: str, bucket_name: str,
                                                      case: str) -> None:
    create_bucket(s3_endpoint, bucket_name, [(f"{PREFIX}{SERIES}/x.dcm", b"x")])
    cache = tmp_path / "cache"
    cache.mkdir()
    if case == "world-writable":
        cache.chmod(0o1777)
    elif case == "other-owner":
        os.chown(cache, 65534, 65534)
    else:
        (cache / "notes.txt").write_text("mine")
    mode_before = cache.stat().st_mode
    (tmp_path / "mnt").mkdir()
    result = nccidfs("mount", str(tmp_path / "mnt"), "-f", "--endpoint-url", s3_endpoint, "--bucket", bucket_name,
                     "--cache-dir", str(cache))
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and f"cache dir {cache}" in result.stderr
    assert cache.stat().st_mode == mode_before, "nccidfs changed the mode of a directory it did not create"
    assert not os.path.ismount(tmp_path / "mnt")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs to put a cache directory on (needs root)."""
    with small_tmpfs(tmp_path / "disk", "1m") as disk:
        yield disk


def test_a_cache_disk_with_less_free_than_the_floor_serves_reads_from_s3_and_stores_nothing(
        tmp_path: Path, small_disk: Path, s3_endpoint: str, bucket_name: str) -> None:
    files = {f"{SERIES}/img{i}.dcm": body(f"img{i}", 200_000) for i in range(2)}
    create_bucket(s3_endpoint, bucket_name, ((PREFIX + k, v) for k, v in files.items()))
    with MountedDaemon(tmp_path / "mnt", s3_endpoint, small_disk / "cache", tmp_path / "log", bucket=bucket_name,
                       extra=["--cache-min-free", "2M", "--no-prefetch"]) as daemon:
        for name, data in files.items():
            assert (daemon.mountpoint / name).read_bytes() == data, name
        assert daemon.log().count("--cache-min-free") == 1
        assert not list((small_disk / "cache" / "objects").rglob("*.map")), "nothing is stored past the floor"


def test_a_full_disk_serves_reads_from_s3_and_skips_index_writes(tmp_path: Path, small_disk: Path,
                                                                 s3_endpoint: str, bucket_name: str) -> None:
    files = {f"{SERIES}/big{i}.dcm": body(f"big{i}", 700_000) for i in range(3)}
    files.update({f"data/Covid{i}/status_2020-01-01.json": b'{"Pseudonym": "Covid%d"}' % i for i in range(300)})
    create_bucket(s3_endpoint, bucket_name, ((PREFIX + k, v) for k, v in files.items()))
    with MountedDaemon(tmp_path / "mnt", s3_endpoint, small_disk / "cache", tmp_path / "log", bucket=bucket_name,
                       extra=["--cache-size", "100M", "--cache-min-free", "0", "--no-prefetch"]) as daemon:
        for name, data in files.items():
            assert (daemon.mountpoint / name).read_bytes() == data, name
        assert "cache disk full" in daemon.log(), "the disk never filled: the test did not test anything"
        subprocess.run(["rm", "-rf", str(small_disk / "cache" / "objects")], check=True)
        for name, data in list(files.items())[:4]:
            with open(daemon.mountpoint / name, "rb", buffering=0) as handle:
                os.posix_fadvise(handle.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
                assert handle.readall() == data, name
        assert (small_disk / "cache" / "objects").is_dir()
        assert "Traceback" not in daemon.log()


def test_a_cache_dir_another_user_made_with_a_planted_link_is_refused_and_nothing_is_touched(
        tmp_path: Path, s3_endpoint: str, bucket_name: str, request: pytest.FixtureRequest) -> None:
    create_bucket(s3_endpoint, bucket_name, [(f"{PREFIX}{SERIES}/x.dcm", b"x" * 100)])
    shared = Path(tempfile.mkdtemp(prefix="nccidfs-shared-", dir="/tmp"))  # pytest's tmp is private to root
    request.addfinalizer(lambda: shutil.rmtree(shared))
    shared.chmod(0o1777)
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("root's file")
    cache = shared / "cache"
    # A second local user prepares the cache dir the daemon will be given, with a link inside it.
    planted = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "sh", "-c",
                              f"mkdir -m 0777 {cache} && ln -s {victim} {cache}/objects"], capture_output=True)
    assert planted.returncode == 0, planted.stderr
    (tmp_path / "mnt").mkdir()
    result = nccidfs("mount", str(tmp_path / "mnt"), "-f", "--endpoint-url", s3_endpoint, "--bucket", bucket_name,
                     "--cache-dir", str(cache))
    assert result.returncode == 2 and "owned by uid 65534" in result.stderr, result.stderr
    assert sorted(os.listdir(victim)) == ["keep.txt"] and (victim / "keep.txt").read_text() == "root's file"
    assert not os.path.ismount(tmp_path / "mnt")
