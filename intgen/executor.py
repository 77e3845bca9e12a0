"""The executor: the one place that sends requests to engines, streams completions back,
grades them, stores them and counts them, for ``intgen generate``, ``intgen eval
localize`` and ``intgen eval lift`` alike (docs/architecture.md, "The executor").

Stages hand the executor requests with a handler (:meth:`Executor.send`); the executor

1. clamps each request's ``max_tokens`` to the context left (a prompt that fills the
   context is not sent: a ``prompt_too_long`` reject);
2. answers it from the run's sample store when it was answered before (a resumed run
   sends only what is new, and never starts an engine that has nothing to do);
3. queues the rest in its engine's *priority queue*: one FIFO queue per stage, and the
   stage nearer the end of the pipeline goes first (continuations before new rollouts),
   so finished rows appear early and a killed run has lost the least;
4. keeps at most a bounded *window* of requests in each engine
   (:attr:`intgen.backends.base.Backend.max_in_flight`, or ``executor.window``) and
   refills it from the queue the moment a completion arrives;
5. stores each answer (group commit, :mod:`intgen.store`), counts its tokens, records a
   failed or unasked-for aborted request as a reject, grades it in the grading pool when
   the stage asked for a verdict, and calls the stage's handler, which may send the
   record's next requests at once: records stream from stage to stage with no barrier.

Every request that :meth:`Executor.send` returns is delivered to its handler exactly once
(answered, failed or aborted), so a stage can join on "all r continuations of a candidate
are back".

Engines: a *role* (``policy``, ``proposer``) has one or more *lanes*, one engine each
(``executor.engines``: in this process, or Ray actors, docs/scale.md);
``send(..., route=key)`` sends every request with one route key to one lane (prefix
locality: the r continuations of a candidate share a prompt, and so do the proposer
requests of a rollout): the lane with the least work (queued + in flight) when the key is
first seen, then always that one. Routing comes before priority: each lane has its own
priority queue and window.

Stage status (``manifest.json``): per stage, requests sent / answered / from the store /
failed / aborted / not sent, tokens, and the first and last wall-clock times; a stage is
*done* when every stage before it is done and it has nothing queued, in flight or being
handled, so no record can still reach it.

Schedules: ``stream`` (the default, above) and ``barrier``: a stage's requests go out only
when every earlier stage is done, in slices of ``slice_size`` prompts (all samples of a
prompt in one slice, as one request with n samples) that each finish before the next one
goes: the stage-barrier schedule of intgen before the streaming dataflow (no slices), and,
with slices of 256, the InT scripts' (docs/paper.md), kept for side-by-side measurements
(benchmarks/).

Simulated engines (:mod:`intgen.backends.sim`) run on a virtual clock, which the executor
advances only when nothing else can happen: no completion in transit, no handler running,
so a simulated run is deterministic for a seed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Sequence

from intgen.backends.base import Backend, BackendError, Completion, Request, clamp_to_context
from intgen.store import SampleStore, sample_key
from intgen.tables import Reject

#: a stage's handler: (request, completion, verdict or None) -> None or an awaitable
Handler = Callable[[Request, Completion, Any], Awaitable[None] | None]
#: the default window when a backend names none
DEFAULT_WINDOW = 256
#: lanes whose in-flight count is recorded up to this many requests (occupancy histogram)
_HIST_CAP = 4096


@dataclass
class StageStatus:
    """What the executor counted for one stage (``manifest.json``'s ``stages``)."""

    name: str
    queued: int = 0
    in_flight: int = 0
    handling: int = 0
    requests: int = 0  # every request handed to send()
    sent: int = 0  # given to an engine
    answered: int = 0  # answered by an engine (stop or length)
    from_store: int = 0  # answered from the sample store
    failed: int = 0  # a rerun may answer it (a server outage, a dead worker)
    rejected: int = 0  # permanent: a rerun would fail the same way (Completion.permanent)
    aborted: int = 0
    not_sent: int = 0  # prompt too long for the context
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    generated_tokens: int = 0  # output tokens an engine generated in this session (not from the store)
    first_at: float | None = None  # wall clock (epoch seconds) of the first request
    last_at: float | None = None  # wall clock of the last delivered completion
    done: bool = False

    @property
    def open(self) -> int:
        return self.queued + self.in_flight + self.handling

    @property
    def state(self) -> str:
        return "done" if self.done else ("running" if self.requests else "pending")

    def as_dict(self) -> dict[str, Any]:
        keys = ("requests", "sent", "answered", "from_store", "failed", "rejected", "aborted", "not_sent", "prompt_tokens",
                "completion_tokens", "cached_tokens", "generated_tokens", "first_at", "last_at")
        return {"status": self.state, **{k: getattr(self, k) for k in keys}}


@dataclass
class _Item:
    request: Request
    handler: Handler
    stage: StageStatus
    lane: "_Lane"
    grade: bool
    key: str | None


@dataclass
class _Lane:
    """One engine: its backend, the model name that keys its samples, its queues and window."""

    name: str
    backend: Backend
    model: str
    queues: dict[str, deque] = field(default_factory=dict)
    in_flight: int = 0
    n_queued: int = 0  # requests in the queues (kept as a count: read on every send and refill)
    started: bool = False
    starting: asyncio.Future | None = None
    hist: list[float] = field(default_factory=list)  # seconds spent at each in-flight count while work remained
    last_change: float | None = None

    def queued(self) -> int:
        return self.n_queued


class Executor:
    """Sends, streams, grades, stores and counts (module docstring).

    Args:
        stages: the stage names in pipeline order; later stages go first.
        store: the sample store (None: nothing is stored or read back).
        grader: a :class:`~intgen.grading_pool.GradingPool` (needed when a send asks for verdicts).
        progress: a tqdm bar per stage.
        schedule: ``"stream"`` or ``"barrier"`` (module docstring).
        slice_size: with ``barrier``, prompts per slice (None: a stage's requests all at once).
        window: requests in flight per engine (None: each backend's ``max_in_flight``, else 256).
        on_status: called (no arguments) when a stage changes status, and at most every
            ``status_every_s`` seconds while counts change (the runner writes the manifest).
        faithful: grade as the paper's grader did (``faithful=True`` of
            :meth:`intgen.grading_pool.GradingPool.grade`; docs/faithful.md, item 4).
    """

    def __init__(self, stages: Sequence[str], store: SampleStore | None = None, grader: Any = None,
                 progress: bool = False, schedule: str = "stream", slice_size: int | None = None,
                 window: int | None = None, on_status: Callable[[], None] | None = None,
                 status_every_s: float = 10.0, faithful: bool = False):
        if schedule not in ("stream", "barrier"):
            raise ValueError(f"executor schedule {schedule!r}: use stream or barrier")
        self.order = list(stages)
        self.stages = {name: StageStatus(name) for name in self.order}
        self._priority = {name: len(self.order) - 1 - i for i, name in enumerate(self.order)}  # lower goes first
        self.store = store
        self.grader = grader
        self.progress = progress
        self.schedule = schedule
        self.slice_size = slice_size
        self.window = window
        self.on_status = on_status
        self.status_every_s = status_every_s
        #: keyword arguments of every grading call (faithful mode: the paper's grading rules)
        self._grading = {"faithful": True} if faithful else {}
        self.rejects: list[Reject] = []
        #: tokens and samples per request kind (``request.meta["stage"]``), for ``stats.json``
        self.ledger: dict[str, dict[str, float]] = {}
        self._roles: dict[str, list[_Lane]] = {}
        self._routes: dict[tuple[str, str], _Lane] = {}
        self._lanes: list[_Lane] = []
        self._handlers: set[asyncio.Task] = set()
        self._engine_tasks: set[asyncio.Future] = set()
        self._in_transit = 0
        self._fatal: BaseException | None = None
        self._wake: asyncio.Event | None = None
        self._slice_keys: dict[str, set] = {}
        self._bars: dict[str, Any] = {}
        self._last_status = 0.0
        self._states: dict[str, str] = {}
        self._seconds: dict[str, list[float]] = {}
        #: wall clock (epoch seconds) of the first request sent to an engine and the last answer from one
        self.engine_span: list[float | None] = [None, None]

    # -- engines ------------------------------------------------------------------------------
    def add_engine(self, role: str, backend: Backend, model: str) -> None:
        """Serve ``role`` (``policy``, ``proposer``, ...) with ``backend`` too; its samples are
        keyed by ``model``. A backend added under two roles is one engine with one window."""
        lane = next((l for l in self._lanes if l.backend is backend), None)
        if lane is None:
            lane = _Lane(f"{role}-{len(self._roles.get(role, []))}", backend, model)
            self._lanes.append(lane)
        self._roles.setdefault(role, []).append(lane)

    def backend(self, role: str) -> Backend:
        """The (first) backend serving ``role``."""
        return self._roles[role][0].backend

    async def prepare(self) -> None:
        """Prepare every engine (tokenizer, context length), so requests can be clamped and
        looked up in the store before any engine starts."""
        for lane in self._lanes:
            await lane.backend.prepare()

    # -- what stages call ------------------------------------------------------------------------
    def send(self, requests: Sequence[Request], handler: Handler, *, stage: str, role: str = "policy",
             grade: bool = False, route: str | None = None) -> list[Request]:
        """Queue requests; ``handler(request, completion, verdict)`` runs once for each one
        that is sent (a ``stop``, ``length``, ``error`` or ``abort`` completion).

        Args:
            stage: the stage that owns them (its status and priority).
            role: which engines serve them.
            grade: grade each answered completion against ``request.meta["gold_answer"]``
                first (the handler gets the :class:`~intgen.grading.Verdict`, else None).
            route: requests with one route key go to one engine of the role, the one with
                the least work when the key is first seen (default: the first request's id).

        Returns:
            The requests that will reach the handler (``max_tokens`` clamped to the context
            left); a request whose prompt alone fills the context is not sent and never
            reaches the handler: it is recorded as a ``prompt_too_long`` reject.
        """
        if not requests:
            return []
        st = self.stages[stage]
        lanes = self._roles[role]
        if len(lanes) == 1:
            lane = lanes[0]
        else:  # a route key stays on the engine that had the least work when the key was first seen
            key = (role, route or requests[0].id)
            lane = self._routes.get(key)
            if lane is None:
                lane = self._routes[key] = min(lanes, key=lambda l: l.queued() + l.in_flight)
        if st.first_at is None:
            st.first_at = time.time()
        backend = lane.backend
        items = []
        for req in requests:
            st.requests += 1
            fitted = clamp_to_context(backend, req)
            if fitted is None:
                st.not_sent += 1
                n = backend.count_prompt_tokens(req.messages, req.continue_final)
                self.reject(stage, req.id, req.meta.get("problem_id"), "prompt_too_long",
                            f"the prompt has {n} tokens; the context is {backend.max_model_len}")
                continue
            fitted = dataclasses.replace(fitted, priority=self._priority[stage])
            key = sample_key(lane.model, fitted) if self.store is not None else None
            items.append(_Item(fitted, handler, st, lane, grade, key))
        found = self.store.get_many([it.key for it in items]) if self.store is not None and items else {}
        queue = lane.queues.setdefault(stage, deque())
        for it in items:
            hit = found.get(it.key)
            if hit is not None:
                st.from_store += 1
                c = dataclasses.replace(hit, request_id=it.request.id)
                self._count(it, c)
                self._deliver(it, c)
            else:
                st.queued += 1
                lane.n_queued += 1
                queue.append(it)
        self._wakeup()
        return [it.request for it in items]

    def reject(self, stage: str, record_id: str, problem_id: str | None, reason: str, detail: str = "") -> None:
        """Record something dropped before it became a candidate (``rejects.parquet``)."""
        self.rejects.append(Reject(stage, record_id, problem_id, reason, detail))

    async def grade(self, gold: str, text: str, finish_reason: str | None = None):
        """The verdict of ``text`` against ``gold``, from the grading pool."""
        return await self.grader.grade(gold, text, finish_reason, **self._grading)

    # -- the loop -------------------------------------------------------------------------------
    async def run(self) -> None:
        """Run until every request is delivered and every handler has returned.

        Raises:
            BackendError: an engine cannot start or cannot serve any request any more.
            Exception: whatever a handler raised (the first one); the run stops.
        """
        self._wake = asyncio.Event()
        if self.progress:
            from tqdm.auto import tqdm

            for name in self.order:
                self._bars[name] = tqdm(total=0, desc=f"{name:>8}", unit="sample", leave=True)
        try:
            while True:
                if self._fatal is not None:
                    raise self._fatal
                self._update_status()  # first: a stage that just finished releases the next (barrier schedule)
                self._dispatch()
                if self._idle():
                    break
                clock = self._clock_to_advance()
                if clock is not None:
                    self._in_transit += clock.advance()
                    continue
                await self._wake.wait()
                self._wake.clear()
            if self._fatal is not None:
                raise self._fatal
        finally:
            pending = [t for t in self._engine_tasks | self._handlers if not t.done()]
            for t in pending:
                t.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
            for lane in self._lanes:
                self._record_occupancy(lane)
            if self.store is not None:
                self.store.flush()
            for bar in self._bars.values():
                bar.close()
            self._bars = {}

    def _wakeup(self) -> None:
        if self._wake is not None:
            self._wake.set()

    def _idle(self) -> bool:
        return (not self._handlers and not self._engine_tasks and self._in_transit == 0
                and all(l.queued() == 0 and l.starting is None for l in self._lanes))

    def _clock_to_advance(self):
        """A virtual clock to advance, when nothing but simulated engines has work."""
        if self._handlers or self._in_transit or any(l.starting is not None for l in self._lanes):
            return None
        busy = [l for l in self._lanes if l.in_flight]
        if busy and all(l.backend.clock is not None for l in busy):
            return busy[0].backend.clock
        return None

    def _allowed(self, stage: str, head: _Item) -> bool:
        if self.schedule == "stream":
            return True
        i = self.order.index(stage)
        if not all(self.stages[s].done for s in self.order[:i]):
            return False
        if self.slice_size is None:
            return True
        # slices count prompts (the samples of one prompt go together, as n samples of one request)
        key = hash((head.request.messages and tuple((m["role"], m["content"]) for m in head.request.messages),
                    head.request.continue_final))
        keys = self._slice_keys.setdefault(stage, set())
        if key in keys:
            return True
        if len(keys) < self.slice_size:
            keys.add(key)
            return True
        st = self.stages[stage]
        if st.in_flight == 0 and st.handling == 0:  # the slice has finished: the next one starts
            keys.clear()
            keys.add(key)
            return True
        return False

    def _dispatch(self) -> None:
        for lane in self._lanes:
            if lane.queued() == 0:
                continue
            if not lane.started:
                if lane.starting is None:
                    lane.starting = asyncio.ensure_future(lane.backend.start())
                    lane.starting.add_done_callback(lambda f, lane=lane: self._started(lane, f))
                continue
            window = self.window or lane.backend.max_in_flight or DEFAULT_WINDOW
            while lane.in_flight < window:
                item = self._next(lane)
                if item is None:
                    break
                self._launch(lane, item)

    def _next(self, lane: _Lane) -> _Item | None:
        for stage in reversed(self.order):  # nearer the end of the pipeline first
            q = lane.queues.get(stage)
            if q and self._allowed(stage, q[0]):
                lane.n_queued -= 1
                return q.popleft()
        return None

    def _started(self, lane: _Lane, fut: asyncio.Future) -> None:
        lane.starting = None
        if fut.cancelled():
            return
        if fut.exception() is not None:
            self._fatal = self._fatal or fut.exception()
        else:
            lane.started = True
        self._wakeup()

    def _launch(self, lane: _Lane, item: _Item) -> None:
        if self.engine_span[0] is None:
            self.engine_span[0] = time.time()
        st = item.stage
        st.queued -= 1
        st.in_flight += 1
        st.sent += 1
        self._set_in_flight(lane, lane.in_flight + 1)
        fut = lane.backend.submit(item.request)
        self._engine_tasks.add(fut)
        fut.add_done_callback(lambda f, lane=lane, item=item: self._finished(lane, item, f))

    def _finished(self, lane: _Lane, item: _Item, fut: asyncio.Future) -> None:
        self._engine_tasks.discard(fut)
        self._set_in_flight(lane, lane.in_flight - 1)
        item.stage.in_flight -= 1
        if lane.backend.clock is not None:
            self._in_transit -= 1
        self._wakeup()
        if fut.cancelled():
            return
        exc = fut.exception()
        if isinstance(exc, BackendError):
            self._fatal = self._fatal or exc
            return
        req = item.request
        c = (Completion(req.id, "", "error", error=f"{type(exc).__name__}: {exc}") if exc is not None
             else fut.result())
        if self.store is not None and c.finish_reason in ("stop", "length"):
            try:
                self.store.put(item.key, req.meta.get("stage"), c)
            except Exception as e:  # disk full: stop the run; answered samples so far are kept
                self._fatal = self._fatal or e
                return
        if c.finish_reason in ("stop", "length"):
            item.stage.answered += 1
        item.stage.generated_tokens += c.completion_tokens
        self.engine_span[1] = time.time()
        self._count(item, c)
        self._deliver(item, c)

    def _count(self, item: _Item, c: Completion) -> None:
        st, req = item.stage, item.request
        if c.finish_reason == "error" and c.permanent:
            st.rejected += 1
            self.reject(st.name, req.id, req.meta.get("problem_id"), "request_rejected", c.error or "")
        elif c.finish_reason == "error":
            st.failed += 1
            self.reject(st.name, req.id, req.meta.get("problem_id"), "request_failed", c.error or "")
        elif c.finish_reason == "abort":
            st.aborted += 1
            self.reject(st.name, req.id, req.meta.get("problem_id"), "request_aborted",
                        "the backend aborted this request (intgen did not ask it to)")
        st.prompt_tokens += c.prompt_tokens
        st.completion_tokens += c.completion_tokens
        st.cached_tokens += c.cached_tokens or 0
        kind = req.meta.get("stage") or st.name
        led = self.ledger.get(kind)
        if led is None:
            led = self.ledger[kind] = {"samples": 0, "prompt_tokens": 0, "completion_tokens": 0, "cached_tokens": 0,
                                       "seconds": 0.0}
        led["samples"] += 1
        led["prompt_tokens"] += c.prompt_tokens
        led["completion_tokens"] += c.completion_tokens
        led["cached_tokens"] += c.cached_tokens or 0
        now = time.perf_counter()
        span = self._seconds.setdefault(kind, [now, now])
        span[1] = now
        led["seconds"] = span[1] - span[0]

    def _deliver(self, item: _Item, c: Completion) -> None:
        item.stage.handling += 1
        task = asyncio.ensure_future(self._handle(item, c))
        self._handlers.add(task)

    async def _handle(self, item: _Item, c: Completion) -> None:
        st = item.stage
        try:
            verdict = None
            if item.grade and c.finish_reason in ("stop", "length"):
                verdict = await self.grader.grade(item.request.meta["gold_answer"], c.text, c.finish_reason,
                                                  **self._grading)
            out = item.handler(item.request, c, verdict)
            if out is not None:
                await out
        except asyncio.CancelledError:
            raise
        except BaseException as e:  # a bug in a stage, or an error it raises on purpose: the run stops
            self._fatal = self._fatal or e
        finally:
            st.handling -= 1
            st.last_at = time.time()
            self._handlers.discard(asyncio.current_task())
            bar = self._bars.get(st.name)
            if bar is not None:
                bar.total = st.requests
                bar.update(1)
            self._wakeup()

    # -- status -----------------------------------------------------------------------------------
    def _update_status(self) -> None:
        upstream_done = True
        changed = False
        for name in self.order:
            st = self.stages[name]
            st.done = upstream_done and st.open == 0
            upstream_done = st.done
            if self._states.get(name) != st.state:
                self._states[name] = st.state
                changed = True
        now = time.monotonic()
        if self.on_status is not None and (changed or now - self._last_status >= self.status_every_s):
            self._last_status = now
            self.on_status()

    def work_remains(self) -> bool:
        """Whether requests are still to come: something queued, or a stage that is not done
        and may still send (its upstream is not done)."""
        if any(l.queued() for l in self._lanes):
            return True
        upstream_done = True
        for name in self.order:
            st = self.stages[name]
            if not upstream_done:
                return True
            upstream_done = st.open == 0 and upstream_done
        return False

    def _set_in_flight(self, lane: _Lane, n: int) -> None:
        self._record_occupancy(lane)
        lane.in_flight = n

    def _record_occupancy(self, lane: _Lane) -> None:
        now = time.monotonic()
        if lane.last_change is not None and self.work_remains():
            level = min(lane.in_flight, _HIST_CAP)
            if len(lane.hist) <= level:
                lane.hist.extend([0.0] * (level + 1 - len(lane.hist)))
            lane.hist[level] += now - lane.last_change
        lane.last_change = now

    def occupancy(self) -> dict[str, list[float]]:
        """Per engine, the wall seconds spent at each in-flight count (index = count) while
        requests were still to come (:meth:`work_remains`)."""
        return {lane.name: list(lane.hist) for lane in self._lanes}

    def status(self) -> dict[str, dict[str, Any]]:
        """Per stage: status and counts (``manifest.json``'s ``stages``)."""
        return {name: self.stages[name].as_dict() for name in self.order}

    @property
    def failed_requests(self) -> int:
        """Requests that failed in a way a rerun may change (aborts the backend made included):
        while any remains, the run is not complete."""
        return sum(st.failed + st.aborted for st in self.stages.values())
