"""Cohorts through real mounts on moto: a frozen set of objects mounted again exactly, with no listing,
after the bucket changed; the warehouse as of a date; manifests that must not mount."""

from __future__ import annotations

import errno
import gzip
import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from nccidfs.cohort import manifest
from nccidfs.demo.warehouse import DemoObject
from tests.mounting import PREFIX, MountedDaemon, daemon_env, s3_client, seed_demo_bucket

pytestmark = pytest.mark.fuse

# The error a mount logs, on purpose, for a frozen object the bucket no longer holds as it was.
FROZEN_OBJECT_GONE = r"cohort object \S+ (changed|deleted) since the cohort was frozen"


def listed(client: Any, bucket: str) -> list[dict[str, Any]]:
    return [obj for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=PREFIX)
            for obj in page.get("Contents", [])]


def freeze(path: Path, endpoint: str, bucket: str, objects: Iterable[dict[str, Any]]) -> list[manifest.Row]:
    """A manifest of listed objects, written as ``nccidfs cohort create`` writes one."""
    rows = sorted((o["Key"][len(PREFIX):], o["Size"], o["ETag"].strip('"'), o["LastModified"].timestamp())
                  for o in objects)
    header = manifest.Header(name=path.stem, warehouse=manifest.Warehouse(endpoint.split("//")[1], bucket, PREFIX),
                             created=manifest.now_iso(), listed={"source": "test"}, selection={},
                             objects=len(rows), bytes=sum(r[1] for r in rows),
                             patients=manifest.count_patients(r[0] for r in rows))
    manifest.write(path, header, rows)
    return rows


def requests(daemon: MountedDaemon) -> dict[str, int]:
    status = json.loads((daemon.mountpoint / ".nccidfs" / "status.json").read_text())
    return dict(status["s3"]["requests"])


def find_files(root: Path) -> set[str]:
    out = subprocess.run(["find", str(root), "-type", "f"], capture_output=True, text=True, check=True).stdout
    return {os.path.relpath(line, root) for line in out.splitlines()}


def change_bucket(client: Any, bucket: str, rows: list[manifest.Row], new_key: str) -> tuple[str, str]:
    """The bucket changes after a cohort was frozen: an object added, one replaced, one deleted (both
    images of the cohort, returned)."""
    images = [row[0] for row in rows if row[0].endswith(".dcm")]
    replaced, deleted = images[0], images[1]
    client.put_object(Bucket=bucket, Key=f"{PREFIX}{new_key}", Body=b"new")
    client.put_object(Bucket=bucket, Key=f"{PREFIX}{replaced}", Body=b"other bytes")
    client.delete_object(Bucket=bucket, Key=f"{PREFIX}{deleted}")
    return replaced, deleted


def check_frozen(root: Path, rows: list[manifest.Row], bodies: dict[str, bytes], replaced: str, deleted: str) -> None:
    """Every object with the manifest's size and time, the bytes of the unchanged ones, EIO for the replaced
    and ENOENT for the deleted."""
    for key, size, _, mtime in rows:
        stat = (root / key).stat()
        assert (stat.st_size, stat.st_mtime) == (size, pytest.approx(mtime, abs=1e-3))
        if key not in (replaced, deleted):
            assert hashlib.sha256((root / key).read_bytes()).digest() == hashlib.sha256(bodies[key]).digest(), key
    with pytest.raises(OSError) as changed:
        (root / replaced).read_bytes()
    assert changed.value.errno == errno.EIO
    with pytest.raises(OSError) as vanished:
        (root / deleted).read_bytes()
    assert vanished.value.errno == errno.ENOENT


def patients(warehouse: list[DemoObject]) -> list[str]:
    return sorted({o.key[len(PREFIX):].split("/")[1] for o in warehouse if o.key.startswith(f"{PREFIX}ct/")})


