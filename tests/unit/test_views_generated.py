"""Tests for the parts of nccidfs.views.generated that keep generated files safe: one build for all readers,
one producer for all opens of a version, the kernel told of a new size, a failure remembered as a reason."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from nccidfs.cache import DiskCache
from nccidfs.config import ReadConfig
from nccidfs.errors import CorruptData
from nccidfs.fetch import Fetcher
from nccidfs.objects import ObjectInfo
from nccidfs.views.generated import Generated, Made, ObjectReader, Producers, whole_producer
from nccidfs.views.registry import OPEN_INVALIDATION_WAIT
from nccidfs.views.volumes import joined
from tests.fakes import MemoryStore


def test_a_whole_file_is_built_once_for_ranges_asked_at_once() -> None:
    builds = []

    def build() -> bytes:
        builds.append(1)
        time.sleep(0.05)
        return bytes(range(200))

    made = Made(1024)
    produce = whole_producer(build, made, ("images/a.png", "v1"))
    with ThreadPoolExecutor(6) as pool:
        pieces = list(pool.map(lambda start: produce(start, start + 20), range(0, 120, 20)))
    assert b"".join(pieces) == bytes(range(120)) and len(builds) == 1
    assert whole_producer(build, made, ("images/a.png", "v1"))(0, 3) == bytes(range(3)) and len(builds) == 1


def test_what_is_made_is_kept_within_its_bytes() -> None:
    made = Made(1000)
    for index in range(10):
        made.put(("a.nii", "v1", str(index)), bytes(300))
    kept = [index for index in range(10) if made.get(("a.nii", "v1", str(index))) is not None]
    assert kept == [7, 8, 9]
    made.put(("huge",), bytes(2000))
    assert made.get(("huge",)) is None


def test_every_open_of_a_version_shares_the_first_producer() -> None:
    producers = Producers()
    obj = ObjectInfo("views/a.png", 10, "v1", 0.0)
    producers.add(obj, lambda start, end: b"first"[start:end])
    producers.add(obj, lambda start, end: b"later"[start:end])
    assert producers.get_range(obj.key, 0, 5, obj.etag) == b"first"
    producers.remove(obj)
    assert producers.get_range(obj.key, 0, 5, obj.etag) == b"first"


@pytest.fixture
def generated(tmp_path: Path) -> tuple[Generated, list[tuple[str, float]]]:
    told: list[tuple[str, float]] = []
    cache = DiskCache(tmp_path, 1 << 24, "test", 32 * 1024)
    return Generated(cache, ReadConfig(), 5.0, ".nccidfs/", lambda path, wait: told.append((path, wait))), told


def test_a_new_size_is_told_to_the_kernel_at_once_and_the_next_open_reads_direct(
        generated: tuple[Generated, list[tuple[str, float]]]) -> None:
    views, told = generated
    inputs = [ObjectInfo("training/ct/a.dcm", 1, "e1", 0.0)]
    views.listed("volumes/a.nii", 100)
    views.listed("volumes/a.nii", 100)
    assert told == []
    first = views.open("volumes/a.nii", inputs, 100, lambda start, end: bytes(end - start))
    assert not first.direct_io
    views.listed("volumes/a.nii", 120)
    assert told == [("/.nccidfs/volumes/a.nii", 0.0)]
    second = views.open("volumes/a.nii", inputs + inputs, 120, lambda start, end: bytes(end - start))
    assert second.direct_io
    assert told[-1] == ("/.nccidfs/volumes/a.nii", OPEN_INVALIDATION_WAIT)
    first.release()
    second.release()


def test_a_failed_version_is_remembered_with_its_reason(
        generated: tuple[Generated, list[tuple[str, float]]], caplog: pytest.LogCaptureFixture) -> None:
    views, told = generated
    inputs = [ObjectInfo("training/ct/a.dcm", 1, "e1", 0.0)]

    def produce(start: int, end: int) -> bytes:
        raise ValueError("a.dcm: the image's Rows is 8, its metadata twin says 16")

    opened = views.open("volumes/a.nii", inputs, 100, produce)
    for _ in range(2):
        with pytest.raises(CorruptData):
            opened.read(0, 100)
    opened.release()
    assert views.failure("volumes/a.nii", inputs) == "a.dcm: the image's Rows is 8, its metadata twin says 16"
    assert views.failure("volumes/a.nii", [ObjectInfo("training/ct/a.dcm", 1, "e2", 0.0)]) is None
    assert sum("listed with this reason" in record.getMessage() for record in caplog.records) == 1
    assert {path for path, _ in told} == {"/.nccidfs/volumes/a.nii", "/.nccidfs/volumes/a.json"}


def test_a_file_made_as_views_reads_whole_from_memory_and_then_from_the_cache(
        generated: tuple[Generated, list[tuple[str, float]]]) -> None:
    views, _ = generated
    inputs = [ObjectInfo("training/ct/a.dcm", 1, "e1", 0.0)]
    content = bytes(index % 251 for index in range(300_000))
    made = []

    def produce(start: int, end: int) -> memoryview:
        made.append((start, end))
        return joined([content[start:end]], end - start)

    opened = views.open("volumes/a.nii", inputs, len(content), produce)
    pieces = [opened.read(offset, 65_536) for offset in range(0, len(content), 65_536)]
    opened.release()
    assert b"".join(pieces) == content and made
    made.clear()
    again = views.open("volumes/a.nii", inputs, len(content), produce)
    assert bytes(again.read(1_000, 200_000)) == content[1_000:201_000] and made == []
    again.release()


def test_a_part_is_joined_from_bytes_and_typed_views_exactly() -> None:
    pixels = memoryview(bytes(range(16))).cast("h")  # a slice's voxels, a view of int16
    part = joined([b"head", pixels, b"", memoryview(b"tail")[1:]], 4 + 16 + 3)
    assert not part.readonly and part.tobytes() == b"head" + bytes(range(16)) + b"ail"
    with pytest.raises(ValueError, match="made from 7"):
        joined([b"head", b"ail"], 8)  # never a part with bytes nobody wrote


def _reader(tmp_path: Path, store: MemoryStore) -> ObjectReader:
    cache = DiskCache(tmp_path, 1 << 24, "test", 32 * 1024)
    return ObjectReader(Fetcher(store, cache, ReadConfig(), 5.0), 5.0)


def test_an_object_asked_for_again_while_it_is_read_is_read_once(tmp_path: Path) -> None:
    """Two parts of a volume that share an image's slices, asked for at once, make one GET of it."""
    store = MemoryStore({"training/ct/a.dcm": b"A" * 5000, "training/ct/b.dcm": b"B" * 5000}, latency=0.2)
    reader = _reader(tmp_path, store)
    a, b = store.info("training/ct/a.dcm"), store.info("training/ct/b.dcm")
    with ThreadPoolExecutor(2) as callers:
        first = callers.submit(reader.read_many, [a, b], False, 0)
        second = callers.submit(reader.read_many, [b], False, 8)
        assert first.result(timeout=5) == [b"A" * 5000, b"B" * 5000]
        assert second.result(timeout=5) == [b"B" * 5000]
    assert sorted(key for key, _start, _end in store.ranges) == ["training/ct/a.dcm", "training/ct/b.dcm"]
    assert reader.read_many([b], keep=False) == [b"B" * 5000]  # once done and left, a new read
    assert store.requests["get"] == 3
    reader.shutdown()


