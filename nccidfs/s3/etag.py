"""S3's rule, in one place: the ETag of a single-part upload is the MD5 of the object's bytes, as 32
lower-case hex digits; a multipart upload's is ``<hex>-N`` and says nothing of them.

The S3 store fills :attr:`~nccidfs.objects.ObjectInfo.md5` with it. The listing index and a cohort's
tree, which persist only the ETags S3 listed, derive the MD5 with it again when they read them back.
"""

from __future__ import annotations

import re

MD5_HEX_DIGITS = 32
_HEX = re.compile("[0-9a-f]*")
_HEX_DIGITS = b"0123456789abcdef"


def md5_of_etag(etag: str) -> str | None:
    """The object's MD5 when its ETag is one (a single-part upload), else None."""
    return etag if len(etag) == MD5_HEX_DIGITS and _HEX.fullmatch(etag) is not None else None


def md5s_of_etags(etags: list[str]) -> list[str] | list[str | None]:
    """:func:`md5_of_etag` of each: in one scan of them all when every one is an MD5, as on nearly every
    page of a listing, where a scan per key cost a fifth of the page's parse."""
    joined = "".join(etags)
    # Deleting every hex digit leaves nothing: a scan in C, ten times a regular expression's speed.
    if (len(joined) == MD5_HEX_DIGITS * len(etags) and joined.isascii()
            and not joined.encode("ascii").translate(None, _HEX_DIGITS)):
        return etags
    return [md5_of_etag(etag) for etag in etags]