def test_a_cohort_mounts_exactly_its_objects_with_no_listing_even_after_the_bucket_changed(
        s3_endpoint: str, warehouse: list[DemoObject], bucket_name: str, tmp_path: Path) -> None:
    bucket = seed_demo_bucket(s3_endpoint, bucket_name, warehouse)
    client = s3_client(s3_endpoint)
    chosen = patients(warehouse)[0]
    frozen = [o for o in listed(client, bucket) if o["Key"].split("/")[2] == chosen]
    rows = freeze(tmp_path / "c.nccid-cohort", s3_endpoint, bucket, frozen)
    bodies = {o.key[len(PREFIX):]: o.body for o in warehouse}
    replaced, deleted = change_bucket(client, bucket, rows, f"ct/{chosen}-new/s/se/i.dcm")  # a new patient

    with MountedDaemon(tmp_path / "mnt", s3_endpoint, tmp_path / "cache", tmp_path / "daemon.log", bucket=bucket,
                       extra=["--cohort", str(tmp_path / "c.nccid-cohort")],
                       allowed_log=[FROZEN_OBJECT_GONE]) as daemon:
        assert requests(daemon) == {}, "mounting a cohort sends S3 nothing"
        assert find_files(daemon.mountpoint) == {row[0] for row in rows}
        assert requests(daemon) == {}, "find over a cohort sends S3 nothing"
        check_frozen(daemon.mountpoint, rows, bodies, replaced, deleted)
        assert os.listdir(daemon.mountpoint / ".nccidfs" / "patients") == [chosen]
        subprocess.run([sys.executable, "-m", "nccidfs", "refresh", str(daemon.mountpoint)], check=True,
                       env=daemon_env(), capture_output=True)
        assert find_files(daemon.mountpoint) == {row[0] for row in rows}, "listed again, from the manifest"
        assert requests(daemon).get("ListObjectsV2", 0) == 0
    log = daemon.log()
    assert sum(f"{PREFIX}{replaced} changed since the cohort was frozen" in line for line in log.splitlines()) == 1
    assert sum(f"{PREFIX}{deleted} deleted since the cohort was frozen" in line for line in log.splitlines()) == 1
    # Besides that line, only the failed reads' own warnings (naming the path and the same reason).
    assert daemon.unexpected_log_lines(allowed=("cohort object", "changed since the cohort was frozen")) == []


def test_as_of_hides_later_uploads(s3_endpoint: str, bucket_name: str, tmp_path: Path) -> None:
    client = s3_client(s3_endpoint)
    client.create_bucket(Bucket=bucket_name, CreateBucketConfiguration={"LocationConstraint": "eu-west-2"})
    client.put_object(Bucket=bucket_name, Key=f"{PREFIX}ct/P1/s/se/a.dcm", Body=b"before")
    time.sleep(1.1)
    cutoff = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time()))
    time.sleep(1.1)
    client.put_object(Bucket=bucket_name, Key=f"{PREFIX}ct/P1/s/se/b.dcm", Body=b"after")
    client.put_object(Bucket=bucket_name, Key=f"{PREFIX}ct/P1/s/se/a.dcm.later", Body=b"after")
    with MountedDaemon(tmp_path / "mnt", s3_endpoint, tmp_path / "cache", tmp_path / "daemon.log",
                       bucket=bucket_name, extra=["--as-of", cutoff]) as daemon:
        assert find_files(daemon.mountpoint) == {"ct/P1/s/se/a.dcm"}
        assert (daemon.mountpoint / "ct/P1/s/se/a.dcm").read_bytes() == b"before"
        assert not (daemon.mountpoint / "ct/P1/s/se/b.dcm").exists()
    with MountedDaemon(tmp_path / "mnt", s3_endpoint, tmp_path / "cache", tmp_path / "daemon2.log",
                       bucket=bucket_name) as daemon:
        assert len(find_files(daemon.mountpoint)) == 3, "a plain mount on the same cache shows the bucket as it is"
        nccidfs("catalog", "build", str(daemon.mountpoint), cwd=tmp_path)
        nccidfs("cohort", "create", "then", "--where", "images >= 1", "--as-of", cutoff, str(daemon.mountpoint),
                cwd=tmp_path)
    frozen = manifest.read(tmp_path / "then.nccid-cohort")
    assert [row[0] for row in frozen.rows] == ["ct/P1/s/se/a.dcm"]
    assert frozen.header.selection["as_of"] == cutoff


