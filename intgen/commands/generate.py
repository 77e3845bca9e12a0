"""``intgen generate``: run a job spec and write its run directory."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def print_funnel(result) -> None:
    """Print a run's directory and funnel counts."""
    f = result.funnel
    width = max(len(k) for k in f)
    print(f"\nrun directory: {result.out_dir}")
    print("funnel:")
    for key, value in f.items():
        print(f"  {key:<{width}}  {value}")


def run(args: argparse.Namespace) -> int:
    from intgen.backends import BackendError
    from intgen.config import SpecError, load_spec
    from intgen.models import UnknownModelError
    from intgen.runner import run_job

    overrides = list(args.overrides)
    if args.limit is not None:
        overrides.append(f"limit={args.limit}")
    try:
        spec = load_spec(args.job, overrides)
        out = Path(args.out) if args.out else Path("runs") / spec.name
        result = run_job(spec, out, spec_dir=Path(args.job).resolve().parent, progress=not args.quiet)
    except (SpecError, FileNotFoundError, FileExistsError, UnknownModelError, BackendError) as e:
        print(f"intgen generate: {e}", file=sys.stderr)
        return 2
    print_funnel(result)
    return 0


def register(sub) -> None:
    p = sub.add_parser("generate", help="run rollout -> propose -> check -> baseline -> select for a job spec")
    p.add_argument("job", help="the job spec, a YAML file (e.g. pipelines/demo.yaml)")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. check.r=8 backend.kind=fake")
    p.add_argument("--out", help="the run directory (default: runs/<name>)")
    p.add_argument("--limit", type=int, help="number of problems (overrides the spec's limit)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)
