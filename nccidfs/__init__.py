"""nccidfs: mount the NCCID chest imaging warehouse (S3) as a read-only directory tree.

Importing the package loads nothing FUSE-related, so ``--help`` and the unit tests work on machines
without libfuse; the binding is confined to :mod:`nccidfs.fuseops`.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
