"""The storage seam: what the filesystem needs of an object store (:mod:`.protocol`) and the request
counters every store keeps (:mod:`.stats`). Nothing here knows a backend; each lives in a package of its
own (:mod:`nccidfs.s3`), and :func:`nccidfs.mount.open_store` picks one from the configuration."""
