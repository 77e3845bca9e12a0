"""The stages of a run (docs/pipeline.md; docs/architecture.md). Each stage is one module
that owns its whole logic: which records it takes (``add``), the requests it builds, what
each completion means (grade, parse, decide), which records it passes on, and the table it
writes (``rows``, in the table's canonical order). Stages never send requests themselves:
they hand them to a :class:`Flow` (the executor, :mod:`intgen.executor`), which calls their
handler once per request; the runner wires each stage's output to the next stage's ``add``.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable, Protocol, Sequence

from intgen.backends.base import Backend, Completion, Request

#: the order of the request kinds of ``intgen generate``: later ones go first in the executor
GENERATE_STAGES = ("rollout", "solve", "propose", "check", "baseline")
#: with hint conditions (spec ``conditions``, docs/hints.md) the hint stage comes last
HINT_STAGES = GENERATE_STAGES + ("hint",)


class Flow(Protocol):
    """What a stage may ask of the executor."""

    def send(self, requests: Sequence[Request], handler: Callable[[Request, Completion, Any], Awaitable[None] | None],
             *, stage: str, role: str = "policy", grade: bool = False, route: str | None = None) -> None: ...

    def reject(self, stage: str, record_id: str, problem_id: str | None, reason: str, detail: str = "") -> None: ...

    async def grade(self, gold: str, text: str, finish_reason: str | None = None) -> Any: ...

    def backend(self, role: str) -> Backend: ...