def test_what_is_made_of_each_object_is_made_in_the_reading_thread_once_per_kind(tmp_path: Path) -> None:
    store = MemoryStore({"training/ct-metadata/a.json": b'{"a": 1}'})
    reader = _reader(tmp_path, store)
    twin = store.info("training/ct-metadata/a.json")
    readers: list[str] = []

    def parse(body: bytes) -> int:
        readers.append(threading.current_thread().name)
        return len(body)

    assert reader.read_each([twin], parse) == [8]
    assert reader.read_many([twin]) == [b'{"a": 1}']
    assert readers and readers[0].startswith("plan")  # a thread of the reader's, not the caller
    reader.shutdown()


def test_a_reader_shut_down_refuses_new_reads_and_forgets_those_it_joined(tmp_path: Path) -> None:
    store = MemoryStore({"training/ct/a.dcm": b"A" * 10, "training/ct/b.dcm": b"B" * 10}, latency=0.3)
    reader = _reader(tmp_path, store)
    a, b = store.info("training/ct/a.dcm"), store.info("training/ct/b.dcm")
    with ThreadPoolExecutor(1) as caller:
        first = caller.submit(reader.read_many, [a], False)
        time.sleep(0.1)  # a's GET is under way
        reader.shutdown()
        with pytest.raises(RuntimeError):
            reader.read_many([a, b], keep=False)  # joins a's read, then b cannot start
        assert first.result(timeout=5) == [b"A" * 10]
    assert reader._reading == {}  # nobody waits on a's read any more, so nothing is kept of it
