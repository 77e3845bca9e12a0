"""The ``intgen`` command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from intgen import __version__


def _print_funnel(result) -> None:
    f = result.funnel
    width = max(len(k) for k in f)
    print(f"\nrun directory: {result.out_dir}")
    print("funnel:")
    for key, value in f.items():
        print(f"  {key:<{width}}  {value}")


def _generate(args: argparse.Namespace) -> int:
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
    _print_funnel(result)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="intgen", description="Intervention datasets for training LLMs to reason (InT).")
    parser.add_argument("--version", action="version", version=f"intgen {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="run rollout -> propose -> check -> baseline -> select for a job spec")
    gen.add_argument("job", help="the job spec, a YAML file (e.g. pipelines/demo.yaml)")
    gen.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. check.r=8 backend.kind=fake")
    gen.add_argument("--out", help="the run directory (default: runs/<name>)")
    gen.add_argument("--limit", type=int, help="number of problems (overrides the spec's limit)")
    gen.add_argument("--quiet", action="store_true", help="no progress bars")
    gen.set_defaults(func=_generate)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``intgen`` console script; returns the exit status."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # overrides may come after options (argparse stops collecting them at the first option)
    unknown = [e for e in extra if e.startswith("-") or "=" not in e or not hasattr(args, "overrides")]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if extra:
        args.overrides = list(args.overrides) + extra
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
