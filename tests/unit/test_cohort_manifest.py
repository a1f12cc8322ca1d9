"""The cohort manifest: what is written reads back exactly, and anything else is one ManifestError."""

from __future__ import annotations

import gzip
import json
import time
from pathlib import Path

import pytest

from nccidfs.cohort import manifest
from nccidfs.cohort.manifest import Header, ManifestError, Warehouse

ETAG = "0123456789abcdef0123456789abcdef"
ROWS = [("ct/Covid1/s1/se1/a.dcm", 10, ETAG, 1_600_000_000.5),
        ("ct/Covid1/s1/se1/b.dcm", 20, "abc-2", 1_600_000_001.0),
        ("data/Covid1/data_2020-05-01.json", 5, ETAG, 1_600_000_002.25)]


def header(objects: int = len(ROWS), **extra: object) -> Header:
    return Header(name="c", warehouse=Warehouse("127.0.0.1:9000", "nccid-data-warehouse-prod", "training/"),
                  created="2021-06-30T00:00:00Z", listed={"earliest": "x", "latest": "y"},
                  selection={"where": "images > 1"}, objects=objects, bytes=35, patients=1, extra=dict(extra))


def raw(path: Path, lines: list[bytes], compress: bool = True) -> Path:
    data = b"".join(line + b"\n" for line in lines)
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


def header_line(objects: int = len(ROWS)) -> bytes:
    return json.dumps(header(objects).to_json()).encode()


def test_a_manifest_reads_back_exactly_as_written(tmp_path: Path) -> None:
    path = tmp_path / f"c{manifest.SUFFIX}"
    manifest.write(path, header(), ROWS)
    read = manifest.read(path)
    assert read.rows == ROWS
    assert read.header == header()
    assert len(read.digest) == 64
    assert json.loads(gzip.decompress(path.read_bytes()).splitlines()[0])["version"] == manifest.VERSION


def test_same_content_same_bytes_and_digest(tmp_path: Path) -> None:
    manifest.write(tmp_path / "a", header(), ROWS)
    manifest.write(tmp_path / "b", header(), ROWS)
    assert (tmp_path / "a").read_bytes() == (tmp_path / "b").read_bytes()


@pytest.mark.parametrize(("lines", "message"), [
    ([b"not json"], "not a cohort manifest"),
    ([b'{"format": "other"}'], "not a cohort manifest"),
    ([json.dumps({**header().to_json(), "version": 2}).encode()], "version 2"),
    ([json.dumps({**header().to_json(), "objects": -1}).encode()], "header field"),
    ([json.dumps({**header().to_json(), "warehouse": 3}).encode()], "header field"),
    ([header_line(1), b'["a/b", 1, "' + ETAG.encode() + b'", 1.0]', b'["a/c", 1, "e", 1.0]'], "more object lines"),
    ([header_line(2), b'["a/b", 1, "' + ETAG.encode() + b'", 1.0]'], "declares 2"),
    ([header_line(2), b'["a/b", 1, "e", 1.0]', b'["a/a", 1, "e", 1.0]'], "ascending"),
    ([header_line(2), b'["a/b", 1, "e", 1.0]', b'["a/b", 1, "e", 1.0]'], "ascending"),
    ([header_line(1), b'["a/b", -1, "e", 1.0]'], "size"),
    ([header_line(1), b'["a/b", 1.5, "e", 1.0]'], "size"),
    ([header_line(1), b'["a/b", true, "e", 1.0]'], "size"),
    ([header_line(1), b'["a/b", 1, "e\\"\\r\\nX-Evil: 1", 1.0]'], "ETag"),
    ([header_line(1), b'["a/b", 1, "e", NaN]'], "last-modified"),
    ([header_line(1), b'["a/b", 1, "e", "2021"]'], "last-modified"),
    ([header_line(1), b'["a/../../etc/passwd", 1, "e", 1.0]'], "cannot be a path"),
    ([header_line(1), b'["/a", 1, "e", 1.0]'], "cannot be a path"),
    ([header_line(1), b'["a/b\\u0000c", 1, "e", 1.0]'], "cannot be a path"),
    ([header_line(1), b'["a/b", 1, "e"]'], "an object is"),
    ([header_line(1), b'{"key": "a/b"}'], "an object is"),
    ([header_line(1), b'["a/b", 1, "e", 1.0], ["a/c", 1, "e", 1.0]'], "line 2 is not JSON"),
    ([header_line(1), b'["a/b", 1, "e", 1.0'], "not JSON"),
    ([header_line(1), b"[" * 100_000], "longer than"),
    ([header_line(1), b'["' + b"a" * 5000 + b'", 1, "e", 1.0]'], "longer than"),
    ([], "empty"),
])
def test_a_bad_manifest_is_one_error(tmp_path: Path, lines: list[bytes], message: str) -> None:
    with pytest.raises(ManifestError, match=message) as caught:
        manifest.read(raw(tmp_path / "m", lines))
    assert "\n" not in str(caught.value)


