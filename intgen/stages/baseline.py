"""Baseline stage: continue r times from the prefix + the original erroneous step, so each
kept intervention carries its lift (docs/pipeline.md; docs/paper.md). A baseline belongs to
a (rollout, location) and is shared by every candidate of that rollout at that location;
it goes out the moment a candidate's decision asks for it (``baseline.for``: ``accepted``,
``all`` or ``none``)."""

from __future__ import annotations

from intgen.backends.base import Completion, Request, Sampling
from intgen.grading import Verdict
from intgen.sources import Problem
from intgen.stages import Flow
from intgen.stages.check import continuation_requests, to_record
from intgen.steps import baseline_target, split_steps
from intgen.tables import Candidate, Continuation, Rollout


class BaselineStage:
    """Takes ``(candidate, accepted)`` decisions; sends r baseline continuations per
    (rollout, location) that ``baseline.for`` asks for, once; grades them.

    Args:
        flow: the executor (``policy`` role).
        for_: ``baseline.for``; r, sampling, system_prompt, run_seed: from the spec.
        problems, rollouts, order: as for the check stage.
        faithful: the paper's step split; a location past the last step has the whole attempt
            as its baseline, and one below 1 (no step precedes it) has none (docs/faithful.md).
    """

    name = "baseline"

    def __init__(self, flow: Flow, for_: str, r: int, sampling: Sampling, system_prompt: str | None, run_seed: int,
                 problems: dict[str, Problem], rollouts: dict[str, Rollout], order: dict[str, int],
                 faithful: bool = False):
        self.flow, self.for_, self.r, self.faithful = flow, for_, r, faithful
        self.sampling, self.system_prompt, self.run_seed = sampling, system_prompt, run_seed
        self.problems, self.rollouts, self.order = problems, rollouts, order
        self.requested: set[tuple[str, int]] = set()
        self.records: dict[str, Continuation] = {}

    def add(self, candidate: Candidate, accepted: bool) -> None:
        if self.for_ == "none" or (self.for_ == "accepted" and not accepted):
            return
        key = (candidate.rollout_id, candidate.location)
        if key in self.requested or candidate.location < 1:
            return
        self.requested.add(key)
        rollout = self.rollouts[candidate.rollout_id]
        partial = baseline_target(split_steps(rollout.text, keep_empty=self.faithful), candidate.location,
                                  any_location=self.faithful)
        reqs = continuation_requests(
            "baseline", f"{rollout.rollout_id}/location-{candidate.location}", self.problems[rollout.problem_id],
            partial, self.r, self.sampling, self.system_prompt, self.run_seed,
            {"rollout_id": rollout.rollout_id, "location": candidate.location})
        self.flow.send(reqs, self._done, stage="baseline", grade=True, route=f"{rollout.rollout_id}/{candidate.location}")

    def _done(self, request: Request, completion: Completion, verdict: Verdict | None) -> None:
        if verdict is not None:
            self.records[request.id] = to_record(request, completion, verdict)

    def verdicts(self) -> dict[tuple[str, int], list[str]]:
        """(rollout id, location) -> the verdicts of its answered baseline samples, in sample order."""
        out: dict[tuple[str, int], list[str]] = {}
        for c in sorted(self.records.values(), key=lambda c: c.sample_index):
            out.setdefault((c.rollout_id, c.location), []).append(c.verdict)
        return out

    def rows(self) -> list[Continuation]:
        """The baseline rows of ``continuations.parquet``, canonical order: problem, rollout,
        location, sample index."""
        return sorted(self.records.values(), key=lambda c: (
            self.order[c.problem_id], self.rollouts[c.rollout_id].rollout_index, c.location, c.sample_index))
