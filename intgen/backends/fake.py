"""The scripted fake backend: deterministic, for tests and dry runs (docs/job-spec.md, "backend").

A script is a function ``script(request) -> reply`` where the reply is the text, a
``(text, finish_reason)`` pair, a :class:`Completion`, or an exception instance (the
request then fails with ``finish_reason="error"``). Completions are yielded in a
deterministic order that differs from submission order, so callers are exercised on
out-of-order arrival as with a real engine.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from typing import Any, Callable, Iterable, Sequence

from intgen.backends.base import Backend, Completion, Request

Script = Callable[[Request], Any]


def _order_key(request_id: str) -> str:
    return hashlib.sha256(request_id.encode()).hexdigest()


class FakeBackend(Backend):
    """A backend that answers from a script instead of a model.

    Args:
        script: the reply function; defaults to :func:`demo_script`.
        max_model_len: reported context length (tokens are whitespace-separated words).
        can_continue: set False to act like a chat API that cannot continue a turn.
        delay_s: about how long one request takes (0.5-1.5 times it, fixed by the request's
            id), standing in for generation time.

    Attributes:
        calls: every request answered so far (in answer order), for tests.
    """

    def __init__(self, script: Script | None = None, max_model_len: int | None = None, can_continue: bool = True,
                 delay_s: float = 0.0):
        self.script = script or demo_script
        self.delay_s = delay_s
        self.max_model_len = max_model_len
        self.can_continue = can_continue
        self.calls: list[Request] = []
        self._aborted: set[str] = set()

    def count_prompt_tokens(self, messages: Sequence[dict[str, str]], continue_final: bool = False) -> int:
        return sum(len(m["content"].split()) for m in messages) + 4 * len(messages)

    async def complete(self, request: Request) -> Completion:
        # a delay that differs from request to request (fixed by the id), so completions
        # arrive out of submission order, as from an engine
        await asyncio.sleep(self.delay_s * (0.5 + int(_order_key(request.id)[:4], 16) / 65536))
        if request.id in self._aborted:
            return Completion(request.id, "", "abort")
        self.calls.append(request)
        return self._answer(request)

    def _answer(self, request: Request) -> Completion:
        prompt_tokens = self.count_prompt_tokens(request.messages, request.continue_final)
        try:
            reply = self.script(request)
        except Exception as exc:  # a script may raise to simulate a failed request
            reply = exc
        if isinstance(reply, Completion):
            return reply
        if isinstance(reply, BaseException):
            return Completion(request.id, "", "error", prompt_tokens, 0, error=f"{type(reply).__name__}: {reply}")
        text, finish = (reply, "stop") if isinstance(reply, str) else reply
        return Completion(request.id, text, finish, prompt_tokens, len(text.split()))

    def abort(self, request_ids: Iterable[str]) -> None:
        self._aborted.update(request_ids)

    def describe(self) -> dict[str, Any]:
        return {"kind": "fake", "script": getattr(self.script, "__name__", repr(self.script))}


def _wrong(gold: str) -> str:
    return str(int(gold) + 1) if re.fullmatch(r"-?\d+", gold.strip()) else "0"


def demo_script(request: Request) -> str:
    """The dry-run script: plausible shapes for every stage, decided by the seed.

    Rollouts are correct one time in four, proposer outputs cycle through a parsed
    intervention, a location out of range and a missing tag, and continuations are
    correct one time in three. It reads the gold answer from ``request.meta`` (the
    only backend allowed to).
    """
    stage = request.meta.get("stage")
    gold = str(request.meta.get("gold_answer", "0"))
    s = request.seed
    if stage == "rollout":
        answer = gold if s % 4 == 0 else _wrong(gold)
        return ("Let me read the problem carefully.\n\nFirst I compute the quantities involved."
                f"\n\nThen I combine them.\n\nSo the answer is $\\boxed{{{answer}}}$.")
    if stage == "solve":
        return "Following the reference solution step by step, I reach the same result."
    if stage == "propose":
        critique = next(m["content"] for m in reversed(request.messages) if m["role"] == "user")
        n = len(re.findall(r"\*\*Substep \d+:\*\*", critique))
        kind = s % 3
        if kind == 2:
            return "The attempt looks fine to me."
        location = max(1, n - 1) if kind == 0 else n + 5
        reply = ("Verification log: substep 1 is correct; the combination step is wrong.\n"
                 f'<intervention>{{"content": "Let me recheck how the quantities combine before going on.", '
                 f'"location": {location}}}</intervention>')
        if request.continue_final:  # the prompt opened the reply (response_prefix): write only the rest of it
            prefix = request.messages[-1]["content"]
            reply = reply[reply.index("<intervention>"):]
            reply = reply[len(prefix):] if reply.startswith(prefix) else reply
        return reply
    # check and baseline continuations
    answer = gold if s % 3 == 0 else _wrong(gold)
    return f"\n\nRedoing the computation carefully.\n\nThe answer is $\\boxed{{{answer}}}$."