def hostile_manifests(tmp_path: Path, endpoint: str) -> dict[str, bytes]:
    good = tmp_path / "good"
    freeze(good, endpoint, "nccid-data-warehouse-prod", [
        {"Key": f"{PREFIX}ct/P/s/se/a.dcm", "Size": 1, "ETag": '"e"', "LastModified": _when()}])
    data = good.read_bytes()
    header = json.loads(gzip.decompress(data).splitlines()[0])
    return {
        "truncated": data[:-9],
        "not gzip": b"[\"ct/P/a\", 1, \"e\", 1.0]\n",
        "a path out of the mount": gzip.compress(json.dumps(header).encode() + b'\n["../../etc/passwd", 1, "e", 1]\n'),
        "a header injection in an ETag": gzip.compress(
            json.dumps(header).encode() + b'\n["ct/P/a", 1, "e\\r\\nHost: evil", 1]\n'),
        "another endpoint": gzip.compress(json.dumps({**header, "warehouse": {**header["warehouse"],
                                                      "endpoint": "s3.example.org"}}).encode() + b"\n"),
        "empty": b"",
    }


def _when() -> Any:
    import datetime as dt

    return dt.datetime(2021, 1, 1, tzinfo=dt.UTC)


def test_a_bad_manifest_exits_2_with_one_line_and_mounts_nothing(s3_endpoint: str, tmp_path: Path) -> None:
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    for what, data in hostile_manifests(tmp_path, s3_endpoint).items():
        path = tmp_path / "bad.nccid-cohort"
        path.write_bytes(data)
        for foreground in ([], ["-f"]):
            result = subprocess.run([sys.executable, "-m", "nccidfs", str(mountpoint), "--cohort", str(path),
                                     "--endpoint-url", s3_endpoint, "--cache-dir", str(tmp_path / "cache"),
                                     *foreground], capture_output=True, text=True, env=daemon_env(), timeout=60)
            assert result.returncode == 2, (what, result.stderr)
            assert len(result.stderr.splitlines()) == 1 and "Traceback" not in result.stderr, (what, result.stderr)
            assert not os.path.ismount(mountpoint), what


