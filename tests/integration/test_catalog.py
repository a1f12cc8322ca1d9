"""The catalog through a real mount: never a part of a table, kept across mounts and updated patient by
patient, safe to open in a spreadsheet, bounded, and a build that never holds readers of the mount up."""

from __future__ import annotations

import csv
import errno
import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nccidfs import catalog_parquet
from nccidfs.demo.warehouse import DemoObject
from tests.faultproxy import FaultProxy
from tests.mounting import PREFIX, MountedDaemon, create_bucket, daemon_env, s3_client

pytestmark = pytest.mark.fuse
# What the catalog folder lists: the tables, their Parquet twins where pyarrow is installed, the progress.
CATALOG_FILES = sorted(["patients.csv", "progress.json", "series.csv",
                        *(["patients.parquet", "series.parquet"] if catalog_parquet.available() else [])])

IMAGE_FOLDERS = ("ct", "mri", "xray")


@pytest.fixture
def proxy(s3_endpoint: str) -> Iterator[FaultProxy]:
    with FaultProxy(s3_endpoint) as running:
        yield running


def nccidfs(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nccidfs", *args], capture_output=True, text=True,
                          timeout=timeout, env=daemon_env())


def table(daemon: MountedDaemon, name: str) -> list[dict[str, str]]:
    data = (daemon.mountpoint / ".nccidfs" / "catalog" / name).read_bytes()
    return list(csv.DictReader(io.StringIO(data.decode("utf-8"))))  # strict UTF-8


def progress(daemon: MountedDaemon) -> dict[str, object]:
    return dict(json.loads((daemon.mountpoint / ".nccidfs" / "catalog" / "progress.json").read_bytes()))


def twin_gets(daemon: MountedDaemon) -> int:
    return sum(1 for line in daemon.log().splitlines() if " GET " in line and "-metadata/" in line)


def series_paths(objects: list[tuple[str, bytes]]) -> set[str]:
    return {key[len(PREFIX):].rsplit("/", 1)[0] for key, _ in objects
            if key.split("/")[1] in IMAGE_FOLDERS and key.endswith(".dcm")}


def twin(**tags: str) -> bytes:
    """A metadata twin (DICOM JSON) holding these text tags."""
    codes = {"Modality": "00080060", "SeriesDescription": "0008103E", "Manufacturer": "00080070"}
    return json.dumps({codes[name]: {"vr": "LO", "Value": [value]} for name, value in tags.items()}).encode()


def ct_patients(count: int, start: int = 0) -> list[tuple[str, bytes]]:
    """CT patients of one single-image series each, with their twins (the catalog reads no image)."""
    objects = []
    for number in range(start, start + count):
        series = f"ct/Synth{number}/1.2.{number}/1.2.{number}.1"
        objects.append((f"{PREFIX}{series}/img.dcm", b"not an image"))
        objects.append((f"{PREFIX}{series.replace('ct/', 'ct-metadata/', 1)}/img.json",
                        twin(Modality="CT", SeriesDescription=f"series {number}")))
    return objects


def demo(warehouse: list[DemoObject]) -> list[tuple[str, bytes]]:
    return [(obj.key, obj.body) for obj in warehouse]


def test_a_table_opened_during_a_build_is_an_error_never_a_part(
        tmp_path: Path, proxy: FaultProxy, s3_endpoint: str, bucket_name: str, warehouse: list[DemoObject]) -> None:
    objects = demo(warehouse)
    create_bucket(s3_endpoint, bucket_name, objects)
    proxy.stall(1.5, op="get", key="ct-metadata/")  # the build lasts while twins come slowly
    with MountedDaemon(tmp_path / "mnt", proxy.url, tmp_path / "cache", tmp_path / "log", bucket=bucket_name,
                       extra=["--no-prefetch"]) as daemon:
        states, served = [], []
        deadline = time.monotonic() + 60
        while not served and time.monotonic() < deadline:
            try:
                served.append(table(daemon, "series.csv"))
            except OSError as error:
                assert error.errno == errno.EAGAIN, error
                states.append(progress(daemon)["state"])  # the build may complete in between
                time.sleep(0.2)
        assert "building" in states, "the table was never seen while the build was under way"
        assert set(states) <= {"building", "complete"}
        assert served and {row["path"] for row in served[0]} == series_paths(objects)
        log = daemon.log()
        assert "nccidfs catalog build" in log and "progress.json" in log
        done = progress(daemon)
        assert done["state"] == "complete"
        time.sleep(1.2)
        assert progress(daemon)["seconds"] == done["seconds"], "seconds must stop when the build completes"


