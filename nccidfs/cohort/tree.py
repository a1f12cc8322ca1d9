"""A manifest's objects packed for a daemon: every listing of the cohort answered from memory, no S3.

A million Python key strings and tuples would take about 300 MiB, so nothing is kept per object but
packed numbers: sizes and times in arrays, a plain-MD5 ETag as 16 bytes (any other ETag in a dict), and
the leaf names of each *run* (consecutive keys in one folder) joined into one string. A run keeps its
folder and its first key; since keys are sorted, the runs under any prefix are contiguous, found by
bisection of the first keys. About 90 bytes an object for a CT series (a 36-character image name).
"""

from __future__ import annotations

import bisect
import itertools
import json
import operator
import re
from array import array
from typing import BinaryIO

from nccidfs.cohort.manifest import Columns
from nccidfs.objects import Listing, ObjectInfo
from nccidfs.s3.etag import md5_of_etag, md5s_of_etags

_MD5_BYTES = 16
_MAX_META = 1 << 30  # the first line of a kept tree: counts, and the ETags that are not plain MD5s
_HEX = re.compile("[0-9a-f]*")
_SPLIT = operator.methodcaller("rpartition", "/")
_FOLDER, _LEAF = operator.itemgetter(0), operator.itemgetter(2)


def prefix_end(prefix: str) -> str:
    """The least string after every key under ``prefix`` (which ends in ``/``)."""
    return prefix[:-1] + chr(ord("/") + 1)


