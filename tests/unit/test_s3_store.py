"""Boto3Store against real S3 servers over HTTP: moto (listings, ranged GETs) and a hostile one (bounds)."""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Iterator

import pytest

from nccidfs.clock import REAL_CLOCK, Clock
from nccidfs.config import S3Config
from nccidfs.errors import CorruptData, NotFound, ObjectChanged, TransientError
from nccidfs.s3.store import BACKOFF_FIRST, BACKOFF_JITTER, BACKOFF_MAX, Boto3Store
from tests.clock import FakeClock
from tests.hostile import HostileS3
from tests.mounting import CREDENTIALS, PREFIX, create_bucket, s3_client

# The deadline of the GET that keeps getting an error: room for a few back-offs, not for many.
BIG_ERROR_DEADLINE = 1.5
ODD_KEYS = [f"{PREFIX}ct/Covid1/a b/c+d&e.dcm", f"{PREFIX}ct/Covid1/ünï/x<y>.json", f"{PREFIX}ct/Covid1/%41/z.dcm"]


@pytest.fixture(scope="module")
def seeded(s3_endpoint: str) -> tuple[Boto3Store, dict[str, bytes], str]:
    """One bucket for the module (seeding it takes seconds); no test changes its objects."""
    bucket_name = f"nccid-test-{uuid.uuid4().hex[:12]}"
    objects = {f"{PREFIX}ct/Covid{i}/1.2/1.3/{n}.dcm": f"{i}-{n}".encode() * 100 for i in range(12) for n in range(90)}
    objects.update({key: b"odd" for key in ODD_KEYS})
    create_bucket(s3_endpoint, bucket_name, objects.items())
    return Boto3Store(S3Config(bucket=bucket_name, endpoint_url=s3_endpoint, deadline=5)), objects, bucket_name


def test_flat_listing_pages_through_everything_with_exact_keys_sizes_and_etags(
        seeded: tuple[Boto3Store, dict[str, bytes], str], s3_endpoint: str) -> None:
    store, objects, bucket_name = seeded
    listing = store.list_tree(f"{PREFIX}ct/")
    assert len(listing.objects) == len(objects) > 1000
    for info in listing.objects:
        assert info.size == len(objects[info.key])
        assert info.etag == hashlib.md5(objects[info.key]).hexdigest()
    reference = s3_client(s3_endpoint).list_objects_v2(Bucket=bucket_name, Prefix=f"{PREFIX}ct/Covid1/")
    by_key = {info.key: info for info in listing.objects}
    for item in reference["Contents"]:
        assert by_key[item["Key"]].mtime == item["LastModified"].timestamp()


def test_delimited_listing_gives_prefixes_and_odd_keys_decode(
        seeded: tuple[Boto3Store, dict[str, bytes], str]) -> None:
    store, _, _ = seeded
    assert len(store.list_dir(f"{PREFIX}ct/").prefixes) == 12
    odd = store.list_dir(f"{PREFIX}ct/Covid1/")
    assert sorted(odd.prefixes) == sorted({key.rsplit("/", 1)[0] + "/" for key in ODD_KEYS} |
                                          {f"{PREFIX}ct/Covid1/1.2/"})
    assert [o.key for o in store.list_tree(f"{PREFIX}ct/Covid1/a b/").objects] == [ODD_KEYS[0]]
    assert store.probe(f"{PREFIX}ct/") and not store.probe(f"{PREFIX}nothing/")


def test_ranged_gets_are_pinned_to_the_etag(seeded: tuple[Boto3Store, dict[str, bytes], str],
                                            s3_endpoint: str) -> None:
    store, _, bucket_name = seeded
    key, body = f"{PREFIX}other/pinned.dcm", bytes(range(256))
    client = s3_client(s3_endpoint)
    client.put_object(Bucket=bucket_name, Key=key, Body=body)
    etag = hashlib.md5(body).hexdigest()
    assert store.get_range(key, 10, 50, etag) == body[10:50]
    client.put_object(Bucket=bucket_name, Key=key, Body=b"replaced")
    with pytest.raises(ObjectChanged):
        store.get_range(key, 0, 5, etag)
    with pytest.raises(NotFound):
        store.get_range(f"{PREFIX}nope", 0, 5, etag)


@pytest.fixture
def hostile(monkeypatch: pytest.MonkeyPatch) -> Iterator[HostileS3]:
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    with HostileS3({f"{PREFIX}data/Covid1/status.json": b"{}"}, "hostile-bucket", drip_delay=0.1) as server:
        yield server


def hostile_store(server: HostileS3, deadline: float = 5, clock: Clock = REAL_CLOCK) -> Boto3Store:
    return Boto3Store(S3Config(bucket=server.bucket, endpoint_url=server.endpoint_url, deadline=deadline),
                      clock=clock)


