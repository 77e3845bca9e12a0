"""Propose stage: for each failed rollout, the proposer localizes the first critical error
against the reference solution and proposes one replacement step, m samples per trace
(docs/pipeline.md; paper section 3, Algorithm 1; docs/paper.md). With a solve turn, the
rollout's solve request goes out first and its m critiques the moment it is answered; a
parsed candidate that does not leak the answer goes on to the check stage the moment it is
parsed (docs/architecture.md)."""

from __future__ import annotations

import hashlib
import json
from typing import Any, Callable, Sequence

from intgen import interventions
from intgen.backends.base import Completion, Request, Sampling, sample_seed
from intgen.prompts import ProposerPrompt
from intgen.sources import Problem
from intgen.stages import Flow
from intgen.steps import numbered_attempt, split_steps
from intgen.tables import Candidate, ProposerPromptRow, Rollout


def solve_request(problem: Problem, rollout: Rollout, prompt: ProposerPrompt, sampling: Sampling, run_seed: int) -> Request:
    """Message (1) of the proposer chat, sent first: the model solves the problem guided by
    the reference solution; its answer becomes message (2). One per failed rollout."""
    rid = f"{rollout.rollout_id}/solve"
    text = prompt.render_solve(problem=problem.problem, reference_solution=problem.reference_solution,
                               gold_answer=problem.gold_answer)
    return Request(rid, ({"role": "user", "content": text},), sampling, sample_seed(run_seed, rid),
                   meta={"stage": "solve", "problem_id": problem.problem_id, "gold_answer": problem.gold_answer,
                         "rollout_id": rollout.rollout_id})


