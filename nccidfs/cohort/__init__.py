"""Reproducible cohorts: a selection of the warehouse frozen into a manifest file, and mounted again exactly.

- :mod:`.manifest`: the file format (``NAME.nccid-cohort``), written and read strictly, within bounds.
- :mod:`.tree`: a manifest's objects packed for a daemon, answering listings without S3.
- :mod:`.source`: the storage seam over a manifest (listings from it, reads pinned to its ETags), and
  the filter that shows the warehouse as of a date.
- :mod:`.mounting`: a mount's store and root from a manifest (checked whole first), or as of a date.
- :mod:`.select`: a selection from the catalog's tables, and the objects it holds from the listing index.
- :mod:`.operations`: split, verify and diff of manifests.
- :mod:`.command`: the ``nccidfs cohort`` subcommands.

A running mount shows the manifests of its cache directory under ``/.nccidfs/cohorts/``
(:mod:`nccidfs.views.cohorts`).

See docs/cohorts.md for the format and docs/semantics.md for what a cohort mount shows.
"""
