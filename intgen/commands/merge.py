"""``intgen merge RUN... --out DIR``: join the shards of a sharded run into one run directory
(:mod:`intgen.shards`; docs/scale.md)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def run(args: argparse.Namespace) -> int:
    """Merge, then export like ``intgen generate`` does. Exit 0 when merged and exported; 2
    when a shard is missing, incomplete or foreign, or ``--out`` cannot be used; 1 when the
    merge is written but its export failed (``intgen export DIR`` redoes it)."""
    from intgen.rundir import RunDirError
    from intgen.shards import ShardError, merge_runs

    try:
        result = merge_runs(args.runs, args.out)
    except (ShardError, RunDirError, FileExistsError) as e:
        print(f"intgen merge: {e}", file=sys.stderr)
        return 2
    from intgen.commands.generate import print_where

    f = result.funnel
    width = max((len(k) for k in f), default=0)
    print(f"merged {len(result.shards)} shards into {result.out_dir}\nfunnel:")
    for key, value in f.items():
        print(f"  {key:<{width}}  {value}")
    if args.no_export:
        return 0
    from intgen.export import export_run

    try:
        print_where(Path(args.out), export_run(Path(args.out)), f.get("sft_rows", 0))
    except Exception as e:  # noqa: BLE001
        print(f"intgen merge: the merged run is written, but its export failed ({type(e).__name__}: {e}); "
              f"run `intgen export {args.out}` after fixing the cause", file=sys.stderr)
        return 1
    return 0


def register(sub) -> None:
    p = sub.add_parser("merge", help="join the shards of a sharded run (intgen generate --shard i/N) into one run")
    p.add_argument("runs", nargs="+", help="the shard folders, every shard 0..N-1 once")
    p.add_argument("--out", required=True, help="a new or empty folder for the merged run")
    p.add_argument("--no-export", action="store_true", help="write the tables only (intgen export DIR does the rest)")
    p.set_defaults(func=run)