def nccidfs(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([sys.executable, "-m", "nccidfs", *args], capture_output=True, text=True,
                            env=daemon_env(), timeout=300, cwd=cwd)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def test_create_split_diff_verify_and_mount_a_cohort_selected_from_the_catalog(
        s3_endpoint: str, warehouse: list[DemoObject], bucket_name: str, tmp_path: Path) -> None:
    bucket = seed_demo_bucket(s3_endpoint, bucket_name, warehouse)
    client = s3_client(s3_endpoint)
    with MountedDaemon(tmp_path / "mnt", s3_endpoint, tmp_path / "cache", tmp_path / "daemon.log",
                       bucket=bucket) as daemon:
        mnt = str(daemon.mountpoint)
        nccidfs("catalog", "build", mnt, cwd=tmp_path)
        created = nccidfs("cohort", "create", "ct", "--where", "Modality = 'CT' AND images >= 1", mnt, cwd=tmp_path)
        bad = nccidfs("cohort", "create", "x", "--where", "no_such_column = 1", mnt, cwd=tmp_path, check=False)
        empty = nccidfs("cohort", "create", "y", "--where", "images < 0", mnt, cwd=tmp_path, check=False)
    assert created.stdout.startswith("ct.nccid-cohort: ") and " patients, " in created.stdout
    for result, message in ((bad, "no such column"), (empty, "holds no object")):
        assert result.returncode == 2 and len(result.stderr.splitlines()) == 1 and message in result.stderr
    frozen = manifest.read(tmp_path / "ct.nccid-cohort")
    keys = {row[0] for row in frozen.rows}
    ct = {o.key[len(PREFIX):] for o in warehouse if o.key.startswith(f"{PREFIX}ct/")}
    ct_patients = {key.split("/")[1] for key in ct}
    assert ct <= keys, "every CT image"
    assert {o.key[len(PREFIX):] for o in warehouse if o.key.startswith(f"{PREFIX}ct-metadata/")} <= keys, "twins"
    assert {key.split("/")[0] for key in keys} == {"ct", "ct-metadata", "data"}
    assert {key.split("/")[1] for key in keys} == ct_patients
    assert frozen.header.selection["where"] == "Modality = 'CT' AND images >= 1"
    # The catalog lists image folders in runs of patients and reads twins by name, keeping no listing of a
    # patient's folder: each selected series' folder (images and twins) and each clinical folder is listed
    # once, flat, and none twice.
    folders = {key.rsplit("/", 1)[0] for key in keys if not key.startswith("data/")} | {
        key.split("/")[1] for key in keys if key.startswith("data/")}
    assert frozen.header.listed["source"] == (f"0 patient folders from the mount's listing index, "
                                              f"{len(folders)} listed from S3 in {len(folders)} listings")

    nccidfs("cohort", "split", "ct", "--fractions", "0.5,0.5", "--seed", "7", "--names", "a,b", cwd=tmp_path)
    parts = [manifest.read(tmp_path / f"ct-{name}.nccid-cohort") for name in ("a", "b")]
    assert sorted(row for part in parts for row in part.rows) == frozen.rows
    assert not ({r[0].split("/")[1] for r in parts[0].rows} & {r[0].split("/")[1] for r in parts[1].rows})
    (tmp_path / "again").mkdir()
    (tmp_path / "again" / "ct.nccid-cohort").write_bytes((tmp_path / "ct.nccid-cohort").read_bytes())
    nccidfs("cohort", "split", "ct", "--fractions", "0.5,0.5", "--seed", "7", "--names", "a,b", cwd=tmp_path / "again")
    assert manifest.read(tmp_path / "again" / "ct-a.nccid-cohort").rows == parts[0].rows, "deterministic"
    differ = nccidfs("cohort", "diff", "ct-a.nccid-cohort", "ct.nccid-cohort", cwd=tmp_path)
    assert f"objects: {len(parts[1].rows)} added, 0 removed, 0 changed" in differ.stdout

    assert nccidfs("cohort", "verify", "ct.nccid-cohort", "--endpoint-url", s3_endpoint, cwd=tmp_path).returncode == 0
    replaced, deleted = sorted(k for k in ct if k.endswith(".dcm"))[:2]
    client.put_object(Bucket=bucket, Key=f"{PREFIX}{replaced}", Body=b"other")
    client.delete_object(Bucket=bucket, Key=f"{PREFIX}{deleted}")
    checked = nccidfs("cohort", "verify", "ct.nccid-cohort", "--endpoint-url", s3_endpoint, cwd=tmp_path,
                      check=False)
    assert checked.returncode == 1
    assert f"changed  {replaced}" in checked.stdout and f"vanished {deleted}" in checked.stdout

    name, part = max(zip("ab", parts, strict=True), key=lambda named: len(named[1].rows))
    with MountedDaemon(tmp_path / "mnt2", s3_endpoint, tmp_path / "cache2", tmp_path / "daemon2.log", bucket=bucket,
                       extra=["--cohort", str(tmp_path / f"ct-{name}.nccid-cohort")]) as daemon:
        assert find_files(daemon.mountpoint) == {row[0] for row in part.rows}
        series = next(daemon.mountpoint.glob(".nccidfs/volumes/ct/*/*/*.json"))
        assert json.loads(series.read_text()), "the views work on a cohort mount"
        assert requests(daemon).get("ListObjectsV2", 0) == 0


def test_a_cohort_created_on_a_live_mount_appears_in_its_cohorts_folder_frozen(
        s3_endpoint: str, warehouse: list[DemoObject], bucket_name: str, tmp_path: Path) -> None:
    bucket = seed_demo_bucket(s3_endpoint, bucket_name, warehouse)
    client = s3_client(s3_endpoint)
    chosen = patients(warehouse)[0]
    (tmp_path / "paths.txt").write_text(f"ct/{chosen}\nct-metadata/{chosen}\n")
    with MountedDaemon(tmp_path / "mnt", s3_endpoint, tmp_path / "cache", tmp_path / "daemon.log",
                       bucket=bucket, allowed_log=[FROZEN_OBJECT_GONE]) as daemon:
        cohorts = daemon.mountpoint / ".nccidfs" / "cohorts"
        assert os.listdir(cohorts) == []
        created = nccidfs("cohort", "create", "one", "--paths", str(tmp_path / "paths.txt"), str(daemon.mountpoint),
                          cwd=tmp_path)
        assert f"linked into {tmp_path / 'cache' / 'cohorts'}: {cohorts}/one/" in created.stdout
        rows = manifest.read(tmp_path / "one.nccid-cohort").rows
        bodies = {o.key[len(PREFIX):]: o.body for o in warehouse}
        study = next(row[0] for row in rows if row[0].startswith("ct/")).split("/")[2]
        replaced, deleted = change_bucket(client, bucket, rows, f"ct/{chosen}/{study}/new.dcm")
        subprocess.run([sys.executable, "-m", "nccidfs", "refresh", str(daemon.mountpoint)], check=True,
                       env=daemon_env(), capture_output=True)
        assert (daemon.mountpoint / replaced).read_bytes() == b"other bytes", "the live tree shows the bucket now"
        assert not (daemon.mountpoint / deleted).exists()

        before = requests(daemon).get("ListObjectsV2", 0)
        assert os.listdir(cohorts) == ["one"]
        assert find_files(cohorts / "one") == {row[0] for row in rows}, "just the frozen objects"
        check_frozen(cohorts / "one", rows, bodies, replaced, deleted)
        assert requests(daemon).get("ListObjectsV2", 0) == before, "a cohort is walked and read with no listing"
        assert not (cohorts / "one" / "ct" / chosen / study / "new.dcm").exists()

        # A manifest of another bucket, and a truncated one, copied in by hand: refused, never served.
        freeze(tmp_path / "cache" / "cohorts" / "other.nccid-cohort", s3_endpoint, "another-bucket",
               listed(client, bucket)[:1])
        (tmp_path / "cache" / "cohorts" / "cut.nccid-cohort").write_bytes(
            (tmp_path / "one.nccid-cohort").read_bytes()[:-9])
        # The kernel keeps the folder's listing until it asks for the folder's time again.
        deadline = time.monotonic() + 10
        while os.listdir(cohorts) != ["cut", "one", "other"] and time.monotonic() < deadline:
            time.sleep(0.2)
        assert os.listdir(cohorts) == ["cut", "one", "other"]
        for name in ("cut", "other"):
            with pytest.raises(OSError) as refused:
                os.listdir(cohorts / name)
            assert refused.value.errno == errno.EIO
    log = daemon.log()
    assert sum(f"{PREFIX}{replaced} changed since the cohort was frozen" in line for line in log.splitlines()) == 1
    assert sum(f"{PREFIX}{deleted} deleted since the cohort was frozen" in line for line in log.splitlines()) == 1
    assert daemon.unexpected_log_lines(allowed=(
        "cohort object", "changed since the cohort was frozen", "another-bucket", "truncated")) == []
