"""The ListObjectsV2 page parser: S3's own XML, and pages whose Contents do not have S3's shape."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nccidfs.errors import CorruptData, TransientError
from nccidfs.s3.etag import md5_of_etag, md5s_of_etags
from nccidfs.s3.listparse import parse_list_page

HEAD = (b'<?xml version="1.0" encoding="UTF-8"?><ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
        b"<Name>b</Name><Prefix>training/ct/</Prefix><IsTruncated>false</IsTruncated>")
TAIL = b"</ListBucketResult>"


def contents(*fields: bytes) -> bytes:
    return b"<Contents>" + b"".join(fields) + b"<StorageClass>STANDARD</StorageClass></Contents>"


def field(name: str, value: str) -> bytes:
    return f"<{name}>{value}</{name}>".encode()


KEY_A, KEY_B = field("Key", "training/ct/a.dcm"), field("Key", "training/ct/b.dcm")
STAMP = field("LastModified", "2020-05-01T12:00:00.000Z")
ETAG = field("ETag", "&quot;0123456789abcdef0123456789abcdef&quot;")


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



@pytest.mark.parametrize(("etag", "md5"), [
    ("0123456789abcdef0123456789abcdef", "0123456789abcdef0123456789abcdef"),
    ("0123456789abcdef0123456789abcdef-2", None), ("0123456789ABCDEF0123456789ABCDEF", None)])
def test_an_objects_md5_is_its_etag_only_for_a_single_part_upload(etag: str, md5: str | None) -> None:
    body = HEAD + contents(KEY_A, STAMP, field("ETag", f"&quot;{etag}&quot;"), field("Size", "1")) + TAIL
    (obj,) = parse_list_page(body).objects
    assert (obj.etag, obj.md5) == (etag, md5)

def test_an_element_missing_its_size_and_another_with_two_fail_the_page_instead_of_shifting_sizes() -> None:
    # Counted over the whole page these are two keys and two sizes; paired by position, 7 would go to b.dcm.
    body = HEAD + contents(KEY_A, STAMP, ETAG) + contents(KEY_B, STAMP, ETAG, field("Size", "1"),
                                                          field("Size", "7")) + TAIL
    with pytest.raises(CorruptData, match="Contents element 0"):
        parse_list_page(body)


@pytest.mark.parametrize("element", [
    contents(KEY_A, STAMP, ETAG),                                        # no Size
    contents(KEY_A, STAMP, ETAG, field("Size", "1"), field("Size", "1")),  # two Sizes
    contents(KEY_A, KEY_B, STAMP, ETAG, field("Size", "1")),              # two Keys
    contents(KEY_A, STAMP, ETAG, field("Size", "-1")),                    # not a size
    contents(KEY_A, field("LastModified", "yesterday"), ETAG, field("Size", "1")),
    contents(b"<Key>\xff</Key>", STAMP, ETAG, field("Size", "1")),     # not UTF-8
    b"<Contents>" + KEY_A + STAMP + ETAG + field("Size", "1"),            # never closed
])
def test_a_malformed_contents_element_fails_the_page_with_corrupt_data(element: bytes) -> None:
    with pytest.raises(CorruptData, match="malformed ListObjectsV2 page"):
        parse_list_page(HEAD + element + TAIL)


@given(st.lists(st.tuples(st.text("abcxyz0189-_.", min_size=1, max_size=20), st.integers(0, 2**40)),
                max_size=30, unique_by=lambda item: item[0]), st.randoms(use_true_random=False))
def test_fields_in_any_order_stay_with_their_own_key(objects: list[tuple[str, int]], order: random.Random) -> None:
    elements = []
    for name, size in objects:
        fields = [field("Key", name), STAMP, field("ETag", f"&quot;{size:032x}&quot;"), field("Size", str(size))]
        order.shuffle(fields)
        elements.append(contents(*fields))
    page = parse_list_page(HEAD + b"".join(elements) + TAIL)
    assert [(o.key, o.size, o.etag) for o in page.objects] == [(n, s, f"{s:032x}") for n, s in objects]


@pytest.mark.parametrize("body", [
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>InternalError</Code></Error>',  # an error inside a 200
    HEAD + contents(KEY_A, STAMP, ETAG, field("Size", "1")),                                # cut short
])
def test_anything_but_one_whole_result_is_a_transient_error(body: bytes) -> None:
    with pytest.raises(TransientError, match="not one whole ListBucketResult"):
        parse_list_page(body)


def test_an_empty_answer_is_no_listing() -> None:
    with pytest.raises(CorruptData, match="not a ListBucketResult"):
        parse_list_page(b"")


def test_a_whole_result_is_read_with_the_blank_after_it() -> None:
    body = HEAD + contents(KEY_A, STAMP, ETAG, field("Size", "1")) + TAIL + b"\n"
    assert [o.key for o in parse_list_page(body).objects] == ["training/ct/a.dcm"]


def test_s3s_optional_fields_keep_the_one_scan_reading_and_a_mixed_page_is_read_element_by_element() -> None:
    optional = (b"<Contents><Key>training/ct/a.dcm</Key><LastModified>2020-05-01T12:00:00.000Z</LastModified>"
                b"<ETag>&quot;0123456789abcdef0123456789abcdef&quot;</ETag><ChecksumAlgorithm>CRC64NVME"
                b"</ChecksumAlgorithm><ChecksumType>FULL_OBJECT</ChecksumType><Size>5</Size><Owner><ID>x</ID>"
                b"<DisplayName>y</DisplayName></Owner><StorageClass>STANDARD</StorageClass></Contents>")
    reordered = contents(field("Size", "6"), KEY_B, ETAG, STAMP)
    for body, expected in ((HEAD + optional + TAIL, [("training/ct/a.dcm", 5)]),
                           (HEAD + optional + reordered + TAIL, [("training/ct/a.dcm", 5), ("training/ct/b.dcm", 6)])):
        assert [(o.key, o.size) for o in parse_list_page(body).objects] == expected


@pytest.mark.parametrize("quoted", ["&quot;{}&quot;", '"{}"', "{}", '&quot;{}"'])
def test_an_etag_reads_the_same_in_the_one_scan_reading_and_element_by_element(quoted: str) -> None:
    etag = "0123456789abcdef0123456789abcdef"
    canonical = (b"<Contents><Key>training/ct/a.dcm</Key><LastModified>2020-05-01T12:00:00.000Z</LastModified>"
                 + field("ETag", quoted.format(etag)) + b"<Size>5</Size></Contents>")
    reordered = contents(field("Size", "6"), KEY_B, field("ETag", quoted.format(etag)), STAMP)
    for body in (HEAD + canonical + TAIL, HEAD + canonical + reordered + TAIL):
        assert {(o.etag, o.md5) for o in parse_list_page(body).objects} == {(etag, etag)}


@given(st.lists(st.one_of(st.text("0123456789abcdef", min_size=32, max_size=32),
                          st.text("0123456789abcdefABCDEF-é", max_size=34)), max_size=20))
def test_the_md5s_of_a_pages_etags_at_once_are_those_of_each(etags: list[str]) -> None:
    assert md5s_of_etags(etags) == [md5_of_etag(etag) for etag in etags]
