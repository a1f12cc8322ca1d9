"""The FUSE adapter's attributes, checked without a mount."""

from __future__ import annotations

from nccidfs import fuseops


def test_a_symlinks_size_is_the_byte_length_of_a_non_ascii_target() -> None:
    target = "../../ct/Pätient-ø/1.2"
    st = fuseops.mfusepy.c_stat()
    fuseops.FuseOperations(None).fill_stat(st, fuseops.Entry("Pätient-ø", False, link=target))
    assert st.st_size == len(target.encode()) == len(target) + 2


def test_the_mfusepy_internals_nccidfs_binds_are_those_of_the_pinned_release() -> None:
    """fuseops drives libfuse's low-level API through mfusepy's private library handle and its ctypes
    structures; mfusepy is pinned to the release they were read from, and this fails first if one moves."""
    import ctypes

    import mfusepy

    assert isinstance(mfusepy._libfuse, ctypes.CDLL)
    for name in ("fuse_session_new", "fuse_session_mount", "fuse_session_loop_mt_312", "fuse_add_direntry_plus",
                 "fuse_reply_entry", "fuse_reply_open", "fuse_lowlevel_notify_inval_inode",
                 "fuse_lowlevel_notify_inval_entry", "fuse_lowlevel_notify_delete"):
        assert hasattr(mfusepy._libfuse, name), name
    assert {"fh", "keep_cache", "direct_io", "cache_readdir"} <= {f[0] for f in mfusepy.fuse_file_info._fields_}
    assert {"st_ino", "st_mode", "st_size", "st_mtimespec"} <= {f[0] for f in mfusepy.c_stat._fields_}
    assert {"want", "capable"} <= {f[0] for f in mfusepy.fuse_conn_info._fields_}


def kernel(attr_timeout: float | None = 3.0, listing_ttl: float = 300.0) -> fuseops.Kernel:
    from pathlib import Path

    from nccidfs.config import MountConfig

    config = MountConfig(Path("/m"), attr_timeout=attr_timeout, listing_ttl=listing_ttl)
    return fuseops.Kernel(fuseops.FuseOperations(None, uid=7, gid=8), config, attributes_for_files=True,
                          max_inodes=100)


def test_names_are_kept_until_their_listing_is_past_its_ttl_unless_attr_timeout_is_given() -> None:
    by_default = kernel(attr_timeout=None)
    assert by_default._valid_for(200.0) == 200.0
    assert by_default._valid_for(1.0) == by_default._valid_for(0.0) == fuseops.DEFAULT_ATTR_TIMEOUT
    assert kernel(attr_timeout=None, listing_ttl=2.0)._valid_for(0.0) == 2.0, "never past the TTL when it is shorter"
    assert kernel(attr_timeout=3.0)._valid_for(200.0) == kernel(attr_timeout=3.0)._valid_for(0.0) == 3.0
    same = fuseops.Entry("x", True, mtime=1.0)
    kept_long, kept_short = by_default._entry("/a/x", same, 200.0), by_default._entry("/a/y", same, 5.0)
    assert (kept_long.entry_timeout, kept_long.attr_timeout, kept_short.entry_timeout) == (200.0, 200.0, 5.0)


def test_entries_made_from_one_template_keep_their_own_number_and_attributes() -> None:
    """The kernel's entries are copies of one made per kind, size and time: each must still carry its own
    inode number, and an entry of another size or time must not be answered with the first one's."""
    made = kernel()
    first = made._entry("/a/one", fuseops.Entry("one", True, mtime=1_700_000_000.5), made._valid_for(200.0))
    second = made._entry("/a/two", fuseops.Entry("two", True, mtime=1_700_000_000.5), made._valid_for(0.0))
    small = made._entry("/a/f", fuseops.Entry("f", False, size=10, mtime=1_600_000_000.0), 3.0)
    large = made._entry("/a/g", fuseops.Entry("g", False, size=10_000, mtime=1_600_000_001.0), 3.0)
    assert first.ino != second.ino and second.ino != small.ino != large.ino
    for param in (first, second, small, large):
        assert param.attr.st_ino == param.ino
        assert (param.attr.st_uid, param.attr.st_gid, param.attr_timeout, param.entry_timeout) == (7, 8, 3.0, 3.0)
    assert first.attr.st_mode == second.attr.st_mode == fuseops.stat.S_IFDIR | 0o555
    assert (first.attr.st_mtimespec.tv_sec, first.attr.st_mtimespec.tv_nsec) == (1_700_000_000, 500_000_000)
    assert (small.attr.st_size, small.attr.st_blocks, small.attr.st_mtimespec.tv_sec) == (10, 1, 1_600_000_000)
    assert (large.attr.st_size, large.attr.st_blocks, large.attr.st_mtimespec.tv_sec) == (10_000, 20, 1_600_000_001)


