"""A directory listing packed into plain values, to hold many small listings in little memory. Pure: no I/O.

A walk's directories mostly hold one to three names (a patient's studies, a study's series, a series' one
X-ray), and as named tuples, strings and a dict each listing costs about 1 KiB, most of it the same few
things over and over: a sub-directory's entry is its name and the mount time, a file's object key is the
directory's prefix and its name. A packed listing keeps only what differs, as a tuple of names and small
tuples that :mod:`marshal` turns into one bytes object; its entries are made again when asked for.
"""

from __future__ import annotations

from nccidfs.objects import Entry, ObjectInfo

# A sub-directory with no size and the mount time: its name alone.
_DirRow = str
# A file whose object is named by the directory's prefix and its name: (name, size, etag, mtime, md5).
_FileRow = tuple[str, int, str, float, str | None]
# Anything else, field by field: (key, name, is_dir, size, mtime, the object's fields or None, link).
_OtherRow = tuple[str, str, bool, int, float, _FileRow | None, str | None]
Row = _DirRow | _FileRow | _OtherRow
_FILE_FIELDS = 5


def pack(entries: dict[str, Entry], prefix: str, dir_mtime: float) -> tuple[Row, ...]:
    """The rows of a listing of directory ``prefix`` whose sub-directories show ``dir_mtime``."""
    rows: list[Row] = []
    for key, entry in entries.items():
        name, is_dir, size, mtime, obj, link = entry
        if key != name or link is not None:
            rows.append(_other(key, entry))
        elif is_dir is True and obj is None and size == 0 and mtime == dir_mtime:
            rows.append(name)
        elif (is_dir is False and obj is not None and obj.key == prefix + name and obj.size == size
              and obj.mtime == mtime):
            rows.append((name, size, obj.etag, mtime, obj.md5))
        else:
            rows.append(_other(key, entry))
    return tuple(rows)


def _other(key: str, entry: Entry) -> _OtherRow:
    name, is_dir, size, mtime, obj, link = entry
    return key, name, is_dir, size, mtime, None if obj is None else tuple(obj), link  # type: ignore[return-value]


def unpack(rows: tuple[Row, ...], prefix: str, dir_mtime: float) -> dict[str, Entry]:
    """The entries :func:`pack` was given, in their order."""
    entries: dict[str, Entry] = {}
    for row in rows:
        if isinstance(row, str):
            entries[row] = Entry(row, True, 0, dir_mtime)
        elif len(row) == _FILE_FIELDS:
            name, size, etag, mtime, md5 = row  # type: ignore[misc]
            entries[name] = Entry(name, False, size, mtime, ObjectInfo(prefix + name, size, etag, mtime, md5))
        else:
            key, name, is_dir, size, mtime, obj, link = row  # type: ignore[misc]
            entries[key] = Entry(name, is_dir, size, mtime, None if obj is None else ObjectInfo(*obj), link)
    return entries