def proposer_chat(prompt: ProposerPrompt, values: dict[str, Any], steps: list[str], solve_turn: tuple[str, str] | None,
                  fits: Callable[[tuple[dict, ...]], bool] | None) -> tuple[tuple[dict, ...], range | None] | None:
    """The whole proposer chat: the solve turn and the model's answer to it (``solve_turn``,
    when the prompt has ``solve``), the prompt's worked examples, the critique of the
    numbered ``steps`` (rendered with ``values`` plus ``attempt``), and an open assistant
    turn holding ``response_prefix`` (when set). The numbered attempt is shortened (never
    the rendered prompt cut) when it would not fit (docs/pipeline.md).

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


def critique_messages(problem: Problem, rollout: Rollout, prompt: ProposerPrompt, solve_output: str | None,
                      fits: Callable[[tuple[dict, ...]], bool] | None,
                      keep_empty: bool = False) -> tuple[tuple[dict, ...], range | None] | None:
    """:func:`proposer_chat` for one failed rollout of the run (its steps from :func:`split_steps`;
    ``keep_empty``: the paper's split, faithful mode)."""
    steps = split_steps(rollout.text, keep_empty=keep_empty)
    values = {"problem": problem.problem, "reference_solution": problem.reference_solution,
              "gold_answer": problem.gold_answer, "num_steps": len(steps)}
    solve_turn = None
    if prompt.solve is not None:
        solve_turn = (prompt.render_solve(problem=problem.problem, reference_solution=problem.reference_solution,
                                          gold_answer=problem.gold_answer), solve_output or "")
    return proposer_chat(prompt, values, steps, solve_turn, fits)


def cut_chat(messages: tuple[dict, ...], continue_final: bool, limit: int,
             count: Callable[[Sequence[dict], bool], int]) -> tuple[tuple[dict, ...], bool, bool]:
    """The chat cut to its first ``limit`` rendered tokens, as the paper's code cut the
    rendered proposer prompt (``decode(ids[:limit])``; docs/faithful.md, item 5).

    A chat whose rendered prompt (with its generation header) has at most ``limit`` tokens
    is unchanged. Otherwise the kept text is the longest start of the rendered prompt within
    ``limit`` tokens, expressed as messages: the messages before the one the cut falls in,
    then that message's content up to the cut, left open (``continue_final``), so the model
    continues it as the paper's model continued the cut text: with no end of turn and no
    generation header. The cut is found by binary search on the content's characters with
    ``count`` (the backend's token count), so it matches the paper's within a few tokens at the
    boundary. When only the generation header does not fit, the chat is kept whole and
    left open.

    Args:
        messages, continue_final: the chat.
        limit: the token limit (``propose.cut_prompt_tokens``).
        count: ``backend.count_prompt_tokens``.

    Returns:
        (messages, continue_final, whether the chat was cut).
    """
    if count(messages, continue_final) <= limit:
        return messages, continue_final, False
    for i, message in enumerate(messages):
        if count(messages[: i + 1], True) <= limit:
            continue
        content = message["content"]
        lo, hi = 0, len(content) - 1  # the longest prefix length that fits, by binary search
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if count(messages[:i] + ({**message, "content": content[:mid]},), True) <= limit:
                lo = mid
            else:
                hi = mid - 1
        if lo == 0 and i > 0:  # not one character of this message fits: the previous one stays open
            return messages[:i], True, True
        return messages[:i] + ({**message, "content": content[:max(lo, 1)]},), True, True
    return messages, True, True


def chat_sha256(messages: Sequence[dict], continue_final: bool) -> str:
    """sha256 of a chat's canonical JSON (messages and whether the last one is left open)."""
    blob = json.dumps([list(messages), continue_final], sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def candidate_requests(problem: Problem, rollout: Rollout, messages: tuple[dict, ...], m: int, sampling: Sampling,
                       run_seed: int, continue_final: bool = False) -> list[Request]:
    """m proposer samples, ids ``{rollout_id}/candidate-{i}`` for i in 0..m-1;
    ``continue_final`` when the chat ends in the prompt's ``response_prefix``."""
    out = []
    for i in range(m):
        cid = f"{rollout.rollout_id}/candidate-{i}"
        out.append(Request(cid, messages, sampling, sample_seed(run_seed, cid), continue_final=continue_final,
                           meta={"stage": "propose", "problem_id": problem.problem_id, "gold_answer": problem.gold_answer,
                                 "rollout_id": rollout.rollout_id, "candidate_index": i}))
    return out


def parse_candidate(completion: Completion, rollout: Rollout, omitted: range | None,
                    response_prefix: str | None = None, echoed: tuple[str, ...] = ()) -> interventions.ParsedIntervention:
    """Parse one proposer output (``response_prefix`` + the model's text) against the failed
    trace's steps. A location among the steps omitted from a shortened attempt is
    ``location_not_shown``: the proposer never saw that step. The leak rule is applied by
    the caller (it needs the grader). ``echoed``: the ``<intervention>`` blocks of the
    prompt's own texts, which do not count when the model copies them."""
    if completion.finish_reason in ("error", "abort"):
        return interventions.ParsedIntervention("request_failed", detail=completion.error or completion.finish_reason)
    parsed = interventions.parse_intervention((response_prefix or "") + completion.text, rollout.num_steps, echoed)
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


def to_candidate(request: Request, completion: Completion, rollout: Rollout, parsed: interventions.ParsedIntervention,
                 solve_output: str | None, shortened: bool, response_prefix: str | None = None,
                 proposer_prompt_id: str | None = None) -> Candidate:
    """One ``candidates.parquet`` row: the raw output (``response_prefix`` + the model's
    text), its parse status (``ok`` or the reason it is not usable), what was parsed, and
    the key of its chat in ``proposer_prompts.parquet`` (the rollout id)."""
    raw = (response_prefix or "") + completion.text
    return Candidate(
        candidate_id=request.id, rollout_id=rollout.rollout_id, problem_id=rollout.problem_id,
        rollout_index=rollout.rollout_index, candidate_index=request.meta["candidate_index"], seed=request.seed,
        solve_output=solve_output, raw_output=raw if completion.finish_reason != "error" else "",
        finish_reason=completion.finish_reason, parse_status=parsed.status, parse_detail=parsed.detail,
        location=parsed.location, intervention=parsed.content, attempt_shortened=shortened,
        prompt_tokens=completion.prompt_tokens, completion_tokens=completion.completion_tokens,
        proposer_prompt_id=proposer_prompt_id)


async def leaks(flow: Flow, content: str, gold: str, faithful: bool) -> bool:
    """The leak rule (:func:`intgen.interventions.leaks_answer`) with its math-verify half run
    in the grading pool, so a pathological boxed expression cannot hang the run."""
    if faithful:
        return interventions.leaks_answer(content, gold, faithful=True)
    if interventions.leaks_as_token(content, gold):
        return True
    for boxed in interventions.boxed_answers(content):
        if (await flow.grade(gold, "\\boxed{" + boxed + "}")).status == "correct":
            return True
    return False


class ProposeStage:
    """Takes failed rollouts; sends the solve turn (when the prompt has one), then m
    proposer samples; parses each as it arrives, applies the leak rule, and passes each
    ``ok`` candidate to ``on_parsed``. Unusable outputs are ``propose`` rejects with their
    parse status; a chat that cannot fit the context even shortened is ``prompt_too_long``.
    The chat of each rollout is kept once (:meth:`prompt_rows`, ``proposer_prompts.parquet``).

    Faithful mode (docs/faithful.md): the paper's step split (items 1), its parser (2) and its
    cut of the rendered chat at ``cut_prompt_tokens`` (5) instead of a shortened attempt.

    Args:
        flow: the executor; requests go to its ``proposer`` role.
        prompt: the proposer prompt; m, sampling, run_seed, faithful: from the spec.
        problems: problem id -> problem; order: problem id -> position (canonical order).
        on_parsed: the next stage's ``add``.
        on_unusable: called with every candidate that will not be checked for its own sake
            (not parsed, leaked, failed request): the check stage's join in faithful mode.
        cut_prompt_tokens: faithful mode's ``propose.cut_prompt_tokens``.
    """

    name = "propose"

    def __init__(self, flow: Flow, prompt: ProposerPrompt, m: int, sampling: Sampling, run_seed: int, faithful: bool,
                 problems: dict[str, Problem], order: dict[str, int], on_parsed: Callable[[Candidate], None],
                 on_unusable: Callable[[Candidate], None] | None = None, cut_prompt_tokens: int = 30000):
        self.flow, self.prompt, self.m, self.sampling = flow, prompt, m, sampling
        self.run_seed, self.faithful, self.problems, self.order = run_seed, faithful, problems, order
        self.on_parsed, self.on_unusable, self.cut_prompt_tokens = on_parsed, on_unusable, cut_prompt_tokens
        self.records: dict[str, Candidate] = {}
        self.prompts: dict[str, ProposerPromptRow] = {}
        self._context: dict[str, tuple[Rollout, str | None, range | None, str | None]] = {}
        backend = flow.backend("proposer")
        ctx = backend.max_model_len
        reserve = min(sampling.max_tokens, ctx // 4) if ctx else 0
        self._fits = (lambda msgs: backend.count_prompt_tokens(msgs) + reserve <= ctx) if ctx else None

    def add(self, rollout: Rollout) -> None:
        problem = self.problems[rollout.problem_id]
        if self.prompt.solve is None:
            self._critique(rollout, None)
            return
        req = solve_request(problem, rollout, self.prompt, self.sampling, self.run_seed)
        self.flow.send([req], lambda r, c, v: self._solved(rollout, c), stage="solve", role="proposer",
                       route=rollout.rollout_id)

    def _solved(self, rollout: Rollout, completion: Completion) -> None:
        if completion.finish_reason in ("error", "abort"):
            return  # the executor recorded the reject; no critique without the solve turn
        self._critique(rollout, completion.text)

    def _critique(self, rollout: Rollout, solve_output: str | None) -> None:
        problem = self.problems[rollout.problem_id]
        shaped = critique_messages(problem, rollout, self.prompt, solve_output, None if self.faithful else self._fits,
                                   keep_empty=self.faithful)
        if shaped is None:
            self.flow.reject("propose", rollout.rollout_id, rollout.problem_id, "prompt_too_long",
                             "the proposer chat does not fit the context even with the attempt shortened")
            return
        messages, omitted = shaped
        continue_final = self.prompt.response_prefix is not None
        response_prefix, cut = self.prompt.response_prefix, False
        if self.faithful:
            backend = self.flow.backend("proposer")
            messages, continue_final, cut = cut_chat(messages, continue_final, self.cut_prompt_tokens,
                                                     backend.count_prompt_tokens)
            if cut:
                response_prefix = None  # the cut dropped the opened reply, if there was one
        reqs = candidate_requests(problem, rollout, messages, self.m, self.sampling, self.run_seed,
                                  continue_final=continue_final)
        for req in reqs:
            self._context[req.id] = (rollout, solve_output, omitted, response_prefix)
        sent = {r.id for r in self.flow.send(reqs, self._candidate, stage="propose", role="proposer",
                                             route=rollout.rollout_id)}
        for req in reqs:
            if req.id not in sent:
                del self._context[req.id]
        if sent:
            self.prompts[rollout.rollout_id] = ProposerPromptRow(
                rollout_id=rollout.rollout_id, problem_id=rollout.problem_id, rollout_index=rollout.rollout_index,
                messages=[dict(m) for m in messages], continue_final=continue_final,
                sha256=chat_sha256(messages, continue_final),
                omitted_first=omitted.start if omitted is not None else None,
                omitted_last=omitted.stop - 1 if omitted is not None else None,
                cut_at_tokens=self.cut_prompt_tokens if cut else None,
                prompt_name=self.prompt.name, prompt_sha256=self.prompt.sha256)

    async def _candidate(self, request: Request, completion: Completion, _verdict: Any) -> None:
        rollout, solve_output, omitted, response_prefix = self._context.pop(request.id)
        gold = request.meta["gold_answer"]
        problem = self.problems[rollout.problem_id]
        if self.faithful:
            if completion.finish_reason in ("error", "abort"):
                parsed = interventions.ParsedIntervention("request_failed",
                                                          detail=completion.error or completion.finish_reason)
            else:
                parsed = interventions.parse_intervention_paper((response_prefix or "") + completion.text)
        else:
            echoed = interventions.echoed_blocks(problem.problem, problem.reference_solution, rollout.text,
                                                 *(response for _, response in self.prompt.examples))
            parsed = parse_candidate(completion, rollout, omitted, response_prefix, echoed)
        if parsed.status == interventions.OK and await leaks(self.flow, parsed.content, gold, self.faithful):
            parsed = leak(parsed, gold)
        rec = self.records[request.id] = to_candidate(request, completion, rollout, parsed, solve_output,
                                                      omitted is not None, response_prefix, rollout.rollout_id)
        if rec.parse_status == "ok":
            self.on_parsed(rec)
            return
        if rec.parse_status != "request_failed":
            self.flow.reject("propose", rec.candidate_id, rec.problem_id, rec.parse_status, rec.parse_detail or "")
        if self.on_unusable is not None:
            self.on_unusable(rec)

    def prompt_rows(self) -> list[ProposerPromptRow]:
        """``proposer_prompts.parquet``: the chat each rollout's m proposer samples were sent,
        once per rollout, in canonical order (problem, rollout index)."""
        return sorted(self.prompts.values(), key=lambda p: (self.order[p.problem_id], p.rollout_index))

    def rows(self) -> list[Candidate]:
        """``candidates.parquet`` in its canonical order: problem, rollout, candidate index."""
        return sorted(self.records.values(),
                      key=lambda c: (self.order[c.problem_id], c.rollout_index, c.candidate_index))
