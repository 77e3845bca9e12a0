"""Check and baseline stages: continue the unfinished assistant turn r times from
prefix + intervention (check) or prefix + the original step (baseline), and grade each
continuation (DESIGN section 1; digest 2.6)."""

from __future__ import annotations

from typing import Any

from intgen.backends.base import Completion, Request, Sampling, sample_seed
from intgen.grading import Verdict
from intgen.sources import Problem
from intgen.stages.rollout import policy_messages


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


def to_record(request: Request, completion: Completion, verdict: Verdict) -> dict[str, Any]:
    """One ``continuations.parquet`` row. The continuation text alone is graded: the final
    answer must come from what the model wrote after the partial trace."""
    m = request.meta
    return {
        "continuation_id": request.id, "kind": "check" if m["stage"] == "check" else "baseline",
        "candidate_id": m.get("candidate_id"), "rollout_id": m["rollout_id"], "problem_id": m["problem_id"],
        "location": m["location"], "sample_index": m["sample_index"], "seed": request.seed,
        "text": completion.text, "finish_reason": completion.finish_reason, "extracted_answer": verdict.extracted,
        "verdict": verdict.status, "verdict_reason": verdict.reason, "prompt_tokens": completion.prompt_tokens,
        "completion_tokens": completion.completion_tokens, "cached_tokens": completion.cached_tokens,
    }


def success_rate(verdicts: list[str]) -> float | None:
    """correct / (samples - ungradable) (DESIGN section 1); None when no sample is gradable.
    Aborted and failed requests are not samples."""
    graded = [v for v in verdicts if v in ("correct", "wrong", "no_answer")]
    return sum(v == "correct" for v in graded) / len(graded) if graded else None
