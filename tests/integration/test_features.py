"""Listings, freshness, DICOM tags, the patient view and the daemon's commands, through a real mount.

S3 requests are counted by a pass-through proxy between the daemon and the moto server.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nccidfs.demo.warehouse import DemoObject
from nccidfs.dicom import tags_from_metadata_json
from tests.faultproxy import FaultProxy
from tests.mounting import (
    BUCKET,
    PREFIX,
    MountedDaemon,
    create_bucket,
    daemon_env,
    drop_page_cache,
    du_bytes,
    s3_client,
    seed_demo_bucket,
    within,
)

pytestmark = pytest.mark.fuse


@pytest.fixture(scope="module")
def bucket(s3_endpoint: str, warehouse: list[DemoObject]) -> str:
    return seed_demo_bucket(s3_endpoint, f"{BUCKET}-features", warehouse)


@pytest.fixture
def proxy(s3_endpoint: str) -> Iterator[FaultProxy]:
    with FaultProxy(s3_endpoint) as running:
        yield running


@pytest.fixture
def mount(tmp_path: Path, proxy: FaultProxy, bucket: str) -> Iterator[MountedDaemon]:
    with MountedDaemon(tmp_path / "mnt", proxy.url, tmp_path / "cache", tmp_path / "daemon.log", bucket=bucket,
                       extra=["--no-prefetch"]) as daemon:
        yield daemon


def gets(proxy: FaultProxy) -> int:
    counts = proxy.counts()
    return counts["GetObject"] + counts["GetObject(range)"] + counts["HeadObject"]


def series_dirs(warehouse: list[DemoObject], modality: str) -> list[str]:
    return sorted({o.key[len(PREFIX):].rsplit("/", 1)[0] for o in warehouse
                   if o.key.startswith(f"{PREFIX}{modality}/")})


def nccidfs(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nccidfs", *args], capture_output=True, text=True, timeout=timeout,
                          env=daemon_env())


@pytest.mark.parametrize("extra", [[], ["--readdirplus"]], ids=["plain", "readdirplus"])
def test_ls_l_costs_listing_pages_only_and_missing_names_cost_nothing(
        tmp_path: Path, proxy: FaultProxy, s3_endpoint: str, bucket_name: str, extra: list[str]) -> None:
    patients = 2500
    create_bucket(s3_endpoint, bucket_name, ((f"{PREFIX}data/Covid{i}/status_2020-05-01.json", b"{}")
                                             for i in range(patients)))
    with MountedDaemon(tmp_path / "mnt", proxy.url, tmp_path / "cache", tmp_path / "log",
                       bucket=bucket_name, extra=extra) as daemon:
        proxy.reset_counts()
        out = subprocess.run(["ls", "-l", str(daemon.mountpoint / "data")], capture_output=True, text=True,
                             check=True)
        assert len(out.stdout.splitlines()) == patients + 1
        assert proxy.counts()["ListObjectsV2"] == -(-patients // 1000)
        assert gets(proxy) == 0
        proxy.reset_counts()
        for i in range(1000):
            assert not (daemon.mountpoint / "data" / f"Missing{i}").exists()
        for name in (".Trash", ".hidden", "autorun.inf", "desktop.ini"):
            assert not (daemon.mountpoint / "data" / name).exists()
        assert all(count == 0 for kind, count in proxy.counts().items() if kind != "bytes")


def test_a_patient_is_listed_once_for_its_whole_subtree(mount: MountedDaemon, proxy: FaultProxy,
                                                         warehouse: list[DemoObject]) -> None:
    series = mount.mountpoint / series_dirs(warehouse, "ct")[0]
    os.listdir(mount.mountpoint / "ct")
    proxy.reset_counts()
    os.listdir(series.parent.parent)
    time.sleep(0.5)  # the walk read-ahead lists the next patients in the background: let it finish
    lists = proxy.counts()["ListObjectsV2"]
    assert lists >= 1
    out = subprocess.run(["ls", "-l", str(series)], capture_output=True, text=True, check=True)
    assert len(out.stdout.splitlines()) > 20
    subprocess.run(["find", str(series.parent.parent)], capture_output=True, check=True)
    assert proxy.counts()["ListObjectsV2"] == lists, "the patient's flat listing did not answer its subtree"
    assert gets(proxy) == 0


def test_dicom_tags_are_xattrs_from_the_metadata_twin(mount: MountedDaemon, proxy: FaultProxy,
                                                      warehouse: list[DemoObject]) -> None:
    bodies = {o.key: o.body for o in warehouse}
    images = [o.key for o in warehouse if o.key.endswith(".dcm")][::9]
    proxy.reset_counts()
    for key in images:
        path = mount.mountpoint / key[len(PREFIX):]
        twin = key.replace("/", "-metadata/", 2).replace("training-metadata/", "training/", 1)[:-4] + ".json"
        expected = tags_from_metadata_json(bodies[twin])
        assert {"PatientID", "StudyInstanceUID", "SeriesInstanceUID", "Modality", "Rows"} <= set(expected)
        names = os.listxattr(path)
        assert sorted(names) == sorted(f"user.dicom.{k}" for k in expected)
        for keyword, value in expected.items():
            assert os.getxattr(path, f"user.dicom.{keyword}").decode() == value
        assert os.getxattr(path, "user.dicom.PatientID").decode() == key.split("/")[2]
    image_gets = [line for line in mount.log().splitlines() if " GET " in line and ".dcm " in line]
    assert image_gets == [], "reading tags downloaded image bytes"
    if shutil.which("getfattr"):
        out = subprocess.run(["getfattr", "-d", str(mount.mountpoint / images[0][len(PREFIX):])],
                             capture_output=True, text=True, check=True)
        assert "user.dicom.Modality=" in out.stdout


def test_patient_view_links_everything_about_a_patient(mount: MountedDaemon, warehouse: list[DemoObject]) -> None:
    patient = series_dirs(warehouse, "ct")[0].split("/")[1]
    view = mount.mountpoint / ".nccidfs" / "patients" / patient
    clinical = sorted(o.key.rsplit("/", 1)[1] for o in warehouse if o.key.startswith(f"{PREFIX}data/{patient}/"))
    assert sorted(os.listdir(view)) == sorted(["ct", "ct-metadata", *clinical])
    assert os.readlink(view / "ct") == f"../../../ct/{patient}"
    patients = {o.key.split("/")[2] for o in warehouse}
    assert set(os.listdir(mount.mountpoint / ".nccidfs" / "patients")) == patients
    for obj in (o for o in warehouse if o.key.split("/")[2] == patient):
        folder, rest = obj.key[len(PREFIX):].split("/", 1)
        inside = view / (rest.split("/", 1)[1] if folder == "data" else f"{folder}/{rest.split('/', 1)[1]}")
        assert inside.read_bytes() == obj.body
    found = subprocess.run(["find", str(mount.mountpoint), "-type", "f"], capture_output=True, text=True, check=True)
    assert len(found.stdout.splitlines()) == len(warehouse), "the view must not make find see files twice"
    walked = [name for _root, _dirs, names in os.walk(mount.mountpoint) for name in names]
    assert len(walked) == len(warehouse), "os.walk must see each object once and nothing else"


def test_status_file_and_command_report_what_happened(mount: MountedDaemon, warehouse: list[DemoObject]) -> None:
    assert ".nccidfs" not in os.listdir(mount.mountpoint)
    before = json.loads((mount.mountpoint / ".nccidfs" / "status.json").read_text())
    assert before["bucket"].startswith(BUCKET) and before["prefix"] == PREFIX
    xray = next(o for o in warehouse if o.key.startswith(f"{PREFIX}xray/"))
    assert (mount.mountpoint / xray.key[len(PREFIX):]).read_bytes() == xray.body
    result = nccidfs("status", str(mount.mountpoint))
    assert result.returncode == 0, result.stderr
    after = json.loads(result.stdout)
    assert after["s3"]["bytes_fetched"] - before["s3"]["bytes_fetched"] >= len(xray.body)
    assert after["s3"]["requests"]["GetObject"] > before["s3"]["requests"].get("GetObject", 0)
    assert after["cache"]["used_bytes"] >= len(xray.body)
    assert after["uptime_seconds"] >= before["uptime_seconds"]
    for field in ("hit_ratio", "bound_bytes", "objects"):
        assert field in after["cache"]
    assert after["in_flight"] == [] and "errors" in after["s3"]


def test_refresh_and_sighup_show_new_uploads_at_once(mount: MountedDaemon, s3_endpoint: str, bucket: str) -> None:
    client = s3_client(s3_endpoint)
    folder = mount.mountpoint / "data" / "Covid992"
    before = set(os.listdir(folder))
    key = f"{PREFIX}data/Covid992/data_2021-03-04.json"
    client.put_object(Bucket=bucket, Key=key, Body=b'{"Pseudonym": "Covid992"}')
    try:
        assert set(os.listdir(folder)) == before, "the listing is trusted for --listing-ttl"
        result = nccidfs("refresh", str(mount.mountpoint), str(folder))
        assert result.returncode == 0, result.stderr
        assert "data_2021-03-04.json" in os.listdir(folder)
        client.delete_object(Bucket=bucket, Key=key)
        assert mount.process is not None
        mount.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 5
        while "data_2021-03-04.json" in os.listdir(folder):
            assert time.monotonic() < deadline, "SIGHUP did not drop the cached listing"
            time.sleep(0.1)
    finally:
        client.delete_object(Bucket=bucket, Key=key)


def test_listing_ttl_expiry_shows_changes_and_replaced_objects_read_new_bytes(
        tmp_path: Path, proxy: FaultProxy, s3_endpoint: str, bucket: str) -> None:
    client = s3_client(s3_endpoint)
    key = f"{PREFIX}data/Covid849/data_2021-09-09.json"
    client.put_object(Bucket=bucket, Key=key, Body=b'{"Pseudonym": "Covid849", "v": 1}')
    path_in_mount = Path("data/Covid849/data_2021-09-09.json")
    try:
        with MountedDaemon(tmp_path / "mnt", proxy.url, tmp_path / "cache", tmp_path / "log", bucket=bucket,
                           extra=["--listing-ttl", "1"]) as daemon:
            path = daemon.mountpoint / path_in_mount
            assert json.loads(path.read_text())["v"] == 1
            client.put_object(Bucket=bucket, Key=key, Body=b'{"Pseudonym": "Covid849", "v": 2, "longer": true}')
            time.sleep(1.5)
            # Past the TTL the old listing is served once more while it is listed again in the background.
            assert within(3.0, lambda: json.loads(path.read_text()) == {"Pseudonym": "Covid849", "v": 2,
                                                                         "longer": True})
            assert os.stat(path).st_size == len(path.read_bytes())
            client.delete_object(Bucket=bucket, Key=key)
            time.sleep(1.5)
            assert within(3.0, lambda: not path.exists())
            with pytest.raises(FileNotFoundError):
                path.read_text()
    finally:
        client.delete_object(Bucket=bucket, Key=key)


def test_a_remount_answers_find_from_the_index_without_listing(tmp_path: Path, proxy: FaultProxy, bucket: str,
                                                               warehouse: list[DemoObject]) -> None:
    args = (tmp_path / "mnt", proxy.url, tmp_path / "cache", tmp_path / "log")
    with MountedDaemon(*args, bucket=bucket) as daemon:
        first = subprocess.run(["find", str(daemon.mountpoint), "-type", "f"], capture_output=True, text=True,
                               check=True).stdout
    proxy.reset_counts()
    with MountedDaemon(*args, bucket=bucket) as daemon:
        probes = proxy.counts()["ListObjectsV2"]  # the start-up probe of the root folders
        again = subprocess.run(["find", str(daemon.mountpoint), "-type", "f"], capture_output=True, text=True,
                               check=True).stdout
        assert proxy.counts()["ListObjectsV2"] == probes, "find after a remount listed S3"
        assert again == first
        warm = subprocess.run(["find", str(daemon.mountpoint), "-size", "+0"], capture_output=True, text=True,
                              check=True).stdout
        assert len(warm.splitlines()) >= len(warehouse)
        assert proxy.counts()["ListObjectsV2"] == probes and gets(proxy) == 0


def test_prefetch_command_fills_the_cache_for_a_series(mount: MountedDaemon, proxy: FaultProxy,
                                                       warehouse: list[DemoObject]) -> None:
    series = mount.mountpoint / series_dirs(warehouse, "ct")[-1]
    result = nccidfs("prefetch", str(series))
    assert result.returncode == 0, result.stderr
    assert "prefetched" in result.stdout
    drop_page_cache()
    proxy.reset_counts()
    for path in sorted(series.iterdir()):
        path.read_bytes()
    assert gets(proxy) == 0, "reading a prefetched series went to S3"
    refused = nccidfs("prefetch", str(mount.mountpoint / "ct"), "--jobs", "2", timeout=60)
    assert refused.returncode == 0 or "use --force" in refused.stderr


def test_prefetch_refuses_more_than_the_cache_holds(tmp_path: Path, proxy: FaultProxy, bucket: str) -> None:
    with MountedDaemon(tmp_path / "mnt", proxy.url, tmp_path / "cache", tmp_path / "log", bucket=bucket,
                       extra=["--cache-size", "1M"]) as daemon:
        result = nccidfs("prefetch", str(daemon.mountpoint / "ct"))
        assert result.returncode == 2 and "use --force" in result.stderr
        assert gets(proxy) == 0


def test_cache_stats_and_clear(tmp_path: Path, proxy: FaultProxy, bucket: str, warehouse: list[DemoObject]) -> None:
    cache = tmp_path / "cache"
    with MountedDaemon(tmp_path / "mnt", proxy.url, cache, tmp_path / "log", bucket=bucket) as daemon:
        obj = warehouse[0]
        (daemon.mountpoint / obj.key[len(PREFIX):]).read_bytes()
        busy = nccidfs("cache", "clear", "--cache-dir", str(cache))
        assert busy.returncode == 2 and f"in use by the nccidfs mount at {daemon.mountpoint}" in busy.stderr
        assert len(busy.stderr.splitlines()) == 1
        assert (daemon.mountpoint / obj.key[len(PREFIX):]).read_bytes() == obj.body
        live = json.loads((daemon.mountpoint / ".nccidfs" / "status.json").read_text())["cache"]["used_bytes"]
        assert live == du_bytes(cache)
    stats = json.loads(nccidfs("cache", "stats", "--cache-dir", str(cache)).stdout)
    assert stats["objects"] >= 1 and stats["used_bytes"] >= len(warehouse[0].body)
    assert stats["used_bytes"] == du_bytes(cache)
    cleared = nccidfs("cache", "clear", "--cache-dir", str(cache))
    assert cleared.returncode == 0, cleared.stderr
    assert json.loads(nccidfs("cache", "stats", "--cache-dir", str(cache)).stdout)["objects"] == 0
