"""walkfloor.c's tree answered in Python: the same requests through the ctypes bindings nccidfs uses
(``nccidfs.fuseops``), with every answer made before the mount (one entry per node), so what is measured is
what a request costs the least in Python: the ctypes callback, the interpreter and the reply calls.

    python bench/floor/walkfloor.py KEYS MOUNTPOINT

Prints the requests it answered, by kind, when unmounted (SIGTERM or ``fusermount3 -u``).
"""

from __future__ import annotations

import ctypes
import errno
import stat
import sys
from collections import Counter
from typing import Any

from nccidfs import fuseops
from nccidfs.errors import NccidfsError
from nccidfs.fuseops import _EntryParam, _lib, _LowLevelOps

VALID_FOR = 300.0


class Tree:
    """Nodes by inode number (1 is the root): names, children, and the entry the kernel gets for each."""

    def __init__(self, keys: list[str]) -> None:
        self.names: list[bytes] = [b"", b""]  # inode 0 is unused
        self.children: list[list[int]] = [[], []]
        self.entries: list[Any] = [None, self._entry(1, True)]
        self.is_dir: list[bool] = [False, True]
        self.by_name: dict[tuple[int, bytes], int] = {}
        by_path: dict[str, int] = {"": 1}
        for key in keys:
            parent, path = 1, ""
            parts = key.split("/")
            for depth, part in enumerate(parts):
                path = f"{path}/{part}"
                node = by_path.get(path)
                if node is None:
                    node = by_path[path] = self._add(parent, part, depth < len(parts) - 1)
                parent = node
        self.file = _EntryParam(ino=0)  # a file listed without attributes, as nccidfs lists it
        self.file.attr.st_mode = stat.S_IFREG | 0o444
        self.file.attr.st_ino = fuseops.FUSE_UNKNOWN_INO  # readdir(3) skips an entry numbered 0

    def _entry(self, ino: int, is_dir: bool) -> Any:
        entry = _EntryParam(ino=ino, attr_timeout=VALID_FOR, entry_timeout=VALID_FOR)
        entry.attr.st_ino = ino
        entry.attr.st_mode = (stat.S_IFDIR | 0o555) if is_dir else (stat.S_IFREG | 0o444)
        entry.attr.st_nlink = 2 if is_dir else 1
        entry.attr.st_size = 0 if is_dir else 4096
        return entry

    def _add(self, parent: int, name: str, is_dir: bool) -> int:
        ino = len(self.names)
        self.names.append(name.encode())
        self.children.append([])
        self.entries.append(self._entry(ino, is_dir))
        self.is_dir.append(is_dir)
        self.children[parent].append(ino)
        self.by_name[(parent, name.encode())] = ino
        return ino


def serve(tree: Tree, mountpoint: str) -> Counter[str]:
    counts: Counter[str] = Counter()
    types = dict(fuseops._OPERATIONS)

    def lookup(req: int, parent: int, name: bytes) -> None:
        counts["lookup"] += 1
        child = tree.by_name.get((parent, name))
        if child is None:
            _lib.fuse_reply_err(req, errno.ENOENT)
        else:
            _lib.fuse_reply_entry(req, ctypes.byref(tree.entries[child]))

    def getattr_(req: int, ino: int, fi: Any) -> None:
        counts["getattr"] += 1
        _lib.fuse_reply_attr(req, ctypes.byref(tree.entries[ino].attr), VALID_FOR)

    def opendir(req: int, ino: int, fi: Any) -> None:
        counts["opendir"] += 1
        _lib.fuse_reply_err(req, errno.ENOSYS)

    def listing(req: int, ino: int, size: int, offset: int, plus: bool) -> None:
        buf = ctypes.create_string_buffer(size)
        address, used = ctypes.addressof(buf), 0
        children = tree.children[ino]
        for index in range(offset, len(children)):
            child = children[index]
            entry = tree.entries[child] if tree.is_dir[child] or not plus else tree.file
            if plus:
                length = _lib.fuse_add_direntry_plus(req, address + used, size - used, tree.names[child],
                                                     ctypes.byref(entry), index + 1)
            else:
                length = _lib.fuse_add_direntry(req, address + used, size - used, tree.names[child],
                                                ctypes.byref(entry.attr), index + 1)
            if used + length > size:
                break
            used += length
        _lib.fuse_reply_buf(req, buf, used)

    def readdir(req: int, ino: int, size: int, offset: int, fi: Any) -> None:
        counts["readdir"] += 1
        listing(req, ino, size, offset, False)

    def readdirplus(req: int, ino: int, size: int, offset: int, fi: Any) -> None:
        counts["readdirplus"] += 1
        listing(req, ino, size, offset, True)

    def forget(req: int, ino: int, nlookup: int) -> None:
        _lib.fuse_reply_none(req)

    def forget_multi(req: int, count: int, forgets: Any) -> None:
        _lib.fuse_reply_none(req)

    handlers = {"lookup": lookup, "getattr": getattr_, "opendir": opendir, "readdir": readdir,
                "readdirplus": readdirplus, "forget": forget, "forget_multi": forget_multi}
    table = _LowLevelOps(**{name: types[name](handler) for name, handler in handlers.items()})
    try:
        fuseops.serve_session(table, mountpoint, ["ro", "fsname=walkfloor", "default_permissions"], name=b"walkfloor")
    except NccidfsError as error:
        raise SystemExit(f"walkfloor.py: {error}") from None
    return counts


def main() -> int:
    if len(sys.argv) != 3:
        print("usage: walkfloor.py KEYS MOUNTPOINT", file=sys.stderr)
        return 2
    with open(sys.argv[1]) as keys:
        tree = Tree(keys.read().split())
    sys.setswitchinterval(fuseops.GIL_SWITCH_INTERVAL)
    counts = serve(tree, sys.argv[2])
    print(f"nodes {len(tree.names) - 1} " + " ".join(f"{name} {count}" for name, count in sorted(counts.items())),
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
