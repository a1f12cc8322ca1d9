"""The command line: parse flags into a frozen Config, run start-up checks, mount, and map errors to exits.

    nccidfs MOUNTPOINT [options]     mount the warehouse (daemonizes once the mount is ready)
    nccidfs demo [MOUNTPOINT]        mount a synthetic warehouse served from 127.0.0.1, no AWS account
    nccidfs refresh MOUNTPOINT [PATH]  drop cached listings so new uploads show at once
    nccidfs status MOUNTPOINT        what the daemon is doing: cache, requests, errors, downloads
    nccidfs cache stats|clear        what a cache directory holds; empty it
    nccidfs prefetch PATH...         warm the cache for patients, studies or series, with progress

Exit codes: 0 success, 1 a runtime failure, 2 bad input (flags, mount point, credentials, access).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import select
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from nccidfs import __version__
from nccidfs.config import (
    DEFAULT_BUCKET,
    DEFAULT_PREFIX,
    DEFAULT_REGION,
    KNOWN_FOLDERS,
    CacheConfig,
    Config,
    MountConfig,
    ReadConfig,
    S3Config,
    default_cache_dir,
    default_log_file,
    normalize_prefix,
    parse_size,
)
from nccidfs.errors import ConfigError, NccidfsError
from nccidfs.log import LEVELS, setup_logging

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
READY_TIMEOUT = 60.0


class _Parser(argparse.ArgumentParser):
    """Bad flags get one line and exit 2, not the whole usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see '{self.prog} --help')\n")


def _add_common_options(parser: argparse.ArgumentParser, with_bucket: bool) -> None:
    if with_bucket:
        bucket = parser.add_argument_group("Bucket")
        bucket.add_argument("--bucket", default=DEFAULT_BUCKET, help="S3 bucket (default: %(default)s)")
        bucket.add_argument("--prefix", default=DEFAULT_PREFIX,
                            help="key prefix to mount, with or without its trailing slash (default: %(default)s)")
        bucket.add_argument("--profile", help="AWS profile from ~/.aws/config (default: boto3's usual chain)")
        bucket.add_argument("--region", default=DEFAULT_REGION, help="bucket region (default: %(default)s)")
        bucket.add_argument("--endpoint-url", help="S3-compatible endpoint, e.g. http://127.0.0.1:9000")
        bucket.add_argument("--modalities", metavar="LIST",
                            help="comma-separated folders to probe when the prefix itself may not be listed "
                                 f"(default: {','.join(KNOWN_FOLDERS)})")
    mount = parser.add_argument_group("Mount")
    mount.add_argument("--listing-ttl", type=float, default=300.0, metavar="SECONDS",
                       help="how long a directory listing is trusted before S3 is asked again (default: 300)")
    mount.add_argument("--max-listing-entries", type=int, default=MountConfig.max_listing_entries, metavar="N",
                       help="bound on directory entries held in memory; least recently used listings are "
                            "dropped first; about 1 KiB each; the on-disk index keeps the rest (default: %(default)s)")
    mount.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS",
                       help="a read or listing that S3 cannot serve within this time fails with EIO, "
                            "after retries (default: 30)")
    mount.add_argument("--prefetch", action=argparse.BooleanOptionalAction, default=True,
                       help="when a .dcm is read past its header, fetch the rest of its series in the "
                            "background (default: on)")
    mount.add_argument("--readdirplus", action="store_true",
                       help="return attributes with directory listings: ls -l of a big directory needs no "
                            "lookup per entry, but a walk of a million files keeps about 120 MiB more in the "
                            "daemon (default: off)")
    mount.add_argument("--allow-other", action="store_true",
                       help="let other users read the mount (needs user_allow_other in /etc/fuse.conf)")
    cache = parser.add_argument_group("Cache")
    cache.add_argument("--cache-dir", type=Path, metavar="DIR",
                       help=f"where fetched bytes are kept across restarts (default: {default_cache_dir()})")
    cache.add_argument("--cache-size", default="10G", metavar="SIZE",
                       help="bound on the cache's disk use; bytes or K/M/G/T (powers of 1024) (default: 10G)")
    logging_group = parser.add_argument_group("Logging")
    logging_group.add_argument("--log-level", default="info", choices=LEVELS,
                               help="debug shows every S3 request (default: info)")
    logging_group.add_argument("--log-file", type=Path, metavar="FILE",
                               help="where a background daemon logs; with --foreground logs go to stderr "
                                    f"(default: {default_log_file()})")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="nccidfs",
        description="Mount the NCCID imaging warehouse (s3://nccid-data-warehouse-prod/training/) read-only. "
                    "Listings come from S3 lazily and are cached; file bytes are fetched as they are read "
                    "into a bounded disk cache that survives restarts.",
        epilog="Other commands (each has --help): 'nccidfs demo [MOUNTPOINT]' mounts a synthetic warehouse "
               "with no AWS account; 'nccidfs refresh MOUNTPOINT [PATH]' drops cached listings (so does "
               "SIGHUP); 'nccidfs status MOUNTPOINT' shows the daemon's counters; 'nccidfs cache stats|clear' "
               "inspects or empties a cache directory; 'nccidfs prefetch PATH...' warms the cache.",
    )
    parser.add_argument("mountpoint", type=Path, help="an empty directory to mount on")
    parser.add_argument("-f", "--foreground", action="store_true",
                        help="stay in the foreground (default: return once the mount is ready)")
    parser.add_argument("--version", action="version", version=f"nccidfs {__version__}")
    _add_common_options(parser, with_bucket=True)
    return parser


