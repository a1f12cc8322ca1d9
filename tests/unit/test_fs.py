"""The filesystem core driven directly, without a mount, over the in-memory and failing stores."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from nccidfs import deadline
from nccidfs.cache import DiskCache
from nccidfs.cachedir import prepare
from nccidfs.config import S3Config
from nccidfs.errors import ConfigError, NotFound, ObjectChanged, TransientError
from nccidfs.fs import FileSystem
from nccidfs.mount import discover_root
from nccidfs.objects import Listing
from tests.clock import FakeClock
from tests.core import LISTING_TTL, TIMEOUT, Cores
from tests.fakes import FailingStore, MemoryStore

SERIES = "training/ct/Covid1/1.2/1.3"
KEYS = {
    f"{SERIES}/a.dcm": b"a" * 70_000,
    f"{SERIES}/b.dcm": b"b" * 50_000,
    "training/ct-metadata/Covid1/1.2/1.3/a.json": b'{"00100020": {"vr": "LO", "Value": ["Covid1"]}}',
    "training/data/Covid1/status_2020-05-01.json": b'{"Pseudonym": "Covid1"}',
}


def read_all(filesystem: FileSystem, path: str) -> bytes:
    handle = filesystem.open(path).handle
    try:
        chunks, offset = [], 0
        while chunk := filesystem.read(handle, offset, 32768):
            chunks.append(chunk)
            offset += len(chunk)
        return b"".join(chunks)
    finally:
        filesystem.release(handle)


def test_the_mirrored_tree_holds_exactly_the_keys_and_the_control_folder_is_hidden(cores: Cores) -> None:
    filesystem = cores(FailingStore(KEYS)).fs
    assert sorted(e.name for e in filesystem.readdir("/")) == ["ct", "ct-metadata", "data"]
    assert filesystem.lookup("/.nccidfs").is_dir
    assert sorted(e.name for e in filesystem.readdir("/.nccidfs")) == ["catalog", "cohorts", "images", "patients",
                                                                        "status.json", "volumes"]
    assert read_all(filesystem, "/.nccidfs/status.json") == b'{\n  "ok": true\n}\n'
    for key, body in KEYS.items():
        path = "/" + key[len("training/"):]
        assert filesystem.lookup(path).size == len(body)
        assert read_all(filesystem, path) == body


def test_the_patient_view_links_to_the_patient_folders(cores: Cores) -> None:
    filesystem = cores(FailingStore(KEYS)).fs
    view = "/.nccidfs/patients/Covid1"
    assert [e.name for e in filesystem.readdir("/.nccidfs/patients")] == ["Covid1"]
    assert sorted(e.name for e in filesystem.readdir(view)) == ["ct", "ct-metadata", "status_2020-05-01.json"]
    assert filesystem.readlink(f"{view}/ct") == "../../../ct/Covid1"
    assert filesystem.readlink(f"{view}/status_2020-05-01.json") == "../../../data/Covid1/status_2020-05-01.json"
    with pytest.raises(NotFound):
        filesystem.lookup("/.nccidfs/patients/Nobody")


def test_a_deeper_prefix_gets_an_empty_patient_view_not_a_wrong_one(cores: Cores) -> None:
    filesystem = cores(FailingStore(KEYS), prefix="training/ct/").fs
    assert [e.name for e in filesystem.readdir("/")] == ["Covid1"]
    assert filesystem.readdir("/.nccidfs/patients") == []


def test_a_real_folder_named_like_the_control_folder_is_served_as_stored(cores: Cores) -> None:
    store = FailingStore({**KEYS, "training/.nccidfs/status.json": b"from the bucket"})
    filesystem = cores(store).fs
    assert ".nccidfs" in [e.name for e in filesystem.readdir("/")]
    assert read_all(filesystem, "/.nccidfs/status.json") == b"from the bucket"


def test_odd_keys_at_the_root_are_skipped_and_the_rest_served(cores: Cores) -> None:
    odd = {"training/": b"", "training//lead.txt": b"x", "training/../z": b"y", "training/lead.txt": b"lead"}
    filesystem = cores(FailingStore({**KEYS, **odd})).fs
    assert sorted(e.name for e in filesystem.readdir("/")) == ["ct", "ct-metadata", "data", "lead.txt"]
    assert read_all(filesystem, "/lead.txt") == b"lead"


def test_a_replacement_before_the_first_read_serves_the_new_version_or_fails_once(cores: Cores) -> None:
    store = FailingStore(KEYS)
    filesystem = cores(store).fs
    invalidated: list[str] = []
    filesystem.set_kernel(lambda path, wait: invalidated.append(path), lambda path, subtree: None,
                          lambda path: None, dict)
    path = "/ct/Covid1/1.2/1.3/a.dcm"
    handle = filesystem.open(path).handle
    store.objects[f"{SERIES}/a.dcm"] = b"s" * 70_000  # the same size: served at once
    assert filesystem.read(handle, 0, 6) == b"ssssss"
    assert invalidated == [path]
    filesystem.release(handle)
    handle = filesystem.open(path).handle
    store.objects[f"{SERIES}/a.dcm"] = b"longer" * 20_000  # another size: the kernel sized the read by the old
    with pytest.raises(ObjectChanged):
        filesystem.read(handle, 65536, 6)
    filesystem.release(handle)
    assert filesystem.lookup(path).size == 120_000
    assert read_all(filesystem, path) == b"longer" * 20_000


def test_a_replacement_after_bytes_were_served_is_an_error_then_the_new_version(cores: Cores) -> None:
    store = FailingStore(KEYS)
    filesystem = cores(store).fs
    path = "/ct/Covid1/1.2/1.3/a.dcm"
    handle = filesystem.open(path).handle
    assert filesystem.read(handle, 0, 4096) == b"a" * 4096
    store.objects[f"{SERIES}/a.dcm"] = b"z" * 10
    with pytest.raises(ObjectChanged):
        filesystem.read(handle, 65536, 4096)
    filesystem.release(handle)
    assert read_all(filesystem, path) == b"z" * 10


def test_a_deletion_before_the_first_read_is_not_found(cores: Cores) -> None:
    store = FailingStore(KEYS)
    filesystem = cores(store).fs
    handle = filesystem.open("/ct/Covid1/1.2/1.3/b.dcm").handle
    del store.objects[f"{SERIES}/b.dcm"]
    with pytest.raises(NotFound):
        filesystem.read(handle, 0, 10)
    filesystem.release(handle)


def test_during_an_outage_cached_files_are_served_at_once_and_others_fail_within_the_timeout(
        cores: Cores) -> None:
    store, clock = FailingStore(KEYS), FakeClock()
    filesystem = cores(store, clock=clock).fs
    cached = "/ct/Covid1/1.2/1.3/a.dcm"
    assert read_all(filesystem, cached) == KEYS[f"{SERIES}/a.dcm"]
    store.down = True
    store.stall = 5.0
    clock.advance(LISTING_TTL)  # every listing is now past its TTL
    started = time.monotonic()
    with deadline.bounded(TIMEOUT):
        assert read_all(filesystem, cached) == KEYS[f"{SERIES}/a.dcm"]
    assert time.monotonic() - started < 0.2
    started = time.monotonic()
    with pytest.raises(TransientError), deadline.bounded(TIMEOUT):
        read_all(filesystem, "/ct/Covid1/1.2/1.3/b.dcm")
    assert time.monotonic() - started < TIMEOUT + 0.5
    started = time.monotonic()
    with pytest.raises(TransientError), deadline.bounded(TIMEOUT):
        filesystem.lookup("/xray/Covid1")
    assert time.monotonic() - started < TIMEOUT + 0.5


def test_a_discarded_object_is_never_kept_in_the_kernel_page_cache(cores: Cores) -> None:
    filesystem = cores(FailingStore(KEYS)).fs
    invalidated: list[str] = []
    filesystem.set_kernel(lambda path, wait: invalidated.append(path), lambda path, subtree: None,
                          lambda path: None, dict)
    path = "/ct/Covid1/1.2/1.3/b.dcm"
    read_all(filesystem, path)
    opened = filesystem.open(path)
    filesystem.release(opened.handle)
    assert opened.keep_cache
    filesystem.discarded(f"{SERIES}/b.dcm")
    assert invalidated == [path]
    opened = filesystem.open(path)
    filesystem.release(opened.handle)
    assert not opened.keep_cache and opened.direct_io


def test_tags_come_from_the_metadata_twin_without_reading_the_image(cores: Cores) -> None:
    store = FailingStore(KEYS)
    filesystem = cores(store).fs
    assert filesystem.xattrs("/ct/Covid1/1.2/1.3/a.dcm") == {"user.dicom.PatientID": "Covid1"}
    assert not any(key.endswith(".dcm") for key, _start, _end in store.ranges)
    assert filesystem.xattrs("/data/Covid1/status_2020-05-01.json") == {}


def test_root_discovery_lists_the_prefix_when_allowed_and_probes_folders_otherwise() -> None:
    s3 = S3Config(bucket="nccid-data-warehouse-prod", folders=("ct", "ct-metadata", "data", "mri"))
    listing = discover_root(FailingStore(KEYS), s3)
    assert isinstance(listing, Listing) and "training/ct/" in listing.prefixes
    per_folder = FailingStore(KEYS, denied_prefixes=("training/", "training/ct-metadata/"))
    assert discover_root(per_folder, s3) == ["ct", "data"]
    with pytest.raises(ConfigError, match="access denied"):
        discover_root(FailingStore(KEYS, denied_prefixes=("training/", "training/ct/", "training/ct-metadata/",
                                                          "training/data/", "training/mri/")), s3)
    with pytest.raises(ConfigError, match="prefix not found"):
        discover_root(FailingStore({}, denied_prefixes=("training/",)), s3)


def test_a_cache_shared_by_two_endpoints_never_serves_one_for_the_other(tmp_path: Path) -> None:
    directory = prepare(tmp_path / "cache")
    one = FailingStore({f"{SERIES}/a.dcm": b"one" * 1000})
    info = one.info(f"{SERIES}/a.dcm")
    first = DiskCache(directory, 1 << 24, "http://127.0.0.1:1\0bucket", 4096)
    entry = first.pin(info)
    assert first.store_blocks(entry, 0, b"one" * 1000)
    first.unpin(entry)
    second = DiskCache(directory, 1 << 24, "http://127.0.0.1:2\0bucket", 4096)
    entry = second.pin(info)  # the same key and ETag, said by another endpoint
    assert second.read_blocks(entry, 0, 1) is None
    second.unpin(entry)


def test_a_background_listing_that_finds_a_replacement_tells_the_kernel(cores: Cores) -> None:
    store, clock = FailingStore(KEYS), FakeClock()
    filesystem = cores(store, clock=clock).fs
    invalidated: list[str] = []
    filesystem.set_kernel(lambda path, wait: invalidated.append(path), lambda path, subtree: None,
                          lambda path: None, dict)
    path = "/ct/Covid1/1.2/1.3/b.dcm"
    assert filesystem.lookup(path).size == 50_000
    store.objects[f"{SERIES}/b.dcm"] = b"b" * 10
    del store.objects[f"{SERIES}/a.dcm"]
    clock.advance(LISTING_TTL)
    filesystem.lookup(path)  # past the TTL: served as it was, listed again in the background
    give_up = time.monotonic() + 5
    while sorted(invalidated) != ["/ct/Covid1/1.2/1.3/a.dcm", path]:
        assert time.monotonic() < give_up, invalidated
        time.sleep(0.01)
    assert filesystem.lookup(path).size == 10


class ListingRecorder(MemoryStore):
    """The in-memory store, recording the folders it is asked to list."""

    def __init__(self, objects: dict[str, bytes]) -> None:
        super().__init__(objects)
        self.listed: list[str] = []

    def list_dir(self, prefix: str) -> Listing:
        self.listed.append(prefix)
        return super().list_dir(prefix)


def test_a_view_folder_is_looked_up_without_listing_its_whole_modality(cores: Cores) -> None:
    """A volume opened by its path finds its patient as the mirrored tree does, from the patient's own
    listing: a modality folder holds thousands of patients, and listing all of them would hold up a cold open."""
    store = ListingRecorder(KEYS)
    filesystem = cores(store, folders=["ct", "ct-metadata", "data"]).fs
    for folder in ("/.nccidfs/volumes/ct/Covid1", "/.nccidfs/volumes/ct/Covid1/1.2"):
        assert filesystem.lookup(folder).is_dir
    assert filesystem.lookup("/.nccidfs/volumes/ct/Covid1/1.2/1.3.json").size > 0
    assert "training/ct/" not in store.listed
    for missing in ("/.nccidfs/volumes/ct/Covid2", "/.nccidfs/volumes/ct/Covid1/9.9",
                    "/.nccidfs/volumes/ct/Covid1/1.2/1.3/a.dcm", "/.nccidfs/volumes/data/Covid1"):
        with pytest.raises(NotFound):
            filesystem.lookup(missing)


def test_a_name_that_only_begins_like_the_control_folder_is_mirrored(cores: Cores) -> None:
    store = FailingStore({**KEYS, "training/.nccidfs-old/x.txt": b"kept"})
    filesystem = cores(store).fs
    assert ".nccidfs-old" in [e.name for e in filesystem.readdir("/")]
    assert read_all(filesystem, "/.nccidfs-old/x.txt") == b"kept"
    assert filesystem.lookup("/.nccidfs/status.json").size > 0
