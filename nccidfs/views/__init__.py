"""Everything nccidfs adds to the mirrored tree, as views under the hidden ``/.nccidfs/`` folder.

The mirrored tree holds exactly the bucket's keys; the views live out of every listing (as ZFS keeps
``.zfs`` out of ``ls -a``) yet reachable by path. One module per view:

- :mod:`~nccidfs.views.status`: ``status.json``, the daemon's counters;
- :mod:`~nccidfs.views.patients`: ``patients/<Patient_ID>/``, symlinks to a patient's folders and files;
- :mod:`~nccidfs.views.volumes`: ``volumes/``, CT and MR series as NIfTI volumes;
- :mod:`~nccidfs.views.images`: ``images/``, X-rays as PNGs;
- :mod:`~nccidfs.views.catalog`: ``catalog/``, a row per series and per patient, built in the background;
- :mod:`~nccidfs.views.cohorts`: ``cohorts/<NAME>/``, frozen cohorts from manifests.

What they share: :mod:`~nccidfs.views.registry` (the protocol a view answers and the folder that routes
to it), :mod:`~nccidfs.views.series` (series folders and their metadata twins, for volumes and images) and
:mod:`~nccidfs.views.generated` (files made from objects on open, kept in the disk cache).

A new view is a module here with a class that answers the :class:`~nccidfs.views.registry.Layer`
protocol; it is shown once it is registered under its name on the filesystem's ``control`` folder
(``ControlFolder.register``) in :func:`nccidfs.assembly.assemble`, where every other view is
registered, ``status.json`` included: the core knows no view by name.
"""
