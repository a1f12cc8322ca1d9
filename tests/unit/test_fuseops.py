"""The FUSE adapter's attributes, checked without a mount."""

from __future__ import annotations

from nccidfs import fuseops


def test_a_symlinks_size_is_the_byte_length_of_a_non_ascii_target() -> None:
    target = "../../ct/Pätient-ø/1.2"
    st = fuseops.mfusepy.c_stat()
    fuseops.FuseOperations(None).fill_stat(st, fuseops.Entry("Pätient-ø", False, link=target))
    assert st.st_size == len(target.encode()) == len(target) + 2
