"""A small S3 server on loopback that misbehaves on purpose, to show nccidfs stays bounded against it.

It answers ListObjectsV2 and ranged GETs for one bucket (path-style, signatures ignored). Objects under
``PREFIX`` are served sanely. Listings of these folders under ``PREFIX`` misbehave, each its own way:

- ``endless/``: every page holds 1000 keys, says it is truncated and gives the same continuation token;
- ``drip/``: every page is truncated with a new token, and arrives after ``drip_delay`` seconds;
- ``notoken/``: the first page says it is truncated but gives no continuation token;
- ``malformed/``: one ``<Contents>`` has no ``<Size>`` and the next has two.

``error200/`` answers its first listing with an S3 error document inside a 200, and sanely after.

GETs of objects whose name starts with one of :data:`BAD_GETS` misbehave too: ``wrongrange`` answers a
range with bytes from the object's start, ``norange`` answers with the whole object and status 200,
``otheretag`` ignores If-Match and names another ETag, and ``bigerror`` answers 500 with an error body of
:data:`BIG_ERROR` bytes.

Standard library only, so that it cannot share a bug with the S3 libraries under test.
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
from collections import Counter
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit
from xml.sax.saxutils import escape

PREFIX = "training/"
BAD_FOLDERS = ("endless", "drip", "notoken", "malformed")
_STAMP = "2020-05-01T12:00:00.000Z"
_RANGE = re.compile(r"bytes=(\d+)-(\d*)")
BAD_GETS = ("wrongrange", "norange", "otheretag", "bigerror")
BIG_ERROR = 8 * 1024**2


def _contents(key: str, body: bytes, etag: str | None = None) -> str:
    return (f"<Contents><Key>{escape(key)}</Key><LastModified>{_STAMP}</LastModified>"
            f"<ETag>&quot;{etag or hashlib.md5(body).hexdigest()}&quot;</ETag><Size>{len(body)}</Size></Contents>")


def _page(prefix: str, contents: str, prefixes: Sequence[str] = (), truncated: bool = False,
          token: str | None = None) -> bytes:
    common = "".join(f"<CommonPrefixes><Prefix>{escape(p)}</Prefix></CommonPrefixes>" for p in prefixes)
    following = f"<NextContinuationToken>{token}</NextContinuationToken>" if token else ""
    return (f'<?xml version="1.0" encoding="UTF-8"?><ListBucketResult xmlns="http://s3.amazonaws.com/doc/'
            f'2006-03-01/"><Name>b</Name><Prefix>{escape(prefix)}</Prefix><MaxKeys>1000</MaxKeys>'
            f"<IsTruncated>{'true' if truncated else 'false'}</IsTruncated>{contents}{common}{following}"
            "</ListBucketResult>").encode()


class HostileS3:
    """``with HostileS3(objects) as server:`` serves at ``server.endpoint_url`` until the block ends."""

    def __init__(self, objects: dict[str, bytes], bucket: str, drip_delay: float = 0.25) -> None:
        self.objects = objects
        self._etags = {key: hashlib.md5(body).hexdigest() for key, body in objects.items()}
        self.bucket = bucket
        self.drip_delay = drip_delay
        self.lists: Counter[str] = Counter()  # ListObjectsV2 requests per top folder
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.endpoint_url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> HostileS3:
        threading.Thread(target=self._server.serve_forever, args=(0.05,), name="hostile-s3", daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def listing(self, prefix: str, delimiter: str, token: str) -> bytes:
        """One ListObjectsV2 page: scripted misbehaviour under a bad folder, a sane answer elsewhere."""
        folder = prefix[len(PREFIX):].split("/", 1)[0]
        with self._lock:
            self.lists[folder] += 1
        if folder == "endless":
            keys = "".join(_contents(f"{prefix}{n:06d}.dcm", b"x") for n in range(1000))
            return _page(prefix, keys, truncated=True, token="same")
        if folder == "drip":
            time.sleep(self.drip_delay)
            return _page(prefix, _contents(f"{prefix}{token or 'first'}.dcm", b"x"), truncated=True,
                         token=f"t{int(token[1:] if token else 0) + 1}")
        if folder == "notoken":
            return _page(prefix, _contents(f"{prefix}a.dcm", b"x"), truncated=True)
        if folder == "error200" and self.lists[folder] == 1:
            return b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>InternalError</Code></Error>'
        if folder == "malformed":
            sizeless = _contents(f"{prefix}a.dcm", b"x").replace("<Size>1</Size>", "")
            two_sizes = _contents(f"{prefix}b.dcm", b"x").replace("<Size>1</Size>", "<Size>1</Size><Size>7</Size>")
            return _page(prefix, sizeless + two_sizes)
        return self._sane_listing(prefix, delimiter)

    def _sane_listing(self, prefix: str, delimiter: str) -> bytes:
        contents, prefixes = [], set()
        for key in sorted(self.objects):
            rest = key[len(prefix):]
            if not key.startswith(prefix):
                continue
            if delimiter and delimiter in rest:
                prefixes.add(prefix + rest.split(delimiter, 1)[0] + delimiter)
            else:
                contents.append(_contents(key, self.objects[key], self._etags[key]))
        if prefix == PREFIX and delimiter:
            prefixes.update(f"{PREFIX}{folder}/" for folder in BAD_FOLDERS)
        return _page(prefix, "".join(contents), sorted(prefixes))

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                for name, value in {"Content-Length": str(len(body)), **(headers or {})}.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                url = urlsplit(self.path)
                bucket, _, key = url.path.lstrip("/").partition("/")
                query = {name: values[0] for name, values in parse_qs(url.query).items()}
                if bucket != server.bucket:
                    self._send(404, b"<Error><Code>NoSuchBucket</Code></Error>")
                elif not key and query.get("list-type") == "2":
                    self._send(200, server.listing(query.get("prefix", ""), query.get("delimiter", ""),
                                                   query.get("continuation-token", "")),
                               {"Content-Type": "application/xml"})
                else:
                    self._object(unquote(key))

            def _object(self, key: str) -> None:
                body = server.objects.get(key)
                if body is None:
                    self._send(404, b"<Error><Code>NoSuchKey</Code></Error>")
                    return
                match = _RANGE.fullmatch(self.headers.get("Range", ""))
                start = int(match.group(1)) if match else 0
                end = min(int(match.group(2)) + 1 if match and match.group(2) else len(body), len(body))
                status, etag, name = 206 if match else 200, server._etags[key], key.rsplit("/", 1)[-1]
                if name.startswith("bigerror"):
                    self._send(500, b"<Error><Code>InternalError</Code>" + b" " * BIG_ERROR + b"</Error>")
                    return
                if name.startswith("wrongrange"):
                    start, end = 0, end - start
                elif name.startswith("norange"):
                    status, start, end = 200, 0, len(body)
                elif name.startswith("otheretag"):
                    etag = hashlib.md5(b"another version").hexdigest()
                self._send(status, body[start:end], {
                    "ETag": f'"{etag}"', "Last-Modified": "Fri, 01 May 2020 12:00:00 GMT",
                    "Content-Range": f"bytes {start}-{end - 1}/{len(body)}"})

        return Handler