def build_demo_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="nccidfs demo",
        description="Start an S3 server on 127.0.0.1 seeded with a small synthetic NCCID warehouse (DICOM, "
                    "metadata JSON, clinical JSON) and mount it in the foreground through the same code as the "
                    "real bucket. Ctrl-C unmounts and stops the server.",
    )
    parser.add_argument("mountpoint", type=Path, nargs="?", default=Path("nccid-demo"),
                        help="where to mount; created if missing (default: ./nccid-demo)")
    _add_common_options(parser, with_bucket=False)
    return parser


def _config(args: argparse.Namespace, s3: S3Config, foreground: bool) -> Config:
    if args.listing_ttl < 0:
        raise ConfigError("--listing-ttl must be zero or more seconds")
    if args.timeout <= 0:
        raise ConfigError("--timeout must be more than zero seconds")
    if args.max_listing_entries < 1000:
        raise ConfigError("--max-listing-entries must be at least 1000")
    cache_dir = (args.cache_dir or default_cache_dir()).expanduser().absolute()
    return Config(
        mount=MountConfig(mountpoint=args.mountpoint.expanduser().absolute(), foreground=foreground,
                          allow_other=args.allow_other, listing_ttl=args.listing_ttl,
                          max_listing_entries=args.max_listing_entries, readdirplus=args.readdirplus,
                          log_level=args.log_level.upper(),
                          log_file=None if foreground else (args.log_file or default_log_file()).absolute()),
        s3=dataclasses.replace(s3, deadline=args.timeout),
        cache=CacheConfig(directory=cache_dir, size_bytes=parse_size(args.cache_size)),
        read=ReadConfig(prefetch=args.prefetch),
    )


def _s3_config(args: argparse.Namespace) -> S3Config:
    folders = KNOWN_FOLDERS
    if args.modalities:
        folders = tuple(name.strip().strip("/") for name in args.modalities.split(",") if name.strip())
    return S3Config(bucket=args.bucket, prefix=normalize_prefix(args.prefix), region=args.region,
                    profile=args.profile, endpoint_url=args.endpoint_url, folders=folders)


def _serve_in_background(config: Config) -> int:
    """Fork; the child mounts and says when it is ready; the parent returns 0 then, or the child's error."""
    from nccidfs import mount

    store, folders = mount.connect(config.s3)
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
        text = message.decode(errors="replace").strip() or f"see {config.mount.log_file}"
        print(f"nccidfs: mount failed: {text}", file=sys.stderr)
        return EXIT_FAILURE
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
        os.write(ready_write, str(error).encode())
        os._exit(EXIT_FAILURE)
    os._exit(EXIT_OK)


