"""``nccidfs cohort create|split|verify|diff``: flags, files and what is printed."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from nccidfs.cachedir import COHORTS_FOLDER
from nccidfs.cohort import manifest, operations
from nccidfs.cohort.manifest import Header, Row, Warehouse
from nccidfs.cohort.mounting import warehouse_config
from nccidfs.cohort.select import CATALOG, ListingSource, collect, load_catalog, select, select_paths
from nccidfs.cohort.source import AsOfStore, endpoint_host, parse_as_of
from nccidfs.commands import mount_status
from nccidfs.config import CONTROL_DIR, DEFAULT_REGION, S3Config, format_size, normalize_prefix
from nccidfs.errors import ConfigError
from nccidfs.layout import is_image, is_twin_folder
from nccidfs.mount import open_store
from nccidfs.store.protocol import ObjectStore
from nccidfs.views.cohorts import publish

EXIT_OK, EXIT_CHANGED = 0, 1
DESCRIPTION = """\
Select a cohort from a mount's catalog and freeze it into a manifest (NAME.nccid-cohort): every object
of the selected series, their -metadata twins and the patients' clinical files, each with its size,
ETag and date. Mount exactly it again anywhere with: nccidfs MOUNTPOINT --cohort NAME.nccid-cohort"""


def manifest_path(name: str) -> Path:
    return Path(name if name.endswith(manifest.SUFFIX) else name + manifest.SUFFIX)


def _new_file(path: Path) -> Path:
    if path.exists():
        raise ConfigError(f"{path} exists: a frozen cohort is not overwritten; remove it or choose another name")
    return path


def _s3_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--endpoint-url", metavar="URL", help="S3-compatible endpoint (default: AWS)")
    parser.add_argument("--region", default=DEFAULT_REGION, help="bucket region (default: %(default)s)")
    parser.add_argument("--profile", help="AWS profile (default: boto3's usual chain)")


def build_parser(parser_class: Callable[..., argparse.ArgumentParser], epilog: str) -> argparse.ArgumentParser:
    parser = parser_class(prog="nccidfs cohort", description=DESCRIPTION, epilog=epilog)
    actions = parser.add_subparsers(dest="action", required=True, metavar="{create,split,verify,diff}")
    create = actions.add_parser("create", help="select and freeze a cohort", description=DESCRIPTION, epilog=epilog)
    create.add_argument("name", metavar="NAME", help="the cohort's name; written to NAME.nccid-cohort")
    create.add_argument("mountpoint", type=Path, metavar="MOUNTPOINT", help="a mount whose catalog is built")
    create.add_argument("--where", metavar="SQL", help="an SQL condition over the catalog's columns, e.g. "
                        "\"Modality = 'CT' AND filename_covid_status AND images >= 100\"")
    create.add_argument("--patients", type=Path, metavar="FILE", help="only these Patient_IDs, one a line")
    create.add_argument("--paths", type=Path, metavar="FILE",
                        help="instead of a condition: these paths in the mount (folders or files), one a line")
    create.add_argument("--as-of", metavar="DATE", help="only objects last modified on or before DATE")
    create.add_argument("--catalog", type=Path, metavar="DIR",
                        help="read series.csv and patients.csv from DIR, a copy of the mount's catalog "
                             "(default: MOUNTPOINT/.nccidfs/catalog)")
    create.add_argument("--profile", help="AWS profile, for folders the mount has not listed (default: boto3's)")
    split = actions.add_parser("split", help="split a cohort by patient", epilog=epilog,
                               description="Split a cohort into parts by patient (never one patient in two parts), "
                                           "by a hash of each Patient_ID with the seed: the same seed gives the "
                                           "same parts. Writes NAME-PART.nccid-cohort for each part.")
    split.add_argument("name", metavar="NAME", help="the cohort (NAME or NAME.nccid-cohort)")
    split.add_argument("--fractions", required=True, help="e.g. 0.8,0.1,0.1")
    split.add_argument("--seed", required=True, help="any text; record it with your results")
    split.add_argument("--names", help="names of the parts (default: 1,2,...), e.g. train,val,test")
    verify = actions.add_parser("verify", help="check a cohort against S3 (listings only)", epilog=epilog,
                                description="Check every object of a cohort against S3 with listings only (no "
                                            "GET); print what changed or vanished. Exit 1 if anything did.")
    verify.add_argument("name", metavar="FILE", help="the cohort manifest")
    _s3_flags(verify)
    diff = actions.add_parser("diff", help="patients and objects added and removed", epilog=epilog,
                              description="Compare two cohorts: patients and objects added, removed and changed.")
    diff.add_argument("old", metavar="A")
    diff.add_argument("new", metavar="B")
    return parser


def run(argv: Sequence[str], parser_class: Callable[..., argparse.ArgumentParser], epilog: str) -> int:
    args = build_parser(parser_class, epilog).parse_args(argv)
    action: Callable[[argparse.Namespace], int] = {"create": create, "split": split, "verify": verify,
                                                   "diff": diff}[args.action]
    return action(args)


def _summary(rows: Sequence[Row]) -> str:
    series = {row[0].rsplit("/", 1)[0] for row in rows
              if is_image(row[0]) and not is_twin_folder(row[0].split("/", 1)[0])}
    return (f"{len(operations.patients(rows))} patients, {len(series)} series, {len(rows)} objects, "
            f"{format_size(sum(row[1] for row in rows))}")


def create(args: argparse.Namespace) -> int:
    path = _new_file(manifest_path(args.name))
    mountpoint = args.mountpoint.absolute()
    status = mount_status(mountpoint)
    if status.get("view"):
        raise ConfigError(f"{mountpoint} shows a {status['view'].split()[0]}; select from a mount of the warehouse")
    if args.paths is not None and (args.where or args.patients):
        raise ConfigError("--paths selects on its own; leave out --where and --patients")
    if args.paths is None and not (args.where or args.patients):
        raise ConfigError("say what to select: --where, --patients or --paths")
    as_of = None if args.as_of is None else parse_as_of(args.as_of)
    if args.paths is not None:
        selection = select_paths(mountpoint, _lines(args.paths))
    else:
        patients = None if args.patients is None else set(_lines(args.patients))
        selection = select(load_catalog(args.catalog or mountpoint / CATALOG, args.where or ""), args.where,
                           patients)
    s3 = S3Config(bucket=status["bucket"], prefix=normalize_prefix(status["prefix"]),
                  region=status.get("region") or DEFAULT_REGION, profile=args.profile,
                  endpoint_url=status.get("endpoint_url"))

    def store() -> ObjectStore:
        return open_store(s3) if as_of is None else AsOfStore(open_store(s3), as_of)

    endpoint = status.get("endpoint_url") or f"aws:{s3.region}"
    source = ListingSource(Path(status["cache"]["directory"]), {"endpoint": endpoint, "bucket": s3.bucket,
                                                                "prefix": s3.prefix}, store, s3.prefix)
    objects = [obj for obj in collect(selection, source) if as_of is None or obj.mtime <= as_of]
    if not objects:
        raise ConfigError("the selection holds no object")
    rows = manifest.rows_of(objects, s3.prefix)
    selected = {"where": args.where, "patients": None if args.patients is None else str(args.patients),
                "paths": None if args.paths is None else str(args.paths),
                "as_of": None if as_of is None else manifest.iso(as_of)}
    header = Header(name=Path(args.name).name.removesuffix(manifest.SUFFIX),
                    warehouse=Warehouse(endpoint_host(s3), s3.bucket, s3.prefix), created=manifest.now_iso(),
                    listed={"earliest": manifest.iso(source.earliest), "latest": manifest.iso(source.latest),
                            "source": f"{source.from_index} patient folders from the mount's listing index, "
                                      f"{source.from_s3} listed from S3 in {source.listings} listings"},
                    selection={k: v for k, v in selected.items() if v is not None},
                    objects=len(rows), bytes=sum(row[1] for row in rows),
                    patients=len(operations.patients(rows)))
    manifest.write(path, header, rows)
    published = publish(path, Path(status["cache"]["directory"]))
    print(f"{path}: {_summary(rows)}\n{published}: {mountpoint}/{CONTROL_DIR}/{COHORTS_FOLDER}/{header.name}/")
    return EXIT_OK


def _lines(path: Path) -> list[str]:
    try:
        return [line.strip() for line in path.read_text().splitlines() if line.strip()]
    except OSError as error:
        raise ConfigError(f"{path}: {error.strerror}") from None


def split(args: argparse.Namespace) -> int:
    source = manifest_path(args.name)
    fractions = operations.parse_fractions(args.fractions)
    names = args.names.split(",") if args.names else [str(n) for n in range(1, len(fractions) + 1)]
    if len(names) != len(fractions) or len(set(names)) != len(names):
        raise ConfigError("--names: one distinct name per fraction")
    whole = manifest.read(source)
    stem = str(source)[:-len(manifest.SUFFIX)]
    targets = [_new_file(manifest_path(f"{stem}-{name}")) for name in names]
    parts = operations.split(whole.rows, args.seed, fractions)
    for number, (target, rows, name) in enumerate(zip(targets, parts, names, strict=True)):
        header = Header(name=f"{whole.header.name}-{name}", warehouse=whole.header.warehouse,
                        created=manifest.now_iso(), listed=whole.header.listed,
                        selection={**whole.header.selection, "split": {
                            "of": whole.header.name, "of_sha256": whole.digest, "seed": args.seed,
                            "fractions": fractions, "part": number}},
                        objects=len(rows), bytes=sum(row[1] for row in rows),
                        patients=len(operations.patients(rows)))
        manifest.write(target, header, rows)
        print(f"{target}: {_summary(rows)}")
    return EXIT_OK


def verify(args: argparse.Namespace) -> int:
    path = Path(args.name)
    frozen = manifest.read(path)
    s3 = warehouse_config(S3Config(region=args.region, profile=args.profile, endpoint_url=args.endpoint_url),
                          frozen.header, path)
    started = time.monotonic()
    found = operations.verify(frozen.rows, open_store(s3), s3.prefix)
    for key in found.changed:
        print(f"changed  {key}")
    for key in found.removed:
        print(f"vanished {key}")
    unchanged = len(frozen.rows) - len(found.changed) - len(found.removed)
    print(f"{path}: {unchanged} of {len(frozen.rows)} objects unchanged, {len(found.changed)} changed, "
          f"{len(found.removed)} vanished ({time.monotonic() - started:.1f} s, listings only)")
    return EXIT_CHANGED if found.changed or found.removed else EXIT_OK


def diff(args: argparse.Namespace) -> int:
    old, new = manifest.read(Path(args.old)), manifest.read(Path(args.new))
    before, after = operations.patients(old.rows), operations.patients(new.rows)
    found = operations.diff(old.rows, new.rows)
    lines: list[tuple[str, Any]] = [("+ patient", p) for p in sorted(after - before)]
    lines += [("- patient", p) for p in sorted(before - after)]
    lines += [("+", k) for k in found.added] + [("-", k) for k in found.removed] + [("~", k) for k in found.changed]
    for mark, what in lines:
        print(f"{mark} {what}")
    print(f"patients: {len(after - before)} added, {len(before - after)} removed; objects: {len(found.added)} "
          f"added, {len(found.removed)} removed, {len(found.changed)} changed")
    return EXIT_OK
