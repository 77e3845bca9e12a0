"""Check stage: continue the unfinished assistant turn r times from prefix + intervention,
grade each continuation, and decide (docs/pipeline.md; docs/paper.md; docs/architecture.md).

A candidate's continuations go out the moment it is parsed. Without a stopping rule all r
go at once. With ``check.early_stop`` or ``check.give_up_after`` they go in *waves* of
``check.wave`` in sample-index order, and the rule is applied when a wave is complete, so
the samples drawn do not depend on the order in which answers arrive:

- ``early_stop``: stop at the wave that brings the ``accept.min_correct``-th success. The
  decision is the one all r would give (a success cannot be undone); the recorded rate is
  over the samples drawn (``check_samples``), ``check_stopped = "early_stop"``.
- ``give_up_after: n``: stop once the last n graded samples (in index order) are all
  failures while fewer than ``min_correct`` succeeded, checked at wave ends. This changes decisions (a candidate whose successes come
  late is rejected, ``reject_reason = "gave_up"``); its recall against all r is measured by
  benchmarks/schedule.py. Off by default, refused in faithful mode.

The decision goes to ``on_decided`` (the baseline stage) as soon as it is made.

Faithful mode (docs/faithful.md, item 3): only the *first parsed* candidate of each rollout
is checked, as in the paper's code, which kept the first parsed, non-leaking intervention of
each attempt and sampled continuations for that one alone. This is a per-rollout join, not
a barrier: candidates arrive in any order, and candidate ``i`` is checked as soon as it is
parsed and every candidate before it (``0..i-1``) is known to be unusable (not parsed or
leaked: :meth:`CheckStage.settle`). A candidate before it that failed as a request, or on
which the paper's parsing loop raised (``paper_loop_error``, which dropped the later
samples of the attempt), stops the search. The other parsed candidates are never checked:
:meth:`CheckStage.not_checked` gives each one's reason, and :attr:`CheckStage.requests_not_sent`
the continuations saved (``stats.json``: ``check_requests_not_sent``).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable

from intgen import interventions
from intgen.backends.base import Completion, Request, Sampling, sample_seed
from intgen.grading import Verdict
from intgen.sources import Problem
from intgen.stages import Flow
from intgen.stages.rollout import policy_messages
from intgen.steps import build_target, split_steps
from intgen.tables import Candidate, Continuation, Rollout

#: a verdict that is a sample but not a success (ungradable samples count against a candidate in a run of failures)
_FAILURES = ("wrong", "no_answer", "ungradable")
#: faithful mode: a candidate with this status ends the search for its rollout's first parsed candidate
_BLOCKS_FIRST = {interventions.PAPER_ERROR: "after_paper_loop_error", "request_failed": "after_failed_request"}


def continuation_requests(kind: str, base_id: str, problem: Problem, partial_trace: str, r: int, sampling: Sampling,
                          system_prompt: str | None, run_seed: int, meta: dict[str, Any]) -> list[Request]:
    """r continuations of one partial trace, ids ``{base_id}/{kind}-{l}``.

    ``kind`` is ``"continuation"`` (check: ``base_id`` is the candidate id) or
    ``"baseline"`` (``base_id`` is ``{rollout_id}/location-{location}``, so candidates of
    one rollout at one location share their baseline).
    """
    out = []
    for l in range(r):
        sid = f"{base_id}/{kind}-{l}"
        out.append(Request(sid, policy_messages(problem.problem, system_prompt, partial_trace), sampling,
                           sample_seed(run_seed, sid), continue_final=True,
                           meta={"stage": "check" if kind == "continuation" else "baseline",
                                 "problem_id": problem.problem_id, "gold_answer": problem.gold_answer,
                                 "sample_index": l, **meta}))
    return out


def to_record(request: Request, completion: Completion, verdict: Verdict) -> Continuation:
    """One ``continuations.parquet`` row. The continuation text alone is graded: the final
    answer must come from what the model wrote after the partial trace."""
    m = request.meta
    return Continuation(
        continuation_id=request.id, kind="check" if m["stage"] == "check" else "baseline",
        candidate_id=m.get("candidate_id"), rollout_id=m["rollout_id"], problem_id=m["problem_id"],
        location=m["location"], sample_index=m["sample_index"], seed=request.seed, text=completion.text,
        finish_reason=completion.finish_reason, extracted_answer=verdict.extracted, verdict=verdict.status,
        verdict_reason=verdict.reason, prompt_tokens=completion.prompt_tokens,
        completion_tokens=completion.completion_tokens, cached_tokens=completion.cached_tokens)


def success_rate(verdicts: list[str]) -> float | None:
    """correct / (samples - ungradable) (docs/pipeline.md); None when no sample is gradable.
    Aborted and failed requests are not samples."""
    graded = [v for v in verdicts if v in ("correct", "wrong", "no_answer")]
    return sum(v == "correct" for v in graded) / len(graded) if graded else None


def should_stop(verdicts: list[str], min_correct: int, early_stop: bool, give_up_after: int | None) -> str | None:
    """The stopping rule (module docstring) on the verdicts drawn so far, in sample-index
    order: ``"early_stop"``, ``"gave_up"`` (only while fewer than ``min_correct`` succeeded:
    an accepted candidate is not hopeless) or None (draw the next wave)."""
    correct = sum(v == "correct" for v in verdicts)
    if early_stop and correct >= min_correct:
        return "early_stop"
    if (give_up_after is not None and correct < min_correct and len(verdicts) >= give_up_after
            and all(v in _FAILURES for v in verdicts[-give_up_after:])):
        return "gave_up"
    return None


def replay_stopping(verdicts: list[str], r: int, wave: int, min_correct: int, early_stop: bool,
                    give_up_after: int | None) -> tuple[int, str | None]:
    """What the check stage would draw from a candidate whose r continuations, in sample
    order, have these verdicts: (samples drawn, how it stopped or None). The stage draws
    exactly this (waves in index order, the rule at wave ends), so a run with all r can be
    replayed under any rule (benchmarks/schedule.py)."""
    stopping = early_stop or give_up_after is not None
    size = min(wave, r) if stopping else r
    drawn = 0
    while drawn < r:
        drawn = min(drawn + size, r)
        if drawn < r:
            stop = should_stop(verdicts[:drawn], min_correct, early_stop, give_up_after)
            if stop is not None:
                return drawn, stop
    return drawn, None


@dataclass
class CheckResult:
    """A checked candidate: its target, the verdicts of its answered continuations in
    sample order, whether it is accepted and why its checks stopped early (or None)."""

    candidate: Candidate
    target: str
    requests: list[Request]
    verdicts: dict[int, str] = field(default_factory=dict)
    drawn: int = 0
    outstanding: int = 0
    stopped: str | None = None
    accepted: bool | None = None  # None until decided

    def ordered(self) -> list[str]:
        return [self.verdicts[i] for i in sorted(self.verdicts)]


class CheckStage:
    """Takes parsed candidates; sends their continuations (in waves with a stopping rule),
    grades each, decides, and passes ``(candidate, accepted)`` to ``on_decided``.

    Args:
        flow: the executor (``policy`` role).
        r, wave, early_stop, give_up_after, min_correct: ``check.*`` and ``accept.min_correct``.
        sampling, system_prompt, run_seed, faithful: from the spec; faithful mode checks only
            the first parsed candidate per rollout (module docstring).
        problems: problem id -> problem; rollouts: rollout id -> its record; order: problem
            id -> position (canonical order).
        on_decided: the next stage's ``add``.
    """

    name = "check"

    def __init__(self, flow: Flow, r: int, wave: int | None, early_stop: bool, give_up_after: int | None,
                 min_correct: int, sampling: Sampling, system_prompt: str | None, run_seed: int, faithful: bool,
                 problems: dict[str, Problem], rollouts: dict[str, Rollout], order: dict[str, int],
                 on_decided: Callable[[Candidate, bool], None]):
        self.flow, self.r, self.min_correct = flow, r, min_correct
        self.early_stop, self.give_up_after = early_stop, give_up_after
        stopping = early_stop or give_up_after is not None
        self.wave = min(wave or r, r) if stopping else r
        self.sampling, self.system_prompt, self.run_seed, self.faithful = sampling, system_prompt, run_seed, faithful
        self.problems, self.rollouts, self.order = problems, rollouts, order
        self.on_decided = on_decided
        self.results: dict[str, CheckResult] = {}
        self.records: dict[str, Continuation] = {}
        # faithful mode's join: rollout id -> candidate index -> candidate (every one settled so far)
        self._settled: dict[str, dict[int, Candidate]] = defaultdict(dict)
        self._first_found: set[str] = set()

    def add(self, candidate: Candidate) -> None:
        """A parsed candidate (``ok``): checked now, or in faithful mode when it proves to be
        its rollout's first parsed candidate."""
        if self.faithful:
            self.settle(candidate)
        else:
            self._check(candidate)

    def settle(self, candidate: Candidate) -> None:
        """Any candidate whose parse is final (parsed, rejected or failed). Faithful mode: the
        per-rollout join (module docstring); otherwise nothing happens."""
        if not self.faithful:
            return
        rid = candidate.rollout_id
        settled = self._settled[rid]
        settled[candidate.candidate_index] = candidate
        if rid in self._first_found:
            return
        i = 0
        while i in settled:
            c = settled[i]
            if c.parse_status == "ok":
                self._first_found.add(rid)
                self._check(c)
                return
            if c.parse_status in _BLOCKS_FIRST:
                self._first_found.add(rid)
                return
            i += 1

    def not_checked(self) -> dict[str, str]:
        """Faithful mode: candidate id -> why this parsed candidate was not checked
        (``not_first``: an earlier one of its rollout was the first parsed;
        ``after_paper_loop_error`` / ``after_failed_request``: an earlier sample ended the
        search). Empty in the default mode."""
        out: dict[str, str] = {}
        for settled in self._settled.values():
            reason = None
            for i in sorted(settled):
                c = settled[i]
                if c.parse_status == "ok":
                    if c.candidate_id in self.results:
                        reason = reason or "not_first"
                    else:
                        out[c.candidate_id] = reason or "earlier_candidate_missing"
                elif c.parse_status in _BLOCKS_FIRST and reason is None:
                    reason = _BLOCKS_FIRST[c.parse_status]
        return out

    @property
    def requests_not_sent(self) -> int:
        """Check continuations faithful mode did not send: r per parsed candidate not checked."""
        return self.r * len(self.not_checked())

    def _check(self, candidate: Candidate) -> None:
        steps = split_steps(self.rollouts[candidate.rollout_id].text, keep_empty=self.faithful)
        target = build_target(steps, candidate.location, candidate.intervention, double_newlines=self.faithful,
                              any_location=self.faithful)
        reqs = continuation_requests(
            "continuation", candidate.candidate_id, self.problems[candidate.problem_id], target, self.r, self.sampling,
            self.system_prompt, self.run_seed, {"candidate_id": candidate.candidate_id,
                                                "rollout_id": candidate.rollout_id, "location": candidate.location})
        state = self.results[candidate.candidate_id] = CheckResult(candidate, target, reqs)
        self._send_wave(state)

    def _send_wave(self, state: CheckResult) -> None:
        wave = state.requests[state.drawn: state.drawn + self.wave]
        state.drawn += len(wave)
        sent = self.flow.send(wave, lambda req, c, v: self._done(state, req, c, v), stage="check", grade=True,
                              route=state.candidate.candidate_id)
        state.outstanding += len(sent)
        if state.outstanding == 0:  # none could be sent (prompt too long)
            self._wave_done(state)

    def _done(self, state: CheckResult, request: Request, completion: Completion, verdict: Verdict | None) -> None:
        state.outstanding -= 1
        if verdict is not None:
            self.records[request.id] = to_record(request, completion, verdict)
            state.verdicts[request.meta["sample_index"]] = verdict.status
        if state.outstanding == 0:
            self._wave_done(state)

    def _wave_done(self, state: CheckResult) -> None:
        verdicts = state.ordered()
        if state.drawn < len(state.requests):
            state.stopped = should_stop(verdicts, self.min_correct, self.early_stop, self.give_up_after)
            if state.stopped is None:
                self._send_wave(state)
                return
        state.accepted = sum(v == "correct" for v in verdicts) >= self.min_correct
        self.on_decided(state.candidate, state.accepted)

    def rows(self) -> list[Continuation]:
        """The check rows of ``continuations.parquet``, canonical order: problem, rollout,
        candidate, sample index."""
        return sorted(self.records.values(), key=lambda c: (
            self.order[c.problem_id], self.results[c.candidate_id].candidate.rollout_index,
            self.results[c.candidate_id].candidate.candidate_index, c.sample_index))
