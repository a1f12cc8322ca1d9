"""The foundation through a real mount of the demo warehouse on moto: real clients, real bytes."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest

from nccidfs.demo.warehouse import DemoObject
from tests.mounting import BUCKET, CACHE_SLACK, PREFIX, MountedDaemon, daemon_env, du_bytes, seed_demo_bucket

pytestmark = pytest.mark.fuse


@pytest.fixture(scope="module")
def demo_bucket(s3_endpoint: str, warehouse: list[DemoObject]) -> str:
    return seed_demo_bucket(s3_endpoint, f"{BUCKET}-mount", warehouse)


@pytest.fixture(scope="module")
def mounted(tmp_path_factory: pytest.TempPathFactory, s3_endpoint: str, demo_bucket: str) -> Iterator[MountedDaemon]:
    root = tmp_path_factory.mktemp("mount")
    with MountedDaemon(root / "mnt", s3_endpoint, root / "cache", root / "daemon.log", bucket=demo_bucket) as daemon:
        yield daemon
    assert not os.path.ismount(root / "mnt")
    assert daemon.returncode == 0, "SIGTERM should unmount cleanly and exit 0"


def relative(key: str) -> str:
    return key[len(PREFIX):]


def test_find_lists_exactly_the_keys(mounted: MountedDaemon, warehouse: list[DemoObject]) -> None:
    out = subprocess.run(["find", str(mounted.mountpoint), "-type", "f"], capture_output=True, text=True, check=True)
    found = {os.path.relpath(line, mounted.mountpoint) for line in out.stdout.splitlines()}
    assert found == {relative(o.key) for o in warehouse}


def test_sizes_come_from_the_listing(mounted: MountedDaemon, warehouse: list[DemoObject]) -> None:
    for obj in warehouse:
        assert (mounted.mountpoint / relative(obj.key)).stat().st_size == len(obj.body)


def test_every_file_has_the_objects_bytes(mounted: MountedDaemon, warehouse: list[DemoObject]) -> None:
    for obj in warehouse:
        data = (mounted.mountpoint / relative(obj.key)).read_bytes()
        assert hashlib.sha256(data).hexdigest() == hashlib.sha256(obj.body).hexdigest(), obj.key
    assert mounted.unexpected_log_lines() == []


@pytest.mark.skipif(shutil.which("dcmdump") is None, reason="dcmtk not installed")
def test_dcmdump_reads_dicoms_through_the_mount(mounted: MountedDaemon, warehouse: list[DemoObject]) -> None:
    for modality in ("ct", "xray", "mri"):
        obj = next(o for o in warehouse if o.key.startswith(f"{PREFIX}{modality}/"))
        patient = relative(obj.key).split("/")[1]
        out = subprocess.run(["dcmdump", str(mounted.mountpoint / relative(obj.key))], capture_output=True,
                             text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert re.search(rf"\(0010,0020\) LO \[{patient}\]", out.stdout)


def test_pydicom_reads_every_image_and_its_path_matches_its_tags(mounted: MountedDaemon,
                                                                 warehouse: list[DemoObject]) -> None:
    for obj in (o for o in warehouse if o.key.endswith(".dcm")):
        _, patient, study, series, _ = relative(obj.key).split("/")
        ds = pydicom.dcmread(mounted.mountpoint / relative(obj.key))
        assert (ds.PatientID, ds.StudyInstanceUID, ds.SeriesInstanceUID) == (patient, study, series)
        assert ds.pixel_array.shape == (ds.Rows, ds.Columns)


def test_clinical_json_parses_and_names_its_patient(mounted: MountedDaemon) -> None:
    files = list((mounted.mountpoint / "data").glob("*/*.json"))
    assert files
    for path in files:
        assert re.fullmatch(r"(data|status)_\d{4}-\d{2}-\d{2}\.json", path.name)
        assert json.loads(path.read_text())["Pseudonym"] == path.parent.name


def test_every_write_fails_with_erofs_and_changes_nothing(mounted: MountedDaemon, s3_endpoint: str,
                                                          demo_bucket: str) -> None:
    from tests.mounting import s3_client

    client = s3_client(s3_endpoint)
    before = client.list_objects_v2(Bucket=demo_bucket, Prefix=PREFIX)["KeyCount"]
    a_file = next((mounted.mountpoint / "data").glob("*/*.json"))
    attempts = {
        "create": lambda: os.open(mounted.mountpoint / "data" / "new.json", os.O_CREAT | os.O_WRONLY),
        "write": lambda: os.open(a_file, os.O_RDWR),
        "append": lambda: os.open(a_file, os.O_WRONLY | os.O_APPEND),
        "mkdir": lambda: os.mkdir(mounted.mountpoint / "ct" / "newdir"),
        "unlink": lambda: os.unlink(a_file),
        "rmdir": lambda: os.rmdir(a_file.parent),
        "rename": lambda: os.rename(a_file, a_file.with_name("x.json")),
        "chmod": lambda: os.chmod(a_file, 0o777),
        "truncate": lambda: os.truncate(a_file, 0),
        "symlink": lambda: os.symlink(a_file, a_file.with_name("link")),
    }
    for name, attempt in attempts.items():
        with pytest.raises(OSError) as info:
            attempt()
        assert info.value.errno == errno.EROFS, name
    assert client.list_objects_v2(Bucket=demo_bucket, Prefix=PREFIX)["KeyCount"] == before
    assert json.loads(a_file.read_text())["Pseudonym"] == a_file.parent.name


def test_cache_stays_within_its_bound(tmp_path: Path, s3_endpoint: str, demo_bucket: str,
                                      warehouse: list[DemoObject]) -> None:
    bound = 6 * 1024 * 1024
    total = sum(len(o.body) for o in warehouse)
    assert total > 4 * bound
    with MountedDaemon(tmp_path / "mnt", s3_endpoint, tmp_path / "cache", tmp_path / "daemon.log",
                       bucket=demo_bucket, extra=["--cache-size", str(bound)]) as daemon:
        for obj in warehouse:
            data = (daemon.mountpoint / relative(obj.key)).read_bytes()
            assert hashlib.sha256(data).digest() == hashlib.sha256(obj.body).digest()
            used = du_bytes(tmp_path / "cache")
            assert used <= bound + CACHE_SLACK, f"{used} bytes on disk after {obj.key}"
        assert daemon.unexpected_log_lines() == []


def test_restart_serves_from_the_cache_that_survived(tmp_path: Path, s3_endpoint: str, demo_bucket: str,
                                                     warehouse: list[DemoObject]) -> None:
    obj = next(o for o in warehouse if o.key.endswith(".dcm"))
    args = (tmp_path / "mnt", s3_endpoint, tmp_path / "cache", tmp_path / "daemon.log")
    with MountedDaemon(*args, bucket=demo_bucket, extra=["--no-prefetch"]) as daemon:
        assert (daemon.mountpoint / relative(obj.key)).read_bytes() == obj.body
    with MountedDaemon(*args, bucket=demo_bucket, extra=["--no-prefetch"]) as daemon:
        daemon.log_path.write_text("")
        assert (daemon.mountpoint / relative(obj.key)).read_bytes() == obj.body
        assert " GET " not in daemon.log(), "a restarted daemon fetched bytes it had cached"


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nccidfs", *args], capture_output=True, text=True,
                          timeout=timeout, env=env or daemon_env())


def test_start_up_errors_give_one_line_and_a_nonzero_exit(tmp_path: Path, s3_endpoint: str, demo_bucket: str,
                                                          mounted: MountedDaemon) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    not_empty = tmp_path / "full"
    not_empty.mkdir()
    (not_empty / "x").write_text("x")
    a_file = tmp_path / "file"
    a_file.write_text("x")
    base = ["--endpoint-url", s3_endpoint, "--bucket", demo_bucket, "--cache-dir", str(tmp_path / "c")]
    no_credentials = {k: v for k, v in daemon_env().items() if not k.startswith("AWS_")}
    no_credentials.update(AWS_CONFIG_FILE=str(tmp_path / "none"), AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"),
                          AWS_EC2_METADATA_DISABLED="true")
    cases = [
        ([str(tmp_path / "missing"), *base], None, "does not exist"),
        ([str(a_file), *base], None, "not a directory"),
        ([str(not_empty), *base], None, "not empty"),
        ([str(mounted.mountpoint), *base], None, "already mounted"),
        ([str(empty), *base, "--cache-size", "lots"], None, "bad size"),
        ([str(empty), *base], no_credentials, "no AWS credentials"),
        ([str(empty), "--endpoint-url", s3_endpoint, "--bucket", "no-such-bucket-here"], None, "bucket does not exist"),
        ([str(empty), *base, "--prefix", "nothing-here"], None, "prefix not found"),
        ([str(empty), "--endpoint-url", "http://127.0.0.1:9", "--cache-dir", str(tmp_path / "c")], None,
         "cannot reach"),
        ([str(empty), "--no-such-flag"], None, "unrecognized arguments"),
    ]
    for args, env, message in cases:
        result = run_cli(*args, env=env)
        assert result.returncode != 0, (args, result.stderr)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert message in result.stderr, (args, result.stderr)
        assert len(lines) <= 2 and "Traceback" not in result.stderr, result.stderr
        assert not os.path.ismount(empty)


def test_background_mode_returns_once_mounted(tmp_path: Path, s3_endpoint: str, demo_bucket: str) -> None:
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    result = run_cli(str(mountpoint), "--endpoint-url", s3_endpoint, "--bucket", demo_bucket,
                     "--cache-dir", str(tmp_path / "cache"), "--log-file", str(tmp_path / "log" / "nccidfs.log"))
    try:
        assert result.returncode == 0, result.stderr
        assert os.path.ismount(mountpoint)
        assert sorted(os.listdir(mountpoint)) == sorted(["ct", "ct-metadata", "data", "mri", "mri-metadata",
                                                         "xray", "xray-metadata"])
    finally:
        subprocess.run(["fusermount3", "-u", str(mountpoint)], check=False)
    assert not os.path.ismount(mountpoint)
    assert "mounted" in (tmp_path / "log" / "nccidfs.log").read_text()


def test_help_explains_every_flag() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    for flag in ("--bucket", "--prefix", "--profile", "--region", "--endpoint-url", "--cache-dir", "--cache-size",
                 "--listing-ttl", "--foreground", "--allow-other", "--log-level"):
        assert flag in result.stdout
