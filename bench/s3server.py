"""A small S3-compatible HTTP server over a local directory: the benchmark's stand-in for S3.

It serves ``ROOT/BUCKET/KEY`` at disk speed over HTTP/1.1 keep-alive, so that what separates two S3
clients in the benchmark is the requests they make, not the server. Ranged GETs are answered with
``sendfile`` from the requested offset (moto reads the whole object and closes the connection on every
request, which hides the cost of small ranged reads and of connection reuse).

Surface: PutObject, CreateBucket, HeadBucket, HeadObject, GetObject (``Range``, ``If-Match``,
``If-None-Match``), ListObjectsV2, ListObjects (v1), GetBucketLocation and ListBuckets, path-style only,
with no authentication. ``GET /_stats`` returns request counters as JSON (``?reset=1`` resets them),
in the same shape as shared/scale/synths3.py.

Index: each bucket keeps its keys in a sorted list (code-point order, which is UTF-8 byte order, as S3
sorts) and a dict of size/mtime/ETag. ETags are MD5s computed once and kept in ``ROOT/.s3server-index.json``
across restarts (recomputed when a file's size or mtime changed), so files may be written straight into
the root before the server starts. One lock guards the index; file bodies are read outside it.

    python bench/s3server.py --root DIR [--port 0] [--latency-ms 20]   # first stdout line: the port
"""

from __future__ import annotations

import argparse
import base64
import binascii
import bisect
import hashlib
import json
import os
import signal
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import parse_qs, quote, unquote, urlsplit
from xml.sax.saxutils import escape

XMLNS = "http://s3.amazonaws.com/doc/2006-03-01/"
CHUNK = 1024 * 1024
MAX_KEYS = 1000
INDEX_NAME = ".s3server-index.json"
TMP_NAME = ".tmp"  # bucket names cannot start with a dot, so neither of these is a bucket
CONTENT_TYPES = {".json": "application/json", ".dcm": "application/dicom"}


