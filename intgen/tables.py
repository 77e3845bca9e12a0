"""The run directory's tables: typed records and their explicit Arrow schemas (docs/pipeline.md;
docs/architecture.md).

Each table's rows are one dataclass; its Arrow schema is derived from the dataclass's
annotations (:func:`schema_of`), so a record and its schema cannot drift apart, and a
column that is None in its first rows still has its real type. Files are written
atomically (temporary file, fsync, rename) so a crash never leaves a half-written table
that reads as data, and in a canonical row order (:func:`write_parquet`'s ``sort``), so a
table does not depend on the order in which a streaming run finished its requests.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import pyarrow as pa
import pyarrow.parquet as pq

S, I, F, B = pa.string(), pa.int64(), pa.float64(), pa.bool_()
MESSAGES = pa.list_(pa.struct([("role", S), ("content", S)]))

#: a chat: ``[{"role": ..., "content": ...}, ...]`` (Arrow: list of struct<role, content>)
Messages = list[dict[str, str]]
_ARROW = {str: S, int: I, float: F, bool: B}


def _arrow_type(hint: Any) -> pa.DataType:
    if hint is Messages or typing.get_origin(hint) is list and typing.get_args(hint) == (dict[str, str],):
        return MESSAGES
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(inner) == 1:
            return _arrow_type(inner[0])
    if origin is list:
        (item,) = typing.get_args(hint)
        return pa.list_(_arrow_type(item))
    if hint in _ARROW:
        return _ARROW[hint]
    raise TypeError(f"no Arrow type for the annotation {hint!r}")


def schema_of(record: type) -> pa.Schema:
    """The Arrow schema of a record dataclass: one column per field, in field order
    (``str`` string, ``int`` int64, ``float`` float64, ``bool`` bool, ``list[X]`` list,
    :data:`Messages` list of struct<role, content>; ``X | None`` is the same type, nullable).

    Raises:
        TypeError: a field has an annotation with no Arrow type.
    """
    hints = typing.get_type_hints(record)
    return pa.schema([(f.name, _arrow_type(hints[f.name])) for f in dataclasses.fields(record)])


_record = dataclass(slots=True)


@_record
class ProblemRow:
    """``problems.parquet``: one problem (:class:`intgen.sources.Problem`'s fields)."""

    problem_id: str
    source: str
    problem: str
    reference_solution: str
    gold_answer: str


@_record
class HardProblem:
    """``hard_pool.parquet``: a problem the policy never solved in ``samples_spent`` rollouts
    (pass@k = 0; docs/hard-pool.md). Loads as a later job's source with ``adapter: generic``
    and ``columns: {id: problem_id}``."""

    problem_id: str
    source: str
    problem: str
    reference_solution: str
    gold_answer: str
    samples_spent: int
    waves: int


@_record
class Rollout:
    """``rollouts.parquet``: one rollout, graded. *failed* = verdict ``wrong`` or ``no_answer``."""

    rollout_id: str
    problem_id: str
    rollout_index: int
    seed: int
    text: str
    finish_reason: str
    extracted_answer: Optional[str]
    verdict: str
    verdict_reason: Optional[str]
    failed: bool
    num_steps: int
    prompt_tokens: int
    completion_tokens: int


@_record
class Candidate:
    """``candidates.parquet``: one proposer sample with its parse status (``ok`` or why it
    is not usable) and what was parsed."""

    candidate_id: str
    rollout_id: str
    problem_id: str
    rollout_index: int
    candidate_index: int
    seed: int
    solve_output: Optional[str]
    raw_output: str
    finish_reason: str
    parse_status: str
    parse_detail: Optional[str]
    location: Optional[int]
    intervention: Optional[str]
    attempt_shortened: bool
    prompt_tokens: int
    completion_tokens: int
    #: the row of ``proposer_prompts.parquet`` holding the chat this sample answered (its rollout id)
    proposer_prompt_id: Optional[str] = None


@_record
class ProposerPromptRow:
    """``proposer_prompts.parquet``: the proposer chat of one failed rollout, exactly as its
    m samples were sent (after the prompt file was rendered, the attempt shortened or, in
    faithful mode, the chat cut), once per rollout; candidate rows point here by
    ``proposer_prompt_id`` (= ``rollout_id``)."""

    rollout_id: str
    problem_id: str
    rollout_index: int
    messages: Messages
    #: the last message is left open (the prompt's response_prefix, or a faithful cut)
    continue_final: bool
    #: sha256 of the canonical JSON of [messages, continue_final]
    sha256: str
    #: the substeps omitted from a shortened attempt (first, last), null when all are shown
    omitted_first: Optional[int]
    omitted_last: Optional[int]
    #: faithful mode: the token limit the rendered chat was cut at, null when it was not cut
    cut_at_tokens: Optional[int]
    prompt_name: str
    prompt_sha256: str


@_record
class Continuation:
    """``continuations.parquet``: one check (``kind="check"``) or baseline continuation, graded."""

    continuation_id: str
    kind: str
    candidate_id: Optional[str]
    rollout_id: str
    problem_id: str
    location: int
    sample_index: int
    seed: int
    text: str
    finish_reason: str
    extracted_answer: Optional[str]
    verdict: str
    verdict_reason: Optional[str]
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: Optional[int]


@_record
class Intervention:
    """``interventions.parquet``: one parsed candidate with its decision, rates, lift and full lineage."""

    # decision
    candidate_id: str
    accepted: bool
    reject_reason: Optional[str]
    selected: bool
    check_samples: int
    check_correct: int
    check_ungradable: int
    check_rate: Optional[float]
    baseline_samples: int
    baseline_correct: int
    baseline_rate: Optional[float]
    lift: Optional[float]
    # problem
    problem_id: str
    source: str
    problem: str
    reference_solution: str
    gold_answer: str
    # failed rollout
    rollout_id: str
    rollout_index: int
    rollout_seed: int
    failed_trace: str
    failed_answer: Optional[str]
    failed_verdict: str
    steps: list[str]
    num_steps: int
    # candidate
    candidate_index: int
    candidate_seed: int
    location: int
    #: null when the location names no step (faithful mode keeps out-of-range locations)
    original_step: Optional[str]
    intervention: str
    target: str
    solve_output: Optional[str]
    proposer_output: str
    # provenance
    policy_model: str
    proposer_model: str
    system_prompt: Optional[str]
    sampling: str
    prompt_name: str
    prompt_sha256: str
    run_seed: int
    faithful: bool
    intgen_version: str
    rollout_completion_tokens: int
    proposer_prompt_tokens: int
    proposer_completion_tokens: int
    check_completion_tokens: int
    # how the check stage stopped drawing continuations: null (all r drawn), "early_stop"
    # (check.early_stop: enough successes) or "gave_up" (check.give_up_after failures in a row)
    check_stopped: Optional[str] = None
    #: the row of ``proposer_prompts.parquet`` with the proposer chat (the rollout id)
    proposer_prompt_id: Optional[str] = None
    # hint conditions (spec ``conditions``, docs/hints.md): null unless the run measured them.
    # A hint is the first hint_steps of the reference solution's steps (hint_fraction of them)
    hint_fraction: Optional[float] = None
    hint_steps: Optional[int] = None
    #: the problem + hint alone (once per problem, joined onto every candidate of it)
    hint_samples: Optional[int] = None
    hint_rate: Optional[float] = None
    #: the problem + hint, continued from the prefix + intervention (this candidate's own samples)
    hint_intervention_samples: Optional[int] = None
    hint_intervention_rate: Optional[float] = None
    #: each condition's rate minus the original step's (baseline_rate); ``lift`` is the intervention's
    hint_lift: Optional[float] = None
    hint_intervention_lift: Optional[float] = None


@_record
class ConditionSample:
    """``conditions.parquet``: one sample of a hint condition (docs/hints.md), graded.
    ``condition`` is ``hint`` (problem + hint, a fresh answer; no candidate) or
    ``hint+intervention`` (problem + hint, continuing the candidate's prefix + intervention)."""

    sample_id: str
    condition: str
    problem_id: str
    candidate_id: Optional[str]
    rollout_id: Optional[str]
    location: Optional[int]
    hint_fraction: float
    hint_steps: int
    sample_index: int
    seed: int
    text: str
    finish_reason: str
    extracted_answer: Optional[str]
    verdict: str
    verdict_reason: Optional[str]
    prompt_tokens: int
    completion_tokens: int


@_record
class SFTRow:
    """``sft.parquet``: a selected accepted candidate as TRL prompt/completion messages."""

    prompt: Messages
    completion: Messages
    problem_id: str
    candidate_id: str
    rollout_id: str
    location: int
    check_rate: Optional[float]
    lift: Optional[float]


@_record
class Reject:
    """``rejects.parquet``: something dropped before it became a candidate, with its stage and reason."""

    stage: str
    record_id: str
    problem_id: Optional[str]
    reason: str
    detail: Optional[str]


PROBLEMS = schema_of(ProblemRow)
HARD_POOL = schema_of(HardProblem)
ROLLOUTS = schema_of(Rollout)
CANDIDATES = schema_of(Candidate)
PROPOSER_PROMPTS = schema_of(ProposerPromptRow)
CONTINUATIONS = schema_of(Continuation)
INTERVENTIONS = schema_of(Intervention)
SFT = schema_of(SFTRow)
REJECTS = schema_of(Reject)
CONDITIONS = schema_of(ConditionSample)


def table(rows: Iterable[Any], schema: pa.Schema) -> pa.Table:
    """Rows (record dataclasses, or dicts keyed by column) as a table of exactly ``schema``;
    a dict's missing keys are null.

    Raises:
        KeyError: a dict row carries a column the schema does not have (a bug, never data).
    """
    rows = list(rows)
    names = schema.names
    if rows and dataclasses.is_dataclass(rows[0]):
        columns = {n: [getattr(r, n) for r in rows] for n in names}
        return pa.table(columns, schema=schema)
    known = set(names)
    for row in rows:
        extra = set(row) - known
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


def write_parquet(rows: Iterable[Any], schema: pa.Schema, path: Path,
                  sort: Callable[[Any], Any] | None = None) -> int:
    """Write rows (records or dicts) as Parquet atomically, sorted by ``sort`` when given
    (the table's canonical order); returns the row count."""
    rows = list(rows)
    if sort is not None:
        rows.sort(key=sort)
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
