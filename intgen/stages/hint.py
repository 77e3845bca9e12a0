"""Hint stage: the hint conditions, measured side by side with the intervention and the
original step for the same candidates (docs/hints.md; the paper's hint comparison,
docs/paper.md).

A *hint* is the first ``hint_steps`` of the reference solution's steps, ``hint_steps =
max(1, floor(fraction x steps))``, put after the problem in the user message
(``hint.template``). Two conditions use it:

- ``hint``: the problem + hint alone, r fresh answers; it depends on the problem only, so
  it runs *once per problem* (the first time a candidate of the problem asks for it) and
  is joined onto every candidate row of that problem. Ids ``{problem_id}/hint-{p}/sample-{l}``.
- ``hint+intervention``: the problem + hint, continuing the candidate's prefix +
  intervention (its check target), r continuations. Ids
  ``{candidate_id}/hint-{p}/continuation-{l}``.

Both go out the moment a candidate's decision arrives, for the candidates ``baseline.for``
names (the same ones the original-step baseline is measured for), with the run's sampling
and r, so every condition of a candidate has the same r samples.
"""

from __future__ import annotations

import math
from typing import Any

from intgen.backends.base import Completion, Request, Sampling, sample_seed
from intgen.grading import Verdict
from intgen.sources import Problem
from intgen.stages import Flow
from intgen.stages.check import CheckResult, success_rate
from intgen.stages.rollout import policy_messages
from intgen.steps import split_steps
from intgen.tables import Candidate, ConditionSample

HINT, HINT_INTERVENTION = "hint", "hint+intervention"


def reference_steps(reference_solution: str) -> list[str]:
    """The reference solution's steps: its ``\\n\\n`` chunks (:func:`intgen.steps.split_steps`),
    or its non-empty lines when it has a single chunk (GSM8K's solutions are one line per step)."""
    steps = split_steps(reference_solution)
    if len(steps) <= 1:
        steps = [line for line in reference_solution.splitlines() if line.strip()]
    return steps


