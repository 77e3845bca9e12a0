"""The backend interface (DESIGN section 5).

One small async interface: submit requests, receive each completion as it finishes,
abort what is pending. A :class:`Request` is one sample (one seed): backends may group
samples of one prompt where they keep per-sample seeds, but the caller always sees one
:class:`Completion` per request. Streaming (rather than one blocking call per stage) is
what lets the runner grade and record answers while the engine generates.
"""

from __future__ import annotations

import abc
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
            text they generate because of it, except the scripted fake.
    """

    id: str
    messages: tuple[dict[str, str], ...]
    sampling: Sampling
    seed: int
    continue_final: bool = False
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True)
class Completion:
    """What a backend returns for one request.

    ``finish_reason`` is ``"stop"``, ``"length"`` (hit ``max_tokens`` or the context),
    ``"abort"`` or ``"error"``; for ``"error"``, ``error`` says why and ``text`` is "".
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


class BackendError(RuntimeError):
    """A backend that cannot start or cannot serve a kind of request; the message says what to fix."""


class Backend(abc.ABC):
    """Base class of every backend. Subclasses implement :meth:`stream` and :meth:`abort`."""

    #: whether the backend can continue an unfinished assistant turn (the check stage needs it)
    can_continue: bool = True
    #: the model's context length in tokens, when known
    max_model_len: int | None = None

    async def start(self) -> None:
        """Load the model or connect; called once before the first :meth:`stream`."""

    async def close(self) -> None:
        """Release the engine or connection."""

    @abc.abstractmethod
    def stream(self, requests: Sequence[Request]) -> AsyncIterator[Completion]:
        """Generate every request; yield each completion as soon as it finishes, in any order.

        A failed request yields a completion with ``finish_reason="error"`` rather than
        raising, so one bad request never sinks the others.
        """

    @abc.abstractmethod
    def abort(self, request_ids: Iterable[str]) -> None:
        """Stop generating these requests; each still yields one completion (``"abort"``)."""

    def count_prompt_tokens(self, messages: Sequence[dict[str, str]], continue_final: bool = False) -> int:
        """Tokens of the rendered prompt. The default is a rough character estimate (4 chars a token)."""
        return sum(len(m["content"]) for m in messages) // 4 + 8 * len(messages)

    def describe(self) -> dict[str, Any]:
        """What to record in the run manifest about this backend (model, engine, template notes)."""
        return {"kind": type(self).__name__}


def sample_seed(run_seed: int, sample_id: str) -> int:
    """The seed of one sample: derived from the run seed and the sample's id (DESIGN
    section 2), so a sample draws the same seed in every run and on every resume.

    Returns an int in ``[0, 2**31)`` (vLLM and most servers take 32-bit seeds).
    """
    digest = hashlib.sha256(f"{run_seed}:{sample_id}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def clamp_to_context(backend: Backend, request: Request) -> Request | None:
    """The request with ``max_tokens`` clamped to the context left after its prompt
    (DESIGN section 5), or None when the prompt alone fills the backend's context.
    Unchanged when the backend reports no context length."""
    if not backend.max_model_len:
        return request
    room = backend.max_model_len - backend.count_prompt_tokens(request.messages, request.continue_final)
    if room < 1:
        return None
    if request.sampling.max_tokens > room:
        return dataclasses.replace(request, sampling=dataclasses.replace(request.sampling, max_tokens=room))
    return request
