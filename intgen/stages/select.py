"""Select stage: no model call. Joins every parsed candidate with its rollout, problem,
checks and baseline into one ``interventions`` row (decision, rates, lift, full lineage),
accepts by the checks, and picks which accepted rows reach the ``sft`` view (docs/pipeline.md;
docs/architecture.md)."""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

import intgen
from intgen.prompts import ProposerPrompt
from intgen.sources import Problem
from intgen.stages.check import CheckResult, success_rate
from intgen.stages.rollout import policy_messages
from intgen.steps import build_target, split_steps
from intgen.tables import Candidate, Continuation, Intervention, Rollout, SFTRow


def accept(check_correct: int, min_correct: int) -> bool:
    """Accepted when at least ``min_correct`` continuations are correct (the paper: 1 of 32,
    docs/paper.md)."""
    return check_correct >= min_correct


def select(rows: list[Any], per_rollout: str) -> set[str]:
    """The candidate ids that reach the ``sft`` view.

    Args:
        rows: interventions rows (records or dicts) with ``rollout_id``, ``candidate_index``,
            ``accepted``, ``reject_reason`` and ``check_rate``.
        per_rollout: ``best`` (the accepted candidate with the highest success rate, ties
            by lower index), ``all`` (every accepted one), or ``first`` (the paper's
            choice, docs/paper.md: the first candidate that parsed without leaking, kept
            only if it is accepted).

    Raises:
        ValueError: an unknown ``per_rollout``.
    """
    def get(r: Any, k: str) -> Any:
        return r[k] if isinstance(r, dict) else getattr(r, k)

    by_rollout: dict[str, list[Any]] = defaultdict(list)
    for row in rows:
        by_rollout[get(row, "rollout_id")].append(row)
    chosen: set[str] = set()
    for group in by_rollout.values():
        group.sort(key=lambda r: get(r, "candidate_index"))
        accepted = [r for r in group if get(r, "accepted")]
        if per_rollout == "all":
            chosen.update(get(r, "candidate_id") for r in accepted)
        elif per_rollout == "best":
            if accepted:
                # a null rate (no gradable sample) ranks after measured rates
                best = max(accepted, key=lambda r: (get(r, "check_rate") is not None, get(r, "check_rate") or 0.0,
                                                    -get(r, "candidate_index")))
                chosen.add(get(best, "candidate_id"))
        elif per_rollout == "first":
            parsed = [r for r in group if get(r, "reject_reason") != "answer_leak"]
            if parsed and get(parsed[0], "accepted"):
                chosen.add(get(parsed[0], "candidate_id"))
        else:
            raise ValueError(f"select.per_rollout: unknown choice {per_rollout!r} (best, all, first)")
    return chosen


def interventions(spec: Any, prompt: ProposerPrompt, problems: dict[str, Problem], rollouts: dict[str, Rollout],
                  candidates: list[Candidate], checks: dict[str, CheckResult],
                  baselines: dict[tuple[str, int], list[str]], check_rows: list[Continuation],
                  not_checked: dict[str, str] | None = None) -> list[Intervention]:
    """One row per parsed candidate (``ok`` or ``answer_leak``), in ``candidates``' order,
    with its decision and ``selected`` flag set.

    Args:
        spec: the job spec; prompt: the proposer prompt (its name and hash are recorded).
        candidates: the candidate records in canonical order; checks: candidate id -> its
            check result; baselines: (rollout id, location) -> baseline verdicts; check_rows:
            the check continuations (their tokens are summed per candidate).
        not_checked: faithful mode: candidate id -> why the check stage did not check it
            (:meth:`intgen.stages.check.CheckStage.not_checked`); its ``reject_reason``.
    """
    not_checked = not_checked or {}
    check_tokens: dict[str, int] = defaultdict(int)
    for c in check_rows:
        check_tokens[c.candidate_id] += c.completion_tokens
    sampling_json = json.dumps(spec.sampling.model_dump(), sort_keys=True)
    rows = []
    for c in candidates:
        if c.parse_status not in ("ok", "answer_leak"):
            continue
        cid = c.candidate_id
        roll = rollouts[c.rollout_id]
        problem = problems[c.problem_id]
        steps = split_steps(roll.text, keep_empty=spec.faithful)
        state = checks.get(cid)
        verdicts = state.ordered() if state is not None else []
        bverdicts = baselines.get((c.rollout_id, c.location))
        rate = success_rate(verdicts)
        brate = success_rate(bverdicts) if bverdicts else None
        is_leak = c.parse_status == "answer_leak"
        accepted = bool(state is not None and state.accepted)
        if is_leak:
            reason = "answer_leak"
        elif accepted:
            reason = None
        elif state is not None and state.stopped == "gave_up":
            reason = "gave_up"
        elif cid in not_checked:
            reason = not_checked[cid]
        else:
            reason = "too_few_correct" if verdicts else "no_check_samples"
        rows.append(Intervention(
            candidate_id=cid, accepted=accepted, reject_reason=reason, selected=False,
            check_samples=len(verdicts), check_correct=sum(v == "correct" for v in verdicts),
            check_ungradable=sum(v == "ungradable" for v in verdicts), check_rate=rate,
            baseline_samples=len(bverdicts) if bverdicts else 0,
            baseline_correct=sum(v == "correct" for v in bverdicts) if bverdicts else 0,
            baseline_rate=brate, lift=(rate - brate) if rate is not None and brate is not None else None,
            problem_id=problem.problem_id, source=problem.source, problem=problem.problem,
            reference_solution=problem.reference_solution, gold_answer=problem.gold_answer,
            rollout_id=roll.rollout_id, rollout_index=roll.rollout_index, rollout_seed=roll.seed,
            failed_trace=roll.text, failed_answer=roll.extracted_answer, failed_verdict=roll.verdict,
            steps=steps, num_steps=len(steps), candidate_index=c.candidate_index, candidate_seed=c.seed,
            location=c.location, original_step=steps[c.location - 1] if 1 <= c.location <= len(steps) else None,
            intervention=c.intervention,
            target=state.target if state is not None else build_target(steps, c.location, c.intervention,
                                                                         double_newlines=spec.faithful,
                                                                         any_location=spec.faithful),
            solve_output=c.solve_output, proposer_output=c.raw_output,
            policy_model=spec.model, proposer_model=spec.proposer_model, system_prompt=spec.system_prompt,
            sampling=sampling_json, prompt_name=prompt.name, prompt_sha256=prompt.sha256, run_seed=spec.seed,
            faithful=spec.faithful, intgen_version=intgen.__version__,
            rollout_completion_tokens=roll.completion_tokens, proposer_prompt_tokens=c.prompt_tokens,
            proposer_completion_tokens=c.completion_tokens, check_completion_tokens=check_tokens.get(cid, 0),
            check_stopped=state.stopped if state is not None else None, proposer_prompt_id=c.proposer_prompt_id))
    chosen = select(rows, spec.select.per_rollout)
    for row in rows:
        row.selected = row.candidate_id in chosen
    return rows


def sft_rows(rows: list[Intervention], system_prompt: str | None) -> list[SFTRow]:
    """The ``sft`` view: each selected row as the policy's own chat (its system prompt, if
    any, and the problem) and the target as the assistant's (unfinished) completion."""
    return [SFTRow(prompt=list(policy_messages(r.problem, system_prompt)),
                   completion=[{"role": "assistant", "content": r.target}],
                   problem_id=r.problem_id, candidate_id=r.candidate_id, rollout_id=r.rollout_id,
                   location=r.location, check_rate=r.check_rate, lift=r.lift)
            for r in rows if r.selected]