def hint_text(reference_solution: str, fraction: float) -> tuple[str, int]:
    """The hint and its number of steps: the first ``max(1, floor(fraction x n))`` of the
    reference's n steps, joined by ``\\n\\n``; ``("", 0)`` for an empty reference.

    Raises:
        ValueError: ``fraction`` is not in (0, 1].
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"hint.fraction: {fraction} is not in (0, 1]")
    steps = reference_steps(reference_solution)
    if not steps:
        return "", 0
    n = min(len(steps), max(1, math.floor(fraction * len(steps))))
    return "\n\n".join(steps[:n]), n


def hinted_problem(problem: str, hint: str, template: str) -> str:
    """The user message of a hint condition: ``template`` with ``{problem}`` and ``{hint}``."""
    return template.replace("{problem}", problem).replace("{hint}", hint)


class HintStage:
    """Takes ``(candidate, accepted)`` decisions; sends the hint conditions the spec lists.

    Args:
        flow: the executor (``policy`` role).
        conditions: the hint conditions to measure (``hint``, ``hint+intervention``).
        for_: ``baseline.for`` (``accepted`` or ``all``): which candidates get them.
        fraction, template: ``hint.fraction`` and ``hint.template``.
        r, sampling, system_prompt, run_seed: from the spec.
        problems: problem id -> problem; checks: candidate id -> its check result (the target).
    """

    name = "hint"

    def __init__(self, flow: Flow, conditions: list[str], for_: str, fraction: float, template: str, r: int,
                 sampling: Sampling, system_prompt: str | None, run_seed: int, problems: dict[str, Problem],
                 checks: dict[str, CheckResult]):
        self.flow, self.conditions, self.for_ = flow, conditions, for_
        self.fraction, self.template, self.r = fraction, template, r
        self.sampling, self.system_prompt, self.run_seed = sampling, system_prompt, run_seed
        self.problems, self.checks = problems, checks
        self.hinted: set[str] = set()
        self.records: dict[str, ConditionSample] = {}

    def _requests(self, base: str, kind: str, problem: Problem, prefix: str | None, meta: dict[str, Any]) -> list[Request]:
        hint, n = hint_text(problem.reference_solution, self.fraction)
        user = hinted_problem(problem.problem, hint, self.template)
        out = []
        for l in range(self.r):
            sid = f"{base}/hint-{self.fraction:g}/{kind}-{l}"
            out.append(Request(sid, policy_messages(user, self.system_prompt, prefix), self.sampling,
                               sample_seed(self.run_seed, sid), continue_final=prefix is not None,
                               meta={"stage": "hint", "problem_id": problem.problem_id,
                                     "gold_answer": problem.gold_answer, "sample_index": l, "hint_steps": n, **meta}))
        return out

    def add(self, candidate: Candidate, accepted: bool) -> None:
        if self.for_ == "none" or (self.for_ == "accepted" and not accepted):
            return
        problem = self.problems[candidate.problem_id]
        if HINT in self.conditions and problem.problem_id not in self.hinted:
            self.hinted.add(problem.problem_id)
            reqs = self._requests(problem.problem_id, "sample", problem, None, {"condition": HINT})
            self.flow.send(reqs, self._done, stage="hint", grade=True, route=f"{problem.problem_id}/hint")
        state = self.checks.get(candidate.candidate_id)
        if HINT_INTERVENTION in self.conditions and state is not None:
            reqs = self._requests(candidate.candidate_id, "continuation", problem, state.target,
                                  {"condition": HINT_INTERVENTION, "candidate_id": candidate.candidate_id,
                                   "rollout_id": candidate.rollout_id, "location": candidate.location})
            self.flow.send(reqs, self._done, stage="hint", grade=True, route=candidate.candidate_id)

    def _done(self, request: Request, completion: Completion, verdict: Verdict | None) -> None:
        if verdict is None:
            return
        m = request.meta
        self.records[request.id] = ConditionSample(
            sample_id=request.id, condition=m["condition"], problem_id=m["problem_id"],
            candidate_id=m.get("candidate_id"), rollout_id=m.get("rollout_id"), location=m.get("location"),
            hint_fraction=self.fraction, hint_steps=m["hint_steps"], sample_index=m["sample_index"],
            seed=request.seed, text=completion.text, finish_reason=completion.finish_reason,
            extracted_answer=verdict.extracted, verdict=verdict.status, verdict_reason=verdict.reason,
            prompt_tokens=completion.prompt_tokens, completion_tokens=completion.completion_tokens)

    def verdicts(self) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
        """(problem id -> its hint-only verdicts, candidate id -> its hint+intervention
        verdicts), each in sample order."""
        hint: dict[str, list[str]] = {}
        both: dict[str, list[str]] = {}
        for c in sorted(self.records.values(), key=lambda c: c.sample_index):
            if c.condition == HINT:
                hint.setdefault(c.problem_id, []).append(c.verdict)
            else:
                both.setdefault(c.candidate_id, []).append(c.verdict)
        return hint, both

    def rows(self, order: dict[str, int], candidate_order: dict[str, int]) -> list[ConditionSample]:
        """``conditions.parquet``, canonical order: problem, then the hint-only samples, then
        each candidate's (candidate order), then sample index."""
        return sorted(self.records.values(), key=lambda c: (
            order[c.problem_id], c.candidate_id is not None, candidate_order.get(c.candidate_id or "", -1),
            c.sample_index))


