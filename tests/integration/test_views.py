"""The derived views through a real mount: volumes read by nibabel against dcm2niix run over the mount's own
series, X-ray PNGs against dcmj2pnm, sizes at stat equal to the bytes read, no image fetched by ``ls -l``."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from nccidfs.demo.warehouse import DemoObject
from tests.integration.test_catalog import CATALOG_FILES
from tests.mounting import PREFIX, MountedDaemon, daemon_env, seed_demo_bucket
from tests.unit.test_derived_image import decode_png, read_pgm

pytestmark = pytest.mark.fuse


@pytest.fixture(scope="module")
def mount(tmp_path_factory: pytest.TempPathFactory, s3_endpoint: str,
          warehouse: list[DemoObject]) -> Iterator[MountedDaemon]:
    bucket = seed_demo_bucket(s3_endpoint, "nccid-views", warehouse)
    base = tmp_path_factory.mktemp("views")
    with MountedDaemon(base / "mnt", s3_endpoint, base / "cache", base / "daemon.log", bucket=bucket,
                       extra=["--no-prefetch"]) as daemon:
        yield daemon


def series_folders(warehouse: list[DemoObject], modality: str) -> list[str]:
    return sorted({o.key[len(PREFIX):].rsplit("/", 1)[0] for o in warehouse
                   if o.key.startswith(f"{PREFIX}{modality}/") and o.key.endswith(".dcm")})


def image_gets(daemon: MountedDaemon) -> int:
    return sum(1 for line in daemon.log().splitlines() if " GET " in line and ".dcm " in line)


def test_ls_l_of_the_views_downloads_no_image(mount: MountedDaemon, warehouse: list[DemoObject]) -> None:
    before = image_gets(mount)
    views = mount.mountpoint / ".nccidfs"
    listing = subprocess.run(["ls", "-lR", str(views / "volumes"), str(views / "images")], capture_output=True,
                             text=True, check=True).stdout
    assert ".nii" in listing and ".png" in listing
    assert image_gets(mount) == before
    assert ".nccidfs" not in os.listdir(mount.mountpoint)
    any_png = next(views.glob("images/xray/*/*/*/*.png"))
    any_png.read_bytes()
    assert image_gets(mount) > before, "the check above must be able to see an image fetched"


def test_each_ct_and_mr_series_is_the_volume_dcm2niix_makes_of_the_mount(
        mount: MountedDaemon, warehouse: list[DemoObject], tmp_path: Path) -> None:
    folders = series_folders(warehouse, "ct") + series_folders(warehouse, "mri")
    assert len(folders) >= 2
    for folder in folders:
        modality, rest = folder.split("/", 1)
        volume = mount.mountpoint / ".nccidfs" / "volumes" / modality / f"{rest}.nii"
        size = os.stat(volume).st_size
        assert len(volume.read_bytes()) == size
        ours = nib.as_closest_canonical(nib.load(volume))
        out = tmp_path / folder.replace("/", "_")
        out.mkdir()
        subprocess.run(["dcm2niix", "-z", "n", "-f", "ref", "-o", str(out), str(mount.mountpoint / folder)],
                       check=True, capture_output=True, timeout=120)
        reference = nib.as_closest_canonical(nib.load(out / "ref.nii"))
        assert ours.shape == reference.shape
        assert np.allclose(ours.affine, reference.affine, atol=1e-3), folder
        assert np.array_equal(np.asarray(ours.dataobj, dtype=np.float64).round(3),
                              np.asarray(reference.dataobj, dtype=np.float64).round(3)), folder
        sidecar = volume.with_suffix(".json")
        assert b'"Modality"' in sidecar.read_bytes()


def test_each_xray_is_the_png_dcmj2pnm_renders(mount: MountedDaemon, warehouse: list[DemoObject],
                                               tmp_path: Path) -> None:
    xrays = [o for o in warehouse if o.key.startswith(f"{PREFIX}xray/") and o.key.endswith(".dcm")]
    assert xrays
    for obj in xrays:
        relative = obj.key[len(PREFIX):]
        png = (mount.mountpoint / ".nccidfs" / "images" / relative).with_suffix(".png")
        data = png.read_bytes()
        assert len(data) == os.stat(png).st_size
        out = tmp_path / "dcmtk.pgm"
        subprocess.run(["dcmj2pnm", "+Wl", "1", str(mount.mountpoint / relative), str(out)], check=True,
                       capture_output=True, timeout=60)
        ours, reference = decode_png(data).astype(int), read_pgm(out).astype(int)
        assert ours.shape == reference.shape
        assert np.array_equal(ours, reference), relative


def test_a_generated_volume_survives_a_restart_without_fetching_again(
        tmp_path: Path, s3_endpoint: str, warehouse: list[DemoObject]) -> None:
    bucket = seed_demo_bucket(s3_endpoint, "nccid-views-restart", warehouse)
    folder = series_folders(warehouse, "mri")[0]
    modality, rest = folder.split("/", 1)
    args = (tmp_path / "mnt", s3_endpoint, tmp_path / "cache", tmp_path / "log")
    with MountedDaemon(*args, bucket=bucket, extra=["--no-prefetch"]) as daemon:
        first = (daemon.mountpoint / ".nccidfs" / "volumes" / modality / f"{rest}.nii").read_bytes()
    with MountedDaemon(*args, bucket=bucket, extra=["--no-prefetch"]) as daemon:
        before = image_gets(daemon)
        again = (daemon.mountpoint / ".nccidfs" / "volumes" / modality / f"{rest}.nii").read_bytes()
        assert again == first
        assert image_gets(daemon) == before


def test_a_volume_is_cached_and_the_images_it_was_made_from_are_not(
        tmp_path: Path, s3_endpoint: str, warehouse: list[DemoObject]) -> None:
    """The volume made is what the cache keeps: storing its images too would write every voxel twice."""
    bucket = seed_demo_bucket(s3_endpoint, "nccid-views-cached", warehouse)
    folder = series_folders(warehouse, "ct")[0]
    with MountedDaemon(tmp_path / "mnt", s3_endpoint, tmp_path / "cache", tmp_path / "log", bucket=bucket,
                       extra=["--no-prefetch"]) as daemon:
        volume = (daemon.mountpoint / ".nccidfs" / "volumes" / f"{folder}.nii").read_bytes()
        cached = [json.loads(path.read_bytes()) for path in (tmp_path / "cache").rglob("*.map")]
    assert [doc["size"] for doc in cached if doc["key"].endswith(f"volumes/{folder}.nii")] == [len(volume)]
    assert not [doc["key"] for doc in cached if doc["key"].endswith(".dcm")]
    assert any(doc["key"].endswith(".json") for doc in cached)  # the twins are kept: they plan it again


def test_the_catalog_builds_with_progress_and_holds_every_series_and_patient(
        mount: MountedDaemon, warehouse: list[DemoObject]) -> None:
    catalog = mount.mountpoint / ".nccidfs" / "catalog"
    assert sorted(os.listdir(catalog)) == CATALOG_FILES
    built = subprocess.run([sys.executable, "-m", "nccidfs", "catalog", "build", str(mount.mountpoint)],
                           capture_output=True, text=True, timeout=120, env=daemon_env())
    assert built.returncode == 0, built.stderr
    series = list(csv.DictReader(io.StringIO((catalog / "series.csv").read_text())))
    expected = {folder for modality in ("ct", "mri", "xray") for folder in series_folders(warehouse, modality)}
    assert {row["path"] for row in series} == expected
    for row in series:
        images = [o for o in warehouse if o.key.startswith(f"{PREFIX}{row['path']}/") and o.key.endswith(".dcm")]
        assert int(row["images"]) == len(images) and int(row["bytes"]) == sum(len(o.body) for o in images)
        assert row["Modality"] in ("CT", "MR", "DX", "CR") and row["Rows"].isdigit()
    patients = list(csv.DictReader(io.StringIO((catalog / "patients.csv").read_text())))
    clinical = {o.key.split("/")[2] for o in warehouse if o.key.startswith(f"{PREFIX}data/")}
    assert {row["Patient_ID"] for row in patients} == clinical
    for row in patients:
        positive = any(o.key.startswith(f"{PREFIX}data/{row['Patient_ID']}/data_") for o in warehouse)
        assert row["filename_covid_status"] == ("True" if positive else "False"), row
    assert '"complete"' in (catalog / "progress.json").read_text()


def test_prefetch_of_a_patient_view_reads_the_linked_images(mount: MountedDaemon,
                                                           warehouse: list[DemoObject]) -> None:
    patient = series_folders(warehouse, "ct")[0].split("/")[1]
    mine = [o for o in warehouse if o.key.split("/")[2] == patient]
    result = subprocess.run([sys.executable, "-m", "nccidfs", "prefetch", "--force",
                             str(mount.mountpoint / ".nccidfs" / "patients" / patient)],
                            capture_output=True, text=True, timeout=120, env=daemon_env())
    assert result.returncode == 0, result.stderr
    assert f"prefetched {len(mine)} files" in result.stdout


def test_opening_one_volume_reads_the_twins_of_its_own_series_only(
        tmp_path: Path, s3_endpoint: str, warehouse: list[DemoObject]) -> None:
    bucket = seed_demo_bucket(s3_endpoint, "nccid-views-lookup", warehouse)
    study = "ct/Covid319/1.2.826.0.1.3680043.8.498.12415569496471908919353597410988288637"
    folders = [f for f in series_folders(warehouse, "ct") if f.startswith(study + "/")]
    assert len(folders) == 2  # two series of 24 slices in this study
    with MountedDaemon(tmp_path / "mnt", s3_endpoint, tmp_path / "cache", tmp_path / "log", bucket=bucket,
                       extra=["--no-prefetch"]) as daemon:
        def twin_gets(folder: str) -> int:
            return sum(1 for line in daemon.log().splitlines()
                       if " GET " in line and f"ct-metadata/{folder[len('ct/'):]}/" in line)

        volume = daemon.mountpoint / ".nccidfs" / "volumes" / f"{folders[0]}.nii"
        assert os.stat(volume).st_size == len(volume.read_bytes())
        assert twin_gets(folders[0]) == 24
        assert twin_gets(folders[1]) == 0
        assert len(os.listdir(volume.parent)) == 4  # a listing plans every series: two .nii, two .json
        assert twin_gets(folders[1]) == 24
