"""The inode numbers held for the kernel: counts, forgetting, and what is given up past the ceiling."""

from __future__ import annotations

from nccidfs.inodes import ROOT, Inodes


def looked_up(inodes: Inodes, path: str, is_dir: bool = False) -> int:
    ino = inodes.reserve(path)
    inodes.looked_up(path, ino, is_dir)
    return ino


def test_a_number_lives_until_the_kernel_forgets_every_lookup_of_it() -> None:
    inodes = Inodes(limit=100)
    ino = looked_up(inodes, "/ct")
    assert looked_up(inodes, "/ct") == ino and inodes.path(ino) == "/ct"
    assert inodes.forget(ino, 1) and inodes.number("/ct") == ino
    assert not inodes.forget(ino, 1) and inodes.number("/ct") is None
    assert looked_up(inodes, "/ct") != ino, "numbers are never reused"
    assert inodes.forget(ROOT, 5) and inodes.path(ROOT) == "/"


def test_past_the_limit_the_oldest_are_given_up_except_the_busy_and_files_get_new_numbers() -> None:
    inodes = Inodes(limit=10)
    directory = looked_up(inodes, "/ct", is_dir=True)
    files = [looked_up(inodes, f"/ct/{n}") for n in range(12)]
    assert len(inodes) == 14
    given = inodes.give_up(busy=lambda ino: ino == files[0])
    assert [g.ino for g in given] == [directory, *files[1:5]]  # down to 9: 90% of the limit
    assert all(g.parent == directory for g in given[1:]) and given[0].parent == ROOT and given[0].is_dir
    assert inodes.number("/ct") == directory, "a directory keeps its number: the kernel may still use it"
    assert inodes.number("/ct/1") is None and looked_up(inodes, "/ct/1") != files[1]
    assert inodes.path(files[1]) == "/ct/1", "until the kernel forgets it, the old number still answers"
    assert [g.ino for g in inodes.give_up(busy=lambda ino: False)][:2] == [files[0], files[5]]


def test_under_names_a_directory_and_everything_below_it() -> None:
    inodes = Inodes(limit=10)
    ct, patient, other = (looked_up(inodes, path, True) for path in ("/ct", "/ct/P1", "/ct-metadata"))
    assert sorted(inodes.under("/ct")) == sorted([ct, patient])
    assert set(inodes.under("/")) == {ROOT, ct, patient, other}


def test_names_in_are_the_names_held_directly_in_a_directory() -> None:
    inodes = Inodes(limit=10)
    for path in ("/ct", "/ct/P1", "/ct/P1/s", "/ct/P2", "/ct-metadata"):
        looked_up(inodes, path, True)
    assert sorted(inodes.names_in("/ct")) == ["P1", "P2"]
    assert sorted(inodes.names_in("/")) == ["ct", "ct-metadata"]
    assert inodes.names_in("/ct/P2") == []