def test_a_repeated_continuation_token_ends_the_listing_at_once(hostile: HostileS3) -> None:
    with pytest.raises(CorruptData, match="repeats a continuation token"):
        hostile_store(hostile).list_dir(f"{PREFIX}endless/")
    assert hostile.lists["endless"] == 2


def test_a_truncated_page_without_a_token_fails_instead_of_cutting_the_listing_short(hostile: HostileS3) -> None:
    with pytest.raises(CorruptData, match="no continuation token"):
        hostile_store(hostile).list_tree(f"{PREFIX}notoken/")


def test_a_malformed_page_fails_once_without_retries(hostile: HostileS3) -> None:
    with pytest.raises(CorruptData, match=f"list {PREFIX}malformed/: malformed ListObjectsV2 page"):
        hostile_store(hostile).list_dir(f"{PREFIX}malformed/")
    assert hostile.lists["malformed"] == 1


def test_the_deadline_covers_all_pages_of_a_listing_together(hostile: HostileS3) -> None:
    started = time.monotonic()
    with pytest.raises(TransientError, match="not complete after"):
        hostile_store(hostile, deadline=1).list_dir(f"{PREFIX}drip/")
    assert 1 <= time.monotonic() - started < 2
    assert hostile.lists["drip"] <= 11


def test_an_error_inside_a_200_listing_is_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable, value in CREDENTIALS.items():
        monkeypatch.setenv(variable, value)
    with HostileS3({f"{PREFIX}error200/a.json": b"{}"}, "hostile-bucket") as server:
        listing = hostile_store(server).list_dir(f"{PREFIX}error200/")
        assert [obj.key for obj in listing.objects] == [f"{PREFIX}error200/a.json"]
        assert server.lists["error200"] == 2


def test_the_same_server_still_lists_a_sane_folder(hostile: HostileS3) -> None:
    listing = hostile_store(hostile).list_dir(f"{PREFIX}data/Covid1/")
    assert [(o.key, o.size) for o in listing.objects] == [(f"{PREFIX}data/Covid1/status.json", 2)]


@pytest.mark.parametrize(("name", "error", "message"), [
    ("wrongrange.dcm", CorruptData, "another range"),
    ("norange.dcm", CorruptData, "more bytes than asked for"),
    ("otheretag.dcm", ObjectChanged, "object changed"),
])
def test_a_get_answered_with_other_bytes_than_asked_for_fails(
        monkeypatch: pytest.MonkeyPatch, name: str, error: type[Exception], message: str) -> None:
    for variable, value in CREDENTIALS.items():
        monkeypatch.setenv(variable, value)
    key, body = f"{PREFIX}data/Covid1/{name}", bytes(range(256)) * 40
    with HostileS3({key: body}, "hostile-bucket") as server, pytest.raises(error, match=message):
        hostile_store(server).get_range(key, 100, 200, hashlib.md5(body).hexdigest())


def test_a_huge_error_answer_is_classified_from_its_start_and_retried_until_the_deadline(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the start of an 8 MiB error body is read (for its code); the GET is retried with a growing
    back-off, then fails once the next pause would pass the deadline (timed on a clock the test owns)."""
    for variable, value in CREDENTIALS.items():
        monkeypatch.setenv(variable, value)
    key, body = f"{PREFIX}data/Covid1/bigerror.dcm", b"x" * 1000
    clock = FakeClock()
    with HostileS3({key: body}, "hostile-bucket") as server:
        store = hostile_store(server, deadline=BIG_ERROR_DEADLINE, clock=clock)
        with pytest.raises(TransientError, match="InternalError"):
            store.get_range(key, 0, 10, hashlib.md5(body).hexdigest())
        assert store.stats.snapshot()["bytes_fetched"] == 0
    pauses = clock.slept
    assert len(pauses) >= 3, f"retried {len(pauses)} times within a {BIG_ERROR_DEADLINE}s deadline"
    assert all(BACKOFF_FIRST * BACKOFF_JITTER <= pause <= BACKOFF_MAX for pause in pauses)
    assert pauses[-1] > pauses[0], "the back-off grows"
    assert sum(pauses) <= BIG_ERROR_DEADLINE, "no pause runs past the deadline"


def test_a_listing_answered_with_an_error_status_gives_s3s_error(hostile: HostileS3) -> None:
    store = Boto3Store(S3Config(bucket="another-bucket", endpoint_url=hostile.endpoint_url, deadline=5))
    with pytest.raises(NotFound, match="bucket does not exist"):
        store.list_dir(f"{PREFIX}data/")

