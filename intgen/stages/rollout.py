"""Rollout stage: k samples per problem; failed traces feed the proposer (DESIGN section 1)."""

from __future__ import annotations

from typing import Any

from intgen.backends.base import Completion, Request, Sampling, sample_seed
from intgen.grading import Verdict
from intgen.sources import Problem
from intgen.steps import split_steps

FAILED = ("wrong", "no_answer")


def policy_messages(problem: str, system_prompt: str | None, assistant_prefix: str | None = None) -> tuple[dict, ...]:
    """The policy's chat: optional system prompt, user = the problem, and for continuations
    an unfinished assistant turn holding the partial trace (digest 2.6: no system prompt
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


def to_record(request: Request, completion: Completion, verdict: Verdict) -> dict[str, Any]:
    """One ``rollouts.parquet`` row. A rollout *failed* when its verdict is ``wrong`` or
    ``no_answer`` (DESIGN section 1); ``ungradable`` ones are neither passed nor failed."""
    return {
        "rollout_id": request.id, "problem_id": request.meta["problem_id"], "rollout_index": request.meta["rollout_index"],
        "seed": request.seed, "text": completion.text, "finish_reason": completion.finish_reason,
        "extracted_answer": verdict.extracted, "verdict": verdict.status, "verdict_reason": verdict.reason,
        "failed": verdict.status in FAILED, "num_steps": len(split_steps(completion.text)),
        "prompt_tokens": completion.prompt_tokens, "completion_tokens": completion.completion_tokens,
    }
