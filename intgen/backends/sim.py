"""A simulated engine on a virtual clock, for planning at scales this machine cannot run
(``backend.kind: sim``; docs/architecture.md, "The simulated engine").

It models a continuous-batching engine (vLLM's scheduler, roughly) as events, never step by
step in Python: at most ``max_running`` sequences run; every running sequence gains one
token per decode step, and a step takes ``step_ms + step_ms_per_seq x running``
milliseconds (so 8,000 output tokens/s at 256 sequences with the defaults, and about 120
tokens/s for one); admitting a request costs ``prefill_ms_per_token`` for each prompt token
not already in the (unbounded) prefix cache; requests wait first come, first served. Between
two events the number of running sequences is constant, so the next event (the running
sequence with the fewest tokens left finishes) is computed, and the clock jumps to it.
Several engines share one :class:`VirtualClock`; the executor advances it only when nothing
else can happen, so a simulated run is deterministic for a seed.

Texts are short: token counts are virtual. A text carries its own length in markers,
``[[sim N]]`` counting N tokens (the rest of a text counts one token per 4 characters), so a
prompt built from earlier outputs (a proposer chat holding a rollout, a continuation holding
a prefix of steps) has the virtual length of what it holds. Prefix-cache hits are counted per
message step (``\\n\\n`` chunks).

Outcomes follow a funnel (:class:`intgen.config.SimSpec`), drawn from each request's seed,
so they do not depend on the schedule. Like the fake backend, the simulator reads the gold
answer and the request kind from ``request.meta``: rollouts are correct with ``p_correct``;
a proposer output parses with ``p_parse`` (location uniform over the numbered substeps);
a parsed candidate is *good* with ``p_good`` and its continuations then succeed with
``good_rate`` (or a rate spread evenly over ``[good_rate_low, good_rate]``), else never;
baseline continuations succeed with ``baseline_rate``. The outcome is drawn first; output
lengths are lognormal around each kind's median and cut at the request's ``max_tokens``
(finish ``length``, no answer) for a failure, while a success is drawn below the cut, so the
rates above are the rates a run measures.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import random
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from intgen.backends.base import Backend, Completion, Request
from intgen.config import SimSpec

_MARKER = re.compile(r"\[\[sim (\d+)\]\]")
_SUBSTEP = re.compile(r"\*\*Substep (\d+):\*\*")
_RATE = re.compile(r"sim rate ([a-j]{4})")
_LETTERS = "abcdefghij"


def marker(tokens: int) -> str:
    """The text that counts ``tokens`` virtual tokens."""
    return f"[[sim {int(tokens)}]]"


def text_tokens(text: str) -> int:
    """Virtual tokens of a text: its markers, plus one per 4 characters of the rest."""
    total = 0
    rest = len(text)
    for m in _MARKER.finditer(text):
        total += int(m.group(1))
        rest -= len(m.group(0))
    return total + rest // 4


class VirtualClock:
    """The time (seconds) shared by simulated engines; :meth:`advance` jumps to the next event."""

    def __init__(self) -> None:
        self.now = 0.0
        self.engines: list["SimBackend"] = []

    def advance(self) -> int:
        """Jump to the earliest next event of any engine and finish the sequences due then;
        returns how many requests completed (their futures are resolved)."""
        best, when = None, math.inf
        for e in self.engines:
            t = e.next_event()
            if t < when:
                best, when = e, t
        if best is None:
            return 0
        self.now = max(self.now, when)
        return best.finish_due(self.now)


@dataclass(order=True)
class _Seq:
    finish_step: float
    order: int
    request: Request = field(compare=False)
    future: asyncio.Future = field(compare=False)
    completion: Completion = field(compare=False)


class SimBackend(Backend):
    """One simulated engine (module docstring).

    Args:
        spec: the engine's constants and the funnel.
        clock: the virtual clock to share with other simulated engines (default: a new one).
        max_model_len: the context, if any (prompts are clamped like a real engine's).

    Attributes:
        stats: per engine, the virtual seconds, the time-integral of running sequences, and
            the same up to the last request submitted (the tail after it cannot be filled).
    """

    def __init__(self, spec: SimSpec | None = None, clock: VirtualClock | None = None,
                 max_model_len: int | None = None):
        self.spec = spec or SimSpec()
        self.clock = clock or VirtualClock()
        self.clock.engines.append(self)
        self.max_model_len = max_model_len
        self._waiting: list[tuple[Request, asyncio.Future]] = []
        self._running: list[_Seq] = []
        self._steps = 0.0
        self._t = 0.0  # the engine's own time: running state is exact up to here
        self._prefill = 0.0  # prefill seconds owed by the next steps
        self._cache: set[int] = set()
        self._order = itertools.count()
        self._aborted: set[str] = set()
        self.area = 0.0
        self.area_at_last_submit = 0.0
        self.t_last_submit = 0.0
        self.tokens = {"prompt": 0, "cached": 0, "output": 0}
        self.completed = 0
        self._seg_tokens: dict[str, int] = {}

    # -- the engine ------------------------------------------------------------------------------
    @property
    def max_in_flight(self) -> int:  # type: ignore[override]
        return 2 * self.spec.max_running

    def _dt(self, n: int) -> float:
        return (self.spec.step_ms + self.spec.step_ms_per_seq * n) / 1000.0

    def _sync(self, t: float) -> None:
        """Bring the running sequences' progress up to time ``t`` (no sequence finishes before it)."""
        if t <= self._t:
            return
        n = len(self._running)
        elapsed = t - self._t
        self.area += n * elapsed
        if n:
            paid = min(elapsed, self._prefill)
            self._prefill -= paid
            self._steps += (elapsed - paid) / self._dt(n)
        self._t = t

    def next_event(self) -> float:
        """When the next running sequence finishes (inf when none runs)."""
        if not self._running:
            return math.inf
        n = len(self._running)
        return self._t + self._prefill + max(0.0, self._running[0].finish_step - self._steps) * self._dt(n)

    def finish_due(self, t: float) -> int:
        self._sync(t)
        due = self._running[0].finish_step
        self._steps = max(self._steps, due)  # exact, whatever the float error of _sync
        done = 0
        while self._running and self._running[0].finish_step <= self._steps + 1e-9:
            seq = heapq.heappop(self._running)
            if not seq.future.done():
                seq.future.set_result(seq.completion)
            done += 1
        self.completed += done
        done += self._admit()
        return done

    def _admit(self) -> int:
        """Admit waiting requests while there is room; returns how many finished at once
        (aborted ones, which complete without running)."""
        finished = 0
        while self._waiting and len(self._running) < self.spec.max_running:
            request, fut = self._waiting.pop(0)
            if request.id in self._aborted:
                fut.set_result(Completion(request.id, "", "abort"))
                finished += 1
                continue
            c = self._generate(request)
            self._prefill += (c.prompt_tokens - (c.cached_tokens or 0)) * self.spec.prefill_ms_per_token / 1000.0
            heapq.heappush(self._running, _Seq(self._steps + max(1, c.completion_tokens), next(self._order),
                                               request, fut, c))
        return finished

    def submit(self, request: Request) -> asyncio.Future:
        fut = asyncio.get_running_loop().create_future()
        self._sync(self.clock.now)
        self._waiting.append((request, fut))
        self._admit()
        self.t_last_submit = self.clock.now
        self.area_at_last_submit = self.area
        return fut

    async def complete(self, request: Request) -> Completion:
        return await self.submit(request)

    def abort(self, request_ids: Iterable[str]) -> None:
        self._aborted.update(request_ids)

    def occupancy(self) -> dict[str, float]:
        """Mean running sequences / max_running over the whole run, and up to the last
        request submitted (while work remained)."""
        m = self.spec.max_running
        return {"virtual_seconds": self._t,
                "occupancy": self.area / (self._t * m) if self._t else 0.0,
                "occupancy_while_work_remains": (self.area_at_last_submit / (self.t_last_submit * m)
                                                 if self.t_last_submit else 0.0)}

    # -- tokens and texts -------------------------------------------------------------------------
    def _segments(self, messages: Sequence[dict[str, str]]) -> list[tuple[int, int]]:
        """(prefix-cache key, tokens) of each step of the prompt, in order."""
        out = []
        h = 0
        for m in messages:
            h = hash((h, m["role"]))
            out.append((h, 4))
            for seg in m["content"].split("\n\n"):
                n = self._seg_tokens.get(seg)
                if n is None:
                    n = self._seg_tokens[seg] = text_tokens(seg) + 1
                h = hash((h, seg))
                out.append((h, n))
        return out

    def count_prompt_tokens(self, messages: Sequence[dict[str, str]], continue_final: bool = False) -> int:
        return sum(n for _, n in self._segments(messages))

    def _generate(self, request: Request) -> Completion:
        segs = self._segments(request.messages)
        total = sum(n for _, n in segs)
        cached = 0
        for h, n in segs:
            if h not in self._cache:
                break
            cached += n
        self._cache.update(h for h, _ in segs)
        s = self.spec
        rng = random.Random(f"{s.seed}:{request.seed}:{request.id}")
        stage = request.meta.get("stage")
        median = {"rollout": s.rollout_tokens, "solve": s.proposer_tokens, "propose": s.proposer_tokens}.get(
            stage, s.continuation_tokens)
        limit = request.sampling.max_tokens
        success = rng.random() < self._rate(request, stage)  # the outcome first: a success is never cut off
        length = max(1, int(median * math.exp(rng.gauss(0.0, s.length_sigma))))
        for _ in range(20):
            if length < limit or not success:
                break
            length = max(1, int(median * math.exp(rng.gauss(0.0, s.length_sigma))))
        if success:
            length = min(length, limit - 1) if limit > 1 else 1
        cut = length >= limit
        length = min(length, limit)
        text = self._text(request, stage, length, cut, success, rng)
        self.tokens["prompt"] += total
        self.tokens["cached"] += cached
        self.tokens["output"] += length
        return Completion(request.id, text, "length" if cut else "stop", total, length, cached)

    def _rate(self, request: Request, stage: Any) -> float:
        """The probability that this request succeeds: a correct rollout or continuation, a
        proposer output that parses (module docstring)."""
        s = self.spec
        if stage == "rollout":
            return s.p_correct
        if stage == "propose":
            return s.p_parse
        if stage == "solve":
            return 1.0
        if stage == "baseline":
            return s.baseline_rate
        found = _RATE.findall(request.messages[-1]["content"])
        return int("".join(str(_LETTERS.index(ch)) for ch in found[-1])) / 10000 if found else 0.0

    def _text(self, request: Request, stage: Any, length: int, cut: bool, success: bool, rng: random.Random) -> str:
        s = self.spec
        gold = str(request.meta.get("gold_answer", "0"))
        wrong = str(int(gold) + 1) if re.fullmatch(r"-?\d+", gold) else "0"
        answer = gold if success else wrong
        if stage == "rollout":
            steps = rng.randint(4, 10)
            body = "\n\n".join(f"Step {i + 1}. {marker(length // steps)}" for i in range(steps))
            return body if cut else body + f"\n\nSo the answer is $\\boxed{{{answer}}}$."
        if stage == "solve":
            return f"Following the reference solution. {marker(length)}"
        if stage == "propose":
            if not success:
                return f"{marker(length)} I could not find the critical error."
            critique = next(m["content"] for m in reversed(request.messages) if m["role"] == "user")
            numbers = [int(n) for n in _SUBSTEP.findall(critique)] or [1]
            location = rng.choice(numbers)
            if rng.random() < s.p_good:
                rate = rng.uniform(s.good_rate_low, s.good_rate) if s.good_rate_low is not None else s.good_rate
            else:
                rate = 0.0
            code = "".join(_LETTERS[int(d)] for d in f"{min(int(round(rate * 10000)), 9999):04d}")
            reply = (f'{marker(length)} <intervention>{{"content": "Let me redo this step more carefully '
                     f'(sim rate {code}).", "location": {location}}}</intervention>')
            if request.continue_final:  # the prompt opened the reply (response_prefix): continue it
                prefix = request.messages[-1]["content"]
                reply = reply[reply.index("<intervention>"):]
                reply = reply[len(prefix):] if reply.startswith(prefix) else reply
            return reply
        body = f"\n\nContinuing. {marker(length)}"
        return body if cut else body + f"\n\nThe answer is $\\boxed{{{answer}}}$."

    def describe(self) -> dict[str, Any]:
        return {"kind": "sim", **self.spec.model_dump(), **self.occupancy()}
