"""``photo-escape master-index``: build the master-file index from a listing, and look IDs up.

    photo-escape master-index build masters.txt --index masters.duckdb [--id-regex R]
    photo-escape master-index build /mnt/masters --index masters.duckdb     # walk a small store
    photo-escape master-index lookup a1280001 a1280002 --index masters.duckdb
"""

from __future__ import annotations

import argparse
from pathlib import Path

from photo_escape.output import emit


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    build = sub.add_parser("build", help="index a directory listing (output of `find STORE`) or walk a folder")
    build.add_argument("listing", help="the listing file (one path a line), or a folder to walk")
    build.add_argument("--index", required=True, help="the DuckDB index file to write")
    build.add_argument("--id-regex", default=None,
                       help="RE2 regex over each path; group 1 is the Digital ID (default: letters + 5-8 digits "
                            "at the start of an image file name)")
    build.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    look = sub.add_parser("lookup", help="the master files of Digital IDs")
    look.add_argument("ids", nargs="+", metavar="ID")
    look.add_argument("--index", required=True, help="the DuckDB index file")
    look.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    from tasks import master_index as mi

    try:
        if args.action == "build":
            regex = args.id_regex or mi.DEFAULT_ID_REGEX
            source = Path(args.listing)
            if source.is_dir():
                stats = mi.build_from_folder(source, args.index, id_regex=regex)
            else:
                stats = mi.build_from_listing(source, args.index, id_regex=regex)
            record = {"index": args.index, "source": str(source), "status": "ok", **stats}
            emit(record, args.json, text=f"indexed {stats['masters']} master files ({stats['ids']} Digital IDs) "
                                         f"from {stats['lines']} lines in {stats['seconds']} s -> {args.index}")
            return 0
        with mi.MasterIndex(args.index) as index:
            found = index.lookup(args.ids)
        missing = 0
        for did in args.ids:
            paths = found.get(did.lower(), [])
            missing += not paths
            emit({"id": did, "status": "ok" if paths else "not_found", "paths": paths}, args.json,
                 text=f"{did}\t" + ("\t".join(paths) if paths else "(no master)"))
        return 1 if missing == len(args.ids) else 0
    except mi.MasterIndexError as exc:
        emit({"status": "error", "error": str(exc)}, args.json, text=f"error: {exc}")
        return 2
