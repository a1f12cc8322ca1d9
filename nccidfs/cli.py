"""The command line: parse flags into a frozen Config, run start-up checks, mount, and map errors to exits.

Flags take their defaults from :mod:`nccidfs.config`, which also validates every value; this module
only translates. Every mistake ends as one line on stderr and exit 2, every runtime failure as one line
and exit 1 (see :data:`EXIT_CODES`).
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import logging
import os
import select
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from nccidfs import __version__
from nccidfs.config import (
    DEFAULT_ATTR_TIMEOUT,
    CacheConfig,
    Config,
    MountConfig,
    ReadConfig,
    S3Config,
    default_cache_dir,
    default_log_file,
    demo_cache_dir,
    format_size,
    normalize_prefix,
    parse_address,
    parse_list,
    parse_size,
    parse_umask,
)
from nccidfs.errors import ConfigError, NccidfsError
from nccidfs.layout import KNOWN_FOLDERS
from nccidfs.log import LEVELS, make_private, setup_logging

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
READY_TIMEOUT = 60.0

USAGE = ("%(prog)s [mount] MOUNTPOINT [options]\n"
         "       %(prog)s {demo,status,metrics,refresh,prefetch,catalog,cache,cohort} ... (each has --help)")
COMMANDS = """\
commands:
  nccidfs [mount] MOUNTPOINT         mount the warehouse; returns once mounted (-f stays in the foreground).
                                     'mount' is needed only for a MOUNTPOINT named like a command
  nccidfs demo [MOUNTPOINT]          mount a synthetic warehouse served from 127.0.0.1, no AWS account
  nccidfs status MOUNTPOINT          a running mount's cache, S3 requests, errors and downloads (JSON)
  nccidfs metrics MOUNTPOINT         the same figures and latencies for Prometheus (text format)
  nccidfs refresh MOUNTPOINT [PATH]  drop cached listings so new uploads show at once (so does SIGHUP)
  nccidfs prefetch PATH...           warm the cache for patients, studies or series, with progress
  nccidfs catalog build MOUNTPOINT   build .nccidfs/catalog/{series,patients}.csv, with progress
  nccidfs cache stats|clear          what a cache directory holds; empty it
  nccidfs cohort create|split|verify|diff   freeze a selection into a manifest, split, check, compare
"""
EXAMPLES = """\
examples:
  nccidfs demo                                   try it: ./nccid-demo, served from 127.0.0.1
  nccidfs /mnt/nccid --profile nccid             mount the real bucket with an AWS profile
  nccidfs /mnt/nccid -f --log-level debug        stay in the foreground, log every S3 request
  nccidfs mount ./status                         a mount point named like a command
  nccidfs refresh /mnt/nccid ct/Covid1           show new uploads under one patient at once
  nccidfs prefetch /mnt/nccid/ct/Covid1 -j 16    download a patient's images into the cache
  fusermount3 -u /mnt/nccid                      unmount
"""
EXIT_CODES = """\
exit codes:
  0    success
  1    a runtime failure: S3 unreachable or failing (trying again later may work), the mount failed,
       a daemon not answering
  2    bad input, to be fixed before trying again: a flag, the mount point or cache dir, FUSE closed to
       this user, credentials, access denied, bucket or prefix not found, a path not in the mount
  130  interrupted (Ctrl-C)
"""


class _Parser(argparse.ArgumentParser):
    """Bad flags get one line and exit 2, not the whole usage block; help text keeps its layout."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(**kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see '{self.prog} --help')\n")


def _add_bucket_options(parser: argparse.ArgumentParser) -> None:
    bucket = parser.add_argument_group("Bucket")
    bucket.add_argument("--bucket", default=S3Config.bucket, help="S3 bucket (default: %(default)s)")
    bucket.add_argument("--prefix", default=S3Config.prefix,
                        help="key prefix to mount, with or without its trailing slash (default: %(default)s)")
    bucket.add_argument("--profile", help="AWS profile from ~/.aws/config (default: boto3's usual chain)")
    bucket.add_argument("--region", default=S3Config.region, help="bucket region (default: %(default)s)")
    bucket.add_argument("--endpoint-url", metavar="URL", help="S3-compatible endpoint, e.g. http://127.0.0.1:9000")
    bucket.add_argument("--modalities", metavar="LIST",
                        help="folders to probe when the prefix itself may not be listed, separated by ',' "
                             f"(or ':' or '+', which survive fstab) (default: {','.join(KNOWN_FOLDERS)})")


