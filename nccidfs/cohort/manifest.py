"""The cohort manifest: one gzip stream of JSON lines, a header and then one line per object.

    {"format": "nccid-cohort", "version": 1, "name": ..., "warehouse": {...}, "objects": N, ...}
    ["ct/Covid1/<study>/<series>/<image>.dcm", 524288, "<etag>", 1625000000.0]
    ...

Object lines hold the key relative to the warehouse prefix, the size in bytes, the ETag (without
quotes) and the last-modified time in seconds since the epoch, in strictly ascending key order. The
format is documented in docs/cohorts.md; a reader refuses every other version.

Reading is strict and bounded, because a manifest comes from someone else: the file may be at most
:data:`MAX_FILE_BYTES`, the header at most :data:`MAX_HEADER_BYTES`, an object line at most
:data:`MAX_LINE_BYTES`, and it may hold at most :data:`MAX_OBJECTS` objects and exactly the number its
header declares; the gzip stream must be whole (its CRC and length checked) with nothing after it.
Decompression runs a chunk at a time, so a reader holds at most one chunk besides what it keeps, and a
compression bomb ends at the first line or count past a bound. Every fault is a :class:`ManifestError`
(exit 2 with one line).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import operator
import re
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nccidfs.errors import ConfigError
from nccidfs.namespace.rules import is_safe_name
from nccidfs.objects import ObjectInfo

FORMAT = "nccid-cohort"
VERSION = 1
SUFFIX = ".nccid-cohort"
# The whole warehouse is about 10.5 million keys; a manifest at most twice that.
MAX_OBJECTS = 20_000_000
# An S3 key is at most 1,024 bytes; with its size, ETag and time a line stays well under this.
MAX_LINE_BYTES = 2048
MAX_HEADER_BYTES = 64 * 1024
# About 55 bytes per object compressed: 20 million objects fit, and a larger file is refused unread.
MAX_FILE_BYTES = 2 * 1024**3
READ_CHUNK = 256 * 1024
# zlib's window bits for a gzip stream (16 + 15).
GZIP_WBITS = 31
# gzip level 3: in a trial on a million CT-shaped lines, 2.4 times as fast to write as level 6, for a file
# 6% larger (59.0 against 55.7 MB); cohort create of 10,000 patients spent 2.3 s of about 10 in level 6.
COMPRESS_LEVEL = 3
# An object line as the writer makes it, with an ASCII key: each key segment 1 to 255 characters of
# printable ASCII but quote, slash and backslash, and not "." or "..", at most 1,024 in all (S3's bound,
# which keeps the line under MAX_LINE_BYTES); a whole size; an MD5 or multipart ETag; a time. What
# matches is exactly what the line-by-line reading accepts for such a line.
_SEGMENT = rb'(?!\.\.?[/"])[ !#-.0-\[\]-~]{1,255}'
_WRITTEN_LINE = re.compile(rb'^\["(?=[^"\n]{1,1024}")((?:' + _SEGMENT + rb"/)*" + _SEGMENT + rb')",(0|[1-9]\d{0,17}),'
                           rb'"([0-9a-f]{32}(?:-[1-9]\d{0,4})?)",((?:0|[1-9]\d{0,9})\.\d{1,9})\]$', re.MULTILINE)
# Quotes, backslashes and control characters never reach an If-Match header.
_ETAG = re.compile(r"[0-9A-Za-z._+/=-]{1,128}")
# A time in seconds since 1970, before the year 2100.
MAX_MTIME = 4_102_444_800.0


class ManifestError(ConfigError):
    """A manifest that is not one this version of nccidfs can trust: malformed, truncated or too large."""


@dataclass(frozen=True)
class Warehouse:
    """Where the objects are: the endpoint's host (never its credentials or scheme), bucket and prefix."""

    endpoint: str
    bucket: str
    prefix: str


