"""``intgen pipelines``: the job specs bundled with intgen (:mod:`intgen.resources`)."""

from __future__ import annotations

import argparse


def _summary(path) -> str:
    """The spec's first comment line."""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
    return ""


def run(args: argparse.Namespace) -> int:
    from intgen.resources import specs

    found = specs()
    width = max(len(n) for n in found)
    for name, path in found.items():
        print(f"{name:<{width}}  {_summary(path)}")
        if args.paths:
            print(f"{'':<{width}}  {path}")
    print("\nrun one with: intgen generate NAME [key=value ...] (a file of the same name in the working "
          "directory wins)")
    return 0


def register(sub) -> None:
    p = sub.add_parser("pipelines", help="list the job specs bundled with intgen (intgen generate NAME runs one)")
    p.add_argument("--paths", action="store_true", help="also print where each file is")
    p.set_defaults(func=run)
