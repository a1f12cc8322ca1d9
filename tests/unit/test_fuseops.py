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
