"""``intgen inspect DIR``: where a run stands, stage by stage."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

#: the table each stage writes when the run is done
STAGE_TABLES = {"rollout": "rollouts", "solve": None, "propose": "candidates", "check": "continuations",
                "baseline": "continuations", "select": "interventions"}


def describe_run(run_dir: Path) -> dict:
    """What ``intgen inspect`` prints, as data: per stage its status (pending / running /
    done, from ``manifest.json``, docs/architecture.md "Stage status"), its table's row
    count (or why it cannot be read), requests made so far, samples answered (from the
    sample store), failed requests, and tokens so far. Stages overlap in a streaming run,
    so the requests of a stage that is not done are a count so far, not a total.

    Raises:
        FileNotFoundError: ``run_dir`` holds no run (no ``manifest.json``).
    """
    import pyarrow.parquet as pq

    from intgen.store import STORE_NAME, SampleStore

    manifest_path = run_dir / "manifest.json"
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{run_dir} holds no intgen run (no manifest.json)")
    manifest = json.loads(manifest_path.read_text())
    counts = {}
    if (run_dir / STORE_NAME).exists():
        store = SampleStore(run_dir / STORE_NAME)
        try:
            counts = store.counts()
        finally:
            store.close()
    recorded = manifest.get("stages", {})
    stages = {}
    for stage, table_name in STAGE_TABLES.items():
        entry = recorded.get(stage, {})
        if isinstance(entry, str):  # a manifest written before the streaming executor
            entry = {"status": entry, "requests": manifest.get("requests", {}).get(stage)}
        status = entry.get("status", "pending")
        if stage == "select":
            status = "done" if manifest.get("status") in ("complete", "incomplete") or manifest.get("complete") else "pending"
        table = run_dir / f"{table_name}.parquet" if table_name else None
        rows: Any = None
        if table is not None and table.exists():
            try:
                if table_name == "continuations":  # one table for both kinds: count this stage's
                    kinds = pq.read_table(table, columns=["kind"]).column("kind").to_pylist()
                    rows = kinds.count(stage)
                else:
                    rows = pq.read_metadata(table).num_rows
            except Exception as e:  # a truncated or foreign file: it will be rewritten on resume
                rows = f"unreadable ({type(e).__name__}); rewritten on resume"
        got = counts.get(stage, {})
        stages[stage] = {
            "status": status, "rows": rows, "requests": entry.get("requests"),
            "answered": got.get("samples", 0), "failed": entry.get("failed"),
            "prompt_tokens": got.get("prompt_tokens", 0), "completion_tokens": got.get("completion_tokens", 0),
        }
    plan = json.loads((run_dir / "plan.json").read_text()) if (run_dir / "plan.json").is_file() else None
    stats = json.loads((run_dir / "stats.json").read_text()) if (run_dir / "stats.json").is_file() else {}
    status = manifest.get("status") or ("complete" if manifest.get("complete") else "running")
    return {"run_dir": str(run_dir), "status": status, "complete": status == "complete",
            "failed_requests": manifest.get("failed_requests", 0), "stopped_by": manifest.get("stopped_by"),
            "stages": stages,
            "plan": plan, "ledger": stats.get("ledger")}


def inspect_rounds(folder: Path, as_json: bool) -> int:
    """A rounds folder (docs/rounds.md): its status, why it ended, the funnel across rounds."""
    from intgen.rounds import ROUNDS_FILE, funnel_table

    try:
        record = json.loads((folder / ROUNDS_FILE).read_text())
    except (OSError, ValueError) as e:
        print(f"intgen inspect: {folder / ROUNDS_FILE} is unreadable ({e})", file=sys.stderr)
        return 2
    if as_json:
        print(json.dumps(record, indent=2))
        return 0
    ended = f"ended by {record.get('ended_by')}: {record.get('ending')}" if record.get("ending") else "running or killed"
    print(f"{folder}: intgen rounds, {record.get('status')} ({ended}); rerun the same intgen rounds command to "
          "resume or extend it")
    if record.get("rounds"):
        print(funnel_table(record))
        print(f"each round is a run: intgen inspect {folder / record['rounds'][-1]['run_dir']}")
    return 0


def run(args: argparse.Namespace) -> int:
    from intgen.rounds import ROUNDS_FILE

    if (Path(args.run_dir) / ROUNDS_FILE).is_file() and not (Path(args.run_dir) / "manifest.json").exists():
        return inspect_rounds(Path(args.run_dir), args.json)
    try:
        info = describe_run(Path(args.run_dir))
    except FileNotFoundError as e:
        print(f"intgen inspect: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    said = {"complete": "complete",
            "incomplete": f"incomplete: {info['failed_requests']} requests failed, rerun to retry them "
                          "(the same intgen generate command with --out DIR)",
            "stopped": f"stopped: {info['stopped_by']}; fix the cause, then rerun the same intgen generate command "
                       "with --out DIR (answered samples are kept)",
            }.get(info["status"], "not finished: stopped or still running; rerun the same intgen generate command "
                                  "with --out DIR to resume it")
    print(f"{info['run_dir']}: {said}")
    print(f"  {'stage':<9} {'status':<9} {'rows':>8} {'requests':>9} {'answered':>9} {'failed':>7} {'prompt tok':>11} "
          f"{'output tok':>11}")
    for stage, s in info["stages"].items():
        def show(v: Any) -> str:
            return "-" if v is None else str(v)
        print(f"  {stage:<9} {s['status']:<9} {show(s['rows']):>8} {show(s['requests']):>9} {s['answered']:>9} "
              f"{show(s['failed']):>7} {s['prompt_tokens']:>11} {s['completion_tokens']:>11}")
    if info["plan"] and info["ledger"]:
        from intgen.plan import Plan, format_plan

        plan = Plan(**info["plan"])
        print("\nplan vs actual (plan: intgen plan's defaults, made when the run started; intgen plan --from-run "
              "DIR re-plans with this run's funnel)")
        print(format_plan(plan, info["ledger"]["stages"]))
        print(f"  actual GPU-hours: {info['ledger']['gpu_hours']:,.4f} over {len(info['ledger']['sessions'])} "
              "session(s) (engine time, every resume included)")
    return 0


def register(sub) -> None:
    p = sub.add_parser("inspect", help="show where a run stands: stage status, rows, requests, samples answered, failures, tokens")
    p.add_argument("run_dir", help="a run directory (or an intgen rounds folder)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=run)
