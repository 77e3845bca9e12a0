"""The streaming schedule against the InT scripts' schedule, and the token economy of the
check stage's stopping rules, on the simulated engine (issue 12; docs/architecture.md).

    .venv/bin/python benchmarks/schedule.py              # the paper's setup at 1,000 problems, about 4 minutes
    .venv/bin/python benchmarks/schedule.py --problems 250

1. The paper's setup (k = 4, m = 4, r = 32, the full proposer prompt with its solve turn,
   16,384 new tokens) on synthetic problems, run twice through ``intgen generate`` on the
   simulated engine with its fixed defaults (``backend.kind=sim``; one engine): intgen's
   streaming schedule, and the InT scripts' (``executor.schedule=barrier``, slices of 256
   prompts, each slice finished before the next). Same requests, same seeds, so the same
   decisions (checked). Printed: virtual wall time of each, their ratio, engine occupancy
   (mean running sequences / max) over the whole run and while work remained (up to the
   last request sent).
2. Tokens per accepted intervention (the output tokens it takes to accept one: rollouts,
   proposer and checks; the baselines, which measure lift and not acceptance, are printed
   apart as a second ratio) for: all r continuations; ``check.early_stop`` (waves of 4);
   early stop with ``check.give_up_after: n`` for a few n; and the recall of each rule
   (accepted set / all-r accepted set). The rules are replayed on the all-r run's own
   verdicts with the check stage's own rule (:func:`intgen.stages.check.replay_stopping`):
   outcomes are drawn per request seed, so a replay draws exactly what a run with the rule
   would (tests/test_streaming.py checks this against a real run). Under the paper's funnel
   (15% of candidates with success rate 0.29, the rest 0) and a pessimistic one (the good
   candidates' rates spread evenly over 0.01-0.3, at 250 problems to stay in time).

The last two lines are the summary the issue names.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from intgen.backends.sim import SimBackend, marker  # noqa: E402
from intgen.config import load_spec  # noqa: E402
from intgen.runner import run_job  # noqa: E402
from intgen.stages.check import replay_stopping  # noqa: E402

WAVE = 4
GIVE_UP = (8, 12, 16)
RECOMMENDED = 12


def problems_file(folder: Path, n: int) -> Path:
    """n synthetic problems: a 150-token statement, a 600-token reference, an integer answer."""
    path = folder / f"problems-{n}.jsonl"
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({"id": f"sim-{i}", "problem": f"Problem {i}. {marker(150)}",
                                "reference_solution": f"Reference solution {i}. {marker(600)}",
                                "answer": str(1000 + i)}) + "\n")
    return path


def run(folder: Path, problems: Path, name: str, overrides: list[str]) -> tuple[Path, SimBackend, float]:
    spec = load_spec(None, ["backend.kind=sim", "grading.workers=1", *overrides], data={
        "name": name, "source": {"path": str(problems)}, "propose": {"prompt": str(ROOT / "prompts/int-propose.yaml"), "m": 4},
        "rollout": {"k": 4}, "check": {"r": 32}, "sampling": {"max_tokens": 16384}})
    from intgen.backends import make_backend

    backend = make_backend(spec.backend, spec.model)
    out = folder / name
    start = time.perf_counter()
    run_job(spec, out, backend=backend, progress=False)
    return out, backend, time.perf_counter() - start


def economy(out: Path, r: int = 32, min_correct: int = 1) -> dict[str, dict[str, float]]:
    """Tokens per accepted intervention and recall of each stopping rule, replayed on an all-r run."""
    conts = pq.read_table(out / "continuations.parquet").to_pylist()
    tokens = json.loads((out / "stats.json").read_text())["tokens"]
    upstream = sum(tokens[k]["completion_tokens"] for k in ("rollout", "solve", "propose") if k in tokens)
    checks: dict[str, list[tuple[int, str, int]]] = defaultdict(list)
    baseline_tokens: dict[tuple[str, int], int] = defaultdict(int)
    loc: dict[str, tuple[str, int]] = {}
    for c in conts:
        if c["kind"] == "check":
            checks[c["candidate_id"]].append((c["sample_index"], c["verdict"], c["completion_tokens"]))
            loc[c["candidate_id"]] = (c["rollout_id"], c["location"])
        else:
            baseline_tokens[(c["rollout_id"], c["location"])] += c["completion_tokens"]
    rules = {"all-r": (False, None), "early stop": (True, None)}
    rules.update({f"early stop + give up after {n}": (True, n) for n in GIVE_UP})
    out_rules = {}
    reference: set[str] | None = None
    for name, (early, give_up) in rules.items():
        accepted, drawn_tokens = set(), 0
        for cid, samples in checks.items():
            samples.sort()
            verdicts = [v for _, v, _ in samples]
            drawn, _ = replay_stopping(verdicts, r, WAVE, min_correct, early, give_up)
            drawn_tokens += sum(t for _, _, t in samples[:drawn])
            if sum(v == "correct" for v in verdicts[:drawn]) >= min_correct:
                accepted.add(cid)
        base = sum(baseline_tokens[k] for k in {loc[c] for c in accepted})
        if reference is None:
            reference = accepted
        n = max(1, len(accepted))
        out_rules[name] = {"accepted": len(accepted), "tokens_per_accepted": (upstream + drawn_tokens) / n,
                           "checks_only": drawn_tokens / n,
                           "with_baselines": (upstream + drawn_tokens + base) / n,
                           "recall": len(accepted & reference) / max(1, len(reference))}
    ref = out_rules["all-r"]
    for v in out_rules.values():
        v["ratio"] = v["tokens_per_accepted"] / ref["tokens_per_accepted"]
        v["ratio_with_baselines"] = v["with_baselines"] / ref["with_baselines"]
        v["ratio_checks_only"] = v["checks_only"] / ref["checks_only"]
    return out_rules


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--problems", type=int, default=1000, help="problems of the schedule comparison (default 1000)")
    ap.add_argument("--pessimistic-problems", type=int, default=250, help="problems of the pessimistic funnel run")
    ap.add_argument("--keep", help="keep the run folders here")
    args = ap.parse_args()
    folder = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="intgen-schedule-"))
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    pf = problems_file(folder, args.problems)
    print(f"the paper's setup on the simulated engine: {args.problems} problems, k=4, m=4, r=32, 16,384 new tokens; "
          "engine: 256 sequences, step 8 ms + 0.094 ms x running, prefill 0.02 ms/token")
    stream_out, stream, s_wall = run(folder, pf, "stream", [])
    int_out, barrier, b_wall = run(folder, pf, "int", ["executor.schedule=barrier", "executor.slice=256"])
    acc = [{r["candidate_id"] for r in pq.read_table(o / "interventions.parquet").to_pylist() if r["accepted"]}
           for o in (stream_out, int_out)]
    assert acc[0] == acc[1], "the two schedules must take the same decisions"
    so, bo = stream.occupancy(), barrier.occupancy()
    funnel = json.loads((stream_out / "stats.json").read_text())["funnel"]
    print(f"  funnel: {funnel}")
    print(f"  {'schedule':<42} {'virtual wall':>14} {'occupancy':>10} {'while work remains':>19} {'real s':>7}")
    for name, o, wall in (("streaming (intgen)", so, s_wall), ("InT scripts (barriers, slices of 256 prompts)", bo, b_wall)):
        print(f"  {name:<42} {o['virtual_seconds'] / 3600:>12.1f} h {o['occupancy']:>10.3f} "
              f"{o['occupancy_while_work_remains']:>19.3f} {wall:>7.0f}")
    ratio = so["virtual_seconds"] / bo["virtual_seconds"]
    print(f"  same decisions: yes ({len(acc[0])} accepted in both)")

    print("\ntokens per accepted intervention (output tokens of rollouts, proposer and checks; "
          "'+ baselines' adds the baselines of the accepted):")
    paper = economy(stream_out)
    pf2 = problems_file(folder, args.pessimistic_problems)
    pess_out, _, _ = run(folder, pf2, "pessimistic", ["backend.sim.good_rate_low=0.01", "backend.sim.good_rate=0.3"])
    pess = economy(pess_out)
    print(f"  {'':<34} {'paper funnel':-^69}   {'pessimistic':-^19}")
    print(f"  {'rule':<34} {'accepted':>9} {'tok/accepted':>14} {'vs all-r':>9} {'checks only':>12} "
          f"{'+ baselines':>12} {'recall':>7}   {'vs all-r':>9} {'recall':>7}")
    for name in paper:
        a, b = paper[name], pess[name]
        print(f"  {name:<34} {a['accepted']:>9} {a['tokens_per_accepted'] / 1e6:>12.2f} M {a['ratio']:>9.2f} "
              f"{a['ratio_checks_only']:>12.2f} {a['ratio_with_baselines']:>12.2f} {a['recall']:>7.3f}   "
              f"{b['ratio']:>9.2f} {b['recall']:>7.3f}")
    print(f"  (pessimistic funnel: good candidates' rates spread evenly over 0.01-0.3, "
          f"{args.pessimistic_problems} problems)")
    print(f"\nreal time: {time.perf_counter() - t0:.0f} s; runs in {folder}")
    if not args.keep:
        shutil.rmtree(folder, ignore_errors=True)
    rec = paper[f"early stop + give up after {RECOMMENDED}"]
    print(f"tokens per accepted vs all-r: early stop {paper['early stop']['ratio']:.2f}, sequential "
          f"{rec['ratio']:.2f} at recall {rec['recall']:.2f}")
    print(f"streaming/InT wall ratio: {ratio:.2f}, occupancy: {so['occupancy_while_work_remains']:.2f} (streaming) vs "
          f"{bo['occupancy_while_work_remains']:.2f} (InT)")


if __name__ == "__main__":
    main()
