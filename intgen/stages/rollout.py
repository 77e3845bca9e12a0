"""Rollout stage: k samples per problem, each graded; a failed trace goes on to the
proposer the moment it is graded (docs/pipeline.md; docs/architecture.md)."""

from __future__ import annotations

from typing import Callable

from intgen.backends.base import Completion, Request, Sampling, sample_seed
from intgen.grading import Verdict
from intgen.sources import Problem
from intgen.stages import Flow
from intgen.steps import split_steps
from intgen.tables import Rollout

FAILED = ("wrong", "no_answer")


def policy_messages(problem: str, system_prompt: str | None, assistant_prefix: str | None = None) -> tuple[dict, ...]:
    """The policy's chat: optional system prompt, user = the problem, and for continuations
    an unfinished assistant turn holding the partial trace (docs/paper.md: no system prompt
    unless the spec gives one)."""
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    messages.append({"role": "user", "content": problem})
    if assistant_prefix is not None:
        messages.append({"role": "assistant", "content": assistant_prefix})
    return tuple(messages)


def rollout_id(problem_id: str, j: int) -> str:
    return f"{problem_id}/rollout-{j}"


def build_requests(problems: list[Problem], k: int, sampling: Sampling, system_prompt: str | None, run_seed: int) -> list[Request]:
    """k requests per problem, ids ``{problem_id}/rollout-{j}`` for j in 0..k-1."""
    out = []
    for p in problems:
        for j in range(k):
            rid = rollout_id(p.problem_id, j)
            out.append(Request(rid, policy_messages(p.problem, system_prompt), sampling, sample_seed(run_seed, rid),
                               meta={"stage": "rollout", "problem_id": p.problem_id, "gold_answer": p.gold_answer,
                                     "rollout_index": j}))
    return out


def to_record(request: Request, completion: Completion, verdict: Verdict, faithful: bool = False) -> Rollout:
    """One ``rollouts.parquet`` row. A rollout *failed* when its verdict is ``wrong`` or
    ``no_answer`` (docs/pipeline.md); ``ungradable`` ones are neither passed nor failed (in
    faithful mode the grader never says ``ungradable``: the paper scored those 0, so they
    are ``wrong``, docs/faithful.md item 4). ``num_steps`` counts the steps of the mode's
    split (faithful: empty chunks included, item 1)."""
    return Rollout(
        rollout_id=request.id, problem_id=request.meta["problem_id"], rollout_index=request.meta["rollout_index"],
        seed=request.seed, text=completion.text, finish_reason=completion.finish_reason,
        extracted_answer=verdict.extracted, verdict=verdict.status, verdict_reason=verdict.reason,
        failed=verdict.status in FAILED, num_steps=len(split_steps(completion.text, keep_empty=faithful)),
        prompt_tokens=completion.prompt_tokens, completion_tokens=completion.completion_tokens)


class RolloutStage:
    """Takes problems; sends k rollouts each; grades each as it arrives and passes each
    failed rollout with at least one step to ``on_failed`` (a failed rollout with no text
    is a ``propose``/``empty_trace`` reject).

    Args:
        flow: the executor.
        k, sampling, system_prompt, run_seed: from the job spec.
        order: problem id -> its position in the run (the table's canonical order).
        on_failed: the next stage's ``add``.
        faithful: count steps with the paper's split (``num_steps``).
    """

    name = "rollout"

    def __init__(self, flow: Flow, k: int, sampling: Sampling, system_prompt: str | None, run_seed: int,
                 order: dict[str, int], on_failed: Callable[[Rollout], None], faithful: bool = False):
        self.flow, self.k, self.sampling, self.faithful = flow, k, sampling, faithful
        self.system_prompt, self.run_seed, self.order = system_prompt, run_seed, order
        self.on_failed = on_failed
        self.records: dict[str, Rollout] = {}

    def add(self, problem: Problem) -> None:
        self.flow.send(build_requests([problem], self.k, self.sampling, self.system_prompt, self.run_seed),
                       self._done, stage="rollout", grade=True)

    def _done(self, request: Request, completion: Completion, verdict: Verdict | None) -> None:
        if verdict is None:  # failed or aborted: the executor recorded the reject
            return
        rec = self.records[request.id] = to_record(request, completion, verdict, self.faithful)
        if not rec.failed:
            return
        if not rec.text.strip():  # no step in either mode's split worth intervening on
            self.flow.reject("propose", rec.rollout_id, rec.problem_id, "empty_trace", "the failed rollout has no text")
            return
        self.on_failed(rec)

    def rows(self) -> list[Rollout]:
        """``rollouts.parquet`` in its canonical order: problem order, then rollout index."""
        return sorted(self.records.values(), key=lambda r: (self.order[r.problem_id], r.rollout_index))
