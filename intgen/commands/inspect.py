"""``intgen inspect DIR``: where a run stands, stage by stage."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

#: the table each stage writes when it is done
STAGE_TABLES = {"rollout": "rollouts", "propose": "candidates", "check": "continuations",
                "baseline": "continuations", "select": "interventions"}
#: the request groups (progress-bar names) that belong to each stage
STAGE_REQUESTS = {"rollout": ["rollout"], "propose": ["solve", "propose"], "check": ["check"],
                  "baseline": ["baseline"], "select": []}


def describe_run(run_dir: Path) -> dict:
    """What ``intgen inspect`` prints, as data: per stage its status (done / in progress /
    pending, from ``manifest.json``), its table's row count (or why it cannot be read),
    samples answered (from the sample store) and left, and tokens so far.

    Raises:
        FileNotFoundError: ``run_dir`` holds no run (no ``manifest.json``).
    """
    import pyarrow.parquet as pq

    from intgen.store import STORE_NAME, SampleStore

    manifest_path = run_dir / "manifest.json"
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{run_dir} holds no intgen run (no manifest.json)")
    manifest = json.loads(manifest_path.read_text())
    counts = SampleStore(run_dir / STORE_NAME).counts() if (run_dir / STORE_NAME).exists() else {}
    requests = manifest.get("requests", {})
    stages = {}
    for stage in STAGE_TABLES:
        status = manifest.get("stages", {}).get(stage, "pending")
        table = run_dir / f"{STAGE_TABLES[stage]}.parquet"
        if not table.exists():
            rows = None
        else:
            try:
                rows = pq.read_metadata(table).num_rows
            except Exception as e:  # a truncated or foreign file: it will be rewritten on resume
                rows = f"unreadable ({type(e).__name__}); rewritten on resume"
        groups = STAGE_REQUESTS[stage]
        answered = sum(counts.get(g, {}).get("samples", 0) for g in groups)
        asked = sum(requests.get(g, 0) for g in groups) if any(g in requests for g in groups) else None
        if not groups:  # select makes no model call
            asked = 0
        stages[stage] = {
            "status": {"running": "in progress"}.get(status, status), "rows": rows, "answered": answered,
            "left": None if asked is None else max(asked - answered, 0),
            "prompt_tokens": sum(counts.get(g, {}).get("prompt_tokens", 0) for g in groups),
            "completion_tokens": sum(counts.get(g, {}).get("completion_tokens", 0) for g in groups),
        }
    return {"run_dir": str(run_dir), "complete": manifest.get("complete", False), "stages": stages}


def run(args: argparse.Namespace) -> int:
    try:
        info = describe_run(Path(args.run_dir))
    except FileNotFoundError as e:
        print(f"intgen inspect: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"{info['run_dir']}: {'complete' if info['complete'] else 'not complete (resume with intgen generate ... --out DIR)'}")
    print(f"  {'stage':<9} {'status':<12} {'rows':>8} {'answered':>9} {'left':>6} {'prompt tok':>11} {'output tok':>11}")
    for stage, s in info["stages"].items():
        rows = "-" if s["rows"] is None else s["rows"]
        left = "?" if s["left"] is None else s["left"]
        print(f"  {stage:<9} {s['status']:<12} {rows!s:>8} {s['answered']:>9} {left!s:>6} "
              f"{s['prompt_tokens']:>11} {s['completion_tokens']:>11}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("inspect", help="show where a run stands: stage status, rows, samples answered and left, tokens")
    p.add_argument("run_dir", help="a run directory")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=run)
