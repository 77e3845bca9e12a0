"""``intgen generate``: run a job spec and write its run directory."""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
from pathlib import Path


def dropped_reasons(out_dir):
    """How many records a run dropped, by reason (a ``collections.Counter``): every row of
    ``rejects.parquet`` and every rejected candidate of ``interventions.parquet``, each record
    once (a leaked candidate is in both tables).

    Raises:
        OSError, pyarrow.ArrowInvalid: a table is missing or unreadable.
    """
    from collections import Counter

    import pyarrow.parquet as pq

    rejects = pq.read_table(out_dir / "rejects.parquet", columns=["record_id", "reason"]).to_pydict()
    reasons = Counter(rejects["reason"])
    inter = pq.read_table(out_dir / "interventions.parquet", columns=["candidate_id", "reject_reason"]).to_pydict()
    counted = set(rejects["record_id"])
    reasons.update(r for cid, r in zip(inter["candidate_id"], inter["reject_reason"]) if r and cid not in counted)
    return reasons


def print_funnel(result) -> None:
    """Print a run's directory, funnel counts and its most frequent reject reasons."""
    from collections import Counter

    import pyarrow.parquet as pq

    f = result.funnel
    width = max(len(k) for k in f)
    print(f"\nrun directory: {result.out_dir}")
    print("funnel:")
    for key, value in f.items():
        print(f"  {key:<{width}}  {value}")
    try:
        reasons = dropped_reasons(result.out_dir)
    except Exception:  # noqa: BLE001  (a summary never fails a finished run)
        reasons = Counter()
    if reasons:
        print("top reasons something was dropped: " + ", ".join(f"{k} {v}" for k, v in reasons.most_common(4)))


def print_where(out: Path, export_dir: Path, sft_rows: int) -> None:
    """Where the dataset, its card and the SFT rows are, and what to do next."""
    print(f"dataset: {export_dir} (card: {export_dir / 'README.md'})")
    if sft_rows:
        print(f"SFT rows: {sft_rows} in {out / 'sft.parquet'}; load them with "
              f"datasets.load_dataset('{export_dir}', 'sft', split='train'), or train with "
              f"intgen train sft --data {out} --model MODEL")
    else:
        print(f"no SFT rows: no intervention was accepted (see {out / 'interventions.parquet'}, reject_reason); "
              "a stronger model, larger check.r or more problems give some")
    print(f"what happened, stage by stage: intgen inspect {out}")
    print(f"every candidate with its failed trace, blamed step and continuations, as one HTML page: intgen view {out}")


def _resume_command(args: argparse.Namespace, out: Path) -> str:
    parts = ["intgen generate", shlex.quote(args.job), "--out", shlex.quote(str(out))]
    if args.limit is not None:
        parts += ["--limit", str(args.limit)]
    if getattr(args, "shard", None) is not None:
        parts += ["--shard", str(args.shard)]
    return " ".join(parts + [shlex.quote(o) for o in args.overrides])


def _stopped(out: Path) -> bool:
    import json

    try:
        return json.loads((out / "manifest.json").read_text()).get("status") == "stopped"
    except (OSError, ValueError, AttributeError):
        return False


def _terminate(signum, frame):
    raise KeyboardInterrupt(signal.Signals(signum).name)


def run(args: argparse.Namespace) -> int:
    """Run (or resume) a job. Exit 0 when complete; 3 when it finished with failed requests
    (a server outage: the tables hold what was answered, the export is not written, the
    printed command retries exactly the failed requests); 2 for a spec, input or backend
    error; 130/143 when stopped by SIGINT/SIGTERM (what arrived is kept; the printed command
    resumes); 1 when the run stopped on an I/O error (e.g. disk full), also resumable."""
    import sqlite3

    from intgen.backends import BackendError
    from intgen.config import SpecError, load_spec
    from intgen.models import UnknownModelError
    from intgen.resume import ResumeError
    from intgen.runner import run_job
    from intgen.prompts import PromptError
    from intgen.sources import SourceError
    from intgen.rundir import RunDirError
    from intgen.store import StoreError

    from intgen.resources import job_spec
    from intgen.shards import Shard, ShardError

    try:
        shard = Shard.parse(args.shard) if getattr(args, "shard", None) is not None else None
    except ShardError as e:
        print(f"intgen generate: {e}", file=sys.stderr)
        return 2
    overrides = list(args.overrides)
    if args.limit is not None:
        overrides.append(f"limit={args.limit}")
    try:
        job = job_spec(args.job)
        spec = load_spec(job, overrides)
    except (SpecError, FileNotFoundError) as e:
        print(f"intgen generate: {e}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else Path("runs") / spec.name
    if shard is not None and not args.out:
        out = Path("runs") / f"{spec.name}-shard-{shard.index}-of-{shard.count}"
    if (out / "job.yaml").exists():
        print(f"resuming the run in {out}", file=sys.stderr)
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        result = run_job(spec, out, spec_dir=job.resolve().parent, progress=not args.quiet, shard=shard)
    except (SpecError, FileNotFoundError, FileExistsError, UnknownModelError, BackendError, ResumeError,
            SourceError, PromptError, NotADirectoryError, StoreError, RunDirError, ShardError) as e:
        print(f"intgen generate: {e}", file=sys.stderr)
        if isinstance(e, BackendError) and _stopped(out):
            print(f"intgen generate: the run stopped (manifest.json: status stopped); every answered sample is kept "
                  f"in {out}.\nfix the cause, then resume with: {_resume_command(args, out)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        name = str(e) or "SIGINT"
        print(f"\nintgen generate: stopped by {name}; every answered sample is kept in {out}.\n"
              f"resume with: {_resume_command(args, out)}", file=sys.stderr)
        return 143 if name == "SIGTERM" else 130
    except (OSError, sqlite3.Error) as e:
        print(f"intgen generate: stopped on an I/O error ({type(e).__name__}: {e}); every answered sample is "
              f"kept in {out}.\nfix the cause, then resume with: {_resume_command(args, out)}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)
    print_funnel(result)
    if not result.complete:
        print(f"\nintgen generate: the run is incomplete: {result.failed} requests failed (see rejects.parquet, "
              f"reason request_failed); the tables hold what was answered and the export was not written.\n"
              f"retry exactly those requests with: {_resume_command(args, out)}", file=sys.stderr)
        return 3
    from intgen.export import export_run

    try:  # the run's tables are written; a failed export is reported, and `intgen export` redoes it
        print_where(out, export_run(out), result.funnel.get("sft_rows", 0))
    except Exception as e:  # noqa: BLE001
        print(f"intgen generate: the run is complete, but its export failed ({type(e).__name__}: {e}); "
              f"run `intgen export {shlex.quote(str(out))}` after fixing the cause", file=sys.stderr)
        return 1
    return 0


def register(sub) -> None:
    p = sub.add_parser("generate", help="run rollout -> propose -> check -> baseline -> select for a job spec")
    p.add_argument("job", help="the job spec: a YAML file, or a bundled spec's name (demo, int-paper; "
                               "`intgen pipelines` lists them)")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. check.r=8 backend.kind=fake")
    p.add_argument("--out", help="the run directory (default: runs/<name>); an existing run there is resumed")
    p.add_argument("--limit", type=int, help="number of problems (overrides the spec's limit)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--shard", metavar="I/N", help="run only shard I of N (0-based) of the problems, into its own "
                                                  "folder (default runs/<name>-shard-I-of-N); intgen merge joins the "
                                                  "shards (docs/scale.md)")
    p.set_defaults(func=run)