class S3Error(Exception):
    """An S3 error reply: HTTP status, S3 code and message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@dataclass(slots=True)
class ObjectMeta:
    size: int
    mtime_ns: int
    etag: str  # MD5 hex, without quotes


@dataclass
class Bucket:
    created: float
    keys: list[str] = field(default_factory=list)
    objects: dict[str, ObjectMeta] = field(default_factory=dict)


@dataclass
class Page:
    """One listing page: keys and common prefixes in order, and where the next page resumes."""

    contents: list[tuple[str, ObjectMeta]]
    prefixes: list[str]
    truncated: bool
    last: str | None


def _md5_of(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _after_folder(folder: str) -> str:
    """The smallest string above every key that starts with ``folder`` (used to skip a common prefix)."""
    return folder[:-1] + chr(ord(folder[-1]) + 1)


def _key_path_is_safe(key: str) -> bool:
    """Whether a key can be stored as a file under its bucket directory without clashing."""
    parts = key.split("/")
    return bool(key) and all(part not in ("", ".", "..") for part in parts) and "\x00" not in key


class Store:
    """The buckets under ``root`` and their sorted key indexes."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._lock = threading.Lock()
        self._buckets: dict[str, Bucket] = {}
        (root / TMP_NAME).mkdir(parents=True, exist_ok=True)
        self._scan()

    def _scan(self) -> None:
        """Index every file under the bucket directories, reusing ETags from the saved index."""
        try:
            saved: dict[str, dict[str, list[Any]]] = json.loads((self.root / INDEX_NAME).read_text())
        except (OSError, ValueError):
            saved = {}
        changed = False
        for entry in os.scandir(self.root):
            if not entry.is_dir() or entry.name.startswith("."):
                continue
            bucket = self._buckets[entry.name] = Bucket(created=entry.stat().st_mtime)
            known = saved.get(entry.name, {})
            for path, key in self._walk(Path(entry.path), ""):
                st = path.stat()
                old = known.get(key)
                if old and old[0] == st.st_size and old[1] == st.st_mtime_ns:
                    etag = old[2]
                else:
                    etag, changed = _md5_of(path), True
                bucket.objects[key] = ObjectMeta(st.st_size, st.st_mtime_ns, etag)
            bucket.keys = sorted(bucket.objects)
            changed = changed or len(known) != len(bucket.objects)
        if changed or set(saved) != set(self._buckets):
            self.save_index()

    def _walk(self, directory: Path, prefix: str) -> Iterator[tuple[Path, str]]:
        with os.scandir(directory) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    yield from self._walk(Path(entry.path), f"{prefix}{entry.name}/")
                elif entry.is_file(follow_symlinks=False):
                    yield Path(entry.path), prefix + entry.name

    def save_index(self) -> None:
        with self._lock:
            document = {name: {key: [m.size, m.mtime_ns, m.etag] for key, m in bucket.objects.items()}
                        for name, bucket in self._buckets.items()}
        tmp = self.root / TMP_NAME / INDEX_NAME
        tmp.write_text(json.dumps(document))
        os.replace(tmp, self.root / INDEX_NAME)

    # -- buckets and objects --------------------------------------------------------------------
    def bucket_names(self) -> list[tuple[str, float]]:
        with self._lock:
            return sorted((name, bucket.created) for name, bucket in self._buckets.items())

    def has_bucket(self, name: str) -> bool:
        with self._lock:
            return name in self._buckets

    def create_bucket(self, name: str) -> None:
        if not name or name.startswith(".") or "/" in name:
            raise S3Error(400, "InvalidBucketName", f"{name!r} is not a valid bucket name")
        (self.root / name).mkdir(exist_ok=True)
        with self._lock:
            self._buckets.setdefault(name, Bucket(created=time.time()))

    def head(self, bucket: str, key: str) -> tuple[Path, ObjectMeta]:
        with self._lock:
            if bucket not in self._buckets:
                raise S3Error(404, "NoSuchBucket", f"bucket {bucket} does not exist")
            meta = self._buckets[bucket].objects.get(key)
        if meta is None:
            raise S3Error(404, "NoSuchKey", "The specified key does not exist.")
        return self.root / bucket / key, meta

    def put(self, bucket: str, key: str, chunks: Iterator[bytes]) -> ObjectMeta:
        """Write the body to a temporary file, then rename it into place and index it."""
        if not self.has_bucket(bucket):
            raise S3Error(404, "NoSuchBucket", f"bucket {bucket} does not exist")
        if not _key_path_is_safe(key):
            raise S3Error(400, "InvalidArgument", f"key {key!r} cannot be stored by this server")
        tmp = self.root / TMP_NAME / uuid.uuid4().hex
        digest = hashlib.md5()
        try:
            with open(tmp, "wb") as handle:
                for chunk in chunks:
                    digest.update(chunk)
                    handle.write(chunk)
            target = self.root / bucket / key
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        st = target.stat()
        meta = ObjectMeta(st.st_size, st.st_mtime_ns, digest.hexdigest())
        with self._lock:
            index = self._buckets[bucket]
            if key not in index.objects:
                bisect.insort(index.keys, key)
            index.objects[key] = meta
        return meta

    def list(self, bucket: str, prefix: str, delimiter: str, after: str, max_keys: int) -> Page:
        """One page of keys after ``after``, folding keys into common prefixes at ``delimiter``.

        A common prefix equal to the resume point is skipped (that is how ``NextMarker`` and our
        continuation tokens resume after a folder); one that contains the resume point comes back.
        """
        with self._lock:
            if bucket not in self._buckets:
                raise S3Error(404, "NoSuchBucket", f"bucket {bucket} does not exist")
            index = self._buckets[bucket]
            keys = index.keys
            position = bisect.bisect_left(keys, prefix)
            if after:
                position = max(position, bisect.bisect_right(keys, after))
            page = Page([], [], False, None)
            while position < len(keys) and keys[position].startswith(prefix):
                key = keys[position]
                cut = key.find(delimiter, len(prefix)) if delimiter else -1
                if cut < 0:
                    item, following = key, position + 1
                else:
                    item = key[:cut + len(delimiter)]
                    following = bisect.bisect_left(keys, _after_folder(item), position)
                    if item == after:
                        position = following
                        continue
                if len(page.contents) + len(page.prefixes) >= max_keys:
                    page.truncated = max_keys > 0
                    break
                if cut < 0:
                    page.contents.append((key, index.objects[key]))
                else:
                    page.prefixes.append(item)
                page.last = item
                position = following
            return page


