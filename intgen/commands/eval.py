"""``intgen eval localize`` and ``intgen eval lift``: measure the proposer's first-error
localization against human labels, and the paper's lift table for a run (issue 9)."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path


def _default_out(data: str, model: str) -> Path:
    tag = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(model).name or model)
    return Path("runs") / "eval" / f"localize-{Path(data).stem}-{tag}"


def run_localize(args: argparse.Namespace) -> int:
    import asyncio

    from intgen.backends import BackendError
    from intgen.config import SpecError
    from intgen.evaluation.localize import DataError, localize_async, print_summary
    from intgen.evaluation.spec import load_localize_spec
    from intgen.models import UnknownModelError, check_model_name
    from intgen.sources import SourceError

    try:
        spec = load_localize_spec(args.spec, args.overrides, model=args.model)
        check_model_name(spec.model)
    except (SpecError, FileNotFoundError, UnknownModelError) as e:
        print(f"intgen eval localize: {e}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else _default_out(args.data, spec.model)
    spec_dir = Path(args.spec).resolve().parent if args.spec else None
    try:
        result = asyncio.run(localize_async(spec, args.data, out, spec_dir=spec_dir, progress=not args.quiet))
    except (DataError, SpecError, FileNotFoundError, FileExistsError, BackendError, SourceError, ValueError) as e:
        print(f"intgen eval localize: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\nintgen eval localize: stopped; answered samples are kept in {out}; run the same command to resume",
              file=sys.stderr)
        return 130
    print_summary(result.report)
    print(f"report: {out / 'report.md'} (and report.json); predictions: {out / 'predictions.parquet'}")
    return 0


def run_lift(args: argparse.Namespace) -> int:
    import asyncio

    from intgen.backends import BackendError
    from intgen.config import SpecError
    from intgen.evaluation.lift import LiftError, format_table, lift_async
    from intgen.rundir import RunDirError

    if args.hints:  # the hint table from the run's own samples: no model call (docs/hints.md)
        from intgen.stages.hint import hint_report
        try:
            print(hint_report(args.dir))
        except FileNotFoundError as e:
            print(f"intgen eval lift: {e}", file=sys.stderr)
            return 2
        return 0
    try:
        result = asyncio.run(lift_async(args.dir, r=args.r, candidates=args.candidates, fresh=args.fresh,
                                        overrides=args.overrides, progress=not args.quiet))
    except (LiftError, SpecError, FileNotFoundError, BackendError, RunDirError) as e:
        print(f"intgen eval lift: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\nintgen eval lift: stopped; answered samples are kept in {args.dir}/samples.sqlite; run the same "
              "command to resume", file=sys.stderr)
        return 130
    print(format_table(result.lift))
    written = ["lift.parquet", "stats.json (key 'lift')"] + (["lift.png"] if result.plot else [])
    print(f"written in {args.dir}: {', '.join(written)}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("eval", help="evaluate: first-error localization on labelled solutions (localize), "
                                    "the paper's lift table for a run (lift)")
    esub = p.add_subparsers(dest="eval_command", required=True)

    q = esub.add_parser("localize", help="run the proposer prompt on ProcessBench / PRM800K rows and score where it "
                                         "puts the first error (acc. erroneous, acc. correct, F1, baselines)")
    q.add_argument("--data", required=True, help="labelled rows: ProcessBench (problem, steps, label) or PRM800K "
                                                 "stepwise (instruction, responses, next_response, rating); .jsonl, "
                                                 ".json or .parquet")
    q.add_argument("--model", help="the proposer model (short name, HF id or local path); overrides the spec's")
    q.add_argument("--out", help="output folder (default: runs/eval/localize-<data>-<model>); an existing one resumes")
    q.add_argument("--spec", help="an eval spec (YAML) with the keys of README 'Evaluation'")
    q.add_argument("--quiet", action="store_true", help="no progress bars")
    q.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. propose.m=4 backend.kind=fake "
                                                "'reference=[{path: data.jsonl, adapter: gsm8k}]'")
    q.set_defaults(func=run_localize)

    q = esub.add_parser("lift", help="the paper's Table 1 for a run: coverage and success rate from the problem, "
                                     "the prefix, the prefix + the erroneous step, the prefix + the intervention")
    q.add_argument("dir", help="a run directory written by intgen generate")
    q.add_argument("--r", type=int, help="samples per candidate and condition (default: the run's check.r)")
    q.add_argument("--candidates", default="accepted", choices=["accepted", "selected", "checked"],
                   help="which candidates' failed rollouts (default: accepted)")
    q.add_argument("--fresh", action="store_true", help="draw new samples for (c) and (d) instead of reusing the "
                                                        "run's baselines and checks")
    q.add_argument("--hints", action="store_true", help="print the hint table of a run made with `conditions` "
                   "(problems solved and mean success per condition, from interventions.parquet; no model call)")
    q.add_argument("--quiet", action="store_true", help="no progress bars")
    q.add_argument("overrides", nargs="*", help="backend.* / grading.* overrides, e.g. backend.base_url=...")
    q.set_defaults(func=run_lift)
