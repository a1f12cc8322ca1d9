"""The bucket's two HTTP GETs, ranged reads of objects and listing pages, without the SDK's per-request machinery.

A botocore call costs about 1 ms of interpreter time (event hooks, parameter validation, endpoint rules,
response parsing) on top of the request itself, and with many readers, or a walk's listings, the
interpreter lock makes that the daemon's limit. Neither request needs any of it. The bucket's URL is asked
of botocore once, so its addressing and endpoint rules still decide it. Each request is signed as botocore
signs it (:mod:`nccidfs.s3.sign`) and sent over the connections of :mod:`nccidfs.s3.http`, with the
client's CA bundle and timeouts. An object's body is then read straight from the connection; a listing
page whole, within :data:`PAGE_LIMIT` bytes.
"""

from __future__ import annotations

import re
import socket
from http import HTTPStatus
from typing import Any
from urllib.parse import quote, urlsplit

from botocore.utils import get_environ_proxies

from nccidfs.errors import CorruptData, ObjectChanged
from nccidfs.s3.http import Connections, ProxiedSession
from nccidfs.s3.sign import Signer, canonical_query

# A key whose presigned URL shows where keys go in the bucket's URLs.
_PLACEHOLDER_KEY = "nccidfs-placeholder"
# An error answer is read up to this many bytes for its code; a longer one is cut off, not read through.
ERROR_BODY_LIMIT = 64 * 1024
# S3's error codes are short words ("NoSuchKey", "SlowDown"); anything longer is not taken for one.
ERROR_CODE_MAX = 64
_ERROR_CODE = re.compile(rb"<Code>([^<]{1,%d})</Code>" % ERROR_CODE_MAX)
# A listing page of 1,000 keys is about 400 KB; a longer answer is no page S3 sends, and is refused.
PAGE_LIMIT = 16 * 1024**2


class GetError(Exception):
    """A GET that S3 answered with an error status; ``response`` mimics botocore's, for
    :func:`~nccidfs.s3.errors.classify`."""

    def __init__(self, status: int, code: str) -> None:
        super().__init__(f"HTTP {status} {code}")
        self.response = {"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}


class SignedGets:
    """Signed ranged GETs pinned to an ETag (the caller reads the body from the returned response), and
    signed ListObjectsV2 pages."""

    def __init__(self, client: Any, credentials: Any, bucket: str, *, connect_timeout: float,
                 read_timeout: float, max_connections: int, verify: str | bool) -> None:
        url = client.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": _PLACEHOLDER_KEY})
        self._bucket_url = url.split("?", 1)[0][:-len(_PLACEHOLDER_KEY)]
        # The bucket itself, as botocore addresses it for a listing: "https://bucket.host/" virtual-hosted,
        # "http://host/bucket" path-style.
        self._listing_url = self._bucket_url if urlsplit(self._bucket_url).path == "/" else self._bucket_url[:-1]
        self._signer = Signer(credentials, client.meta.region_name)
        keepalive = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1), (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)]
        options: dict[str, Any] = {"connect_timeout": connect_timeout, "read_timeout": read_timeout,
                                   "max_idle": max_connections, "verify": verify, "socket_options": keepalive}
        proxies = get_environ_proxies(self._bucket_url)
        self._http = ProxiedSession(proxies, **options) if proxies else Connections(self._bucket_url, **options)

    def open(self, key: str, start: int, end: int, etag: str | None) -> Any:
        """The response to ``GET key`` for bytes ``[start, end)``, its status and headers checked.

        Raises :class:`GetError` for an error answer, :class:`ObjectChanged` when the server answers for
        another version, and :class:`CorruptData` when it answers with other bytes than those asked for.
        With ``etag`` None any version is taken (an object known by name only), and it may be shorter.
        """
        headers = {"Range": f"bytes={start}-{end - 1}"}
        if etag is not None:
            headers["If-Match"] = f'"{etag}"'
        raw = self._send(self._bucket_url + quote(key, safe="/~"), headers)
        try:
            _check(raw, key, start, end, etag)
        except BaseException:
            raw.close()
            raw.release_conn()
            raise
        return raw

    def list_page(self, query: dict[str, str]) -> bytes:
        """The body of one ListObjectsV2 page (``query`` in S3's names: prefix, delimiter, start-after,
        continuation-token, max-keys), keys URL-encoded as botocore asks for them.

        Raises :class:`GetError` for an error answer, and :class:`CorruptData` for a body longer than
        :data:`PAGE_LIMIT` (no S3 sends one, so it is not asked for again).
        """
        raw = self._send(f"{self._listing_url}?{canonical_query({'list-type': '2', **query, 'encoding-type': 'url'})}",
                         {})
        try:
            if raw.status != HTTPStatus.OK:
                _raise_error(raw)
            body: bytes = raw.read(PAGE_LIMIT + 1)
            if len(body) > PAGE_LIMIT:
                raise CorruptData(f"a listing page of more than {PAGE_LIMIT} bytes")
        except BaseException:
            raw.close()
            raise
        finally:
            raw.release_conn()
        return body

    def _send(self, url: str, headers: dict[str, str]) -> Any:
        """The response to a signed ``GET url``, its body not read yet."""
        return self._http.send("GET", url, self._signer.sign("GET", url, headers))


def _raise_error(raw: Any) -> None:
    """The :class:`GetError` of an error answer, with S3's code from its body (read up to a bound)."""
    body = raw.read(ERROR_BODY_LIMIT)
    found = _ERROR_CODE.search(body)
    raise GetError(raw.status, found.group(1).decode("ascii", "replace") if found else str(raw.status))


def _check(raw: Any, key: str, start: int, end: int, etag: str | None) -> None:
    if raw.status not in (HTTPStatus.OK, HTTPStatus.PARTIAL_CONTENT):
        _raise_error(raw)
    length = raw.headers.get("Content-Length")
    if length is not None and (not length.isdigit() or int(length) > end - start):
        raise CorruptData(f"get {key}: more bytes than asked for")
    content_range = raw.headers.get("Content-Range")
    if raw.status == HTTPStatus.PARTIAL_CONTENT and not (content_range or "").startswith(f"bytes {start}-"):
        raise CorruptData(f"get {key}: the server sent another range ({content_range}) than bytes {start}-")
    if raw.status == HTTPStatus.OK and start != 0:
        raise CorruptData(f"get {key}: the server sent the whole object when bytes {start}- were asked for")
    answered = raw.headers.get("ETag", "").strip('"')
    if etag is not None and answered and answered != etag:
        raise ObjectChanged(f"get {key}: object changed since it was listed")