def test_a_sub_directory_is_kept_no_longer_than_its_own_listing() -> None:
    made = kernel(attr_timeout=None)
    held = {"/a/old": 30.0}
    made._ops.listing_fresh = held.get  # type: ignore[method-assign]
    old, new, file = fuseops.Entry("old", True), fuseops.Entry("new", True), fuseops.Entry("f", False)
    assert made._entry_fresh("/a/old", old, 200.0, False) == 30.0
    assert made._entry_fresh("/a/new", new, 200.0, False) == 200.0, "listed after its parent, when it is"
    assert made._entry_fresh("/a/new", new, 200.0, True) == 0.0, "its parent listed again: it may be older"
    assert made._entry_fresh("/a/f", file, 200.0, True) == 200.0, "a file's attributes are its parent listing's"


def test_a_listing_reported_while_the_kernel_waits_for_it_is_given_not_invalidated() -> None:
    """A directory's first listing is reported as a change while the kernel's READDIR waits for it: the
    read takes the listing as it is once reported, and the kernel is not told to drop what it is given
    (it would list the directory again on the next walk). A change once the read is over is sent."""
    made = kernel(attr_timeout=None)
    folder = fuseops.Entry("d", True)
    ino = made._entry("/d", folder, 200.0).ino
    made._looked_up("/d", ino, folder)  # the kernel was given the folder
    notes: list[object] = []
    made._note = lambda send, wait: notes.append(send)  # type: ignore[method-assign]
    listings = [[fuseops.Entry("old", False)], [fuseops.Entry("new", False)]]
    reads = []

    def readdir(path: str, offset: int) -> tuple[list[fuseops.Entry], float]:
        reads.append(path)
        if len(reads) == 1:
            made.invalidate_listing("/d", False)  # the namespace reporting the listing it just made
        return listings[min(len(reads), 2) - 1], 200.0

    made._ops.readdir = readdir  # type: ignore[method-assign]
    _, rows = made._rows(ino, 0)  # the first page of a READDIR
    assert [name for name, _ in rows] == [b".", b"..", b"new"] and reads == ["/d", "/d"]
    assert notes == [], "the kernel was told to drop the listing it was being given"
    made.invalidate_listing("/d", False)
    assert len(notes) == 1, "a change after the kernel was given the listing must reach it"


def test_a_refresh_while_the_kernel_waits_for_a_listing_has_the_read_take_it_again() -> None:
    made = kernel(attr_timeout=None)
    folder = fuseops.Entry("d", True)
    ino = made._entry("/d", folder, 200.0).ino
    made._looked_up("/d", ino, folder)
    made._note = lambda send, wait: None  # type: ignore[method-assign]
    reads: list[str] = []

    def readdir(path: str, offset: int) -> tuple[list[fuseops.Entry], float]:
        reads.append(path)
        if len(reads) == 1:
            made.invalidate_listing("/", True)  # nccidfs refresh, while the first read is under way
            return [fuseops.Entry("before", False)], 200.0
        return [fuseops.Entry("after", False)], 200.0

    made._ops.readdir = readdir  # type: ignore[method-assign]
    _, rows = made._rows(ino, 0)
    assert [name for name, _ in rows] == [b".", b"..", b"after"]