def _add_mount_options(parser: argparse.ArgumentParser) -> None:
    mount = parser.add_argument_group("Mount")
    mount.add_argument("--listing-ttl", type=float, default=MountConfig.listing_ttl, metavar="SECONDS",
                       help="how long a directory listing is trusted before S3 is asked again; at least 1 "
                            "(default: %(default)g)")
    mount.add_argument("--max-listing-entries", type=int, default=MountConfig.max_listing_entries, metavar="N",
                       help="bound on the memory listings take, in KiB: 1 KiB a name, a small listing packed in a "
                            "few hundred bytes; least recently used listings are dropped first; the on-disk index "
                            "keeps the rest (default: %(default)s)")
    mount.add_argument("--max-inodes", type=int, default=MountConfig.max_inodes, metavar="N",
                       help="bound on the files and directories the kernel may keep known to the daemon; past "
                            "it the kernel is asked to forget the oldest (default: %(default)s)")
    mount.add_argument("--timeout", type=float, default=S3Config.deadline, metavar="SECONDS",
                       help="a read or listing that S3 cannot serve within this time fails with EIO, "
                            "after retries (default: %(default)g)")
    mount.add_argument("--attr-timeout", type=float, default=MountConfig.attr_timeout, metavar="SECONDS",
                       help="how long the kernel trusts a file's attributes and lookups (default: until the "
                            f"listing they came from is past --listing-ttl, at least {DEFAULT_ATTR_TIMEOUT:g} s)")
    mount.add_argument("--prefetch", action=argparse.BooleanOptionalAction, default=ReadConfig.prefetch,
                       help="when a .dcm is read past its header, fetch the rest of its series in the "
                            "background (default: on)")
    mount.add_argument("--verify", action=argparse.BooleanOptionalAction, default=ReadConfig.verify,
                       help="check every object fetched whole against its MD5 ETag before it is served or "
                            "cached; off saves about 1.3 CPU seconds per GiB read (default: on)")
    mount.add_argument("--readdirplus", action="store_true",
                       help="return attributes with directory listings: ls -l of a big directory needs no "
                            "lookup per entry, but every file a walk lists becomes an inode the daemon holds a "
                            "number for, up to --max-inodes (default: off)")
    mount.add_argument("--allow-other", action="store_true",
                       help="let other users read the mount (needs user_allow_other in /etc/fuse.conf)")
    mount.add_argument("--allow-root", action="store_true",
                       help="let root read the mount as well as you (needs user_allow_other in /etc/fuse.conf)")
    mount.add_argument("--metrics-addr", metavar="[HOST:]PORT",
                       help="also serve Prometheus metrics over HTTP at http://HOST:PORT/metrics; HOST defaults "
                            "to 127.0.0.1, since the listener has no authentication (default: only through "
                            "'nccidfs metrics')")
    mount.add_argument("--uid", type=int, help="owner shown for every file (default: the mounting user)")
    mount.add_argument("--gid", type=int, help="group shown for every file (default: the mounting user's)")
    mount.add_argument("--umask", default=f"{MountConfig.umask:03o}", metavar="OCTAL",
                       help="bits removed from files' 0444 and directories' 0555 (default: %(default)s)")


def _add_cohort_options(parser: argparse.ArgumentParser) -> None:
    cohort = parser.add_argument_group("Cohort")
    cohort.add_argument("--cohort", type=Path, metavar="FILE",
                        help="mount exactly the objects of a cohort manifest (NAME.nccid-cohort), each read "
                             "pinned to its frozen ETag; no listing is sent to S3")
    cohort.add_argument("--as-of", metavar="DATE",
                        help="show only objects last modified on or before DATE (2021-06-30, or a time "
                             "such as 2021-06-30T12:00:00Z)")