def test_a_truncated_manifest_is_refused_wherever_it_is_cut(tmp_path: Path) -> None:
    whole = tmp_path / "whole"
    manifest.write(whole, header(), ROWS)
    data = whole.read_bytes()
    for cut in range(1, len(data)):
        (tmp_path / "cut").write_bytes(data[:cut])
        with pytest.raises(ManifestError):
            manifest.read(tmp_path / "cut")


def test_anything_after_the_stream_or_outside_gzip_is_refused(tmp_path: Path) -> None:
    whole = tmp_path / "whole"
    manifest.write(whole, header(), ROWS)
    (tmp_path / "extra").write_bytes(whole.read_bytes() + gzip.compress(b'["z", 1, "e", 1.0]\n'))
    with pytest.raises(ManifestError, match="after the end"):
        manifest.read(tmp_path / "extra")
    with pytest.raises(ManifestError, match="gzip"):
        manifest.read(raw(tmp_path / "plain", [header_line(0)], compress=False))
    with pytest.raises(ManifestError, match="No such file"):
        manifest.read(tmp_path / "missing")


def test_a_compression_bomb_ends_at_the_first_bound(tmp_path: Path) -> None:
    """A gigabyte of one line, compressed to a megabyte, is refused after a few megabytes of work."""
    path = tmp_path / "bomb"
    with gzip.open(path, "wb", compresslevel=9) as out:
        out.write(header_line(1) + b"\n")
        for _ in range(1024):
            out.write(b" " * (1024 * 1024))
    started = time.monotonic()
    with pytest.raises(ManifestError, match="longer than"):
        manifest.read(path)
    assert time.monotonic() - started < 2.0


def test_a_declared_count_past_the_bound_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="header field"):
        manifest.read(raw(tmp_path / "m", [header_line(manifest.MAX_OBJECTS + 1)]))


def compact(key: str, size: int = 1, etag: str = ETAG, mtime: str = "1.0") -> bytes:
    return f'["{key}",{size},"{etag}",{mtime}]'.encode()


@pytest.mark.parametrize(("lines", "message"), [
    ([compact("a/../b")], "cannot be a path"),
    ([compact("a/./b")], "cannot be a path"),
    ([compact("a//b")], "cannot be a path"),
    ([compact("..")], "cannot be a path"),
    ([compact("a/" + "x" * 256)], "cannot be a path"),
    ([compact("/".join(["x" * 200] * 10))], "longer than"),
    ([compact("a/b"), compact("a/b")], "ascending"),
    ([compact("a/c"), compact("a/b")], "ascending"),
    ([compact("a/b", mtime="9999999999.0")], "last-modified"),
    ([compact("a/b", etag=ETAG.upper())], None),
])
def test_lines_as_written_are_held_to_the_same_rules(tmp_path: Path, lines: list[bytes], message: str | None) -> None:
    """The writer's lines go through a faster check; it accepts exactly what line-by-line reading does."""
    path = raw(tmp_path / "m", [header_line(len(lines)), *lines])
    if message is None:
        assert manifest.read(path).rows == [("a/b", 1, ETAG.upper(), 1.0)]
    else:
        with pytest.raises(ManifestError, match=message):
            manifest.read(path)


def test_the_fast_and_the_line_by_line_reading_give_the_same_rows() -> None:
    lines = [compact(f"ct/P{n:03}/s/se/{n}.dcm", n * 7, ETAG if n % 3 else ETAG + "-2", f"{1.6e9 + n / 8}")
             for n in range(300)]
    fast = manifest._parse_rows(lines, "m", 0, "")  # noqa: SLF001
    slow = manifest._parse_each(lines, "m", 0, "")  # noqa: SLF001
    assert fast.rows() == slow
    assert len(slow) == 300