def test_a_remount_serves_the_catalog_at_once_and_a_refresh_reads_only_new_patients(
        tmp_path: Path, s3_endpoint: str, bucket_name: str, warehouse: list[DemoObject]) -> None:
    objects = demo(warehouse)
    create_bucket(s3_endpoint, bucket_name, objects)
    args = (tmp_path / "mnt", s3_endpoint, tmp_path / "cache", tmp_path / "log")
    with MountedDaemon(*args, bucket=bucket_name, extra=["--no-prefetch"]) as daemon:
        built = nccidfs("catalog", "build", str(daemon.mountpoint))
        assert built.returncode == 0, built.stderr
        first = (daemon.mountpoint / ".nccidfs" / "catalog" / "series.csv").read_bytes()
        patients = (daemon.mountpoint / ".nccidfs" / "catalog" / "patients.csv").read_bytes()
    with MountedDaemon(*args, bucket=bucket_name, extra=["--no-prefetch"]) as daemon:
        before = twin_gets(daemon)
        assert (daemon.mountpoint / ".nccidfs" / "catalog" / "series.csv").read_bytes() == first
        assert (daemon.mountpoint / ".nccidfs" / "catalog" / "patients.csv").read_bytes() == patients
        assert twin_gets(daemon) == before
        added = ct_patients(2, start=100)
        client = s3_client(s3_endpoint)
        for key, body in [*added, (f"{PREFIX}data/Synth100/status_2021-01-02.json", b'{"Sex": "F"}')]:
            client.put_object(Bucket=bucket_name, Key=key, Body=body)
        assert nccidfs("refresh", str(daemon.mountpoint)).returncode == 0
        assert progress(daemon)["stale"] is True
        built = nccidfs("catalog", "build", str(daemon.mountpoint))
        assert built.returncode == 0, built.stderr
        assert twin_gets(daemon) - before == 2, "only the new patients' twins are read"
        done = progress(daemon)
        assert done["patients_read"] == 3 and done["stale"] is False
        rows = table(daemon, "series.csv")
        assert {row["path"] for row in rows} == series_paths(objects) | series_paths(added)
        assert "Synth100" in {row["Patient_ID"] for row in table(daemon, "patients.csv")}
        assert all(row["as_of"].endswith("Z") for row in rows)


def flat_pages(log: str, folder: str) -> int:
    """Pages of the daemon's flat listings of ``folder``, from its debug log."""
    return log.count(f"LIST {PREFIX}{folder}/ (flat)")


def test_after_a_refresh_that_adds_patients_only_they_are_listed_and_read(
        tmp_path: Path, proxy: FaultProxy, s3_endpoint: str, bucket_name: str, warehouse: list[DemoObject]) -> None:
    objects = [*demo(warehouse), *ct_patients(40)]
    create_bucket(s3_endpoint, bucket_name, objects)
    with MountedDaemon(tmp_path / "mnt", proxy.url, tmp_path / "cache", tmp_path / "log", bucket=bucket_name,
                       extra=["--no-prefetch"]) as daemon:
        assert nccidfs("catalog", "build", str(daemon.mountpoint)).returncode == 0
        known = len({(row["folder"], row["Patient_ID"]) for row in table(daemon, "series.csv")})
        added = ct_patients(2, start=100)
        client = s3_client(s3_endpoint)
        for key, body in [*added, (f"{PREFIX}data/Synth100/status_2021-01-02.json", b'{"Sex": "F"}')]:
            client.put_object(Bucket=bucket_name, Key=key, Body=body)
        assert nccidfs("refresh", str(daemon.mountpoint)).returncode == 0
        mark = len(daemon.log())
        proxy.reset_counts()
        built = nccidfs("catalog", "build", str(daemon.mountpoint))
        assert built.returncode == 0, built.stderr
        counts, log = proxy.counts(), daemon.log()[mark:]
        assert flat_pages(log, "ct") <= 2, "only the new patients' images are listed"
        assert counts["GetObject"] + counts["GetObject(range)"] == 3  # their 2 twins and 1 clinical file
        # The mount's root and its four folders' patients, data/ whole, and the new CT patients: not one
        # listing per known patient.
        assert counts["ListObjectsV2"] <= 5 + flat_pages(log, "data") + 2 < known
        done = progress(daemon)
        assert (done["patients_read"], done["patients_kept"]) == (3, known)
        assert {row["path"] for row in table(daemon, "series.csv")} == series_paths(objects) | series_paths(added)
        mark = len(daemon.log())
        assert nccidfs("catalog", "build", str(daemon.mountpoint), "--relist").returncode == 0
        # A relist lists the known patients too: single patients at first, then runs of them.
        assert flat_pages(daemon.log()[mark:], "ct") > 2 + 5