class Stats:
    """Request counters by kind, errors by code and bytes sent; what the benchmark reads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._reset()

    def _reset(self) -> None:
        self.requests: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.bytes_out = 0
        self.bytes_in = 0
        self.connections = 0
        self.since = time.time()

    def request(self, kind: str) -> None:
        with self._lock:
            self.requests[kind] += 1

    def error(self, code: str) -> None:
        with self._lock:
            self.errors[code] += 1

    def add(self, sent: int = 0, received: int = 0, connections: int = 0) -> None:
        with self._lock:
            self.bytes_out += sent
            self.bytes_in += received
            self.connections += connections

    def snapshot(self, reset: bool) -> dict[str, Any]:
        with self._lock:
            data = {"requests": dict(self.requests), "errors": dict(self.errors),
                    "total_requests": sum(self.requests.values()), "bytes_out": self.bytes_out,
                    "bytes_in": self.bytes_in, "connections": self.connections,
                    "seconds": round(time.time() - self.since, 3)}
            if reset:
                self._reset()
            return data


def _iso(mtime_ns: int) -> str:
    seconds, nanos = divmod(mtime_ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{nanos // 1_000_000:03d}Z"


def _parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """``[start, end)`` of a single ``bytes=`` range; None means the whole object (as S3 does for
    a missing, malformed or multi-range header). Raises InvalidRange when nothing can be served."""
    if not header or not header.startswith("bytes=") or "," in header:
        return None
    first, dash, last = header[6:].strip().partition("-")
    if not dash or not (first or last) or not (first or "0").isdigit() or not (last or "0").isdigit():
        return None
    if not first:
        start, end = max(0, size - int(last)), size
    else:
        start, end = int(first), size if not last else min(int(last) + 1, size)
        if last and int(last) < start:
            return None
    if start >= size or start >= end:
        raise S3Error(416, "InvalidRange", "The requested range is not satisfiable")
    return start, end


def _etag_matches(header: str, etag: str) -> bool:
    tags = {tag.strip().strip('"') for tag in header.split(",")}
    return "*" in tags or etag in tags


class Handler(BaseHTTPRequestHandler):
    """One connection; HTTP/1.1 keep-alive, Content-Length on every reply."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in separate writes
    server: S3Server

    def setup(self) -> None:
        super().setup()
        self.server.stats.add(connections=1)

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.verbose:
            super().log_message(format, *args)

    def do_GET(self) -> None:
        self._dispatch()

    def do_HEAD(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    # -- routing ---------------------------------------------------------------------------------
    def _dispatch(self) -> None:
        url = urlsplit(self.path)
        path = unquote(url.path)
        query = {name: values[0] for name, values in parse_qs(url.query, keep_blank_values=True).items()}
        if path.rstrip("/") == "/_stats":
            reset = query.get("reset", "0") not in ("", "0")
            self._reply(200, json.dumps(self.server.stats.snapshot(reset)).encode(), "application/json")
            return
        if self.server.latency:
            time.sleep(self.server.latency)
        bucket, _, key = path.lstrip("/").partition("/")
        try:
            if not bucket:
                self._list_buckets()
            elif not key:
                self._bucket_operation(bucket, query)
            else:
                self._object_operation(bucket, key, query)
        except S3Error as error:
            self._error(error, path)
        except (ConnectionError, BrokenPipeError):
            self.close_connection = True

    def _bucket_operation(self, bucket: str, query: dict[str, str]) -> None:
        store = self.server.store
        if self.command == "PUT":
            self._count("CreateBucket")
            self._drain()
            store.create_bucket(bucket)
            self._reply(200, b"", headers={"Location": f"/{bucket}"})
            return
        if not store.has_bucket(bucket):
            self._count("HeadBucket" if self.command == "HEAD" else "ListObjects")
            raise S3Error(404, "NoSuchBucket", f"bucket {bucket} does not exist")
        if self.command == "HEAD":
            self._count("HeadBucket")
            self._reply(200, b"")
        elif self.command != "GET":
            self._count(f"{self.command} bucket")
            raise S3Error(501, "NotImplemented", "only reads, PutObject and CreateBucket are implemented")
        elif "location" in query:
            self._count("GetBucketLocation")
            self._reply(200, f'<?xml version="1.0" encoding="UTF-8"?>\n<LocationConstraint xmlns="{XMLNS}"/>'
                        .encode())
        elif query.get("list-type") == "2":
            self._list(bucket, query, v2=True)
        elif not (set(query) - {"prefix", "delimiter", "marker", "max-keys", "encoding-type"}):
            self._list(bucket, query, v2=False)
        else:
            self._count("GET bucket subresource")
            raise S3Error(501, "NotImplemented", f"bucket sub-resource {sorted(query)} is not implemented")

    def _object_operation(self, bucket: str, key: str, query: dict[str, str]) -> None:
        if self.command == "PUT" and "x-amz-copy-source" not in self.headers and not query:
            self._count("PutObject")
            meta = self.server.store.put(bucket, key, self._body())
            self._reply(200, b"", headers={"ETag": f'"{meta.etag}"'})
        elif self.command in ("GET", "HEAD") and not (set(query) - {"partNumber", "versionId"}):
            self._get_object(bucket, key)
        else:
            self._count(f"{self.command} object")
            self._drain()
            raise S3Error(501, "NotImplemented", "only GetObject, HeadObject and PutObject are implemented")

    # -- operations ------------------------------------------------------------------------------
    def _get_object(self, bucket: str, key: str) -> None:
        head = self.command == "HEAD"
        self._count("HeadObject" if head else "GetObject(range)" if "Range" in self.headers else "GetObject")
        path, meta = self.server.store.head(bucket, key)
        headers = {"ETag": f'"{meta.etag}"', "Last-Modified": formatdate(meta.mtime_ns / 1e9, usegmt=True),
                   "Accept-Ranges": "bytes"}
        if_match = self.headers.get("If-Match")
        if if_match and not _etag_matches(if_match, meta.etag):
            raise S3Error(412, "PreconditionFailed", "At least one of the pre-conditions you specified did not hold")
        if_none_match = self.headers.get("If-None-Match")
        if if_none_match and _etag_matches(if_none_match, meta.etag):
            self._reply(304, b"", headers=headers)
            return
        content_type = CONTENT_TYPES.get(Path(key).suffix, "application/octet-stream")
        if head:
            self._reply(200, b"", content_type, headers, length=meta.size)
            return
        byte_range = _parse_range(self.headers.get("Range"), meta.size)
        start, end = byte_range or (0, meta.size)
        with open(path, "rb") as handle:
            if byte_range:
                headers["Content-Range"] = f"bytes {start}-{end - 1}/{meta.size}"
            self._reply(206 if byte_range else 200, b"", content_type, headers, length=end - start)
            self._send_file(handle, start, end - start)

    def _send_file(self, handle: BinaryIO, offset: int, count: int) -> None:
        """Send ``count`` bytes from ``offset`` with sendfile, 1 MiB at a time."""
        while count > 0:
            sent = self.connection.sendfile(handle, offset, min(CHUNK, count))
            if sent <= 0:
                raise ConnectionError("client went away")
            self.server.stats.add(sent=sent)
            offset += sent
            count -= sent

    def _list(self, bucket: str, query: dict[str, str], v2: bool) -> None:
        self._count("ListObjectsV2" if v2 else "ListObjects")
        prefix, delimiter = query.get("prefix", ""), query.get("delimiter", "")
        url_encode = query.get("encoding-type") == "url"
        try:
            max_keys = min(int(query.get("max-keys", MAX_KEYS)), MAX_KEYS)
            token = query.get("continuation-token")
            after = base64.urlsafe_b64decode(token).decode() if token is not None else ""
        except (ValueError, binascii.Error):
            raise S3Error(400, "InvalidArgument", "bad max-keys or continuation-token") from None
        if max_keys < 0:
            raise S3Error(400, "InvalidArgument", "max-keys must be zero or more")
        if v2 and token is None:
            after = query.get("start-after", "")
        elif not v2:
            after = query.get("marker", "")
        page = self.server.store.list(bucket, prefix, delimiter, after, max_keys)

        def text(value: str) -> str:
            return escape(quote(value, safe="/") if url_encode else value)

        out = [f'<?xml version="1.0" encoding="UTF-8"?>\n<ListBucketResult xmlns="{XMLNS}">',
               f"<Name>{escape(bucket)}</Name><Prefix>{text(prefix)}</Prefix><MaxKeys>{max_keys}</MaxKeys>"]
        if delimiter:
            out.append(f"<Delimiter>{text(delimiter)}</Delimiter>")
        if url_encode:
            out.append("<EncodingType>url</EncodingType>")
        out.append(f"<IsTruncated>{'true' if page.truncated else 'false'}</IsTruncated>")
        if v2:
            out.append(f"<KeyCount>{len(page.contents) + len(page.prefixes)}</KeyCount>")
            if token is not None:
                out.append(f"<ContinuationToken>{escape(token)}</ContinuationToken>")
            elif after:
                out.append(f"<StartAfter>{text(after)}</StartAfter>")
            if page.truncated and page.last is not None:
                next_token = base64.urlsafe_b64encode(page.last.encode()).decode()
                out.append(f"<NextContinuationToken>{next_token}</NextContinuationToken>")
        else:
            out.append(f"<Marker>{text(after)}</Marker>")
            if page.truncated and delimiter and page.last is not None:
                out.append(f"<NextMarker>{text(page.last)}</NextMarker>")
        for key, meta in page.contents:
            out.append(f"<Contents><Key>{text(key)}</Key><LastModified>{_iso(meta.mtime_ns)}</LastModified>"
                       f"<ETag>&quot;{meta.etag}&quot;</ETag><Size>{meta.size}</Size>"
                       "<StorageClass>STANDARD</StorageClass></Contents>")
        out.extend(f"<CommonPrefixes><Prefix>{text(p)}</Prefix></CommonPrefixes>" for p in page.prefixes)
        out.append("</ListBucketResult>")
        self._reply(200, "".join(out).encode())

    def _list_buckets(self) -> None:
        self._count("ListBuckets")
        buckets = "".join(f"<Bucket><Name>{escape(name)}</Name><CreationDate>{_iso(int(created * 1e9))}"
                          "</CreationDate></Bucket>" for name, created in self.server.store.bucket_names())
        self._reply(200, f'<?xml version="1.0" encoding="UTF-8"?>\n<ListAllMyBucketsResult xmlns="{XMLNS}">'
                         f"<Owner><ID>bench</ID><DisplayName>bench</DisplayName></Owner>"
                         f"<Buckets>{buckets}</Buckets></ListAllMyBucketsResult>".encode())

    # -- request and reply plumbing --------------------------------------------------------------
    def _count(self, kind: str) -> None:
        self.server.stats.request(kind)

    def _body(self) -> Iterator[bytes]:
        """The request body, decoding HTTP chunked framing and AWS streaming (``aws-chunked``) framing."""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            raw = self._chunked(self.rfile, signed=False)
        else:
            raw = self._sized(int(self.headers.get("Content-Length", 0)))
        streaming = self.headers.get("x-amz-content-sha256", "").startswith("STREAMING-") or \
            "aws-chunked" in self.headers.get("Content-Encoding", "")
        return self._chunked(_IteratorReader(raw), signed=True) if streaming else raw

    def _sized(self, length: int) -> Iterator[bytes]:
        while length > 0:
            chunk = self.rfile.read(min(CHUNK, length))
            if not chunk:
                raise ConnectionError("request body cut short")
            length -= len(chunk)
            self.server.stats.add(received=len(chunk))
            yield chunk

    def _chunked(self, stream: Any, signed: bool) -> Iterator[bytes]:
        """Chunks framed as ``<hex size>[;extensions]\\r\\n<data>\\r\\n``, ending with a zero-size chunk
        and optional trailer lines (HTTP chunked, and the aws-chunked encoding that signs each chunk)."""
        while True:
            size = int(stream.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while stream.readline().strip():
                    pass  # trailers, e.g. x-amz-checksum-crc32
                return
            data = stream.read(size)
            stream.readline()
            if not signed:
                self.server.stats.add(received=len(data))
            yield data

    def _drain(self) -> None:
        for _ in self._body():
            pass

    def _reply(self, status: int, body: bytes, content_type: str = "application/xml",
               headers: dict[str, str] | None = None, length: int | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.send_header("x-amz-request-id", uuid.uuid4().hex[:16].upper())
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)
            self.server.stats.add(sent=len(body))

    def _error(self, error: S3Error, resource: str) -> None:
        self.server.stats.error(error.code)
        if self.command in ("PUT", "POST"):
            self.close_connection = True  # the body may not have been read
        body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{error.code}</Code>'
                f"<Message>{escape(error.message)}</Message><Resource>{escape(resource)}</Resource>"
                f"<RequestId>{uuid.uuid4().hex[:16].upper()}</RequestId></Error>").encode()
        self._reply(error.status, b"" if self.command == "HEAD" else body)


class _IteratorReader:
    """``readline``/``read`` over an iterator of byte chunks, for decoding a framed body as it arrives."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buffer = b""

    def _fill(self, until: int | None = None) -> None:
        while (until is None and b"\n" not in self._buffer) or (until is not None and len(self._buffer) < until):
            chunk = next(self._chunks, b"")
            if not chunk:
                return
            self._buffer += chunk

    def readline(self) -> bytes:
        self._fill()
        line, newline, self._buffer = self._buffer.partition(b"\n")
        return line + newline

    def read(self, size: int) -> bytes:
        self._fill(size)
        data, self._buffer = self._buffer[:size], self._buffer[size:]
        return data


class S3Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256

    def __init__(self, address: tuple[str, int], store: Store, latency_ms: float, verbose: bool) -> None:
        super().__init__(address, Handler)
        self.store = store
        self.latency = latency_ms / 1000.0
        self.verbose = verbose
        self.stats = Stats()


def _interrupt(signum: int, frame: object) -> None:
    """SIGTERM stops the server like Ctrl-C, so the ETag index is saved."""
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, required=True, help="directory holding one folder per bucket")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (default)")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="sleep added before every S3 answer")
    parser.add_argument("--verbose", action="store_true", help="log every request to stderr")
    args = parser.parse_args(argv)
    args.root.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    store = Store(args.root)
    server = S3Server((args.host, args.port), store, args.latency_ms, args.verbose)
    signal.signal(signal.SIGTERM, _interrupt)
    print(server.server_address[1], flush=True)
    print(f"s3server: http://{args.host}:{server.server_address[1]}/ root={args.root} "
          f"buckets={len(store.bucket_names())} ready in {time.monotonic() - started:.2f}s", file=sys.stderr,
          flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        store.save_index()
    return 0


if __name__ == "__main__":
    sys.exit(main())
