"""Derived views of the warehouse that no single object holds: a CT or MR series as one NIfTI volume
(``volume``), an X-ray as a display-ready PNG (``image``) and tables of every series and patient
(``catalog``).

Every function here is pure: it is handed bytes or parsed JSON and returns bytes or rows. Nothing here
knows FUSE, S3 or the cache, so the core decides what to fetch and when, and these builders can be
tested against reference tools (dcm2niix, dcmtk) without a mount. Each builder knows its output's exact
size before the pixels are read, because a file's size is shown at stat time.
"""
