"""Grading at scale: :func:`intgen.grading.grade_answer` in a persistent process pool.

DESIGN section 6: math-verify's timeouts use ``signal.alarm``, which fails off the main
thread, and a pathological expression (``9^{9^{9^{9}}}``) can hold the GIL. So grading
runs in a pool of worker processes (``pebble.ProcessPool``) with a hard per-item time
limit: a worker that overruns it is killed and replaced, and that item is
``ungradable``. Never one process per item (the paper's code; 83-125 ms a verdict
here, benchmarks/grading.py), never a thread pool. The pool is usable from any thread and from the process
that hosts vLLM (workers are started with ``spawn``, never forked from a threaded
engine process).

Only the extracted box content crosses to the workers (outputs can be tens of KB), and
verdicts are cached by (gold, extracted answer, cut off or not).
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

from intgen.grading import _BOX_CMD, Verdict, extract_boxed, grade_answer

DEFAULT_TIMEOUT_S = 10.0  # the paper's grader: 10 s, then SIGKILL (digest 5.4)


def _worker_grade(gold: str, output: str, finish_reason: str | None) -> Verdict:
    return grade_answer(gold, output, finish_reason)


def _compact(output: str) -> str:
    """The smallest output with the same verdict: the last box alone, or the marker of an
    unbalanced box, or nothing (grade_answer's reasons stay the same)."""
    content = extract_boxed(output)
    if content is not None:
        return "\\boxed{" + content + "}"
    return "\\boxed{" if _BOX_CMD.search(output) else ""


class GradingPool:
    """A persistent pool of grading processes with a hard per-item limit and a verdict cache.

    Args:
        workers: worker processes (default: half the cores, at least 1).
        timeout_s: seconds one verdict may take; past it the worker is killed and
            replaced and the verdict is ``ungradable`` ("grader timed out").
        cache_size: verdicts kept, keyed by (gold, extracted answer, cut off).

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

    def submit(self, gold: str, output: str, finish_reason: str | None = None) -> concurrent.futures.Future:
        """Grade in the pool; returns a future whose result is a :class:`Verdict` (never an exception)."""
        compact = _compact(output)
        key = (gold, compact, finish_reason == "length")
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
        job = self._get_pool().schedule(_worker_grade, args=(gold, compact, finish_reason), timeout=self.timeout_s)

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
            result.set_result(verdict)

        job.add_done_callback(done)
        return result

    async def grade(self, gold: str, output: str, finish_reason: str | None = None) -> Verdict:
        """:meth:`submit` for asyncio code: the event loop is never blocked by grading."""
        return await asyncio.wrap_future(self.submit(gold, output, finish_reason))

    def grade_many(self, triples: Sequence[tuple[str, str, str | None]]) -> list[Verdict]:
        """Grade ``(gold, output, finish_reason)`` triples in parallel; verdicts in input order."""
        futures = [self.submit(g, o, f) for g, o, f in triples]
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
