"""The mounted tree as a function of S3 listings: :mod:`~nccidfs.namespace.rules` (which keys show, under
which names), :mod:`~nccidfs.namespace.listings` (the cache of listings, :class:`Namespace`) and
:mod:`~nccidfs.namespace.readahead` (walks listed ahead)."""

from nccidfs.namespace.listings import Namespace

__all__ = ["Namespace"]
