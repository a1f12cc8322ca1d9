"""Split, diff and verify of cohorts."""

from __future__ import annotations

import pytest

from nccidfs.cohort import operations
from nccidfs.cohort.manifest import Row
from nccidfs.errors import ConfigError
from tests.fakes import MemoryStore

PREFIX = "training/"


def rows(patients: int) -> list[Row]:
    return sorted((f"{folder}/P{n}/s/se/{i}.dcm", 1, "e", 1.0)
                  for n in range(patients) for folder in ("ct", "ct-metadata") for i in range(3))


def test_a_split_is_by_patient_deterministic_and_near_its_fractions() -> None:
    cohort = rows(5000)
    parts = operations.split(cohort, "seed", [0.8, 0.1, 0.1])
    assert sorted(row for part in parts for row in part) == cohort
    owners = [operations.patients(part) for part in parts]
    assert not (owners[0] & owners[1] or owners[0] & owners[2] or owners[1] & owners[2])
    assert [len(p) for p in owners] == pytest.approx([4000, 500, 500], abs=100)
    assert operations.split(cohort, "seed", [0.8, 0.1, 0.1]) == parts
    assert operations.split(cohort, "other", [0.8, 0.1, 0.1]) != parts


def test_a_patient_keeps_its_part_in_any_cohort_with_the_same_seed() -> None:
    small = operations.split(rows(50), "s", [0.5, 0.5])
    large = operations.split(rows(500), "s", [0.5, 0.5])
    for part_small, part_large in zip(small, large, strict=True):
        assert operations.patients(part_small) <= operations.patients(part_large)


@pytest.mark.parametrize("text", ["0.8,0.1", "1", "0.5,x", "1.2,-0.2", "nan,0.5", "0.5,0.5,0"])
def test_bad_fractions_are_refused(text: str) -> None:
    with pytest.raises(ConfigError, match="--fractions"):
        operations.parse_fractions(text)


def test_diff_names_added_removed_and_changed() -> None:
    old = [("a/P1/x", 1, "e", 1.0), ("a/P1/y", 1, "e", 1.0), ("a/P2/z", 1, "e", 1.0)]
    new = [("a/P1/x", 1, "f", 1.0), ("a/P2/z", 1, "e", 1.0), ("a/P3/w", 1, "e", 1.0)]
    found = operations.diff(old, new)
    assert (found.added, found.removed, found.changed) == (["a/P3/w"], ["a/P1/y"], ["a/P1/x"])


def test_verify_finds_changed_and_vanished_objects_by_listing_only() -> None:
    store = MemoryStore({f"{PREFIX}ct/P1/s/a.dcm": b"a", f"{PREFIX}ct/P1/s/b.dcm": b"b",
                         f"{PREFIX}ct/P2/s/c.dcm": b"c", f"{PREFIX}top.txt": b"t"})
    frozen = [(obj.key[len(PREFIX):], obj.size, obj.etag, obj.mtime)
              for key in sorted(store.objects) if (obj := store.info(key))]
    assert operations.verify(frozen, store, PREFIX) == operations.Difference([], [], [])
    store.objects[f"{PREFIX}ct/P1/s/a.dcm"] = b"changed"
    del store.objects[f"{PREFIX}ct/P2/s/c.dcm"]
    del store.objects[f"{PREFIX}top.txt"]
    found = operations.verify(frozen, store, PREFIX)
    assert (found.changed, found.removed) == (["ct/P1/s/a.dcm"], ["ct/P2/s/c.dcm", "top.txt"])
    assert store.ranges == [], "no GET"
