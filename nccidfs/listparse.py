"""A fast parser for ListObjectsV2 pages, plugged into botocore in place of its generic XML parser.

botocore parses about 16,000 keys a second on one core, which makes a flat listing of a whole modality
(millions of keys) parse-bound. A page has a fixed, flat shape, so a handful of regular expressions over
the raw bytes read it many times faster. botocore still signs, sends, retries and raises errors; only
successful pages are read here.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import unquote_plus

from nccidfs.objects import ObjectInfo

PAGE_KEY = "NccidfsPage"
# What botocore's own parser is left to read once the page has been taken.
_EMPTY_RESULT = (b'<?xml version="1.0" encoding="UTF-8"?>'
                 b'<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"></ListBucketResult>')

_KEY = re.compile(rb"<Key>(.*?)</Key>", re.S)
_SIZE = re.compile(rb"<Size>(\d+)</Size>")
_ETAG = re.compile(rb"<ETag>(.*?)</ETag>", re.S)
_MODIFIED = re.compile(rb"<LastModified>(.*?)</LastModified>")
_COMMON_PREFIX = re.compile(rb"<CommonPrefixes>\s*<Prefix>(.*?)</Prefix>\s*</CommonPrefixes>", re.S)
_TRUNCATED = re.compile(rb"<IsTruncated>\s*true\s*</IsTruncated>")
_TOKEN = re.compile(rb"<NextContinuationToken>(.*?)</NextContinuationToken>", re.S)
_URL_ENCODED = re.compile(rb"<EncodingType>\s*url\s*</EncodingType>")


@dataclass(frozen=True, slots=True)
class ListPage:
    objects: list[ObjectInfo]
    prefixes: list[str]
    truncated: bool
    token: str | None


def _text(raw: bytes, url_encoded: bool) -> str:
    text = raw.decode("utf-8")
    if "&" in text:
        text = html.unescape(text)
    return unquote_plus(text) if url_encoded else text


def parse_list_page(body: bytes) -> ListPage:
    """Objects (with size, ETag and time), common prefixes and the continuation of one page."""
    url_encoded = _URL_ENCODED.search(body) is not None
    keys = _KEY.findall(body)
    sizes = _SIZE.findall(body)
    etags = _ETAG.findall(body)
    modified = _MODIFIED.findall(body)
    if not len(keys) == len(sizes) == len(etags) == len(modified):
        raise ValueError("ListObjectsV2 page with incomplete Contents")
    times: dict[bytes, float] = {}
    objects = []
    for key, size, etag, stamp in zip(keys, sizes, etags, modified, strict=True):
        when = times.get(stamp)
        if when is None:
            when = times[stamp] = datetime.fromisoformat(stamp.decode()).timestamp()
        objects.append(ObjectInfo(_text(key, url_encoded), int(size),
                                  etag.replace(b"&quot;", b"").strip(b'"').decode(), when))
    prefixes = [_text(p, url_encoded) for p in _COMMON_PREFIX.findall(body)]
    token = _TOKEN.search(body)
    return ListPage(objects, prefixes, _TRUNCATED.search(body) is not None,
                    token.group(1).decode() if token else None)


def take_page(response_dict: dict[str, Any], customized_response_dict: dict[str, Any], **_: Any) -> None:
    """botocore ``before-parse.s3.ListObjectsV2`` hook: parse a successful page here, hand botocore a stub."""
    if response_dict.get("status_code") != 200:
        return
    customized_response_dict[PAGE_KEY] = parse_list_page(response_dict["body"])
    response_dict["body"] = _EMPTY_RESULT
