"""Grading at scale: :func:`intgen.grading.grade_answer` in a persistent process pool.

docs/grading.md: math-verify's timeouts use ``signal.alarm``, which fails off the main
thread, and a pathological expression (``9^{9^{9^{9}}}``) can hold the GIL. So grading
runs in a pool of worker processes (``pebble.ProcessPool``) with a hard per-item time
limit: a worker that overruns it is killed and replaced, and that item is
``ungradable``. Never one process per item (the paper's code; 83-125 ms a verdict
here, benchmarks/grading.py), never a thread pool. The pool is usable from any thread and from the process
that hosts vLLM (workers are started with ``spawn``, never forked from a threaded
engine process).

Only the boxes cross to the workers (outputs can be tens of KB): every complete box,
since for a gold that is a set or a tuple the grader combines them (override 15 of
:mod:`intgen.grading`), or the last box alone in faithful mode. Verdicts are cached by
(gold, those boxes, cut off or not, faithful or not).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import multiprocessing
import os
import threading
from collections import OrderedDict
from typing import Sequence

import pebble

from intgen.grading import REASON_FAITHFUL_ZERO, Verdict, _scan_boxes, extract_boxed, grade_answer

DEFAULT_TIMEOUT_S = 10.0  # the paper's grader: 10 s, then SIGKILL (docs/paper.md)


def _worker_grade(gold: str, output: str, finish_reason: str | None, faithful: bool = False) -> Verdict:
    return grade_answer(gold, output, finish_reason, faithful=faithful)


def _compact(output: str, faithful: bool = False) -> str:
    """The smallest output with the same verdict as ``output`` for every gold answer.

    Every complete top-level box, each re-wrapped (:func:`_rewrap`), in order (the
    grader combines them for a gold that is a set or a tuple, override 15); in faithful
    mode the last box alone (never combined); the marker ``\\boxed{`` of an unbalanced
    last box; or nothing when there is no box. Re-wrapping keeps each content as it was
    (a braced content is brace-balanced, so it is read back whole; see :func:`_rewrap`
    for the one exception). ``grade_answer``'s
    verdicts and reasons on the compact output equal those on ``output``.
    """
    boxes, cut = _scan_boxes(output)
    if cut:
        return "\\boxed{"
    if faithful:
        boxes = boxes[-1:]
    return "".join(_rewrap(content) for content in boxes)


def _rewrap(content: str) -> str:
    """A box that reads back as ``content``: ``\\boxed{content}``, or, for the content of
    a box written ``\\boxed X`` that ends in an odd number of backslashes (``\\boxed \\}``
    holds ``\\``; braced, its last backslash would escape the closing brace), the same
    form ``\\boxed X`` followed by a space."""
    trailing = len(content) - len(content.rstrip("\\"))
    if trailing % 2:
        return "\\boxed " + content + " "
    return "\\boxed{" + content + "}"


class GradingPool:
    """A persistent pool of grading processes with a hard per-item limit and a verdict cache.

    Args:
        workers: worker processes (default: half the cores, at least 1).
        timeout_s: seconds one verdict may take; past it the worker is killed and
            replaced and the verdict is ``ungradable`` ("grader timed out").
        cache_size: verdicts kept, keyed by (gold, compacted boxes, cut off, faithful).

    Verdicts equal :func:`intgen.grading.grade_answer`'s for the same inputs, except for
    items that overrun ``timeout_s``. Thread-safe. Use as a context manager, or call
    :meth:`close`.
    """

    def __init__(self, workers: int | None = None, timeout_s: float = DEFAULT_TIMEOUT_S, cache_size: int = 65536):
        self.workers = workers or max(1, (os.cpu_count() or 2) // 2)
        self.timeout_s = timeout_s
        self.cache_size = cache_size
        self._cache: OrderedDict[tuple, Verdict] = OrderedDict()
        self._lock = threading.Lock()
        self._pool: pebble.ProcessPool | None = None
        self.hits = 0
        self.misses = 0

    def _get_pool(self) -> pebble.ProcessPool:
        with self._lock:
            if self._pool is None:
                self._pool = pebble.ProcessPool(max_workers=self.workers,
                                                context=multiprocessing.get_context("spawn"))
            return self._pool

    def submit(
        self, gold: str, output: str, finish_reason: str | None = None, *, faithful: bool = False
    ) -> concurrent.futures.Future:
        """Grade in the pool; returns a future whose result is a :class:`Verdict` (never an
        exception). ``faithful`` as in :func:`intgen.grading.grade_answer`; in faithful mode
        an item past ``timeout_s`` or a worker that failed is ``wrong`` (the paper's grader
        scored a timeout 0), otherwise ``ungradable``."""
        compact = _compact(output, faithful)
        key = (gold, compact, finish_reason == "length", faithful)
        result: concurrent.futures.Future = concurrent.futures.Future()
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
                self.hits += 1
        if cached is not None:
            result.set_result(cached)
            return result
        self.misses += 1
        job = self._get_pool().schedule(
            _worker_grade, args=(gold, compact, finish_reason, faithful), timeout=self.timeout_s
        )

        def done(f: concurrent.futures.Future) -> None:
            extracted = extract_boxed(compact)
            try:
                verdict = f.result()
            except concurrent.futures.TimeoutError:
                verdict = Verdict("ungradable", f"grader timed out after {self.timeout_s:g} s", extracted)
            except Exception as e:  # a worker that died (pebble.ProcessExpired) or raised
                verdict = Verdict("ungradable", f"grader failed: {type(e).__name__}: {e}"[:200], extracted)
            else:
                with self._lock:
                    self._cache[key] = verdict
                    if len(self._cache) > self.cache_size:
                        self._cache.popitem(last=False)
            if faithful and verdict.status == "ungradable":
                verdict = Verdict("wrong", f"{verdict.reason}; {REASON_FAITHFUL_ZERO}", verdict.extracted)
            result.set_result(verdict)

        job.add_done_callback(done)
        return result

    async def grade(
        self, gold: str, output: str, finish_reason: str | None = None, *, faithful: bool = False
    ) -> Verdict:
        """:meth:`submit` for asyncio code: the event loop is never blocked by grading."""
        return await asyncio.wrap_future(self.submit(gold, output, finish_reason, faithful=faithful))

    def grade_many(
        self, triples: Sequence[tuple[str, str, str | None]], *, faithful: bool = False
    ) -> list[Verdict]:
        """Grade ``(gold, output, finish_reason)`` triples in parallel; verdicts in input order."""
        futures = [self.submit(g, o, f, faithful=faithful) for g, o, f in triples]
        return [f.result() for f in futures]

    def close(self) -> None:
        """Stop the workers (pending items are cancelled)."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.stop()
            pool.join()

    def __enter__(self) -> "GradingPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