class FrozenTree:
    """Answers ``list_dir`` and ``list_tree`` as a store would, from a manifest's objects; objects last
    modified after ``as_of`` are left out as they are added."""

    def __init__(self, prefix: str, as_of: float | None = None) -> None:
        self.prefix = prefix
        self._as_of = as_of
        self._firsts: list[str] = []  # the first key of each run
        self._folders: list[str] = []  # each run's folder, ending in "/"
        self._names: list[str] = []  # each run's leaf names, joined by "\n" (never in a safe name)
        self._starts = array("q")  # each run's first object
        self._sizes = array("q")
        self._mtimes = array("d")
        self._etags = bytearray()
        self._other_etags: dict[int, str] = {}
        self._run: list[str] = []
        self._folder = ""
        # The leaf names of the run looked up last: a walk looks up every name of a folder in turn.
        self._split: tuple[int, list[str]] = (-1, [])
        self.objects = 0
        self.bytes = 0

    def add(self, chunk: Columns) -> None:
        """Take a chunk of a manifest's objects, in key order (keys relative to the prefix). The work per
        object is done by C loops (map, groupby, join); Python steps once per folder."""
        if self._as_of is not None and max(chunk.mtimes) > self._as_of:
            kept = [row for row in chunk.rows() if row[3] <= self._as_of]
            if not kept:
                return
            chunk = Columns.of(kept)
        self._pack_etags(chunk.etags)
        self._sizes.extend(chunk.sizes)
        self._mtimes.extend(chunk.mtimes)
        self.bytes += sum(chunk.sizes)
        at = self.objects
        for folder, group in itertools.groupby(map(_SPLIT, chunk.keys), _FOLDER):
            leaves = list(map(_LEAF, group))
            full = f"{self.prefix}{folder}/" if folder else self.prefix
            if full != self._folder or not self._run:
                self._close_run()
                self._folder = full
                self._firsts.append(full + leaves[0])
                self._folders.append(full)
                self._starts.append(at)
            self._run.extend(leaves)
            at += len(leaves)
        self.objects = at

    def _pack_etags(self, etags: list[str]) -> None:
        joined = "".join(etags)
        if len(joined) == _MD5_BYTES * 2 * len(etags) and _HEX.fullmatch(joined):
            self._etags += bytes.fromhex(joined)  # every one a plain MD5, as nearly always
            return
        for number, etag in enumerate(etags, self.objects):
            if len(etag) == _MD5_BYTES * 2 and _HEX.fullmatch(etag):
                self._etags += bytes.fromhex(etag)
            else:
                self._etags += bytes(_MD5_BYTES)
                self._other_etags[number] = etag

    def _close_run(self) -> None:
        if self._run:
            self._names.append("\n".join(self._run))
            self._run.clear()

    def finish(self) -> FrozenTree:
        self._close_run()
        self._starts.append(self.objects)
        return self

    # -- kept whole ------------------------------------------------------------------------------------
    def dump(self, out: BinaryIO) -> None:
        """Write the finished tree: a JSON line of counts, then its arrays and texts as they are held."""
        texts = ["\0".join(texts).encode() for texts in (self._firsts, self._folders, self._names)]
        arrays = [self._starts.tobytes(), self._sizes.tobytes(), self._mtimes.tobytes(), bytes(self._etags)]
        sections = [*arrays, *texts]
        out.write(json.dumps({"prefix": self.prefix, "objects": self.objects, "bytes": self.bytes,
                              "other_etags": self._other_etags, "sections": [len(s) for s in sections]}).encode())
        out.write(b"\n")
        for section in sections:
            out.write(section)

    @classmethod
    def load(cls, data: BinaryIO) -> FrozenTree:
        """A tree as :meth:`dump` wrote it (ValueError where the file is not whole)."""
        meta = json.loads(data.readline(_MAX_META))
        sections = [data.read(length) for length in meta["sections"]]
        if [len(section) for section in sections] != meta["sections"] or data.read(1):
            raise ValueError("truncated")
        tree = cls(meta["prefix"])
        starts, sizes, mtimes, etags, firsts, folders, names = sections
        tree._starts.frombytes(starts)
        tree._sizes.frombytes(sizes)
        tree._mtimes.frombytes(mtimes)
        tree._etags = bytearray(etags)
        tree._firsts, tree._folders, tree._names = (text.decode().split("\0") for text in (firsts, folders, names))
        tree._other_etags = {int(number): etag for number, etag in meta["other_etags"].items()}
        tree.objects, tree.bytes = meta["objects"], meta["bytes"]
        runs = len(tree._firsts)
        if not (len(tree._folders) == len(tree._names) == runs == len(tree._starts) - 1
                and len(tree._sizes) == len(tree._mtimes) == tree.objects == len(tree._etags) // _MD5_BYTES):
            raise ValueError("inconsistent")
        return tree

    # -- answers ----------------------------------------------------------------------------------
    def _runs(self, prefix: str) -> range:
        return range(bisect.bisect_left(self._firsts, prefix), bisect.bisect_left(self._firsts, prefix_end(prefix)))

    def _leaves(self, run: int) -> list[str]:
        split = self._split  # one read of the attribute: another thread may replace it meanwhile
        if split[0] != run:
            split = self._split = (run, self._names[run].split("\n"))
        return split[1]

    def _etag(self, number: int) -> str:
        return self._other_etags.get(number) or self._etags[number * _MD5_BYTES:(number + 1) * _MD5_BYTES].hex()

    def _object(self, key: str, number: int) -> ObjectInfo:
        etag = self._etag(number)
        return ObjectInfo(key, self._sizes[number], etag, self._mtimes[number], md5_of_etag(etag))

    def _objects(self, run: int) -> list[ObjectInfo]:
        """A run's objects, the MD5s of their ETags found in one scan of the run."""
        folder, first, leaves = self._folders[run], self._starts[run], self._leaves(run)
        packed = self._etags[first * _MD5_BYTES:(first + len(leaves)) * _MD5_BYTES].hex()
        etags = [packed[at:at + 2 * _MD5_BYTES] for at in range(0, len(packed), 2 * _MD5_BYTES)]
        if self._other_etags:
            etags = [self._other_etags.get(first + at, etag) for at, etag in enumerate(etags)]
        md5s = md5s_of_etags(etags)
        sizes, mtimes = self._sizes, self._mtimes
        return [ObjectInfo(folder + leaf, sizes[first + at], etags[at], mtimes[first + at], md5s[at])
                for at, leaf in enumerate(leaves)]

    def find(self, key: str) -> ObjectInfo | None:
        """The object at ``key`` (a full key), if the cohort holds it: a bisection, no listing."""
        run = bisect.bisect_right(self._firsts, key) - 1
        if run < 0 or not key.startswith(folder := self._folders[run]) or "/" in key[len(folder):]:
            return None
        leaves = self._leaves(run)
        at = bisect.bisect_left(leaves, key[len(folder):])
        if at == len(leaves) or folder + leaves[at] != key:
            return None
        return self._object(key, self._starts[run] + at)

    def is_folder(self, prefix: str) -> bool:
        """Whether the cohort holds an object under ``prefix`` (which ends in ``/``)."""
        return bool(self._runs(prefix))

    def list_dir(self, prefix: str) -> Listing:
        """One level under ``prefix``: its objects and the folders that hold objects."""
        objects: list[ObjectInfo] = []
        prefixes: dict[str, None] = {}
        for run in self._runs(prefix):
            folder = self._folders[run]
            if folder == prefix:
                objects.extend(self._objects(run))
            else:
                prefixes[folder[:folder.index("/", len(prefix)) + 1]] = None
        return Listing(tuple(sorted(prefixes)), tuple(sorted(objects)))

    def list_tree(self, prefix: str, start_after: str = "", end: str | None = None) -> Listing:
        """Every object under ``prefix``, after ``start_after`` and before ``end`` when given."""
        found: list[ObjectInfo] = []
        for run in self._runs(prefix):
            found.extend(obj for obj in self._objects(run)
                         if obj.key > start_after and (end is None or obj.key < end))
        return Listing((), tuple(found))
