"""The request-level sample store that makes runs resumable (docs/architecture.md, "Resume").

Every answered sample is written to ``RUN_DIR/samples.sqlite`` (SQLite in WAL mode) as it
arrives, keyed by what determines it: the model, the chat (messages and whether the last
one is continued), the sampling parameters and the seed. A rerun of the same job on the
same run directory takes every answered sample from the store and sends only the others,
and since seeds come from ids (docs/pipeline.md, "Ids and seeds"), its tables equal an uninterrupted run's
on a deterministic backend. The executor (:mod:`intgen.executor`) looks each request up
here before it goes to an engine, and puts each answer here as it arrives.

Failed and aborted requests are not stored: they are sent again on resume.

Durability, group commit: samples are committed in groups, at most ``group_size`` samples
(default 64) or ``group_ms`` milliseconds (default 500) after the first uncommitted one,
whichever comes first. A killed process loses at most that window of answers, which a
resume sends again; with WAL and ``synchronous=NORMAL`` a committed group survives a killed
process (SQLite docs, "Write-Ahead Logging"). One transaction per group instead of one per
sample keeps the store off the hot path at thousands of samples a second.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Iterable

from intgen.backends.base import Completion, Request

STORE_NAME = "samples.sqlite"
_KEEP = ("stop", "length")
DEFAULT_GROUP_SIZE = 64
DEFAULT_GROUP_MS = 500.0


def sample_key(model: str, request: Request) -> str:
    """The store key of one sample: sha256 of (model, messages, continue flag, sampling, seed)."""
    s = request.sampling
    sampling = {"temperature": s.temperature, "top_p": s.top_p, "top_k": s.top_k, "max_tokens": s.max_tokens}
    blob = json.dumps({"model": model, "messages": list(request.messages), "continue_final": request.continue_final,
                       "sampling": sampling, "seed": request.seed}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


class StoreError(RuntimeError):
    """A sample store that cannot be read; the message names the file."""


class SampleStore:
    """Answered samples of one run directory.

    Args:
        path: the SQLite file (created when missing).
        group_size: commit after this many uncommitted samples.
        group_ms: commit at most this many milliseconds after the first uncommitted sample
            (through the running event loop's timer; without a loop every put commits).

    Raises:
        StoreError: the file exists but is not a sample store (the message names it).
        sqlite3.Error: the file cannot be written (e.g. the disk is full); the run stops
            and can be resumed once the cause is fixed.
    """

    def __init__(self, path: str | Path, group_size: int = DEFAULT_GROUP_SIZE, group_ms: float = DEFAULT_GROUP_MS):
        self.path = Path(path)
        self.group_size = max(1, group_size)
        self.group_ms = group_ms
        self._lock = threading.RLock()
        self._pending: list[tuple] = []
        self._first_pending = 0.0
        self._timer: asyncio.TimerHandle | None = None
        try:
            self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS samples (key TEXT PRIMARY KEY, request_id TEXT NOT NULL, stage TEXT, "
                "text TEXT NOT NULL, finish_reason TEXT NOT NULL, prompt_tokens INTEGER, completion_tokens INTEGER, "
                "cached_tokens INTEGER)")
        except sqlite3.DatabaseError as e:
            if isinstance(e, sqlite3.OperationalError) and "disk" in str(e).lower():
                raise
            raise StoreError(f"{self.path} is not an intgen sample store ({e}); move it away to start the run "
                             "afresh (its samples cannot be read)") from e

    def get_many(self, keys: Iterable[str]) -> dict[str, Completion]:
        """Stored completions by key (``request_id`` is the id they were stored under),
        uncommitted ones included."""
        keys = list(keys)
        out: dict[str, Completion] = {}
        with self._lock:
            if self._pending:
                wanted = set(keys)
                for key, rid, _stage, text, finish, pt, ct, cached in self._pending:
                    if key in wanted:
                        out[key] = Completion(rid, text, finish, pt or 0, ct or 0, cached)
            for i in range(0, len(keys), 500):
                chunk = keys[i:i + 500]
                rows = self._db.execute(
                    "SELECT key, request_id, text, finish_reason, prompt_tokens, completion_tokens, cached_tokens "
                    f"FROM samples WHERE key IN ({','.join('?' * len(chunk))})", chunk).fetchall()
                for key, rid, text, finish, pt, ct, cached in rows:
                    out.setdefault(key, Completion(rid, text, finish, pt or 0, ct or 0, cached))
        return out

    def put(self, key: str, stage: str | None, completion: Completion) -> None:
        """Store one answered sample (committed with its group, module docstring). Failed or
        aborted ones are ignored."""
        if completion.finish_reason not in _KEEP:
            return
        with self._lock:
            if not self._pending:
                self._first_pending = time.monotonic()
            self._pending.append((key, completion.request_id, stage, completion.text, completion.finish_reason,
                                  completion.prompt_tokens, completion.completion_tokens, completion.cached_tokens))
            due = (len(self._pending) >= self.group_size
                   or (time.monotonic() - self._first_pending) * 1000 >= self.group_ms)
            if due:
                self.flush()
            elif self._timer is None:
                try:
                    loop = asyncio.get_running_loop()
                except RuntimeError:
                    self.flush()
                else:
                    self._timer = loop.call_later(self.group_ms / 1000, self.flush)

    def flush(self) -> None:
        """Commit every uncommitted sample now (one transaction)."""
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            if not self._pending:
                return
            rows, self._pending = self._pending, []
            try:
                self._db.execute("BEGIN")
                self._db.executemany("INSERT OR REPLACE INTO samples VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                self._pending = rows + self._pending
                raise

    def counts(self) -> dict[str, dict[str, int]]:
        """Per stage: samples answered and their prompt/completion tokens (committed ones)."""
        with self._lock:
            rows = self._db.execute("SELECT stage, COUNT(*), SUM(prompt_tokens), SUM(completion_tokens) "
                                    "FROM samples GROUP BY stage").fetchall()
        return {stage: {"samples": n, "prompt_tokens": p or 0, "completion_tokens": c or 0} for stage, n, p, c in rows}

    def close(self) -> None:
        """Commit what is pending and close the file."""
        with self._lock:
            try:
                self.flush()
            finally:
                self._db.close()
