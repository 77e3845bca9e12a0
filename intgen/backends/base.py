"""The backend interface (docs/job-spec.md, "backend").

One small async interface: complete one request, abort what is pending. A
:class:`Request` is one sample (one seed): backends may batch samples where they keep
per-sample seeds, but the caller always sees one :class:`Completion` per request. The
executor (:mod:`intgen.executor`) keeps a bounded window of requests in each backend and
refills it from its priority queue as completions arrive, which is what lets a run grade
and record answers while the engine generates and feed each record to its next stage at
once (docs/architecture.md).
"""

from __future__ import annotations

import abc
import asyncio
import dataclasses
import hashlib
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Iterable, Sequence


@dataclass(frozen=True)
class Sampling:
    """Sampling parameters of one request; ``max_tokens`` in tokens."""

    temperature: float = 0.7
    top_p: float = 0.8
    top_k: int = 20
    max_tokens: int = 16384


@dataclass(frozen=True)
class Request:
    """One sample to generate.

    Attributes:
        id: the sample's id (e.g. ``test.jsonl#3/rollout-0``); unique within a call.
        messages: chat messages, ``[{"role": ..., "content": ...}, ...]``.
        continue_final: continue the last (assistant) message as an unfinished turn
            instead of starting a new assistant turn (``continue_final_message=True,
            add_generation_prompt=False`` in Hugging Face chat templates).
        sampling: the sampling parameters.
        seed: the per-sample seed (:func:`sample_seed`).
        meta: free-form tags for tracing (stage, problem id); backends never change the
            text they generate because of it, except the scripted fake and the simulator.
        priority: set by the executor: lower goes first (vLLM's convention). An engine that
            schedules by priority (vLLM with ``scheduling_policy: priority``) gets it; it
            never changes the text, nor the sample's store key.
    """

    id: str
    messages: tuple[dict[str, str], ...]
    sampling: Sampling
    seed: int
    continue_final: bool = False
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    priority: int = field(default=0, compare=False)


@dataclass(frozen=True)
class Completion:
    """What a backend returns for one request.

    ``finish_reason`` is ``"stop"``, ``"length"`` (hit ``max_tokens`` or the context),
    ``"abort"`` or ``"error"``; for ``"error"``, ``error`` says why and ``text`` is "", and
    ``permanent`` says whether sending the request again cannot help (the server rejected it
    as invalid, or its own text cannot be sent faithfully): a run with only permanent
    failures is complete, one with any other failure is not (docs/architecture.md,
    "Finished runs").
    Token counts are in the model's tokens; ``cached_tokens`` is the prompt tokens
    served from the prefix cache, when the backend reports it.
    """

    request_id: str
    text: str
    finish_reason: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int | None = None
    error: str | None = None
    permanent: bool = False


class BackendError(RuntimeError):
    """A backend that cannot start or cannot serve a kind of request; the message says what to fix."""


class Backend(abc.ABC):
    """Base class of every backend. Subclasses implement :meth:`complete` and :meth:`abort`.

    The executor (:mod:`intgen.executor`) keeps at most :attr:`max_in_flight` requests in
    a backend at once and calls :meth:`complete` once per request; :meth:`stream` is the
    same for a fixed list of requests (probes, tests).
    """

    #: whether the backend can continue an unfinished assistant turn (the check stage needs it)
    can_continue: bool = True
    #: the model's context length in tokens, when known (after :meth:`prepare`)
    max_model_len: int | None = None
    #: how many requests the executor keeps in this backend at once (its in-flight window);
    #: None lets the executor choose (docs/architecture.md, "The executor")
    max_in_flight: int | None = None
    #: a simulated engine's virtual clock (:class:`intgen.backends.sim.VirtualClock`), which
    #: the executor advances while it has nothing else to do; None for real engines
    clock: Any = None

    async def prepare(self) -> None:
        """Make what rendering, counting prompt tokens and :attr:`max_model_len` need
        (a tokenizer, the context length), without loading the model. Called before any
        request is built, so a run whose every answer is in its sample store never starts
        the engine. Idempotent. The default does nothing."""

    async def start(self) -> None:
        """Load the model or connect; called once, before the first :meth:`complete` (after
        :meth:`prepare`). Idempotent."""

    async def close(self) -> None:
        """Release the engine or connection."""

    @abc.abstractmethod
    async def complete(self, request: Request) -> Completion:
        """Generate one request and return its completion.

        A request that fails returns a completion with ``finish_reason="error"`` (and an
        aborted one ``"abort"``) rather than raising, so one bad request never sinks the
        others. Raise :class:`BackendError` only when no request can succeed any more
        (a dead engine, a template that breaks every continuation): the run stops.
        """

    def submit(self, request: Request) -> asyncio.Future:
        """Start one request now; returns a future of its :meth:`complete` result. The
        executor sends every request through here. The default runs :meth:`complete` in a
        task; a simulated engine registers the request at once instead."""
        return asyncio.ensure_future(self.complete(request))

    @abc.abstractmethod
    def abort(self, request_ids: Iterable[str]) -> None:
        """Stop generating these requests; each still completes once (``"abort"``)."""

    async def stream(self, requests: Sequence[Request]) -> AsyncIterator[Completion]:
        """Generate every request at once; yield each completion as soon as it finishes, in any order."""
        await self.prepare()
        await self.start()
        tasks = [asyncio.ensure_future(self.complete(r)) for r in requests]
        try:
            for next_done in asyncio.as_completed(tasks):
                yield await next_done
        finally:
            for t in tasks:
                t.cancel()

    def count_prompt_tokens(self, messages: Sequence[dict[str, str]], continue_final: bool = False) -> int:
        """Tokens of the rendered prompt. The default is a rough character estimate (4 chars a token)."""
        return sum(len(m["content"]) for m in messages) // 4 + 8 * len(messages)

    def describe(self) -> dict[str, Any]:
        """What to record in the run manifest about this backend (model, engine, template notes)."""
        return {"kind": type(self).__name__}


def sample_seed(run_seed: int, sample_id: str) -> int:
    """The seed of one sample: derived from the run seed and the sample's id (docs/pipeline.md),
    so a sample draws the same seed in every run and on every resume.

    Returns an int in ``[0, 2**31)`` (vLLM and most servers take 32-bit seeds).
    """
    digest = hashlib.sha256(f"{run_seed}:{sample_id}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def clamp_to_context(backend: Backend, request: Request) -> Request | None:
    """The request with ``max_tokens`` clamped to the context left after its prompt
    (docs/job-spec.md, "backend"), or None when the prompt alone fills the backend's context.
    Unchanged when the backend reports no context length."""
    if not backend.max_model_len:
        return request
    room = backend.max_model_len - backend.count_prompt_tokens(request.messages, request.continue_final)
    if room < 1:
        return None
    if request.sampling.max_tokens > room:
        return dataclasses.replace(request, sampling=dataclasses.replace(request.sampling, max_tokens=room))
    return request
