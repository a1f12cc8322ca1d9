"""A manifest's packed tree kept in the cache directory answers as the manifest read again would."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from nccidfs.cachedir import PACKED_FOLDER
from nccidfs.cohort import manifest, packed

PREFIX = "training/"
ROWS = sorted([(f"ct/P{p}/s/se{s}/i{i}.dcm", p * 100 + i, hashlib.md5(f"{p}{s}{i}".encode()).hexdigest(),
                1_600_000_000.0 + i) for p in range(5) for s in range(3) for i in range(4)]
              + [("data/P1/status.json", 7, "abc-2", 1_600_000_000.5), ("top.txt", 1, "e.tag", 1.0)])


def write(path: Path, rows: list[manifest.Row] = ROWS) -> Path:
    header = manifest.Header(name=path.stem, warehouse=manifest.Warehouse("h", "b", PREFIX), created="c",
                             listed={}, selection={}, objects=len(rows), bytes=sum(r[1] for r in rows), patients=5)
    manifest.write(path, header, rows)
    return path


def cache_dir(tmp_path: Path) -> Path:
    (tmp_path / "cache").mkdir()
    return tmp_path / "cache"


def answers(tree: packed.FrozenTree) -> list[object]:
    prefixes = ["", "ct/", "ct/P1/", "ct/P1/s/se2/", "data/P1/"]
    return [tree.list_dir(PREFIX + p) for p in prefixes] + [tree.list_tree(PREFIX)] + [
        tree.find(PREFIX + row[0]) for row in ROWS] + [(tree.objects, tree.bytes)]


def test_a_kept_tree_answers_as_the_manifest_and_is_used_the_second_time(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path / "c.nccid-cohort")
    _, digest, scanned = packed.read_tree(path, None)
    cache = cache_dir(tmp_path)
    _, kept_digest, first = packed.read_tree(path, cache)
    kept = list((cache / PACKED_FOLDER).iterdir())
    assert [p.name for p in kept] == [f"{digest}-v{packed.VERSION}.tree"] and kept_digest == digest
    assert answers(first) == answers(scanned)

    def no_scan(*args: object) -> None:
        raise AssertionError("the manifest was read again")

    monkeypatch.setattr(manifest, "scan", no_scan)
    header, again_digest, again = packed.read_tree(path, cache)
    assert answers(again) == answers(scanned) and (header.name, again_digest) == ("c", digest)


def test_a_kept_tree_cut_short_is_made_again(tmp_path: Path) -> None:
    path = write(tmp_path / "c.nccid-cohort")
    cache = cache_dir(tmp_path)
    packed.read_tree(path, cache)
    (kept,) = (cache / PACKED_FOLDER).iterdir()
    whole = kept.read_bytes()
    kept.write_bytes(whole[:-5])
    _, _, tree = packed.read_tree(path, cache)
    assert answers(tree) == answers(packed.read_tree(path, None)[2])
    assert kept.read_bytes() == whole, "written again whole"


def test_no_tree_is_kept_for_a_date_and_at_most_a_few_in_all(tmp_path: Path) -> None:
    cache = cache_dir(tmp_path)
    packed.read_tree(write(tmp_path / "c.nccid-cohort"), cache, as_of=1_600_000_001.0)
    assert not (cache / PACKED_FOLDER).exists()
    for n in range(packed.KEPT + 2):
        packed.read_tree(write(tmp_path / f"c{n}.nccid-cohort", ROWS[n:]), cache)
    assert len(list((cache / PACKED_FOLDER).iterdir())) == packed.KEPT
