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


def kernel() -> fuseops.Kernel:
    from pathlib import Path

    from nccidfs.config import MountConfig

    return fuseops.Kernel(fuseops.FuseOperations(None, uid=7, gid=8), MountConfig(Path("/m"), attr_timeout=3.0),
                          attributes_for_files=True, max_inodes=100)


def test_entries_made_from_one_template_keep_their_own_number_and_attributes() -> None:
    """The kernel's entries are copies of one made per kind, size and time: each must still carry its own
    inode number, and an entry of another size or time must not be answered with the first one's."""
    made = kernel()
    first = made._entry("/a/one", fuseops.Entry("one", True, mtime=1_700_000_000.5))
    second = made._entry("/a/two", fuseops.Entry("two", True, mtime=1_700_000_000.5))
    small = made._entry("/a/f", fuseops.Entry("f", False, size=10, mtime=1_600_000_000.0))
    large = made._entry("/a/g", fuseops.Entry("g", False, size=10_000, mtime=1_600_000_001.0))
    assert first.ino != second.ino and second.ino != small.ino != large.ino
    for param in (first, second, small, large):
        assert param.attr.st_ino == param.ino
        assert (param.attr.st_uid, param.attr.st_gid, param.attr_timeout, param.entry_timeout) == (7, 8, 3.0, 3.0)
    assert first.attr.st_mode == second.attr.st_mode == fuseops.stat.S_IFDIR | 0o555
    assert (first.attr.st_mtimespec.tv_sec, first.attr.st_mtimespec.tv_nsec) == (1_700_000_000, 500_000_000)
    assert (small.attr.st_size, small.attr.st_blocks, small.attr.st_mtimespec.tv_sec) == (10, 1, 1_600_000_000)
    assert (large.attr.st_size, large.attr.st_blocks, large.attr.st_mtimespec.tv_sec) == (10_000, 20, 1_600_000_001)
