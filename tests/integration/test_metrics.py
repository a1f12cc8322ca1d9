"""Prometheus metrics of a real mount, read through ``nccidfs metrics`` and from ``--metrics-addr``, and
parsed by prometheus_client's own parser: what a scraper sees."""

from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from nccidfs.demo.warehouse import DemoObject
from tests.mounting import BUCKET, PREFIX, MountedDaemon, daemon_env, seed_demo_bucket, within

pytestmark = pytest.mark.fuse


@pytest.fixture(scope="module")
def bucket(s3_endpoint: str, warehouse: list[DemoObject]) -> str:
    return seed_demo_bucket(s3_endpoint, f"{BUCKET}-metrics", warehouse)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample by name and labels; the parser raises on anything outside the text format."""
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def value(found: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return found[(name, tuple(sorted(labels.items())))]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def read_uncached(path: Path) -> bytes:
    with open(path, "rb", buffering=0) as handle:
        os.posix_fadvise(handle.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        return handle.readall()


def test_metrics_count_requests_latencies_cache_errors_evictions_and_derived_builds(
        tmp_path: Path, s3_endpoint: str, bucket: str, warehouse: list[DemoObject]) -> None:
    port = free_port()
    images = [o for o in warehouse if o.key.endswith(".dcm")]
    with MountedDaemon(tmp_path / "mnt", s3_endpoint, tmp_path / "cache", tmp_path / "log", bucket=bucket,
                       extra=["--no-prefetch", "--cache-size", "2M", "--metrics-addr", str(port)]) as daemon:
        for image in images:
            read_uncached(daemon.mountpoint / image.key[len(PREFIX):])
        status = daemon.mountpoint / ".nccidfs" / "status.json"
        assert within(10, lambda: json.loads(status.read_bytes())["in_flight"] == [])  # stored, not only served
        read_uncached(daemon.mountpoint / images[-1].key[len(PREFIX):])  # still cached: the last one read
        assert not (daemon.mountpoint / "ct" / "nosuch").exists()
        png = next((daemon.mountpoint / ".nccidfs" / "images").glob("xray/*/*/*/*.png"))
        assert png.read_bytes().startswith(b"\x89PNG")
        result = subprocess.run([sys.executable, "-m", "nccidfs", "metrics", str(daemon.mountpoint)],
                                capture_output=True, text=True, env=daemon_env(), timeout=30)
        assert result.returncode == 0, result.stderr
        found = samples(result.stdout)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
            served: Any = answer.read().decode()
        assert daemon.unexpected_log_lines() == []
    gets = value(found, "nccidfs_s3_requests_total", kind="GetObject")
    assert gets >= len(images)
    assert value(found, "nccidfs_s3_request_duration_seconds_count", kind="GetObject") == gets
    assert value(found, "nccidfs_s3_request_duration_seconds_bucket", kind="GetObject", le="+Inf") == gets
    assert value(found, "nccidfs_s3_request_duration_seconds_sum", kind="GetObject") > 0
    assert value(found, "nccidfs_s3_requests_total", kind="ListObjectsV2") >= 1
    assert value(found, "nccidfs_s3_received_bytes_total") >= sum(len(o.body) for o in images)
    assert value(found, "nccidfs_fs_request_duration_seconds_count", operation="read") >= len(images)
    assert value(found, "nccidfs_fs_errors_total", errno=errno.errorcode[errno.ENOENT]) >= 1
    assert value(found, "nccidfs_cache_misses_total") >= len(images)
    assert value(found, "nccidfs_cache_hits_total") >= 1
    assert value(found, "nccidfs_cache_evictions_total") >= 1  # the images are more than 2 MiB
    assert value(found, "nccidfs_cache_bound_bytes") == 2 * 1024 * 1024
    assert value(found, "nccidfs_derived_blocks_built_total") >= 1
    assert value(found, "nccidfs_listing_entries") > 0
    (info,) = [dict(labels) for name, labels in found if name == "nccidfs_info"]
    assert (info["bucket"], info["prefix"], info["mountpoint"]) == (bucket, PREFIX, str(daemon.mountpoint))
    assert {name for name, _ in samples(served)} == {name for name, _ in found}  # the same over HTTP


def test_the_metrics_listener_is_on_loopback_unless_told(tmp_path: Path, s3_endpoint: str, bucket: str) -> None:
    port = free_port()
    with MountedDaemon(tmp_path / "mnt", s3_endpoint, tmp_path / "cache", tmp_path / "log", bucket=bucket,
                       extra=["--metrics-addr", str(port)]), open("/proc/net/tcp") as table:
        listening = [line.split()[1] for line in table.readlines()[1:] if line.split()[3] == "0A"]
    assert f"0100007F:{port:04X}" in listening  # 127.0.0.1:PORT, and no other address
    assert f"00000000:{port:04X}" not in listening