def _add_cache_and_logging_options(parser: argparse.ArgumentParser, cache_default: str) -> None:
    cache = parser.add_argument_group("Cache")
    cache.add_argument("--cache-dir", type=Path, metavar="DIR",
                       help=f"where fetched bytes are kept across restarts (default: {cache_default})")
    cache.add_argument("--cache-size", default=format_size(CacheConfig.size_bytes), metavar="SIZE",
                       help="bound on the cache's disk use; bytes or K/M/G/T (powers of 1024) (default: %(default)s)")
    cache.add_argument("--cache-min-free", default=format_size(CacheConfig.min_free_bytes), metavar="SIZE",
                       help="space the cache leaves free on its disk, evicting to keep it; 0 for none "
                            "(default: %(default)s)")
    logging_group = parser.add_argument_group("Logging")
    logging_group.add_argument("--log-level", default=MountConfig.log_level, choices=LEVELS,
                               help="debug shows every S3 request (default: %(default)s)")
    logging_group.add_argument("--log-file", type=Path, metavar="FILE",
                               help=f"where to log (default: stderr with --foreground, else {default_log_file()})")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="nccidfs", usage=USAGE,
        description="Mount the NCCID imaging warehouse (s3://nccid-data-warehouse-prod/training/) read-only. "
                    "Listings come from S3 lazily and are cached; file bytes are fetched as they are read "
                    "into a bounded disk cache that survives restarts.",
        epilog="\n".join((COMMANDS, EXAMPLES, EXIT_CODES)),
    )
    # Optional here and required in run_mount, so that a mistyped flag is named as one before a missing
    # mount point is.
    parser.add_argument("mountpoint", type=Path, nargs="?", metavar="MOUNTPOINT",
                        help="an empty directory to mount on")
    parser.add_argument("-f", "--foreground", action="store_true",
                        help="stay in the foreground (default: return once the mount is ready)")
    parser.add_argument("--version", action="version", version=f"nccidfs {__version__}")
    _add_bucket_options(parser)
    _add_mount_options(parser)
    _add_cohort_options(parser)
    _add_cache_and_logging_options(parser, str(default_cache_dir()))
    return parser


def build_demo_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="nccidfs demo",
        description="Start an S3 server on 127.0.0.1 seeded with a small synthetic NCCID warehouse (DICOM, "
                    "metadata JSON, clinical JSON) and mount it in the foreground through the same code as the "
                    "real bucket. Once mounted it prints the S3 endpoint and commands to try. Ctrl-C unmounts "
                    "and stops the server.",
        epilog=EXIT_CODES,
    )
    parser.add_argument("mountpoint", type=Path, nargs="?", default=Path("nccid-demo"), metavar="MOUNTPOINT",
                        help="where to mount; created if missing (default: ./nccid-demo)")
    _add_mount_options(parser)
    _add_cache_and_logging_options(parser, f"{demo_cache_dir(Path('MOUNTPOINT')).parent}/<hash of MOUNTPOINT>, "
                                           "one per demo mount point")
    return parser


def _config(args: argparse.Namespace, s3: S3Config, foreground: bool) -> Config:
    mountpoint = args.mountpoint.expanduser().absolute()
    log_file = args.log_file or (None if foreground else default_log_file())
    return Config(
        mount=MountConfig(mountpoint=mountpoint, foreground=foreground, allow_other=args.allow_other,
                          allow_root=args.allow_root, listing_ttl=args.listing_ttl,
                          max_listing_entries=args.max_listing_entries, max_inodes=args.max_inodes,
                          readdirplus=args.readdirplus,
                          attr_timeout=args.attr_timeout, uid=args.uid, gid=args.gid,
                          umask=parse_umask(args.umask), log_level=args.log_level,
                          log_file=None if log_file is None else log_file.expanduser().absolute(),
                          metrics_addr=None if args.metrics_addr is None else parse_address(args.metrics_addr),
                          **_cohort_fields(args)),
        s3=dataclasses.replace(s3, deadline=args.timeout),
        cache=CacheConfig(directory=(args.cache_dir or default_cache_dir()).expanduser().absolute(),
                          size_bytes=parse_size(args.cache_size),
                          min_free_bytes=parse_size(args.cache_min_free, allow_zero=True)),
        read=ReadConfig(prefetch=args.prefetch, verify=args.verify),
    )