def join(rows: list[Any], stage: HintStage) -> None:
    """Fill the hint columns of ``interventions`` rows in place (docs/hints.md): the
    problem's hint-only rate, the candidate's hint+intervention rate, and each one's lift
    over the original step (``baseline_rate``), for the candidates the stage measured."""
    hint, both = stage.verdicts()
    for row in rows:
        h, b = hint.get(row.problem_id), both.get(row.candidate_id)
        if h is None and b is None:
            continue
        problem = stage.problems[row.problem_id]
        row.hint_fraction = stage.fraction
        row.hint_steps = hint_text(problem.reference_solution, stage.fraction)[1]
        if h is not None:
            row.hint_samples, row.hint_rate = len(h), success_rate(h)
            if row.hint_rate is not None and row.baseline_rate is not None:
                row.hint_lift = row.hint_rate - row.baseline_rate
        if b is not None:
            row.hint_intervention_samples, row.hint_intervention_rate = len(b), success_rate(b)
            if row.hint_intervention_rate is not None and row.baseline_rate is not None:
                row.hint_intervention_lift = row.hint_intervention_rate - row.baseline_rate


#: the condition -> (rate column, samples column) of an ``interventions`` row
CONDITION_COLUMNS = {"intervention": ("check_rate", "check_samples"),
                     "hint": ("hint_rate", "hint_samples"),
                     "hint+intervention": ("hint_intervention_rate", "hint_intervention_samples"),
                     "original_step": ("baseline_rate", "baseline_samples")}


def condition_table(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The paper's hint table from ``interventions`` rows (docs/hints.md): one row per
    condition, over the candidates the hint conditions were measured for (a non-null
    ``hint_fraction``).

    Returns:
        ``[{condition, problems, solved, mean_success, items}]``: ``problems`` = distinct
        problems measured; ``solved`` = problems with a correct sample under the condition
        (a rate above 0); ``mean_success`` = the mean of the per-item rates (the hint alone
        counts once per problem, as it was sampled); ``items`` = rates averaged. Conditions
        with no measured sample (not asked for) are left out.
    """
    measured = [r for r in rows if r.get("hint_fraction") is not None]
    problems = {r["problem_id"] for r in measured}
    out = []
    for cond, (rate_col, n_col) in CONDITION_COLUMNS.items():
        per_item: dict[str, float] = {}
        for r in measured:
            if not r.get(n_col) or r.get(rate_col) is None:
                continue
            key = r["problem_id"] if cond == "hint" else r["candidate_id"]
            per_item[key] = r[rate_col]
        if not per_item:
            continue
        solved = {r["problem_id"] for r in measured if r.get(n_col) and (r.get(rate_col) or 0) > 0}
        out.append({"condition": cond, "problems": len(problems), "solved": len(solved),
                    "mean_success": sum(per_item.values()) / len(per_item), "items": len(per_item)})
    return out


def format_condition_table(table: list[dict[str, Any]], fraction: float | None = None) -> str:
    """The hint table as text: condition, problems solved out of N, mean success."""
    head = "condition            solved       mean success  items"
    lines = [f"hint conditions (hint = the first {fraction:g} of the reference solution's steps)" if fraction
             else "hint conditions", head]
    for t in table:
        lines.append(f"{t['condition']:<20} {t['solved']:>4} / {t['problems']:<5} {t['mean_success']:>11.1%}  "
                     f"{t['items']:>5}")
    if not table:
        lines.append("(no candidate was measured under the hint conditions: the run's spec has no `conditions`)")
    return "\n".join(lines)


def hint_report(run_dir: Any) -> str:
    """The hint table of a run folder, as text (``intgen eval lift RUN --hints``).

    Raises:
        FileNotFoundError: the folder has no ``interventions.parquet``.
    """
    from pathlib import Path

    import pyarrow.parquet as pq
    import yaml

    run_dir = Path(run_dir)
    path = run_dir / "interventions.parquet"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: give a run directory written by intgen generate")
    rows = pq.read_table(path).to_pylist()
    job = yaml.safe_load((run_dir / "job.yaml").read_text(encoding="utf-8")) if (run_dir / "job.yaml").exists() else {}
    fraction = ((job or {}).get("hint") or {}).get("fraction") if (job or {}).get("conditions") else None
    return format_condition_table(condition_table(rows), fraction)
