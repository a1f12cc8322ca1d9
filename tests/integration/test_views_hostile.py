"""Hostile inputs to the derived views, crafted in the bucket and read through a real mount: each costs only
its own file or series (a reason, or EIO), and the daemon stays under :data:`RSS_BOUND` whatever it reads.

Each test prints the daemon's peak RSS (``pytest -s``), the figure the closing table of the work quotes."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import TypeVar

import nibabel as nib
import numpy as np
import pytest

from tests import crafted
from tests.corpus import CorpusSeries, patterned_mosaic
from tests.mounting import MountedDaemon, create_bucket, daemon_env, s3_client
from tests.unit.test_derived_mosaic import flipped_columns

pytestmark = pytest.mark.fuse

MIB = 1024 * 1024
RSS_BOUND = 500 * MIB
SERIES = "1.2.826.0.1.3680043.8.498.2"
LARGEST = 4700  # about the side of the largest square 16-bit X-ray made into a PNG (views.generated.DECODE_BUDGET)

Mount = Callable[[dict[str, bytes]], MountedDaemon]
T = TypeVar("T")
HEADER_BYTES = 352  # a .nii's header and extension flag, before the voxels


def rss(daemon: MountedDaemon, field: str = "VmHWM") -> int:
    """The daemon's peak (VmHWM) or current (VmRSS) resident memory, in bytes."""
    assert daemon.process is not None
    status = Path(f"/proc/{daemon.process.pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith(field + ":"))) * 1024


def attempt(action: Callable[[], T]) -> T | OSError:
    """The action's result, or the error it failed with: the daemon's memory is reported either way."""
    try:
        return action()
    except OSError as error:
        return error


def report(case: str, daemon: MountedDaemon) -> int:
    peak = rss(daemon)
    print(f"\nRSS {case}: peak {peak / MIB:.0f} MiB")
    return peak


@pytest.fixture
def mount(tmp_path: Path, s3_endpoint: str, bucket_name: str) -> Iterator[Mount]:
    """Mount a fresh bucket holding ``objects``; unmounted when the test ends."""
    with ExitStack() as stack:
        def start(objects: dict[str, bytes]) -> MountedDaemon:
            with ThreadPoolExecutor(8) as pool:  # thousands of small objects upload in seconds
                client = create_bucket(s3_endpoint, bucket_name, [])
                list(pool.map(lambda item: client.put_object(Bucket=bucket_name, Key=item[0], Body=item[1]),
                              objects.items()))
            daemon = MountedDaemon(tmp_path / "mnt", s3_endpoint, tmp_path / "cache", tmp_path / "log",
                                   bucket=bucket_name, extra=["--no-prefetch"])
            return stack.enter_context(daemon)
        yield start


def views(daemon: MountedDaemon, view: str, folder: str) -> Path:
    return daemon.mountpoint / ".nccidfs" / view / folder / "Hostile1" / crafted.STUDY


def put(daemon: MountedDaemon, objects: dict[str, bytes]) -> None:
    client = s3_client(daemon.args[daemon.args.index("--endpoint-url") + 1])
    bucket = daemon.args[daemon.args.index("--bucket") + 1]
    for key, body in objects.items():
        client.put_object(Bucket=bucket, Key=key, Body=body)


def warnings_about(daemon: MountedDaemon, text: str) -> list[str]:
    return [line for line in daemon.log().splitlines() if " WARNING " in line and text in line]


# --- deflate bombs ---------------------------------------------------------------------------------


def test_the_png_of_a_deflate_bomb_fails_with_eio_in_bounded_memory(mount: Mount) -> None:
    bomb = crafted.deflate_bomb(512 * MIB, SERIES)
    image, twin_key = crafted.keys("xray", SERIES, "bomb")
    lying = crafted.twin(bomb)
    lying["00280010"]["Value"] = lying["00280011"]["Value"] = [512]  # the twin promises 512 x 512
    daemon = mount({image: crafted.encode(bomb), twin_key: json.dumps(lying).encode()})
    png = views(daemon, "images", "xray") / SERIES / "bomb.png"
    assert os.stat(png).st_size > 0
    with pytest.raises(OSError) as failure:
        png.read_bytes()
    assert failure.value.errno == errno.EIO
    assert report("deflate bomb, PNG (twin says 512x512)", daemon) < RSS_BOUND
    assert "bomb.png" not in os.listdir(png.parent), "the next listing gives the reason instead"
    assert "inflates" in json.loads((png.parent / "bomb.json").read_bytes())["NoImageReason"]


def test_a_deflate_bomb_too_large_for_a_png_is_not_listed(mount: Mount) -> None:
    bomb = crafted.deflate_bomb(512 * MIB, SERIES)
    image, twin_key = crafted.keys("xray", SERIES, "bomb")
    daemon = mount({image: crafted.encode(bomb), twin_key: json.dumps(crafted.twin(bomb)).encode()})
    folder = views(daemon, "images", "xray") / SERIES
    listed = os.listdir(folder)
    failed = []
    for name in listed:  # whatever is listed must read
        try:
            (folder / name).read_bytes()
        except OSError as error:
            failed.append(error)
    assert report("deflate bomb, PNG (twin says 16384x16384)", daemon) < RSS_BOUND
    assert not failed and listed == ["bomb.json"]
    assert "pixels" in json.loads((folder / "bomb.json").read_bytes())["NoImageReason"]  # 16384x16384


def test_the_tags_of_a_deflate_bomb_without_a_twin_come_in_bounded_memory(mount: Mount) -> None:
    bomb = crafted.deflate_bomb(512 * MIB, SERIES)
    image, _ = crafted.keys("xray", SERIES, "bomb")
    daemon = mount({image: crafted.encode(bomb)})
    path = daemon.mountpoint / image.split("/", 1)[1]
    assert os.getxattr(path, "user.dicom.PatientID") == b"Hostile1"
    assert "user.dicom.Rows" in os.listxattr(path)
    assert report("deflate bomb, getfattr (no twin)", daemon) < RSS_BOUND


# --- concurrent readers ----------------------------------------------------------------------------


def test_three_readers_of_the_largest_png_build_it_once(mount: Mount) -> None:
    ds = crafted.dataset("DX", LARGEST, LARGEST, SERIES, 1)
    image, twin_key = crafted.keys("xray", SERIES, "large")
    daemon = mount({image: crafted.encode(ds), twin_key: json.dumps(crafted.twin(ds)).encode()})
    png = views(daemon, "images", "xray") / SERIES / "large.png"
    start = threading.Barrier(3)

    def read() -> bytes:
        with open(png, "rb") as file:
            start.wait()
            return file.read()

    with ThreadPoolExecutor(3) as pool:
        bodies = list(pool.map(lambda _: read(), range(3)))
    assert len({len(body) for body in bodies}) == 1 and len(bodies[0]) == os.stat(png).st_size
    assert report(f"3 readers of a {LARGEST}x{LARGEST} PNG", daemon) < RSS_BOUND
    assert bodies[0] == bodies[1] == bodies[2]
    assert len([line for line in daemon.log().splitlines() if "built images/" in line]) == 1


def test_eight_readers_of_eight_large_pngs_held_open_stay_bounded(mount: Mount) -> None:
    objects = {}
    for instance in range(8):
        ds = crafted.dataset("DX", 2500, 2500, SERIES, instance)
        image, twin_key = crafted.keys("xray", SERIES, f"large{instance}")
        objects.update({image: crafted.encode(ds), twin_key: json.dumps(crafted.twin(ds)).encode()})
    daemon = mount(objects)
    folder = views(daemon, "images", "xray") / SERIES
    files = [open(folder / f"large{instance}.png", "rb") for instance in range(8)]  # noqa: SIM115
    try:
        with ThreadPoolExecutor(8) as pool:
            bodies = list(pool.map(lambda file: attempt(file.read), files))
        peak = report("8 readers of 8 different 2500x2500 PNGs, held open", daemon)
    finally:
        for file in files:
            file.close()
    assert peak < RSS_BOUND
    size = os.stat(folder / "large0.png").st_size
    assert all(isinstance(body, bytes) and len(body) == size for body in bodies)


# --- twins: huge, many, malformed ------------------------------------------------------------------


def test_a_250_mb_twin_is_refused_unread_with_one_warning(mount: Mount) -> None:
    objects = crafted.series_objects("ct", SERIES, 3)
    _, twin_key = crafted.keys("ct", SERIES, "img0002")
    document = json.loads(objects[twin_key])
    document["00204000"] = {"vr": "LT", "Value": ["x" * (250 * 1000 * 1000)]}  # ImageComments
    objects[twin_key] = json.dumps(document).encode()
    daemon = mount(objects)
    study = views(daemon, "volumes", "ct")
    listings = [os.listdir(study) for _ in range(2)]
    sidecar = json.loads((study / f"{SERIES}.json").read_bytes())
    assert report("a 250 MB twin", daemon) < RSS_BOUND
    assert listings == [[f"{SERIES}.json"]] * 2
    assert "img0002" in sidecar["NoVolumeReason"] and "over" in sidecar["NoVolumeReason"]
    status = json.loads((daemon.mountpoint / ".nccidfs" / "status.json").read_bytes())
    assert status["s3"]["bytes_fetched"] < 10 * MIB
    assert len(warnings_about(daemon, "img0002.json")) == 1


def test_an_image_far_larger_than_its_twins_pixels_is_not_read(mount: Mount) -> None:
    objects = crafted.series_objects("ct", SERIES, 3)
    image, _ = crafted.keys("ct", SERIES, "img0003")
    objects[image] += bytes(20 * MIB)  # trailing bytes past the dataset: pydicom would read them all
    daemon = mount(objects)
    study = views(daemon, "volumes", "ct")
    listed = os.listdir(study)
    status = json.loads((daemon.mountpoint / ".nccidfs" / "status.json").read_bytes())
    report("an image 20 MiB larger than its twin's pixels", daemon)
    assert listed == [f"{SERIES}.json"]
    reason = json.loads((study / f"{SERIES}.json").read_bytes())["NoVolumeReason"]
    assert "img0003" in reason and "over the" in reason
    assert status["s3"]["bytes_fetched"] < MIB


def test_find_over_the_volumes_of_large_studies_stays_bounded(mount: Mount) -> None:
    studies = ("P1", "P2", "P3")
    objects: dict[str, bytes] = {}
    for patient in studies:
        objects.update(crafted.series_objects("ct", SERIES, 750, patient=patient))
    daemon = mount(objects)
    after = []
    for patient in studies:
        subprocess.run(["find", str(daemon.mountpoint / ".nccidfs" / "volumes" / "ct" / patient), "-size", "+0"],
                       check=True, capture_output=True, timeout=300)
        after.append(rss(daemon, "VmRSS"))
    print(f"\nRSS after each 750-slice study: {[round(value / MIB) for value in after]} MiB")
    assert after[2] - after[0] < 40 * MIB, "the parsed twins of the studies before are not all kept"
    assert report("find over the volumes of three 750-slice studies", daemon) < RSS_BOUND


# Series UIDs end in a digit for each kind of twin: null, an empty list, 100,000 nested lists, a good one.
KINDS = ("1", "2", "3", "4")
MALFORMED = {"1": b"null", "2": b"[]", "3": b"[" * 100_000 + b"]" * 100_000}


def test_a_malformed_twin_spoils_only_its_own_series_or_image(mount: Mount) -> None:
    objects: dict[str, bytes] = {}
    for kind in KINDS:
        objects.update(crafted.series_objects("ct", f"{SERIES}.{kind}", 2))
        objects.update(crafted.series_objects("xray", f"{SERIES}.{kind}", 1))
        if kind in MALFORMED:
            for folder in ("ct", "xray"):
                objects[crafted.keys(folder, f"{SERIES}.{kind}", "img0001")[1]] = MALFORMED[kind]
    daemon = mount(objects)
    study = views(daemon, "volumes", "ct")
    listed = attempt(lambda: sorted(os.listdir(study)))
    report("malformed twins (null, [], nested 100,000 deep)", daemon)
    assert isinstance(listed, list) and f"{SERIES}.4.nii" in listed, listed
    for kind in MALFORMED:
        assert f"{SERIES}.{kind}.nii" not in listed
        reason = json.loads((study / f"{SERIES}.{kind}.json").read_bytes())["NoVolumeReason"]
        assert "img0001" in reason and "not a DICOM JSON object" in reason, reason
        images = views(daemon, "images", "xray") / f"{SERIES}.{kind}"
        assert os.listdir(images) == ["img0001.json"]
        assert "not a DICOM JSON object" in json.loads((images / "img0001.json").read_bytes())["NoImageReason"]
    assert os.listdir(views(daemon, "images", "xray") / f"{SERIES}.4") == ["img0001.png"]
    for kind in MALFORMED:  # the image itself keeps its tags from its header
        path = daemon.mountpoint / crafted.keys("ct", f"{SERIES}.{kind}", "img0001")[0].split("/", 1)[1]
        assert os.getxattr(path, "user.dicom.PatientID") == b"Hostile1"


def test_a_lone_surrogate_in_a_twin_costs_only_its_own_tag(mount: Mount) -> None:
    objects = crafted.series_objects("ct", SERIES, 2)
    image, twin_key = crafted.keys("ct", SERIES, "img0001")
    document = json.loads(objects[twin_key])
    document["0008103E"] = {"vr": "LO", "Value": ["SURROGATE"]}
    objects[twin_key] = json.dumps(document).encode().replace(b"SURROGATE", b"\\ud800")
    daemon = mount(objects)
    path = daemon.mountpoint / image.split("/", 1)[1]
    names = attempt(lambda: os.listxattr(path))
    report("a lone surrogate in a twin", daemon)
    assert isinstance(names, list), names
    assert "user.dicom.PatientID" in names and "user.dicom.SeriesDescription" not in names
    assert os.getxattr(path, "user.dicom.PatientID") == b"Hostile1"
    assert subprocess.run(["getfattr", "-d", str(path)], capture_output=True).returncode == 0
    assert f"{SERIES}.nii" in os.listdir(views(daemon, "volumes", "ct"))


# --- a changed series, a lying twin, a long name ---------------------------------------------------


def test_a_series_grown_after_refresh_is_read_at_its_new_size(mount: Mount) -> None:
    daemon = mount(crafted.series_objects("ct", SERIES, 3))
    volume = views(daemon, "volumes", "ct") / f"{SERIES}.nii"
    before = volume.read_bytes()
    assert len(before) == os.stat(volume).st_size
    grown = crafted.series_objects("ct", SERIES, 4)
    put(daemon, {key: body for key, body in grown.items() if "img0004" in key})
    refreshed = subprocess.run([sys.executable, "-m", "nccidfs", "refresh", str(daemon.mountpoint)],
                               capture_output=True, text=True, timeout=30, env=daemon_env())
    assert refreshed.returncode == 0, refreshed.stderr
    after = volume.read_bytes()
    report("a series grown by a slice, then refresh", daemon)
    slice_bytes = (len(before) - HEADER_BYTES) // 3
    assert len(after) == HEADER_BYTES + 4 * slice_bytes, "the kernel still held the old size"
    assert os.stat(volume).st_size == len(after)


def test_a_twin_whose_rescale_differs_from_its_image_fails_with_eio_then_gives_the_reason(mount: Mount) -> None:
    objects = crafted.series_objects("ct", SERIES, 3)
    _, twin_key = crafted.keys("ct", SERIES, "img0002")
    document = json.loads(objects[twin_key])
    document["00281052"]["Value"] = [0]  # RescaleIntercept: the image says -1024
    objects[twin_key] = json.dumps(document).encode()
    daemon = mount(objects)
    study = views(daemon, "volumes", "ct")
    read = attempt(lambda: (study / f"{SERIES}.nii").read_bytes())
    report("a twin whose RescaleIntercept differs from the image's", daemon)
    assert isinstance(read, OSError) and read.errno == errno.EIO, "never wrong voxels"
    assert warnings_about(daemon, "RescaleIntercept")
    assert os.listdir(study) == [f"{SERIES}.json"]
    reason = json.loads((study / f"{SERIES}.json").read_bytes())["NoVolumeReason"]
    assert "img0002" in reason and "RescaleIntercept" in reason


def test_a_twin_that_agrees_with_its_image_gives_the_voxels_of_the_image(mount: Mount) -> None:
    daemon = mount(crafted.series_objects("ct", SERIES, 3))
    volume = nib.load(views(daemon, "volumes", "ct") / f"{SERIES}.nii")
    expected = (np.arange(64) % 4000).reshape(8, 8).T - 1024.0
    assert np.array_equal(np.asarray(volume.dataobj)[:, :, 0], expected)


def test_a_view_name_over_255_bytes_is_not_listed_and_logged_once(mount: Mount) -> None:
    series = "1." + "2" * 249  # 251 bytes: its .nii has 255, its .json 256
    daemon = mount(crafted.series_objects("ct", series, 2))
    study = views(daemon, "volumes", "ct")
    listings = [os.listdir(study) for _ in range(2)]
    report("a 251-byte series name", daemon)
    assert listings == [[f"{series}.nii"]] * 2
    assert len(warnings_about(daemon, f"{series}.json")) == 1


def test_an_xray_whose_twin_names_a_syntax_no_decoder_reads_lists_its_reason_not_a_png(mount: Mount) -> None:
    objects: dict[str, bytes] = {}
    for series, syntax in ((f"{SERIES}.mpeg", "1.2.840.10008.1.2.4.100"), (f"{SERIES}.j2k", "1.2.840.10008.1.2.4.90")):
        objects.update(crafted.series_objects("xray", series, 1))
        twin_key = crafted.keys("xray", series, "img0001")[1]
        objects[twin_key] = json.dumps({**json.loads(objects[twin_key]),
                                        "00020010": {"vr": "UI", "Value": [syntax]}}).encode()
    daemon = mount(objects)
    images = views(daemon, "images", "xray")
    assert os.listdir(images / f"{SERIES}.mpeg") == ["img0001.json"]
    reason = json.loads((images / f"{SERIES}.mpeg" / "img0001.json").read_bytes())["NoImageReason"]
    assert "img0001" in reason and "MPEG2" in reason and "no installed decoder" in reason, reason
    assert os.listdir(images / f"{SERIES}.j2k") == ["img0001.png"]  # a syntax decoded here keeps its PNG


def test_a_mosaic_whose_csa_normal_runs_against_its_twin_fails_with_eio_then_gives_the_reason(mount: Mount) -> None:
    image, _ = flipped_columns(patterned_mosaic("siemens_dwi_0.dcm.gz"))
    series = CorpusSeries("siemens-mosaic-flipped", "mri", (image,))
    daemon = mount({obj.key: obj.body for obj in series.objects("training/")})
    volume = daemon.mountpoint / ".nccidfs" / "volumes" / "mri" / f"{series.relative()}.nii"
    read = attempt(volume.read_bytes)
    assert isinstance(read, OSError) and read.errno == errno.EIO, "never a flipped volume"
    assert os.listdir(volume.parent) == [f"{series.series_uid}.json"]
    reason = json.loads(volume.with_suffix(".json").read_bytes())["NoVolumeReason"]
    assert "image000" in reason and "its slices run the other way" in reason, reason
