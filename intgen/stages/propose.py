"""Propose stage: for each failed rollout, the proposer localizes the first critical error
against the reference solution and proposes one replacement step, m samples per trace
(DESIGN section 1; paper section 3, Algorithm 1; digest 2.4-2.5)."""

from __future__ import annotations

from typing import Any, Callable

from intgen import interventions
from intgen.backends.base import Completion, Request, Sampling, sample_seed
from intgen.prompts import ProposerPrompt
from intgen.sources import Problem
from intgen.steps import numbered_attempt, split_steps


def solve_request(problem: Problem, rollout: dict, prompt: ProposerPrompt, sampling: Sampling, run_seed: int) -> Request:
    """Message (1) of the proposer chat, sent first: the model solves the problem guided by
    the reference solution; its answer becomes message (2). One per failed rollout."""
    rid = f"{rollout['rollout_id']}/solve"
    text = prompt.render_solve(problem=problem.problem, reference_solution=problem.reference_solution,
                               gold_answer=problem.gold_answer)
    return Request(rid, ({"role": "user", "content": text},), sampling, sample_seed(run_seed, rid),
                   meta={"stage": "solve", "problem_id": problem.problem_id, "gold_answer": problem.gold_answer,
                         "rollout_id": rollout["rollout_id"]})


def proposer_chat(prompt: ProposerPrompt, values: dict[str, Any], steps: list[str], solve_turn: tuple[str, str] | None,
                  fits: Callable[[tuple[dict, ...]], bool] | None) -> tuple[tuple[dict, ...], range | None] | None:
    """The whole proposer chat: the solve turn and the model's answer to it (``solve_turn``,
    when the prompt has ``solve``), the prompt's worked examples, the critique of the
    numbered ``steps`` (rendered with ``values`` plus ``attempt``), and an open assistant
    turn holding ``response_prefix`` (when set). The numbered attempt is shortened (never
    the rendered prompt cut) when it would not fit (DESIGN section 1).

    Returns:
        (messages, the step numbers omitted from a shortened attempt, or None), or None when
        even the shortest attempt does not fit.
    """
    head: list[dict] = []
    if solve_turn is not None:
        head = [{"role": "user", "content": solve_turn[0]}, {"role": "assistant", "content": solve_turn[1]}]
    for example_values, response in prompt.examples:
        head += [{"role": "user", "content": prompt.render_critique(**example_values)},
                 {"role": "assistant", "content": response}]
    tail = [{"role": "assistant", "content": prompt.response_prefix}] if prompt.response_prefix else []

    def chat(attempt: str) -> tuple[dict, ...]:
        return tuple(head + [{"role": "user", "content": prompt.render_critique(**values, attempt=attempt)}] + tail)

    shaped = numbered_attempt(steps, None if fits is None else (lambda attempt: fits(chat(attempt))))
    if shaped is None:
        return None
    return chat(shaped.text), shaped.omitted


def critique_messages(problem: Problem, rollout: dict, prompt: ProposerPrompt, solve_output: str | None,
                      fits: Callable[[tuple[dict, ...]], bool] | None) -> tuple[tuple[dict, ...], range | None] | None:
    """:func:`proposer_chat` for one failed rollout of the run (its steps from :func:`split_steps`)."""
    steps = split_steps(rollout["text"])
    values = {"problem": problem.problem, "reference_solution": problem.reference_solution,
              "gold_answer": problem.gold_answer, "num_steps": len(steps)}
    solve_turn = None
    if prompt.solve is not None:
        solve_turn = (prompt.render_solve(problem=problem.problem, reference_solution=problem.reference_solution,
                                          gold_answer=problem.gold_answer), solve_output or "")
    return proposer_chat(prompt, values, steps, solve_turn, fits)


def candidate_requests(problem: Problem, rollout: dict, messages: tuple[dict, ...], m: int, sampling: Sampling,
                       run_seed: int, continue_final: bool = False) -> list[Request]:
    """m proposer samples, ids ``{rollout_id}/candidate-{i}`` for i in 0..m-1;
    ``continue_final`` when the chat ends in the prompt's ``response_prefix``."""
    out = []
    for i in range(m):
        cid = f"{rollout['rollout_id']}/candidate-{i}"
        out.append(Request(cid, messages, sampling, sample_seed(run_seed, cid), continue_final=continue_final,
                           meta={"stage": "propose", "problem_id": problem.problem_id, "gold_answer": problem.gold_answer,
                                 "rollout_id": rollout["rollout_id"], "candidate_index": i}))
    return out


def parse_candidate(completion: Completion, rollout: dict, omitted: range | None,
                    response_prefix: str | None = None) -> interventions.ParsedIntervention:
    """Parse one proposer output (``response_prefix`` + the model's text) against the failed
    trace's steps. A location among the steps omitted from a shortened attempt is
    ``location_not_shown``: the proposer never saw that step. The leak rule is applied by
    the caller (it needs the grader)."""
    if completion.finish_reason in ("error", "abort"):
        return interventions.ParsedIntervention("request_failed", detail=completion.error or completion.finish_reason)
    parsed = interventions.parse_intervention((response_prefix or "") + completion.text,
                                              len(split_steps(rollout["text"])))
    return shown_location(parsed, omitted)


def shown_location(parsed: interventions.ParsedIntervention, omitted: range | None) -> interventions.ParsedIntervention:
    """A parsed candidate whose location is among the steps omitted from a shortened
    attempt becomes ``location_not_shown``: the proposer never saw that step."""
    if parsed.status == interventions.OK and omitted is not None and parsed.location in omitted:
        return interventions.ParsedIntervention(
            "location_not_shown", parsed.content, parsed.location,
            f"location {parsed.location} is among the substeps {omitted.start}-{omitted.stop - 1} omitted for length")
    return parsed


def leak(parsed: interventions.ParsedIntervention, gold: str) -> interventions.ParsedIntervention:
    """The same candidate, rejected as ``answer_leak``."""
    return interventions.ParsedIntervention(interventions.LEAK, parsed.content, parsed.location,
                                            f"the intervention gives away the gold answer {gold!r}")


def to_candidate(request: Request, completion: Completion, rollout: dict, parsed: interventions.ParsedIntervention,
                 solve_output: str | None, shortened: bool, response_prefix: str | None = None) -> dict[str, Any]:
    """One ``candidates.parquet`` row: the raw output (``response_prefix`` + the model's
    text), its parse status (``ok`` or the reason it is not usable) and what was parsed."""
    raw = (response_prefix or "") + completion.text
    return {
        "candidate_id": request.id, "rollout_id": rollout["rollout_id"], "problem_id": rollout["problem_id"],
        "rollout_index": rollout["rollout_index"], "candidate_index": request.meta["candidate_index"],
        "seed": request.seed, "solve_output": solve_output, "raw_output": raw if completion.finish_reason != "error" else "",
        "finish_reason": completion.finish_reason, "parse_status": parsed.status, "parse_detail": parsed.detail,
        "location": parsed.location, "intervention": parsed.content, "attempt_shortened": shortened,
        "prompt_tokens": completion.prompt_tokens, "completion_tokens": completion.completion_tokens,
    }