@dataclass(frozen=True)
class Header:
    name: str
    warehouse: Warehouse
    created: str  # ISO 8601, UTC
    # When the listings the objects come from were made: {"earliest": iso, "latest": iso, "source": text}.
    listed: dict[str, str]
    # What was selected and how: {"where": ..., "patients": ..., "paths": ..., "as_of": ..., "split": {...}}.
    selection: dict[str, Any]
    objects: int
    bytes: int
    patients: int
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, "name": self.name,
                "warehouse": {"endpoint": self.warehouse.endpoint, "bucket": self.warehouse.bucket,
                              "prefix": self.warehouse.prefix},
                "created": self.created, "listed": self.listed, "selection": self.selection,
                "objects": self.objects, "bytes": self.bytes, "patients": self.patients, **self.extra}


Row = tuple[str, int, str, float]  # key relative to the prefix, size, ETag, last modified


@dataclass
class Columns:
    """A chunk of rows as columns: what a reader hands on, so that a daemon packs them without a Python
    step per object."""

    keys: list[str]
    sizes: list[int]
    etags: list[str]
    mtimes: list[float]

    @classmethod
    def of(cls, rows: Sequence[Row]) -> Columns:
        keys, sizes, etags, mtimes = zip(*rows, strict=True)
        return cls(list(keys), list(sizes), list(etags), list(mtimes))

    def rows(self) -> list[Row]:
        return list(zip(self.keys, self.sizes, self.etags, self.mtimes, strict=True))


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def iso(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def patient_of(relative_key: str) -> str | None:
    """The Patient_ID of a key under the prefix (``ct/<Patient_ID>/...``), None for a key outside one."""
    parts = relative_key.split("/", 2)
    return parts[1] if len(parts) == 3 else None


def count_patients(keys: Iterable[str]) -> int:
    return len({patient for key in keys if (patient := patient_of(key)) is not None})


# -- writing --------------------------------------------------------------------------------------
def write(path: Path, header: Header, rows: Iterable[Row]) -> None:
    """Write ``rows`` (sorted by key, unique) under ``header``; the file appears whole or not at all."""
    encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
    compressor = zlib.compressobj(COMPRESS_LEVEL, zlib.DEFLATED, GZIP_WBITS)
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        with temporary.open("wb") as out:
            out.write(compressor.compress(json.dumps(header.to_json(), ensure_ascii=False).encode() + b"\n"))
            lines: list[str] = []
            for row in rows:
                lines.append(encode(row))
                if len(lines) == 4096:
                    out.write(compressor.compress(("\n".join(lines) + "\n").encode()))
                    lines.clear()
            if lines:
                out.write(compressor.compress(("\n".join(lines) + "\n").encode()))
            out.write(compressor.flush())
        temporary.replace(path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def rows_of(objects: Iterable[ObjectInfo], prefix: str) -> list[Row]:
    """Manifest rows of listed objects, keys made relative to ``prefix``, sorted."""
    return sorted((obj.key[len(prefix):], obj.size, obj.etag, obj.mtime) for obj in objects)


# -- reading --------------------------------------------------------------------------------------
@dataclass
class Manifest:
    header: Header
    digest: str  # SHA-256 of the file's bytes: the cohort's identity
    rows: list[Row]


def read(path: Path) -> Manifest:
    """The whole manifest, every row in memory (for the commands; a daemon uses :func:`scan`)."""
    rows: list[Row] = []
    header, digest = scan(path, lambda columns: rows.extend(columns.rows()))
    return Manifest(header, digest, rows)


def scan(path: Path, sink: Callable[[Columns], None]) -> tuple[Header, str]:
    """Check the manifest at ``path`` and hand its rows to ``sink`` in chunks, in key order."""
    what = f"cohort manifest {path}"
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise ManifestError(f"{what}: {size} bytes, more than the {MAX_FILE_BYTES} a manifest may hold")
        with path.open("rb") as file:
            return _scan(file.read, what, sink)
    except ManifestError:
        raise
    except OSError as error:
        raise ManifestError(f"{what}: {error.strerror or error}") from None
    except (zlib.error, EOFError) as error:
        raise ManifestError(f"{what}: not a whole gzip stream ({error})") from None


def read_header(path: Path) -> Header:
    """Only the header, for the checks that come before reading every object."""
    what = f"cohort manifest {path}"
    try:
        with path.open("rb") as file:
            for lines in _lines(file.read, what, hashlib.sha256(), whole=False):
                if lines:
                    return parse_header(lines[0], what)
    except OSError as error:
        raise ManifestError(f"{what}: {error.strerror or error}") from None
    except (zlib.error, EOFError) as error:
        raise ManifestError(f"{what}: not a whole gzip stream ({error})") from None
    raise ManifestError(f"{what}: empty")


def _lines(read: Callable[[int], bytes], what: str, digest: Any, whole: bool = True) -> Iterator[list[bytes]]:
    """The decompressed lines, a chunk's worth at a time; the stream checked whole and alone."""
    stream = zlib.decompressobj(GZIP_WBITS)
    pending = b""
    while not stream.eof:
        chunk = read(READ_CHUNK)
        if not chunk and not whole:
            return
        if not chunk:
            raise ManifestError(f"{what}: truncated (the gzip stream ends early)")
        digest.update(chunk)
        data = pending + stream.decompress(chunk, READ_CHUNK * 64)
        while stream.unconsumed_tail:  # a chunk that inflates past the bound: take it in steps
            lines = data.split(b"\n")
            pending = lines.pop()
            _check_pending(pending, what)
            yield lines
            data = pending + stream.decompress(stream.unconsumed_tail, READ_CHUNK * 64)
        lines = data.split(b"\n")
        pending = lines.pop()
        _check_pending(pending, what)
        yield lines
    if stream.unused_data or read(1):
        raise ManifestError(f"{what}: data after the end of the gzip stream")
    if pending:
        raise ManifestError(f"{what}: the last line does not end with a newline (truncated)")


def _check_pending(pending: bytes, what: str) -> None:
    if len(pending) > MAX_HEADER_BYTES:
        raise ManifestError(f"{what}: a line longer than {MAX_HEADER_BYTES} bytes")


def _scan(read: Callable[[int], bytes], what: str, sink: Callable[[Columns], None]) -> tuple[Header, str]:
    digest = hashlib.sha256()
    header: Header | None = None
    seen, last = 0, ""
    for lines in _lines(read, what, digest):
        if header is None:
            if not lines:
                continue
            header = parse_header(lines[0], what)
            lines = lines[1:]
        if not lines:
            continue
        if seen + len(lines) > header.objects:
            raise ManifestError(f"{what}: more object lines than the {header.objects} its header declares")
        columns = _parse_rows(lines, what, seen, last)
        seen += len(columns.keys)
        last = columns.keys[-1]
        sink(columns)
    if header is None:
        raise ManifestError(f"{what}: empty")
    if seen != header.objects:
        raise ManifestError(f"{what}: {seen} objects, but its header declares {header.objects} (truncated?)")
    return header, digest.hexdigest()


def _parse_rows(lines: list[bytes], what: str, before: int, last: str) -> Columns:
    """Columns of a chunk of object lines, each checked; ``last`` is the key before the chunk.

    Lines as the writer makes them (ASCII keys, no escapes, MD5 or multipart ETags) are checked and
    taken apart by one regular expression over the whole chunk, with no Python work per line: a million
    lines in a few seconds. Any other chunk is read line by line with the same rules.
    """
    text = b"\n".join(lines)
    found = _WRITTEN_LINE.findall(text)
    if len(found) == len(lines):  # anchored at both ends of a line: every line matched whole
        keys, sizes, etags, times = zip(*found, strict=True)
        columns = Columns(b"\n".join(keys).decode("ascii").split("\n"), list(map(int, sizes)),
                          b"\n".join(etags).decode("ascii").split("\n"), list(map(float, times)))
        if columns.keys[0] > last and all(map(operator.lt, columns.keys, columns.keys[1:])) \
                and max(columns.mtimes) < MAX_MTIME:
            return columns
    return Columns.of(_parse_each(lines, what, before, last))


def _parse_each(lines: list[bytes], what: str, before: int, last: str) -> list[Row]:
    """Rows of a chunk, each line parsed as JSON and checked, with the line at fault in any error."""
    if max(map(len, lines)) > MAX_LINE_BYTES:
        raise ManifestError(f"{what}: an object line longer than {MAX_LINE_BYTES} bytes")
    try:
        parsed = json.loads(b"[" + b",".join(lines) + b"]")
    except (ValueError, RecursionError):
        parsed = None
    if not isinstance(parsed, list) or len(parsed) != len(lines):
        # Each line alone is one value when the joined chunk parses to one per line: find the line at fault.
        number = next(number for number, line in enumerate(lines, before + 2) if not _is_json(line))
        raise ManifestError(f"{what}: line {number} is not JSON")
    rows: list[Row] = []
    for number, row in enumerate(parsed, before + 2):
        if type(row) is not list or len(row) != 4:
            raise ManifestError(f"{what}: line {number}: an object is [key, size, etag, last modified]")
        key, size, etag, mtime = row
        if type(key) is not str or not key > last:
            raise ManifestError(f"{what}: line {number}: keys must be text in strictly ascending order")
        if type(size) is not int or not 0 <= size < 2**63:
            raise ManifestError(f"{what}: line {number}: the size must be a whole number of bytes")
        if type(etag) is not str or not _ETAG.fullmatch(etag):
            raise ManifestError(f"{what}: line {number}: not an ETag")
        if type(mtime) not in (int, float) or not 0 <= mtime < MAX_MTIME:
            raise ManifestError(f"{what}: line {number}: the last-modified time must be seconds since 1970")
        if not all(is_safe_name(part) for part in key.split("/")):
            raise ManifestError(f"{what}: line {number}: key {key[:200]!r} cannot be a path in the mount")
        rows.append((key, size, etag, float(mtime)))
        last = key
    return rows


def _is_json(line: bytes) -> bool:
    try:
        json.loads(line)
    except (ValueError, RecursionError):
        return False
    return True


def parse_header(line: bytes, what: str) -> Header:
    if len(line) > MAX_HEADER_BYTES:
        raise ManifestError(f"{what}: a header longer than {MAX_HEADER_BYTES} bytes")
    try:
        data = json.loads(line)
    except (ValueError, RecursionError):
        raise ManifestError(f"{what}: not a cohort manifest (the first line is not JSON)") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ManifestError(f"{what}: not a cohort manifest (no \"format\": \"{FORMAT}\")")
    if data.get("version") != VERSION:
        raise ManifestError(f"{what}: manifest version {data.get('version')!r}; this nccidfs reads version {VERSION}")
    try:
        warehouse = data["warehouse"]
        header = Header(
            name=_text(data["name"]), created=_text(data["created"]),
            warehouse=Warehouse(_text(warehouse["endpoint"]), _text(warehouse["bucket"]), _text(warehouse["prefix"])),
            listed={str(k): _text(v) for k, v in _mapping(data["listed"]).items()},
            selection=_mapping(data["selection"]),
            objects=_count(data["objects"], MAX_OBJECTS), bytes=_count(data["bytes"], 2**63),
            patients=_count(data["patients"], MAX_OBJECTS))
    except (KeyError, TypeError, ValueError) as error:
        raise ManifestError(f"{what}: header field missing or of the wrong type ({error})") from None
    prefix = header.warehouse.prefix
    if prefix and (not prefix.endswith("/") or not all(is_safe_name(p) for p in prefix[:-1].split("/"))):
        raise ManifestError(f"{what}: header: prefix {prefix!r} is not a folder")
    return header


def _text(value: Any) -> str:
    if not isinstance(value, str) or any(ord(c) < 32 for c in value):
        raise TypeError("text expected")
    return value


def _mapping(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise TypeError("an object expected")
    return value


def _count(value: Any, bound: int) -> int:
    if type(value) is not int or not 0 <= value <= bound:
        raise ValueError(f"a count from 0 to {bound} expected")
    return value
