"""The read path through a real mount: ranged reads, header scans, read-ahead, prefetch, single flight."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nccidfs.demo.warehouse import DemoObject
from nccidfs.prefetch import IN_ORDER
from tests.faultproxy import FaultProxy
from tests.mounting import BUCKET, PREFIX, MountedDaemon, drop_page_cache, s3_client, seed_demo_bucket

pytestmark = pytest.mark.fuse
BIG = os.urandom(9 * 1024 * 1024 + 12345)
BIG_KEY = f"{PREFIX}xray/Covid7/1.2/1.3/big.dcm"


@pytest.fixture(scope="module")
def bucket(s3_endpoint: str, warehouse: list[DemoObject]) -> str:
    name = seed_demo_bucket(s3_endpoint, f"{BUCKET}-readpath", warehouse)
    s3_client(s3_endpoint).put_object(Bucket=name, Key=BIG_KEY, Body=BIG)
    return name


@pytest.fixture(scope="module")
def proxy(s3_endpoint: str) -> Iterator[FaultProxy]:
    with FaultProxy(s3_endpoint) as running:
        yield running


@pytest.fixture(scope="module", params=["prefetch", "no-prefetch"])
def mounted(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, proxy: FaultProxy,
            bucket: str) -> Iterator[MountedDaemon]:
    root = tmp_path_factory.mktemp(request.param)
    with MountedDaemon(root / "mnt", proxy.url, root / "cache", root / "log", bucket=bucket,
                       extra=[f"--{request.param}"]) as daemon:
        yield daemon


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(reads=st.lists(st.tuples(st.integers(0, len(BIG) + 100), st.integers(1, 3 * 1024 * 1024)),
                      min_size=1, max_size=6), cold=st.booleans())
def test_random_reads_through_the_mount_are_the_objects_bytes(mounted: MountedDaemon, reads: list[tuple[int, int]],
                                                              cold: bool) -> None:
    if cold:
        drop_page_cache()
    with open(mounted.mountpoint / BIG_KEY[len(PREFIX):], "rb") as handle:
        for offset, size in reads:
            handle.seek(offset)
            assert handle.read(size) == BIG[offset:offset + size]


def test_header_scan_fetches_headers_only(tmp_path: Path, proxy: FaultProxy, bucket: str,
                                          warehouse: list[DemoObject]) -> None:
    series = sorted({o.key.rsplit("/", 1)[0] for o in warehouse if o.key.startswith(f"{PREFIX}ct/")})[0]
    images = [o for o in warehouse if o.key.startswith(series + "/")]
    with MountedDaemon(tmp_path / "mnt", proxy.url, tmp_path / "cache", tmp_path / "log", bucket=bucket) as daemon:
        folder = daemon.mountpoint / series[len(PREFIX):]
        os.listdir(folder)
        proxy.reset_counts()
        for path in sorted(folder.iterdir()):
            assert pydicom.dcmread(path, stop_before_pixels=True).SeriesInstanceUID == series.rsplit("/", 1)[1]
        time.sleep(0.5)  # anything prefetch would have started
        fetched = proxy.counts()["bytes"]
        assert fetched <= 0.10 * sum(len(o.body) for o in images), f"{fetched} bytes for a header scan"


def test_reading_a_series_in_order_prefetches_the_rest_of_it(tmp_path: Path, proxy: FaultProxy, bucket: str,
                                                       warehouse: list[DemoObject]) -> None:
    series = sorted({o.key.rsplit("/", 1)[0] for o in warehouse if o.key.startswith(f"{PREFIX}ct/")})[-1]
    images = sorted(o.key for o in warehouse if o.key.startswith(series + "/"))
    assert len(images) > IN_ORDER
    with MountedDaemon(tmp_path / "mnt", proxy.url, tmp_path / "cache", tmp_path / "log", bucket=bucket) as daemon:
        for key in images[:IN_ORDER]:  # a series walk: the first images in order
            (daemon.mountpoint / key[len(PREFIX):]).read_bytes()
        deadline = time.monotonic() + 30
        while daemon.log().count(" GET ") < len(images):
            assert time.monotonic() < deadline, "the series was not prefetched"
            time.sleep(0.1)
        time.sleep(0.3)
        proxy.reset_counts()
        drop_page_cache()
        for key in images:
            (daemon.mountpoint / key[len(PREFIX):]).read_bytes()
        assert proxy.counts()["GetObject(range)"] == 0


def test_concurrent_readers_share_each_download(tmp_path: Path, proxy: FaultProxy, bucket: str) -> None:
    with MountedDaemon(tmp_path / "mnt", proxy.url, tmp_path / "cache", tmp_path / "log", bucket=bucket,
                       extra=["--no-prefetch"]) as daemon:
        path = daemon.mountpoint / BIG_KEY[len(PREFIX):]
        path.stat()
        proxy.reset_counts()
        digests: list[str] = []

        def read_all() -> None:
            digests.append(hashlib.sha256(path.read_bytes()).hexdigest())

        threads = [threading.Thread(target=read_all) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert digests == [hashlib.sha256(BIG).hexdigest()] * 8
        assert proxy.counts()["bytes"] <= len(BIG) * 1.05, "a range was downloaded more than once"


def test_a_half_cached_object_is_completed_after_a_restart(tmp_path: Path, proxy: FaultProxy, bucket: str) -> None:
    args = (tmp_path / "mnt", proxy.url, tmp_path / "cache", tmp_path / "log")
    with MountedDaemon(*args, bucket=bucket, extra=["--no-prefetch"]) as daemon, \
            open(daemon.mountpoint / BIG_KEY[len(PREFIX):], "rb") as handle:
        assert handle.read(3 * 1024 * 1024) == BIG[:3 * 1024 * 1024]
    proxy.reset_counts()
    with MountedDaemon(*args, bucket=bucket, extra=["--no-prefetch"]) as daemon:
        assert (daemon.mountpoint / BIG_KEY[len(PREFIX):]).read_bytes() == BIG
        assert proxy.counts()["bytes"] <= len(BIG) - 2 * 1024 * 1024, "the cached half was fetched again"
