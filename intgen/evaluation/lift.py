"""``intgen eval lift DIR``: the paper's Table 1 for a run (docs/paper.md; issue 9).

For the failed rollouts of the run's accepted candidates (one *item* per candidate),
continue r times from each of:

- (a) ``problem``: the problem alone (a fresh rollout);
- (b) ``prefix``: the prefix before the error, steps ``1..location-1`` followed by the
  step separator ``\\n\\n``, so the model writes the step at ``location`` anew (for
  location 1 the prefix is empty and this is a fresh rollout, as (a));
- (c) ``prefix_step``: the prefix plus the original erroneous step (the run's baselines,
  :func:`intgen.steps.baseline_target`);
- (d) ``intervention``: the prefix plus the intervention (the run's checks, the
  candidate's ``target``).

Requests use the runner's ids, chats, sampling and seeds: (c) and (d) samples the run
already holds are read from ``continuations.parquet`` (with their verdicts), and only the
missing ones (``baseline.for: none``, early-stopped checks, a larger r) are generated.
New samples of (a) and (b) have their own ids (``{candidate_id}/lift-problem-{l}``,
``{rollout_id}/location-{n}/lift-prefix-{l}``). Everything goes through the run's
sample store, so an interrupted ``eval lift`` resumes, and every sample of the table is
written to ``lift.parquet`` (one row per item, condition and sample).

Per condition: *coverage* = problems with at least one correct sample over problems;
*success rate* = correct / graded samples (docs/pipeline.md: ungradable samples are left
out), over all items' samples, so each item weighs r samples in every row. Note: (d)
reuses the check samples that accepted the candidates, so with ``accept.min_correct >= 1``
its coverage is 1 by construction; ``fresh=True`` draws new (c) and (d) samples
(``.../lift-baseline-{l}``, ``{candidate_id}/lift-continuation-{l}``) for an unbiased row.

The paper's units are printed beside these (docs/faithful.md, "eval lift"): *solved* =
problems with at least one correct sample, out of the table's N problems (the paper's
"coverage", e.g. 80/334), and *accuracy* = the mean over problems of each problem's share
of correct samples, every sample counted (an ungradable or unanswered one scores 0, as the
paper's grader scored it), in percent (the paper's "accuracy", e.g. 1.56%). With one item
per problem and no ungradable sample it equals intgen's success rate.

A faithful run (``faithful: true``) is lifted faithfully too: its steps are the paper's
split, a location past the last step has the whole attempt as its (c) partial trace (one
below 1 has no (c) row), and samples are graded by the paper's rules.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from intgen import tables
from intgen.backends import Backend, BackendError, Completion, Request, Sampling, make_backend, sample_seed
from intgen.config import JobSpec, load_spec
from intgen.grading_pool import GradingPool
from intgen.sources import Problem
from intgen.stages import check as check_stage
from intgen.stages.rollout import policy_messages
from intgen.steps import STEP_SEPARATOR, baseline_target
from intgen.executor import Executor
from intgen.store import STORE_NAME, SampleStore

CONDITIONS = ("problem", "prefix", "prefix_step", "intervention")
LABELS = {"problem": "(a) problem alone", "prefix": "(b) prefix before the error",
          "prefix_step": "(c) prefix + original erroneous step", "intervention": "(d) prefix + intervention"}
POPULATIONS = ("accepted", "selected", "checked")

S, I = pa.string(), pa.int64()
#: ``lift.parquet``: one row per (candidate, condition, sample)
LIFT = pa.schema([
    ("candidate_id", S), ("condition", S), ("sample_id", S), ("sample_index", I), ("problem_id", S),
    ("rollout_id", S), ("location", I), ("seed", I), ("origin", S), ("text", S), ("finish_reason", S),
    ("extracted_answer", S), ("verdict", S), ("verdict_reason", S), ("prompt_tokens", I), ("completion_tokens", I),
])

#: overrides ``eval lift`` accepts: how to reach the model and grade, never what is sampled
_OVERRIDABLE = ("backend.", "grading.")


class LiftError(ValueError):
    """A run directory ``eval lift`` cannot use; the message says why."""


@dataclass
class LiftResult:
    """The table (``stats.json``'s ``lift``) and where it was written."""

    run_dir: Path
    lift: dict[str, Any]
    plot: Path | None


def _read(path: Path) -> list[dict]:
    return pq.read_table(path).to_pylist() if path.exists() else []


def load_run_spec(run_dir: Path, overrides: list[str] | None = None) -> JobSpec:
    """The run's ``job.yaml`` with ``backend.*``/``grading.*`` overrides.

    Raises:
        LiftError: no ``job.yaml``, or an override of another key.
        SpecError: the spec does not validate.
    """
    if not (run_dir / "job.yaml").is_file():
        raise LiftError(f"{run_dir} holds no intgen run (no job.yaml)")
    bad = [o for o in overrides or [] if not o.strip().startswith(_OVERRIDABLE)]
    if bad:
        raise LiftError(f"eval lift takes only backend.* and grading.* overrides (the table must use the run's own "
                        f"model and sampling); got {', '.join(bad)}")
    return load_spec(run_dir / "job.yaml", overrides)


def _items(run_dir: Path, population: str) -> list[dict]:
    if population not in POPULATIONS:
        raise LiftError(f"candidates={population!r}: use one of {', '.join(POPULATIONS)}")
    path = run_dir / "interventions.parquet"
    if not path.exists():
        raise LiftError(f"{run_dir} has no interventions.parquet: the run is not complete (resume it with intgen "
                        "generate ... --out DIR)")
    rows = _read(path)
    keep = {"accepted": lambda r: r["accepted"], "selected": lambda r: r["selected"],
            "checked": lambda r: r["reject_reason"] != "answer_leak"}[population]
    return sorted((r for r in rows if keep(r)), key=lambda r: r["candidate_id"])


def _requests(item: dict, spec: JobSpec, sampling: Sampling, r: int, fresh: bool) -> dict[str, list[Request]]:
    """The r requests of each condition for one item, with the runner's ids and seeds."""
    problem = Problem(item["problem_id"], item["source"], item["problem"], item["reference_solution"],
                      item["gold_answer"])
    steps, loc, rid, cid = list(item["steps"]), item["location"], item["rollout_id"], item["candidate_id"]
    meta = {"rollout_id": rid, "location": loc, "candidate_id": cid}

    def own(kind: str, base: str, prefix: str | None) -> list[Request]:
        out = []
        for l in range(r):
            sid = f"{base}/{kind}-{l}"
            out.append(Request(sid, policy_messages(problem.problem, spec.system_prompt, prefix), sampling,
                               sample_seed(spec.seed, sid), continue_final=prefix is not None,
                               meta={"stage": kind, "problem_id": problem.problem_id,
                                     "gold_answer": problem.gold_answer, "sample_index": l, **meta}))
        return out

    base = f"{rid}/location-{loc}"
    prefix = STEP_SEPARATOR.join(steps[: loc - 1]) + STEP_SEPARATOR if loc > 1 else None
    out = {"problem": own("lift-problem", cid, None), "prefix": own("lift-prefix", base, prefix)}
    # faithful runs keep any integer location (docs/faithful.md): past the last step, (c) is the whole attempt
    partial = baseline_target(steps, loc, any_location=spec.faithful) if loc >= 1 else None
    if fresh:
        out["prefix_step"] = own("lift-baseline", base, partial) if partial is not None else []
        out["intervention"] = own("lift-continuation", cid, item["target"])
    else:
        out["prefix_step"] = check_stage.continuation_requests(
            "baseline", base, problem, partial, r, sampling, spec.system_prompt, spec.seed,
            {"rollout_id": rid, "location": loc}) if partial is not None else []
        out["intervention"] = check_stage.continuation_requests(
            "continuation", cid, problem, item["target"], r, sampling, spec.system_prompt, spec.seed,
            {"candidate_id": cid, "rollout_id": rid, "location": loc})
    return out


def paper_accuracy(rows: list[dict]) -> float | None:
    """The paper's accuracy of one condition's ``lift.parquet`` rows: the mean over problems of
    each problem's correct samples / samples, every answered sample counted (ungradable and
    no_answer score 0, as the paper's grader scored them); a fraction, None without samples.
    Source: docs/faithful.md, "eval lift" (the paper's Table 1, docs/paper.md)."""
    per_problem: dict[str, list[bool]] = {}
    for r in rows:
        if r["verdict"] is not None:
            per_problem.setdefault(r["problem_id"], []).append(r["verdict"] == "correct")
    if not per_problem:
        return None
    return sum(sum(v) / len(v) for v in per_problem.values()) / len(per_problem)


def lift_table(rows: list[dict], problems: list[str]) -> list[dict]:
    """The table from ``lift.parquet`` rows: per condition, samples, graded, correct,
    success rate (correct / graded, None when nothing is graded) and coverage; and the
    paper's units: ``paper_solved`` of ``problems`` and ``paper_accuracy``
    (:func:`paper_accuracy`, a fraction)."""
    out = []
    for cond in CONDITIONS:
        rs = [r for r in rows if r["condition"] == cond]
        verdicts = [r["verdict"] for r in rs if r["verdict"] is not None]
        covered = sorted({r["problem_id"] for r in rs if r["verdict"] == "correct"})
        out.append({"condition": cond, "label": LABELS[cond], "samples": len(verdicts),
                    "graded": sum(v in ("correct", "wrong", "no_answer") for v in verdicts),
                    "correct": sum(v == "correct" for v in verdicts), "success_rate": check_stage.success_rate(verdicts),
                    "covered": len(covered), "problems": len(problems),
                    "coverage": len(covered) / len(problems) if problems else None,
                    "from_run": sum(r["origin"] == "run" and r["verdict"] is not None for r in rs),
                    "failed_requests": sum(r["verdict"] is None for r in rs),
                    "paper_solved": len(covered), "paper_accuracy": paper_accuracy(rs)})
    return out


async def lift_async(run_dir: str | Path, backend: Backend | None = None, r: int | None = None,
                     candidates: str = "accepted", fresh: bool = False, overrides: list[str] | None = None,
                     progress: bool = True, grader: GradingPool | None = None, plot: bool = True) -> LiftResult:
    """Compute the lift table of a run, generating the samples it lacks (module docstring).

    Args:
        run_dir: a complete run directory.
        backend: a ready backend (tests pass a fake); by default the run's, from ``job.yaml``.
        r: samples per item and condition (default: the run's ``check.r``).
        candidates: ``accepted`` (default), ``selected`` (the candidates in ``sft.parquet``)
            or ``checked`` (every parsed candidate that did not leak the answer).
        fresh: draw new (c) and (d) samples instead of reusing the run's.
        overrides: ``backend.*``/``grading.*`` keys.

    Raises:
        LiftError, SpecError: the run or the options cannot be used.
        BackendError: the backend cannot continue an assistant turn, or cannot start.
        RunDirError: another intgen process is working in the run.
    """
    from intgen.rundir import run_lock

    run_dir = Path(run_dir)
    spec = load_run_spec(run_dir, overrides)
    with run_lock(run_dir, "eval lift"):
        return await _lift(run_dir, spec, backend, r, candidates, fresh, progress, grader, plot)


async def _lift(run_dir: Path, spec: JobSpec, backend: Backend | None, r: int | None, candidates: str, fresh: bool,
                progress: bool, grader: GradingPool | None, plot: bool) -> LiftResult:
    r = r or spec.check.r
    if r < 1:
        raise LiftError("r must be at least 1")
    items = _items(run_dir, candidates)
    s = spec.sampling
    sampling = Sampling(s.temperature, s.top_p, s.top_k, s.max_tokens)
    known = {c["continuation_id"]: c for c in _read(run_dir / "continuations.parquet")}

    per_item = {it["candidate_id"]: _requests(it, spec, sampling, r, fresh) for it in items}
    unique: dict[str, Request] = {}
    for reqs in per_item.values():
        for rs in reqs.values():
            for q in rs:
                unique.setdefault(q.id, q)
    missing = [q for q in unique.values() if q.id not in known]

    results: dict[str, dict] = {}  # sample id -> lift row fields (origin, text, verdict ...)
    for sid, c in known.items():
        if sid in unique:
            results[sid] = {"origin": "run", "text": c["text"], "finish_reason": c["finish_reason"],
                            "extracted_answer": c["extracted_answer"], "verdict": c["verdict"],
                            "verdict_reason": c["verdict_reason"], "prompt_tokens": c["prompt_tokens"],
                            "completion_tokens": c["completion_tokens"]}
    generated = 0
    if missing:
        store = SampleStore(run_dir / STORE_NAME)
        policy = backend or make_backend(spec.backend, spec.model)
        own_grader = grader is None
        grader = grader or GradingPool(spec.grading.workers, spec.grading.timeout_s)
        ex = Executor(("lift",), store, grader, progress=progress, faithful=spec.faithful)
        ex.add_engine("policy", policy, spec.model)

        def record(q: Request, c: Completion, v: Any) -> None:
            if v is None:
                results[q.id] = {"origin": "lift", "verdict": None, "finish_reason": c.finish_reason,
                                 "verdict_reason": c.error or c.finish_reason}
                return
            results[q.id] = {"origin": "lift", "text": c.text, "finish_reason": c.finish_reason,
                             "extracted_answer": v.extracted, "verdict": v.status, "verdict_reason": v.reason,
                             "prompt_tokens": c.prompt_tokens, "completion_tokens": c.completion_tokens}

        try:
            def refuse_if_cannot_continue() -> None:
                if not policy.can_continue:
                    raise BackendError("eval lift continues unfinished assistant turns, which this backend cannot do; "
                                       "use vllm, or a server with backend.continuation=completions or auto")

            refuse_if_cannot_continue()
            await ex.prepare()
            refuse_if_cannot_continue()  # a server probed at prepare may turn out unable to (continuation auto)
            sent = {q.id for q in ex.send(missing, record, stage="lift", grade=True)}
            for q in missing:
                if q.id not in sent:
                    results[q.id] = {"origin": "lift", "verdict": None, "finish_reason": "error",
                                     "verdict_reason": "prompt_too_long"}
            await ex.run()
            generated = ex.stages["lift"].sent
        finally:
            store.close()
            if own_grader:
                grader.close()
            await policy.close()

    rows = []
    for it in items:
        for cond in CONDITIONS:
            for q in per_item[it["candidate_id"]][cond]:
                res = results.get(q.id, {"origin": "lift", "verdict": None, "finish_reason": "error"})
                rows.append({"candidate_id": it["candidate_id"], "condition": cond, "sample_id": q.id,
                             "sample_index": q.meta["sample_index"], "problem_id": it["problem_id"],
                             "rollout_id": it["rollout_id"], "location": it["location"], "seed": q.seed, **res})
    tables.write_parquet(rows, LIFT, run_dir / "lift.parquet")
    problems = sorted({it["problem_id"] for it in items})
    lift = {"candidates": candidates, "fresh": fresh, "r": r, "items": len(items), "problems": len(problems),
            "rollouts": len({it["rollout_id"] for it in items}), "generated": generated,
            "rows": lift_table(rows, problems),
            "note": ("(d) reuses the check samples that accepted these candidates; with accept.min_correct >= 1 its "
                     "coverage is 1 by construction (fresh=true draws new (c) and (d) samples)")
            if candidates in ("accepted", "selected") and not fresh else None}
    stats_path = run_dir / "stats.json"
    stats = json.loads(stats_path.read_text()) if stats_path.exists() else {}
    stats["lift"] = lift
    tables.write_json(stats, stats_path)
    png = draw_plot(lift, run_dir / "lift.png") if plot and items else None
    return LiftResult(run_dir, lift, png)


def draw_plot(lift: dict, path: Path) -> Path:
    """Two bar charts (coverage, success rate) per condition, written as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = lift["rows"]
    names = ["(a) problem\nalone", "(b) prefix before\nthe error", "(c) prefix +\nerroneous step",
             "(d) prefix +\nintervention"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    colors = ["#9e9e9e", "#bdbdbd", "#757575", "#1f77b4"]
    panels = (
        (axes[0], [(r["coverage"] or 0) * 100 for r in rows],
         [f"{r['covered']}/{r['problems']}" for r in rows], f"coverage: % of {lift['problems']} problems with >= 1 success"),
        (axes[1], [(r["success_rate"] or 0) * 100 for r in rows],
         ["n/a" if r["success_rate"] is None else f"{100 * r['success_rate']:.2f}%\n{r['correct']}/{r['graded']}"
          for r in rows], "success rate: % of graded samples"),
    )
    for ax, values, notes, title in panels:
        bars = ax.bar(range(len(rows)), values, color=colors)
        ax.set_xticks(range(len(rows)), names, fontsize=8)
        ax.set_title(title, fontsize=9)
        ax.set_ylim(0, max(max(values) * 1.25, 1.0))
        for b, note in zip(bars, notes):
            ax.annotate(note, (b.get_x() + b.get_width() / 2, b.get_height()), ha="center", va="bottom", fontsize=8)
    fig.suptitle(f"Continuations from the failed rollouts of {lift['items']} {lift['candidates']} candidates, "
                 f"r = {lift['r']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def format_table(lift: dict) -> str:
    """The table as text, for the terminal."""
    lines = [f"lift table: {lift['items']} {lift['candidates']} candidates on {lift['rollouts']} failed rollouts of "
             f"{lift['problems']} problems; r = {lift['r']} samples per candidate and condition"
             f"{' (fresh (c) and (d))' if lift['fresh'] else ''}",
             f"  {'condition':<40} {'coverage':>14} {'success rate':>13} {'correct/graded':>15} {'from run':>9}"
             f"   | paper: {'solved':>9} {'accuracy':>9}"]
    for r in lift["rows"]:
        cov = f"{r['covered']}/{r['problems']}"
        rate = "n/a" if r["success_rate"] is None else f"{100 * r['success_rate']:.2f}%"
        acc = r.get("paper_accuracy")
        paper = (f"{str(r.get('paper_solved', r['covered'])) + '/' + str(r['problems']):>9} "
                 f"{'n/a' if acc is None else f'{100 * acc:.2f}%':>9}")
        lines.append(f"  {r['label']:<40} {cov:>14} {rate:>13} {str(r['correct']) + '/' + str(r['graded']):>15} "
                     f"{r['from_run']:>9}   |        {paper}")
        if r["failed_requests"]:
            lines[-1] += f"  ({r['failed_requests']} failed requests)"
    lines.append("  paper: the paper's Table 1 units: problems with >= 1 correct sample out of N, and accuracy = mean "
                 "over problems of each problem's share of correct samples, ungradable ones scored 0 (docs/faithful.md)")
    if lift.get("note"):
        lines.append(f"  note: {lift['note']}")
    return "\n".join(lines)
