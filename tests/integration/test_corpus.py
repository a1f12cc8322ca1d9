"""The corpus of real scanner files (tests/corpus.py) uploaded in the NCCID layout and read through a real
mount: every volume the mount lists reads whole at its listed size and is the volume dcm2niix makes of
the same series (read over the mount, or of its decoded twin where dcm2niix lacks the codec); series that
are no stack of slices have only a sidecar with the reason; every real X-ray's PNG is what dcmtk renders."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from nccidfs.demo.warehouse import DemoObject
from tests import corpus as kit
from tests.corpus import CorpusSeries
from tests.mounting import PREFIX, MountedDaemon, seed_demo_bucket
from tests.unit.test_derived_image import decode_png

pytestmark = [pytest.mark.fuse,
              pytest.mark.skipif(shutil.which("dcm2niix") is None or shutil.which("dcmj2pnm") is None,
                                 reason="needs dcm2niix and dcmtk")]


@pytest.fixture(scope="module")
def corpus(warehouse: list[DemoObject]) -> list[CorpusSeries]:
    return kit.real_series() + kit.crafted_series(warehouse) + kit.refused_series() + kit.xray_images()


@pytest.fixture(scope="module")
def mount(tmp_path_factory: pytest.TempPathFactory, s3_endpoint: str,
          corpus: list[CorpusSeries]) -> Iterator[MountedDaemon]:
    bucket = seed_demo_bucket(s3_endpoint, "nccid-corpus", [o for s in corpus for o in s.objects(PREFIX)])
    base = tmp_path_factory.mktemp("corpus")
    with MountedDaemon(base / "mnt", s3_endpoint, base / "cache", base / "daemon.log", bucket=bucket,
                       extra=["--no-prefetch"]) as daemon:
        yield daemon


def volume_path(mount: MountedDaemon, series: CorpusSeries, suffix: str) -> Path:
    return mount.mountpoint / ".nccidfs" / "volumes" / series.folder / f"{series.relative()}{suffix}"


def test_every_listed_volume_reads_and_is_the_volume_dcm2niix_makes(
        mount: MountedDaemon, corpus: list[CorpusSeries], tmp_path: Path) -> None:
    volumes = [s for s in corpus if s.folder != "xray" and s.expect == "volume"]
    assert len(volumes) >= 25
    for index, series in enumerate(volumes):
        path = volume_path(mount, series, ".nii")
        data = path.read_bytes()
        assert len(data) == os.stat(path).st_size, series.label
        workdir = tmp_path / str(index)
        workdir.mkdir()
        (workdir / "ours.nii").write_bytes(data)
        if series.reference:  # dcm2niix cannot decode these: it reads their decoded twins
            references = kit.dcm2niix(series.reference, workdir)
        else:  # dcm2niix reads the series through the mount, as a researcher would
            source = mount.mountpoint / series.folder / series.relative()
            references = kit.dcm2niix(tuple(p.read_bytes() for p in sorted(source.iterdir())), workdir)
        voxels, affine = kit.differences(nib.load(workdir / "ours.nii"), references[0])
        assert voxels <= series.tolerance and affine < 1e-3, (series.label, voxels, affine)


def test_series_that_are_no_stack_of_slices_list_only_a_sidecar_with_the_reason(
        mount: MountedDaemon, corpus: list[CorpusSeries]) -> None:
    refused = [s for s in corpus if s.folder != "xray" and s.expect != "volume"]
    assert refused
    for series in refused:
        folder = volume_path(mount, series, "").parent
        names = os.listdir(folder)
        assert f"{series.series_uid}.json" in names and f"{series.series_uid}.nii" not in names, series.label
        reason = json.loads(volume_path(mount, series, ".json").read_bytes())["NoVolumeReason"]
        assert series.expect in reason, (series.label, reason)


def test_every_real_xray_png_is_what_dcmj2pnm_renders(mount: MountedDaemon, corpus: list[CorpusSeries],
                                                      tmp_path: Path) -> None:
    xrays = [s for s in corpus if s.folder == "xray"]
    assert len(xrays) == 6
    for series in xrays:
        png = mount.mountpoint / ".nccidfs" / "images" / "xray" / series.relative() / "image000.png"
        rendered = png.read_bytes()
        assert len(rendered) == os.stat(png).st_size, series.label
        dicom = series.reference[0] if series.reference else (
            mount.mountpoint / "xray" / series.relative() / "image000.dcm").read_bytes()
        assert np.array_equal(decode_png(rendered), kit.dcmj2pnm(dicom, tmp_path)), series.label
