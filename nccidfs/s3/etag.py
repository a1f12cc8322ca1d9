"""S3's rule, in one place: the ETag of a single-part upload is the MD5 of the object's bytes, as 32
lower-case hex digits; a multipart upload's is ``<hex>-N`` and says nothing of them.

The S3 store fills :attr:`~nccidfs.objects.ObjectInfo.md5` with it. The listing index and a cohort's
tree, which persist only the ETags S3 listed, derive the MD5 with it again when they read them back.
"""

from __future__ import annotations

import re

_PLAIN_MD5 = re.compile("[0-9a-f]{32}")


def md5_of_etag(etag: str) -> str | None:
    """The object's MD5 when its ETag is one (a single-part upload), else None."""
    return etag if _PLAIN_MD5.fullmatch(etag) is not None else None