@pytest.mark.parametrize("wrong", ["bogus", "CT", "ct-metadata", "data"])
def test_catalog_build_accepts_only_the_mounts_image_folders(
        tmp_path: Path, s3_endpoint: str, bucket_name: str, warehouse: list[DemoObject], wrong: str) -> None:
    create_bucket(s3_endpoint, bucket_name, demo(warehouse))
    with MountedDaemon(tmp_path / "mnt", s3_endpoint, tmp_path / "cache", tmp_path / "log", bucket=bucket_name,
                       extra=["--no-prefetch"]) as daemon:
        result = nccidfs("catalog", "build", str(daemon.mountpoint), "--modality", wrong)
        assert result.returncode == 2
        assert len(result.stderr.strip().splitlines()) == 1 and wrong in result.stderr
        assert progress(daemon)["state"] == "not started"


def test_a_build_of_one_modality_keeps_the_others(
        tmp_path: Path, s3_endpoint: str, bucket_name: str, warehouse: list[DemoObject]) -> None:
    objects = demo(warehouse)
    create_bucket(s3_endpoint, bucket_name, objects)
    with MountedDaemon(tmp_path / "mnt", s3_endpoint, tmp_path / "cache", tmp_path / "log", bucket=bucket_name,
                       extra=["--no-prefetch"]) as daemon:
        assert nccidfs("catalog", "build", str(daemon.mountpoint)).returncode == 0
        patients = (daemon.mountpoint / ".nccidfs" / "catalog" / "patients.csv").read_bytes()
        assert nccidfs("catalog", "build", str(daemon.mountpoint), "--modality", "xray").returncode == 0
        assert (daemon.mountpoint / ".nccidfs" / "catalog" / "patients.csv").read_bytes() == patients
        assert {row["path"] for row in table(daemon, "series.csv")} == series_paths(objects)
        assert set(progress(daemon)["as_of"]) == {*IMAGE_FOLDERS, "data"}  # type: ignore[call-overload]


