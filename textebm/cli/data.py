"""`textebm data`: the known corpora, where each is read from, which splits are present and whether
their checksums match; `--fetch NAME` downloads (or prepares) what is missing."""

from __future__ import annotations

import argparse

from textebm.cli.common import add_data_dir_argument

SUBSTITUTES = {  # what training and evaluation use when a standard split is missing (docs/results.md)
    "ptb": "",
    "snli": "without train: train on test (--train-split test), the last 5% held out for validation and evaluation",
    "yahoo": "without train: train on valid (--train-split valid), validate and evaluate on test",
}


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("data", help="list the corpora and their splits; fetch one",
                              description="List the known corpora (ptb, snli, yahoo): the folder each is read "
                              "from, which splits are present, and whether their sha256 matches the standard "
                              "files (data/README.md). --fetch NAME downloads or prepares a missing corpus.")
    add_data_dir_argument(p)
    p.add_argument("--fetch", metavar="NAME", help="download (ptb), prepare from the hub (snli) or explain (yahoo)")
    p.add_argument("--source", metavar="URL_OR_DIR",
                   help="fetch from a mirror: a folder or base URL holding ptb.{train,valid,test}.txt (ptb), "
                        "or a folder of Parquet files / hub id (snli)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(run=run)


def _cell(split: dict) -> str:
    if split["path"] is None:
        return "missing"
    mib = f"{split['bytes'] / 2**20:.1f} MiB"
    return {True: f"ok ({mib}, sha256 match)", False: f"{mib}, sha256 DIFFERS",
            None: f"present ({mib}, no checksum)"}[split["sha256_ok"]]


def run(args: argparse.Namespace) -> int:
    import json
    import sys

    from textebm.data.corpora import KNOWN, SPLITS, data_dir, fetch, split_status
    from textebm.errors import UserError

    if args.source and not args.fetch:
        raise UserError("--source goes with --fetch NAME")
    if args.fetch:
        if args.fetch not in KNOWN:
            raise UserError(f"unknown corpus {args.fetch!r}; known: {', '.join(KNOWN)}")
        folder = fetch(args.fetch, args.data_dir, args.source, progress=sys.stderr.isatty())
        present = [split for split, entry in split_status(args.fetch, args.data_dir).items() if entry["path"]]
        print(f"{args.fetch}: {', '.join(present)} in {folder}")
    report = {name: {"folder": str(data_dir(args.data_dir) / name), "splits": split_status(name, args.data_dir),
                     "substitute": SUBSTITUTES[name] or None} for name in KNOWN}
    if args.json:
        print(json.dumps(report))
        return 0
    root = data_dir(args.data_dir)
    state = "" if root.is_dir() else " (not a folder)" if root.exists() else " (it does not exist)"
    print(f"corpora in {root.resolve()}{state}, one folder each (<corpus>/train.txt, ...)")
    width = max(len(_cell(s)) for r in report.values() for s in r["splits"].values())
    rows = [["corpus", *SPLITS]]
    rows += [[name, *(_cell(entry["splits"][split]) for split in SPLITS)] for name, entry in report.items()]
    for row in rows:
        print(f"{row[0]:<7}" + "".join(f"  {cell:<{width}}" for cell in row[1:]).rstrip())
    for name, entry in report.items():
        if entry["splits"]["train"]["path"] is None and entry["substitute"]:
            print(f"{name}: {entry['substitute']}")
    return 0