def run_mount(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(argv)
    config = _config(args, _s3_config(args), args.foreground)
    from nccidfs import mount

    mount.check_mountpoint(config.mount.mountpoint)
    os.makedirs(config.cache.directory, mode=0o700, exist_ok=True)
    if config.mount.log_file is not None:
        config.mount.log_file.parent.mkdir(parents=True, exist_ok=True)
    if not config.mount.foreground:
        return _serve_in_background(config)
    setup_logging(config.mount.log_level)
    store, folders = mount.connect(config.s3)
    mount.serve(config, store, folders)
    return EXIT_OK


def run_demo(argv: Sequence[str]) -> int:
    args = build_demo_parser().parse_args(argv)
    from nccidfs import mount
    from nccidfs.demo.server import DemoServer

    args.mountpoint.mkdir(parents=True, exist_ok=True)
    if args.cache_dir is None:
        args.cache_dir = default_cache_dir().with_name("nccidfs-demo")
    setup_logging(args.log_level)
    with DemoServer() as server:
        config = _config(args, server.s3_config(), foreground=True)
        mount.check_mountpoint(config.mount.mountpoint)
        store, folders = mount.connect(config.s3)
        print(f"nccidfs demo: serving {server.object_count} objects from {server.endpoint_url}; "
              f"mounted at {config.mount.mountpoint} (Ctrl-C to stop)", file=sys.stderr, flush=True)
        mount.serve(config, store, folders)
    return EXIT_OK


def run_refresh(argv: Sequence[str]) -> int:
    parser = _Parser(prog="nccidfs refresh",
                     description="Drop the daemon's cached listings (memory and index) at and below PATH, so "
                                 "objects uploaded since they were listed show at once. Sending SIGHUP to the "
                                 "daemon drops them all.")
    parser.add_argument("mountpoint", type=Path, help="the nccidfs mount point")
    parser.add_argument("path", nargs="?", help="a directory under the mount (default: everything)")
    args = parser.parse_args(argv)
    from nccidfs import commands

    dropped = commands.refresh(args.mountpoint.absolute(), args.path)
    print(f"dropped {dropped} cached listings")
    return EXIT_OK


def run_status(argv: Sequence[str]) -> int:
    parser = _Parser(prog="nccidfs status",
                     description="Show a running mount's bucket and prefix, uptime, cache use and hit ratio, "
                                 "S3 requests and errors, and downloads in flight (JSON). The same data is "
                                 "readable at MOUNTPOINT/.nccidfs/status.json.")
    parser.add_argument("mountpoint", type=Path, help="the nccidfs mount point")
    args = parser.parse_args(argv)
    from nccidfs import commands

    print(json.dumps(commands.daemon_status(args.mountpoint.absolute()), indent=2, sort_keys=True))
    return EXIT_OK


def run_cache(argv: Sequence[str]) -> int:
    parser = _Parser(prog="nccidfs cache", description="Inspect or empty an nccidfs cache directory.")
    parser.add_argument("action", choices=("stats", "clear"),
                        help="stats: objects and bytes held; clear: delete them (refused while a daemon "
                             "uses the directory)")
    parser.add_argument("--cache-dir", type=Path, default=default_cache_dir(), metavar="DIR",
                        help="the cache directory (default: %(default)s)")
    args = parser.parse_args(argv)
    from nccidfs import commands

    if args.action == "stats":
        from nccidfs.cache import disk_usage

        print(json.dumps(disk_usage(args.cache_dir), indent=2))
    else:
        print(f"removed {commands.cache_clear(args.cache_dir)} cached objects from {args.cache_dir}")
    return EXIT_OK


def run_prefetch(argv: Sequence[str]) -> int:
    parser = _Parser(prog="nccidfs prefetch",
                     description="Warm a mount's cache for patients, studies or series: reads every file under "
                                 "each PATH through the mount with parallel downloads, showing bytes, files, "
                                 "rate and ETA. Ctrl-C stops cleanly.")
    parser.add_argument("paths", nargs="+", metavar="PATH",
                        help="a directory or file under an nccidfs mount, or a key such as training/ct/<id>")
    parser.add_argument("-j", "--jobs", type=int, default=8, help="files read at once (default: 8)")
    parser.add_argument("--force", action="store_true", help="read even when it is more than the cache holds")
    args = parser.parse_args(argv)
    from nccidfs import commands

    try:
        files, size = commands.prefetch(args.paths, max(1, args.jobs), args.force)
    except KeyboardInterrupt:
        print("nccidfs prefetch: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(f"prefetched {files} files, {size} bytes")
    return EXIT_OK


SUBCOMMANDS = {"demo": run_demo, "refresh": run_refresh, "status": run_status, "cache": run_cache,
               "prefetch": run_prefetch}


# fstab options (as mount.fuse3 passes them: "nccidfs SOURCE MOUNTPOINT -o a=b,c") and their flags.
FSTAB_VALUE_OPTIONS = ("bucket", "prefix", "profile", "region", "endpoint_url", "modalities", "cache_dir",
                       "cache_size", "listing_ttl", "max_listing_entries", "timeout", "log_level", "log_file")
FSTAB_FLAG_OPTIONS = ("allow_other", "no_prefetch", "readdirplus")
# Generic mount(8) options that say nothing to nccidfs (the mount is read-only and nosuid/nodev anyway).
FSTAB_IGNORED = ("rw", "ro", "auto", "noauto", "user", "users", "nouser", "exec", "noexec", "suid", "nosuid",
                 "dev", "nodev", "async", "sync", "atime", "noatime", "relatime", "defaults", "nofail", "_netdev")


def from_mount_helper(argv: list[str]) -> list[str]:
    """Translate ``SOURCE MOUNTPOINT -o opts`` from an fstab line into nccidfs's own flags."""
    positional = [arg for i, arg in enumerate(argv) if arg != "-o" and (i == 0 or argv[i - 1] != "-o")]
    options = ",".join(argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg == "-o")
    if len(positional) != 2:
        raise ConfigError("as a mount helper: nccidfs SOURCE MOUNTPOINT -o OPTIONS")
    source, mountpoint = positional
    flags = [mountpoint]
    if source not in ("nccidfs", "none", ""):
        flags += ["--bucket", source]
    for option in filter(None, options.split(",")):
        name, _, value = option.partition("=")
        if name in FSTAB_VALUE_OPTIONS and value:
            flags += [f"--{name.replace('_', '-')}", value]
        elif name in FSTAB_FLAG_OPTIONS and not value:
            flags.append(f"--{name.replace('_', '-')}")
        elif name not in FSTAB_IGNORED and not name.startswith("x-"):
            raise ConfigError(f"unknown mount option {option!r}")
    return flags


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if "-o" in argv:
            argv = from_mount_helper(argv)
        if argv and argv[0] in SUBCOMMANDS:
            return SUBCOMMANDS[argv[0]](argv[1:])
        return run_mount(argv)
    except ConfigError as error:
        print(f"nccidfs: {error}", file=sys.stderr)
        return EXIT_USAGE
    except NccidfsError as error:
        print(f"nccidfs: {error}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