def _cohort_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The Cohort flags, where the parser has them (the demo's has not)."""
    cohort, as_of = getattr(args, "cohort", None), getattr(args, "as_of", None)
    if as_of is None:
        return {"cohort": cohort and cohort.expanduser().absolute()}
    from nccidfs.cohort.source import parse_as_of

    return {"cohort": cohort and cohort.expanduser().absolute(), "as_of": parse_as_of(as_of)}


def _s3_config(args: argparse.Namespace) -> S3Config:
    folders = parse_list(args.modalities) if args.modalities is not None else KNOWN_FOLDERS
    return S3Config(bucket=args.bucket, prefix=normalize_prefix(args.prefix), region=args.region,
                    profile=args.profile, endpoint_url=args.endpoint_url, folders=folders)


def _prepare(config: Config) -> None:
    """Local checks before any server is contacted: mount point, where the cache dir lies, log file.

    The cache dir itself is checked and locked by the daemon as it starts; its ConfigError still ends
    as one line and exit 2, also from a background daemon (see :func:`_serve_in_background`).
    """
    from nccidfs import mount

    mount.check_mountpoint(config.mount.mountpoint)
    mount.check_fuse(config.mount)
    mount.check_cache_dir_placement(config.mount.mountpoint, config.cache.directory)
    log_file = config.mount.log_file
    if log_file is not None:
        try:
            log_file.parent.mkdir(parents=True, exist_ok=True)
            make_private(log_file)
        except OSError as error:
            raise ConfigError(f"--log-file {log_file}: {error.strerror}") from None


def _serve_in_background(config: Config) -> int:
    """Fork; the child mounts and says when it is ready; the parent returns 0 then, or the child's error.

    The child reports ``ok``, or ``<exit code> <message>`` when it fails.
    """
    from nccidfs import mount
    from nccidfs.cohort.mounting import connect

    config, store, folders = connect(config)
    ready_read, ready_write = os.pipe()
    if os.fork() != 0:
        os.close(ready_write)
        message = b""
        while select.select([ready_read], [], [], READY_TIMEOUT)[0]:
            chunk = os.read(ready_read, 4096)
            if not chunk:
                break
            message += chunk
            if message.startswith(b"ok"):
                return EXIT_OK
        reported, _, text = message.decode(errors="replace").partition(" ")
        print(f"nccidfs: mount failed: {text.strip() or f'see {config.mount.log_file}'}", file=sys.stderr)
        return EXIT_USAGE if reported == str(EXIT_USAGE) else EXIT_FAILURE
    os.close(ready_read)
    os.setsid()
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    setup_logging(config.mount.log_level, config.mount.log_file)

    def say_ready() -> None:
        os.write(ready_write, b"ok")

    try:
        mount.serve(config, store, folders, on_ready=say_ready)
    except BaseException as error:  # the parent prints it; the child must not return into the CLI
        code = EXIT_USAGE if isinstance(error, ConfigError) else EXIT_FAILURE
        logging.getLogger(__name__).error("mount failed: %s", error)
        os.write(ready_write, f"{code} {error}".encode())
        os._exit(code)
    os._exit(EXIT_OK)


def run_mount(argv: Sequence[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.mountpoint is None:
        parser.error("the following arguments are required: MOUNTPOINT")
    config = _config(args, _s3_config(args), args.foreground)
    _prepare(config)
    if not config.mount.foreground:
        return _serve_in_background(config)
    from nccidfs import mount
    from nccidfs.cohort.mounting import connect
    from nccidfs.interrupts import take_interrupts

    take_interrupts()

    setup_logging(config.mount.log_level, config.mount.log_file)
    config, store, folders = connect(config)
    mount.serve(config, store, folders)
    return EXIT_OK


def run_demo(argv: Sequence[str]) -> int:
    args = build_demo_parser().parse_args(argv)
    from nccidfs.interrupts import take_interrupts

    take_interrupts()  # before the S3 server's threads start, so that none of them takes Ctrl-C
    mountpoint = args.mountpoint.expanduser().absolute()
    if not os.path.lexists(mountpoint):
        try:
            mountpoint.mkdir(parents=True)
        except OSError as error:
            raise ConfigError(f"cannot create mount point {mountpoint}: {error.strerror}") from None
    args.cache_dir = args.cache_dir or demo_cache_dir(mountpoint)
    config = _config(args, S3Config(), foreground=True)
    _prepare(config)  # before the server starts: an already-mounted folder is refused at once
    setup_logging(config.mount.log_level, config.mount.log_file)
    from nccidfs import mount
    from nccidfs.demo.server import DemoServer

    with DemoServer() as server:
        config = dataclasses.replace(config, s3=dataclasses.replace(server.s3_config(), deadline=config.s3.deadline))
        store, folders = mount.connect(config.s3)

        def say_ready() -> None:
            print(server.welcome(mountpoint), flush=True)

        mount.serve(config, store, folders, on_ready=say_ready, hangup_ends=True)
    return EXIT_OK


def run_refresh(argv: Sequence[str]) -> int:
    parser = _Parser(prog="nccidfs refresh",
                     description="Drop the daemon's cached listings (memory and index) at and below PATH, so "
                                 "objects uploaded since they were listed show at once. Sending SIGHUP to the "
                                 "daemon drops them all.", epilog=EXIT_CODES)
    parser.add_argument("mountpoint", type=Path, metavar="MOUNTPOINT", help="the nccidfs mount point")
    parser.add_argument("path", nargs="?", metavar="PATH",
                        help="a directory in the mount: a path, or one relative to MOUNTPOINT such as ct/Covid1; "
                             "to show a new folder, refresh its parent (default: everything)")
    args = parser.parse_args(argv)
    from nccidfs import commands

    dropped = commands.refresh(args.mountpoint.absolute(), args.path)
    print(f"dropped {dropped} cached listings")
    return EXIT_OK


def _mountpoint_argument(prog: str, description: str, argv: Sequence[str]) -> Path:
    """The MOUNTPOINT of a command that takes nothing else."""
    parser = _Parser(prog=prog, description=description, epilog=EXIT_CODES)
    parser.add_argument("mountpoint", type=Path, metavar="MOUNTPOINT", help="the nccidfs mount point")
    mountpoint: Path = parser.parse_args(argv).mountpoint
    return mountpoint


def run_status(argv: Sequence[str]) -> int:
    mountpoint = _mountpoint_argument(
        "nccidfs status", "Show a running mount's bucket and prefix, uptime, cache use and hit ratio, S3 requests "
                          "(including those made while mounting) and errors, and downloads in flight (JSON). The "
                          "same data is readable at MOUNTPOINT/.nccidfs/status.json.", argv)
    from nccidfs import commands

    print(json.dumps(commands.mount_status(mountpoint), indent=2, sort_keys=True))
    return EXIT_OK


def run_metrics(argv: Sequence[str]) -> int:
    mountpoint = _mountpoint_argument(
        "nccidfs metrics", "Print a running mount's metrics in Prometheus's text format: S3 requests, their errors "
                           "and latencies by kind, bytes received, filesystem calls and their latencies by "
                           "operation, errors returned by errno, cache hits, misses, evictions and use, listings, "
                           "derived files built. A mount started with --metrics-addr also serves them over HTTP.",
        argv)
    from nccidfs import commands

    sys.stdout.write(commands.metrics(mountpoint))
    return EXIT_OK


def _cache_stats(directory: Path) -> str:
    from nccidfs import commands

    return json.dumps(commands.cache_stats(directory), indent=2)


def _cache_clear(directory: Path) -> str:
    from nccidfs import commands

    return f"removed {commands.cache_clear(directory)} cached objects from {directory}"


CACHE_ACTIONS: dict[str, tuple[str, Callable[[Path], str]]] = {
    "stats": ("Show what a cache directory holds: objects and bytes on disk (JSON).", _cache_stats),
    "clear": ("Delete every cached object and listing in a cache directory. Refused while a daemon uses it.",
              _cache_clear),
}


def run_cache(argv: Sequence[str]) -> int:
    parser = _Parser(prog="nccidfs cache", description="Inspect or empty an nccidfs cache directory.",
                     epilog=EXIT_CODES)
    actions = parser.add_subparsers(dest="action", required=True, metavar="{stats,clear}")
    for name, (description, _) in CACHE_ACTIONS.items():
        action = actions.add_parser(name, help=description, description=description, epilog=EXIT_CODES)
        action.add_argument("--cache-dir", type=Path, default=default_cache_dir(), metavar="DIR",
                            help="the cache directory (default: %(default)s)")
    args = parser.parse_args(argv)
    print(CACHE_ACTIONS[args.action][1](args.cache_dir.expanduser().absolute()))
    return EXIT_OK


def run_prefetch(argv: Sequence[str]) -> int:
    parser = _Parser(prog="nccidfs prefetch",
                     description="Warm a mount's cache for patients, studies or series: reads every file under "
                                 "each PATH through the mount with parallel downloads, showing bytes, files, "
                                 "rate and ETA. Ctrl-C stops cleanly.", epilog=EXIT_CODES)
    parser.add_argument("paths", nargs="+", metavar="PATH",
                        help="a directory or file under an nccidfs mount, or a key such as training/ct/<id>")
    parser.add_argument("-j", "--jobs", type=int, default=8, help="files read at once (default: %(default)s)")
    parser.add_argument("--force", action="store_true", help="read even when it is more than the cache holds")
    args = parser.parse_args(argv)
    from nccidfs import commands

    try:
        files, size = commands.prefetch(args.paths, max(1, args.jobs), args.force)
    except KeyboardInterrupt:
        print("nccidfs prefetch: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(f"prefetched {files} files, {format_size(size)}")
    return EXIT_OK


def run_catalog(argv: Sequence[str]) -> int:
    parser = _Parser(prog="nccidfs catalog",
                     description="Build a mount's catalog: MOUNTPOINT/.nccidfs/catalog/series.csv (one row per "
                                 "image series) and patients.csv (one row per patient), from the listings and one "
                                 "metadata twin per series, with a progress bar. A build lists and reads the patients "
                                 "new to an image folder and the clinical files whose listing changed; the "
                                 "patients already catalogued keep their rows. Until a build has completed, "
                                 "opening a table fails with EAGAIN; after that it is the last complete one.",
                     epilog=EXIT_CODES)
    parser.add_argument("action", choices=("build",), help="build: make the catalog anew and wait for it")
    parser.add_argument("mountpoint", type=Path, metavar="MOUNTPOINT", help="the nccidfs mount point")
    parser.add_argument("--modality", action="append", metavar="FOLDER", dest="folders",
                        help="only this image folder of the mount (ct, mri, xray, as the mount names them); "
                             "repeat for more; the other folders' rows stay as they are (default: every "
                             "folder, and data/ for patients.csv)")
    parser.add_argument("--relist", action="store_true",
                        help="list every patient folder again, to find patients whose images changed (by "
                             "default a patient already catalogued keeps its rows, as of their listing)")
    args = parser.parse_args(argv)
    from nccidfs import commands

    try:
        progress = commands.catalog_build(args.mountpoint.absolute(), args.folders, args.relist)
    except KeyboardInterrupt:
        print("nccidfs catalog: stopped waiting; the build goes on in the daemon", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(f"catalog: {progress['series']} series, {progress['patients']} patients in {progress['seconds']} s "
          f"({progress['patients_read']} patient folders read, {progress['patients_reused']} unchanged, "
          f"{progress['patients_kept']} kept unlisted; "
          f"{progress['errors']} bad inputs, {progress['refused']} refused as too large)")
    if progress["state"] != "complete":
        print(f"nccidfs catalog: build {progress['state']}: {progress.get('reason', '')}", file=sys.stderr)
    return EXIT_OK if progress["state"] == "complete" else EXIT_FAILURE


def run_cohort(argv: Sequence[str]) -> int:
    from nccidfs.cohort.command import run

    return run(argv, _Parser, EXIT_CODES)


SUBCOMMANDS = {"mount": run_mount, "demo": run_demo, "refresh": run_refresh, "status": run_status,
               "cache": run_cache, "prefetch": run_prefetch, "catalog": run_catalog, "metrics": run_metrics,
               "cohort": run_cohort}


# fstab options (as mount.fuse3 passes them: "nccidfs SOURCE MOUNTPOINT -o a=b,c") and their flags.
FSTAB_VALUE_OPTIONS = ("bucket", "prefix", "profile", "region", "endpoint_url", "modalities", "cache_dir",
                       "cache_size", "cache_min_free", "listing_ttl", "max_listing_entries", "max_inodes", "timeout",
                       "attr_timeout", "uid", "gid", "umask", "log_level", "log_file", "metrics_addr", "cohort",
                       "as_of")
FSTAB_FLAG_OPTIONS = ("allow_other", "allow_root", "no_prefetch", "no_verify", "readdirplus")
# Generic mount(8) options that say nothing to nccidfs (the mount is read-only and nosuid/nodev anyway).
FSTAB_IGNORED = ("rw", "ro", "auto", "noauto", "user", "users", "nouser", "exec", "noexec", "suid", "nosuid",
                 "dev", "nodev", "async", "sync", "atime", "noatime", "relatime", "defaults", "nofail", "_netdev")


def from_mount_helper(argv: list[str]) -> list[str]:
    """Translate ``SOURCE MOUNTPOINT -o opts`` from an fstab line into nccidfs's own flags.

    Options are split on commas, so list values use ``:`` or ``+`` (``modalities=ct:mri``).
    """
    positional = [arg for i, arg in enumerate(argv) if arg != "-o" and (i == 0 or argv[i - 1] != "-o")]
    options = ",".join(argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg == "-o")
    if len(positional) != 2:
        raise ConfigError("as a mount helper: nccidfs SOURCE MOUNTPOINT -o OPTIONS")
    source, mountpoint = positional
    flags = ["mount", mountpoint]
    if source not in ("nccidfs", "none", ""):
        flags += ["--bucket", source]
    for option in filter(None, options.split(",")):
        name, _, value = option.partition("=")
        if name in FSTAB_VALUE_OPTIONS and value:
            flags += [f"--{name.replace('_', '-')}", value]
        elif name in FSTAB_FLAG_OPTIONS and not value:
            flags.append(f"--{name.replace('_', '-')}")
        elif name not in FSTAB_IGNORED and not name.startswith("x-"):
            raise ConfigError(f"unknown mount option {option!r} (list values take ':' or '+', e.g. modalities=ct:mri)")
    return flags


def _refuse_misspelled_command(argv: list[str]) -> None:
    """``nccidfs stauts``: a first word close to a command and naming nothing on disk was meant as that
    command, not as a mount point to create."""
    first = argv[0] if argv else "-"
    if first.startswith("-") or os.sep in first or os.path.lexists(first):
        return
    close = difflib.get_close_matches(first, [name for name in SUBCOMMANDS if name != "mount"], n=1)
    if close:
        raise ConfigError(f"{first!r} is not a command, nor an existing mount point; did you mean "
                          f"'nccidfs {close[0]}'?")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if "-o" in argv:
            argv = from_mount_helper(argv)
        if argv and argv[0] in SUBCOMMANDS:
            return SUBCOMMANDS[argv[0]](argv[1:])
        _refuse_misspelled_command(argv)
        return run_mount(argv)
    except BrokenPipeError:  # `nccidfs status M | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except ConfigError as error:
        print(f"nccidfs: {error}", file=sys.stderr)
        return EXIT_USAGE
    except NccidfsError as error:
        print(f"nccidfs: {error}", file=sys.stderr)
        return EXIT_FAILURE
    except OSError as error:  # the environment failed us (a disk, a pipe): still one line, never a traceback
        print(f"nccidfs: {error}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
