"""The request-level sample store that makes runs resumable (issue 6).

Every answered sample is written to ``RUN_DIR/samples.sqlite`` (SQLite in WAL mode) the
moment it arrives from the streaming backend, keyed by what determines it: the model,
the chat (messages and whether the last one is continued), the sampling parameters and
the seed. A rerun of the same job on the same run directory takes every answered
sample from the store and sends only the others, and since seeds come from ids
(DESIGN section 2), its tables equal an uninterrupted run's on a deterministic backend.

Failed and aborted requests are not stored: they are sent again on resume.
Durability: each sample is its own committed transaction; with WAL and
``synchronous=NORMAL`` a committed sample survives a killed process (SQLite docs,
"Write-Ahead Logging"); a power loss may lose the last few, which are then re-sent.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sqlite3
import threading
from pathlib import Path
from typing import Any, AsyncIterator, Iterable, Sequence

from intgen.backends.base import Backend, Completion, Request

STORE_NAME = "samples.sqlite"
_KEEP = ("stop", "length")


def sample_key(model: str, request: Request) -> str:
    """The store key of one sample: sha256 of (model, messages, continue flag, sampling, seed)."""
    blob = json.dumps({"model": model, "messages": list(request.messages), "continue_final": request.continue_final,
                       "sampling": dataclasses.asdict(request.sampling), "seed": request.seed},
                      sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


class SampleStore:
    """Answered samples of one run directory.

    Raises:
        sqlite3.Error: the file cannot be opened or written (e.g. the disk is full); the
            run stops and can be resumed once the cause is fixed.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS samples (key TEXT PRIMARY KEY, request_id TEXT NOT NULL, stage TEXT, "
            "text TEXT NOT NULL, finish_reason TEXT NOT NULL, prompt_tokens INTEGER, completion_tokens INTEGER, "
            "cached_tokens INTEGER)")

    def get_many(self, keys: Iterable[str]) -> dict[str, Completion]:
        """Stored completions by key (``request_id`` is the id they were stored under)."""
        keys = list(keys)
        out: dict[str, Completion] = {}
        with self._lock:
            for i in range(0, len(keys), 500):
                chunk = keys[i:i + 500]
                rows = self._db.execute(
                    "SELECT key, request_id, text, finish_reason, prompt_tokens, completion_tokens, cached_tokens "
                    f"FROM samples WHERE key IN ({','.join('?' * len(chunk))})", chunk).fetchall()
                for key, rid, text, finish, pt, ct, cached in rows:
                    out[key] = Completion(rid, text, finish, pt or 0, ct or 0, cached)
        return out

    def put(self, key: str, stage: str | None, completion: Completion) -> None:
        """Store one answered sample (committed before returning). Failed or aborted ones are ignored."""
        if completion.finish_reason not in _KEEP:
            return
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO samples VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (key, completion.request_id, stage, completion.text, completion.finish_reason,
                 completion.prompt_tokens, completion.completion_tokens, completion.cached_tokens))

    def counts(self) -> dict[str, dict[str, int]]:
        """Per stage: samples answered and their prompt/completion tokens."""
        with self._lock:
            rows = self._db.execute("SELECT stage, COUNT(*), SUM(prompt_tokens), SUM(completion_tokens) "
                                    "FROM samples GROUP BY stage").fetchall()
        return {stage: {"samples": n, "prompt_tokens": p or 0, "completion_tokens": c or 0} for stage, n, p, c in rows}

    def close(self) -> None:
        with self._lock:
            self._db.close()


class StoredBackend(Backend):
    """A backend that answers from the store what was answered before, and stores each new
    answer as it arrives. Everything else is the wrapped backend's.

    Args:
        inner: the real backend.
        store: the run's :class:`SampleStore`.
        model: the model name that keys its samples.

    Attributes:
        reused: samples answered from the store so far.
    """

    def __init__(self, inner: Backend, store: SampleStore, model: str):
        self.inner = inner
        self.store = store
        self.model = model
        self.reused = 0

    @property
    def can_continue(self) -> bool:  # type: ignore[override]
        return self.inner.can_continue

    @property
    def max_model_len(self) -> int | None:  # type: ignore[override]
        return self.inner.max_model_len

    async def start(self) -> None:
        await self.inner.start()

    async def close(self) -> None:
        await self.inner.close()

    def count_prompt_tokens(self, messages: Sequence[dict[str, str]], continue_final: bool = False) -> int:
        return self.inner.count_prompt_tokens(messages, continue_final)

    def describe(self) -> dict[str, Any]:
        return self.inner.describe()

    def abort(self, request_ids: Iterable[str]) -> None:
        self.inner.abort(request_ids)

    async def stream(self, requests: Sequence[Request]) -> AsyncIterator[Completion]:
        keys = {r.id: sample_key(self.model, r) for r in requests}
        found = self.store.get_many(keys.values())
        missing = []
        for r in requests:
            hit = found.get(keys[r.id])
            if hit is None:
                missing.append(r)
                continue
            self.reused += 1
            yield dataclasses.replace(hit, request_id=r.id)
        if missing:
            stage = {r.id: r.meta.get("stage") for r in missing}
            async for c in self.inner.stream(missing):
                self.store.put(keys[c.request_id], stage[c.request_id], c)
                yield c
