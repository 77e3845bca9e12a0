"""Rollout stage: k samples per problem, each graded; a failed trace goes on to the
proposer the moment it is graded (docs/pipeline.md; docs/architecture.md).

With ``rollout.keep: hard`` (docs/hard-pool.md) the stage builds the *hard pool*: it samples
a problem's rollouts in index-ordered waves of ``rollout.wave`` and applies its rule only
when a wave is complete: a wave that holds a correct answer ends the problem (solved), else
the next wave goes out until k samples are spent. So what is drawn is a function of the
verdicts alone, never of arrival order, and samples spent = wave x waves. Only a problem
with pass@k = 0 passes its failed rollouts on, in index order, when its last wave is in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from intgen.backends.base import Completion, Request, Sampling, sample_seed
from intgen.grading import Verdict
from intgen.sources import Problem
from intgen.stages import Flow
from intgen.steps import split_steps
from intgen.tables import HardProblem, Rollout

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


def build_requests(problems: list[Problem], k: int, sampling: Sampling, system_prompt: str | None, run_seed: int,
                   start: int = 0) -> list[Request]:
    """k requests per problem, ids ``{problem_id}/rollout-{j}`` for j in start..start+k-1."""
    out = []
    for p in problems:
        for j in range(start, start + k):
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


@dataclass
class PassState:
    """One problem's waves under ``keep: hard``: samples spent, waves sent, the ids of the
    wave in flight, and the outcome (``solved``, ``hard``, or ``undecided`` when a request of
    a wave failed: a rerun sends it again and decides)."""

    problem: Problem
    spent: int = 0
    waves: int = 0
    pending: set[str] = field(default_factory=set)
    failed_request: bool = False
    outcome: str | None = None


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
        keep: ``failed`` (every failed rollout goes on at once) or ``hard`` (waves; only
            problems with pass@k = 0 go on: module docstring).
        wave: rollouts per wave with ``keep="hard"`` (None: k); must divide k.

    Raises:
        ValueError: ``wave`` does not divide ``k``.
    """

    name = "rollout"

    def __init__(self, flow: Flow, k: int, sampling: Sampling, system_prompt: str | None, run_seed: int,
                 order: dict[str, int], on_failed: Callable[[Rollout], None], faithful: bool = False,
                 keep: str = "failed", wave: int | None = None):
        self.flow, self.k, self.sampling, self.faithful = flow, k, sampling, faithful
        self.system_prompt, self.run_seed, self.order = system_prompt, run_seed, order
        self.on_failed = on_failed
        self.keep, self.wave = keep, wave or k
        if k % self.wave:
            raise ValueError(f"rollout.wave: {self.wave} does not divide k = {k}")
        self.records: dict[str, Rollout] = {}
        self.passes: dict[str, PassState] = {}

    def add(self, problem: Problem) -> None:
        if self.keep == "hard":
            self.passes[problem.problem_id] = PassState(problem)
            self._send_wave(problem.problem_id)
            return
        self.flow.send(build_requests([problem], self.k, self.sampling, self.system_prompt, self.run_seed),
                       self._done, stage="rollout", grade=True)

    # -- keep: hard (waves)
    def _send_wave(self, problem_id: str) -> None:
        st = self.passes[problem_id]
        reqs = build_requests([st.problem], self.wave, self.sampling, self.system_prompt, self.run_seed,
                              start=st.spent)
        st.spent += self.wave
        st.waves += 1
        st.pending = {r.id for r in reqs}
        sent = {r.id for r in self.flow.send(reqs, self._done_hard, stage="rollout", grade=True)}
        not_sent = st.pending - sent
        if not_sent:  # a prompt too long for the context: recorded as a reject, never answered
            st.pending -= not_sent
            st.failed_request = True
            if not st.pending:
                self._wave_done(st)

    def _done_hard(self, request: Request, completion: Completion, verdict: Verdict | None) -> None:
        st = self.passes[request.meta["problem_id"]]
        if verdict is None:
            st.failed_request = True
        else:
            self.records[request.id] = to_record(request, completion, verdict, self.faithful)
        st.pending.discard(request.id)
        if not st.pending:
            self._wave_done(st)

    def _wave_done(self, st: PassState) -> None:
        pid = st.problem.problem_id
        start = st.spent - self.wave
        wave = [self.records.get(rollout_id(pid, j)) for j in range(start, st.spent)]
        if any(r is not None and r.verdict == "correct" for r in wave):
            st.outcome = "solved"
        elif st.failed_request:
            st.outcome = "undecided"
        elif st.spent < self.k:
            self._send_wave(pid)
        else:
            st.outcome = "hard"
            for j in range(self.k):
                rec = self.records.get(rollout_id(pid, j))
                if rec is not None and rec.failed:
                    self._pass_on(rec)

    def hard_pool(self) -> list[HardProblem]:
        """``hard_pool.parquet``: the problems with pass@k = 0, in problem order (empty
        unless ``keep="hard"``)."""
        out = [HardProblem(st.problem.problem_id, st.problem.source, st.problem.problem,
                           st.problem.reference_solution, st.problem.gold_answer, st.spent, st.waves)
               for st in self.passes.values() if st.outcome == "hard"]
        return sorted(out, key=lambda h: self.order[h.problem_id])

    def pass_at_k(self, sources: dict[str, str]) -> dict[str, dict[str, float | int | None]]:
        """Per source: problems with an answered rollout, those solved (a correct rollout
        among the first k), and pass@k = solved / problems (docs/hard-pool.md).

        Args:
            sources: problem id -> its source label.
        """
        seen: dict[str, set[str]] = {}
        solved: dict[str, set[str]] = {}
        for r in self.records.values():
            src = sources[r.problem_id]
            seen.setdefault(src, set()).add(r.problem_id)
            if r.verdict == "correct":
                solved.setdefault(src, set()).add(r.problem_id)
        return {src: {"problems": len(ids), "solved": len(solved.get(src, ())),
                      "pass_at_k": len(solved.get(src, ())) / len(ids)} for src, ids in sorted(seen.items())}

    # -- keep: failed
    def _done(self, request: Request, completion: Completion, verdict: Verdict | None) -> None:
        if verdict is None:  # failed or aborted: the executor recorded the reject
            return
        rec = self.records[request.id] = to_record(request, completion, verdict, self.faithful)
        if rec.failed:
            self._pass_on(rec)

    def _pass_on(self, rec: Rollout) -> None:
        if not rec.text.strip():  # no step in either mode's split worth intervening on
            self.flow.reject("propose", rec.rollout_id, rec.problem_id, "empty_trace", "the failed rollout has no text")
            return
        self.on_failed(rec)

    def rows(self) -> list[Rollout]:
        """``rollouts.parquet`` in its canonical order: problem order, then rollout index."""
        return sorted(self.records.values(), key=lambda r: (self.order[r.problem_id], r.rollout_index))
