"""Boto3Store against a real S3 server (moto over HTTP): listings, the fast page parser, ranged GETs."""

from __future__ import annotations

import hashlib

import pytest

from nccidfs.config import S3Config
from nccidfs.errors import NotFound, ObjectChanged
from nccidfs.listparse import parse_list_page
from nccidfs.store import Boto3Store
from tests.mounting import PREFIX, create_bucket, s3_client

ODD_KEYS = [f"{PREFIX}ct/Covid1/a b/c+d&e.dcm", f"{PREFIX}ct/Covid1/ünï/x<y>.json", f"{PREFIX}ct/Covid1/%41/z.dcm"]


@pytest.fixture
def seeded(s3_endpoint: str, bucket_name: str) -> tuple[Boto3Store, dict[str, bytes]]:
    objects = {f"{PREFIX}ct/Covid{i}/1.2/1.3/{n}.dcm": f"{i}-{n}".encode() * 100 for i in range(12) for n in range(90)}
    objects.update({key: b"odd" for key in ODD_KEYS})
    create_bucket(s3_endpoint, bucket_name, objects.items())
    return Boto3Store(S3Config(bucket=bucket_name, endpoint_url=s3_endpoint, deadline=5)), objects


def test_flat_listing_pages_through_everything_with_exact_keys_sizes_and_etags(
        seeded: tuple[Boto3Store, dict[str, bytes]], s3_endpoint: str, bucket_name: str) -> None:
    store, objects = seeded
    listing = store.list_tree(f"{PREFIX}ct/")
    assert len(listing.objects) == len(objects) > 1000
    for info in listing.objects:
        assert info.size == len(objects[info.key])
        assert info.etag == hashlib.md5(objects[info.key]).hexdigest()
    reference = s3_client(s3_endpoint).list_objects_v2(Bucket=bucket_name, Prefix=f"{PREFIX}ct/Covid1/")
    by_key = {info.key: info for info in listing.objects}
    for item in reference["Contents"]:
        assert by_key[item["Key"]].mtime == item["LastModified"].timestamp()


def test_delimited_listing_gives_prefixes_and_odd_keys_decode(seeded: tuple[Boto3Store, dict[str, bytes]]) -> None:
    store, _ = seeded
    assert len(store.list_dir(f"{PREFIX}ct/").prefixes) == 12
    odd = store.list_dir(f"{PREFIX}ct/Covid1/")
    assert sorted(odd.prefixes) == sorted({key.rsplit("/", 1)[0] + "/" for key in ODD_KEYS} |
                                          {f"{PREFIX}ct/Covid1/1.2/"})
    assert [o.key for o in store.list_tree(f"{PREFIX}ct/Covid1/a b/").objects] == [ODD_KEYS[0]]
    assert store.probe(f"{PREFIX}ct/") and not store.probe(f"{PREFIX}nothing/")


def test_ranged_gets_are_pinned_to_the_etag(seeded: tuple[Boto3Store, dict[str, bytes]], s3_endpoint: str,
                                            bucket_name: str) -> None:
    store, objects = seeded
    key = f"{PREFIX}ct/Covid3/1.2/1.3/7.dcm"
    etag = hashlib.md5(objects[key]).hexdigest()
    assert store.get_range(key, 10, 50, etag) == objects[key][10:50]
    s3_client(s3_endpoint).put_object(Bucket=bucket_name, Key=key, Body=b"replaced")
    with pytest.raises(ObjectChanged):
        store.get_range(key, 0, 5, etag)
    with pytest.raises(NotFound):
        store.get_range(f"{PREFIX}nope", 0, 5, etag)


def test_page_parser_reads_s3s_own_xml() -> None:
    body = (b'<?xml version="1.0" encoding="UTF-8"?><ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
            b"<Name>b</Name><Prefix>training/ct/</Prefix><KeyCount>2</KeyCount><MaxKeys>1000</MaxKeys>"
            b"<Delimiter>/</Delimiter><EncodingType>url</EncodingType><IsTruncated>true</IsTruncated>"
            b"<Contents><Key>training/ct/a+b%26c.dcm</Key><LastModified>2020-05-01T12:00:00.000Z</LastModified>"
            b"<ETag>&quot;0123456789abcdef0123456789abcdef&quot;</ETag><Size>42</Size>"
            b"<StorageClass>STANDARD</StorageClass></Contents>"
            b"<CommonPrefixes><Prefix>training/ct/Covid1/</Prefix></CommonPrefixes>"
            b"<NextContinuationToken>tok/en==</NextContinuationToken></ListBucketResult>")
    page = parse_list_page(body)
    assert [(o.key, o.size, o.etag) for o in page.objects] == [
        ("training/ct/a b&c.dcm", 42, "0123456789abcdef0123456789abcdef")]
    assert page.objects[0].mtime == 1588334400.0
    assert page.prefixes == ["training/ct/Covid1/"] and page.truncated and page.token == "tok/en=="