def test_hostile_inputs_spoil_only_their_own_rows_and_no_cell_is_a_formula(
        tmp_path: Path, s3_endpoint: str, bucket_name: str) -> None:
    formula = '=HYPERLINK("http://example.invalid/x","click")'
    objects = [
        *ct_patients(3),
        # A lone surrogate is valid JSON; a twin that is not JSON; a formula in a tag and in a field.
        (f"{PREFIX}ct-metadata/Synth0/1.2.0/1.2.0.1/img.json", b'{"0008103E": {"vr": "LO", "Value": ["a\\ud800b"]}}'),
        (f"{PREFIX}ct-metadata/Synth1/1.2.1/1.2.1.1/img.json", b"{]"),
        (f"{PREFIX}ct-metadata/Synth2/1.2.2/1.2.2.1/img.json", twin(Modality="CT", SeriesDescription=formula)),
        (f"{PREFIX}data/Synth0/status_2020-05-01.json", b'{"Sex": "\\udc80", "Note": "@SUM(1+1)", "Age": -3}'),
        (f"{PREFIX}data/Synth1/data_2020-05-01.json", b"not json"),
        (f"{PREFIX}data/Synth2/status_2020-05-01.json", b'{"Sex": "' + b"F" * (2 * 1024 * 1024) + b'"}'),
    ]
    create_bucket(s3_endpoint, bucket_name, dict(objects).items())
    with MountedDaemon(tmp_path / "mnt", s3_endpoint, tmp_path / "cache", tmp_path / "log", bucket=bucket_name,
                       extra=["--no-prefetch"]) as daemon:
        built = nccidfs("catalog", "build", str(daemon.mountpoint))
        assert built.returncode == 0, built.stderr
        assert sorted(os.listdir(daemon.mountpoint / ".nccidfs" / "catalog")) == CATALOG_FILES
        series = {row["Patient_ID"]: row for row in table(daemon, "series.csv")}
        # The twin's lone surrogate costs at most its own cell; the table stays valid UTF-8 (read strictly).
        assert series["Synth0"]["Modality"] == "" and series["Synth0"]["images"] == "1"
        assert series["Synth1"]["SeriesDescription"] == "" and series["Synth1"]["images"] == "1"
        assert series["Synth2"]["SeriesDescription"] == "'" + formula
        patients = {row["Patient_ID"]: row for row in table(daemon, "patients.csv")}
        assert patients["Synth0"]["Sex"] == "\ufffd" and patients["Synth0"]["Note"] == "'@SUM(1+1)"
        assert patients["Synth0"]["Age"] == "-3"  # a number, not a formula
        assert patients["Synth1"]["filename_covid_status"] == "True"  # its row, without fields
        assert patients["Synth2"]["latest_file"] == "status_2020-05-01.json" and patients["Synth2"]["Sex"] == ""
        done = progress(daemon)
        # Bad: the twin whose one element was a lone surrogate, the twin and the clinical file not JSON.
        assert (done["state"], done["errors"], done["refused"]) == ("complete", 3, 1)
        warnings = daemon.unexpected_log_lines()
        assert len(warnings) == 4 and all("catalog:" in line for line in warnings), warnings


def test_a_slow_build_never_holds_up_a_reader_of_the_mount(
        tmp_path: Path, proxy: FaultProxy, s3_endpoint: str, bucket_name: str, warehouse: list[DemoObject]) -> None:
    create_bucket(s3_endpoint, bucket_name, [*demo(warehouse), *ct_patients(60)])
    proxy.stall(5.0, op="get", key="ct-metadata/Synth")
    with MountedDaemon(tmp_path / "mnt", proxy.url, tmp_path / "cache", tmp_path / "log", bucket=bucket_name,
                       extra=["--no-prefetch"]) as daemon:
        png = next((daemon.mountpoint / ".nccidfs" / "images" / "xray").glob("*/*/*/*.png"))
        try:  # starts the build
            served: bytes | None = (daemon.mountpoint / ".nccidfs" / "catalog" / "series.csv").read_bytes()
        except BlockingIOError:
            served = None
        time.sleep(1.0)  # the build's twin GETs are now all stalled
        assert progress(daemon)["state"] == "building"
        started = time.monotonic()
        png.read_bytes()
        assert time.monotonic() - started < 2.0
        assert served is None
        proxy.clear()


def test_a_catalog_after_a_find_lists_nothing_again(
        tmp_path: Path, proxy: FaultProxy, s3_endpoint: str, bucket_name: str, warehouse: list[DemoObject]) -> None:
    objects = demo(warehouse)
    create_bucket(s3_endpoint, bucket_name, objects)
    with MountedDaemon(tmp_path / "mnt", proxy.url, tmp_path / "cache", tmp_path / "log", bucket=bucket_name,
                       extra=["--no-prefetch"]) as daemon:
        folders = [str(daemon.mountpoint / folder) for folder in (*IMAGE_FOLDERS, "data")]
        subprocess.run(["find", *folders], check=True, capture_output=True)
        proxy.reset_counts()
        built = nccidfs("catalog", "build", str(daemon.mountpoint))
        assert built.returncode == 0, built.stderr
        assert proxy.counts()["ListObjectsV2"] == 0
        assert {row["path"] for row in table(daemon, "series.csv")} == series_paths(objects)
