"""Explicit Arrow schemas of the run directory's tables (DESIGN sections 2 and 4).

Every table is written with its schema, so a column that is None in its first rows
still has its real type, and files are written atomically (temporary file, fsync,
rename) so a crash never leaves a half-written table that reads as data.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.parquet as pq

S, I, F, B = pa.string(), pa.int64(), pa.float64(), pa.bool_()
MESSAGES = pa.list_(pa.struct([("role", S), ("content", S)]))

PROBLEMS = pa.schema([("problem_id", S), ("source", S), ("problem", S), ("reference_solution", S), ("gold_answer", S)])

ROLLOUTS = pa.schema([
    ("rollout_id", S), ("problem_id", S), ("rollout_index", I), ("seed", I), ("text", S),
    ("finish_reason", S), ("extracted_answer", S), ("verdict", S), ("verdict_reason", S), ("failed", B),
    ("num_steps", I), ("prompt_tokens", I), ("completion_tokens", I),
])

CANDIDATES = pa.schema([
    ("candidate_id", S), ("rollout_id", S), ("problem_id", S), ("rollout_index", I), ("candidate_index", I),
    ("seed", I), ("solve_output", S), ("raw_output", S), ("finish_reason", S), ("parse_status", S),
    ("parse_detail", S), ("location", I), ("intervention", S), ("attempt_shortened", B),
    ("prompt_tokens", I), ("completion_tokens", I),
])

CONTINUATIONS = pa.schema([
    ("continuation_id", S), ("kind", S), ("candidate_id", S), ("rollout_id", S), ("problem_id", S),
    ("location", I), ("sample_index", I), ("seed", I), ("text", S), ("finish_reason", S),
    ("extracted_answer", S), ("verdict", S), ("verdict_reason", S),
    ("prompt_tokens", I), ("completion_tokens", I), ("cached_tokens", I),
])

INTERVENTIONS = pa.schema([
    # decision
    ("candidate_id", S), ("accepted", B), ("reject_reason", S), ("selected", B),
    ("check_samples", I), ("check_correct", I), ("check_ungradable", I), ("check_rate", F),
    ("baseline_samples", I), ("baseline_correct", I), ("baseline_rate", F), ("lift", F),
    # problem
    ("problem_id", S), ("source", S), ("problem", S), ("reference_solution", S), ("gold_answer", S),
    # failed rollout
    ("rollout_id", S), ("rollout_index", I), ("rollout_seed", I), ("failed_trace", S), ("failed_answer", S),
    ("failed_verdict", S), ("steps", pa.list_(S)), ("num_steps", I),
    # candidate
    ("candidate_index", I), ("candidate_seed", I), ("location", I), ("original_step", S), ("intervention", S),
    ("target", S), ("solve_output", S), ("proposer_output", S),
    # provenance
    ("policy_model", S), ("proposer_model", S), ("system_prompt", S), ("sampling", S),
    ("prompt_name", S), ("prompt_sha256", S), ("run_seed", I), ("faithful", B), ("intgen_version", S),
    ("rollout_completion_tokens", I), ("proposer_prompt_tokens", I), ("proposer_completion_tokens", I),
    ("check_completion_tokens", I),
])

SFT = pa.schema([
    ("prompt", MESSAGES), ("completion", MESSAGES), ("problem_id", S), ("candidate_id", S),
    ("rollout_id", S), ("location", I), ("check_rate", F), ("lift", F),
])

REJECTS = pa.schema([
    ("stage", S), ("record_id", S), ("problem_id", S), ("reason", S), ("detail", S),
])


def table(rows: Iterable[dict[str, Any]], schema: pa.Schema) -> pa.Table:
    """Rows (dicts keyed by column) as a table of exactly ``schema``; missing keys are null.

    Raises:
        KeyError: a row carries a column the schema does not have (a bug, never data).
    """
    rows = list(rows)
    names = set(schema.names)
    for row in rows:
        extra = set(row) - names
        if extra:
            raise KeyError(f"columns {sorted(extra)} are not in the schema")
    return pa.Table.from_pylist(rows, schema=schema)


_UMASK = os.umask(0)
os.umask(_UMASK)


def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; run files are as readable as any other file
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_parquet(rows: Iterable[dict[str, Any]], schema: pa.Schema, path: Path) -> int:
    """Write rows as Parquet atomically; returns the row count."""
    t = table(rows, schema)
    _atomic_write(Path(path), lambda tmp: pq.write_table(t, tmp))
    return t.num_rows


def write_json(data: Any, path: Path) -> None:
    """Write JSON atomically (sorted keys, indented)."""
    def _write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, sort_keys=True, ensure_ascii=False)
            f.write("\n")
    _atomic_write(Path(path), _write)
