"""Problem sources: load math problems from local files or ``datasets`` into :class:`Problem` records.

A source is read record by record. A bad record (broken JSON line, missing field, empty
answer, duplicate id, ...) becomes a :class:`Reject` and loading goes on; a bad *configuration*
(missing file, unknown adapter, unsupported file type) raises at once.

Supported inputs (exactly one of ``path`` / ``dataset``):

* ``path``: a local ``.jsonl`` file (JSON lines), a ``.json`` file (JSON lines, or one JSON array of
  objects) or a ``.parquet`` file (read with ``pyarrow.parquet``).
* ``dataset``: a directory written by ``datasets.Dataset.save_to_disk`` /
  ``DatasetDict.save_to_disk`` (read with ``datasets.load_from_disk``), or anything
  ``datasets.load_dataset(dataset, subset, split=split)`` accepts (a Hub name such as
  ``"openai/gsm8k"`` with subset ``"main"``, or a local folder of data files).

Adapters turn one record (a dict) into ``(problem, reference_solution, gold_answer)``:
``gsm8k``, ``math`` (MATH and MATH-500), ``olympiadbench`` and ``generic``; see :data:`ADAPTERS`.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from intgen.grading import extract_boxed

__all__ = ["Problem", "Reject", "RecordError", "SourceError", "ADAPTERS", "load_source"]


@dataclass(frozen=True)
class Problem:
    """One problem ready for the pipeline.

    Fields (all ``str``):
      problem_id: stable id from the source: the record's own id (``id`` field, MATH's
        ``unique_id`` such as ``test/algebra/1.json``, ``olympiadbench/{id}``), else
        ``{basename}#{n}`` with ``n`` the 1-based JSONL line or 1-based row/array position.
      source: where it came from, ``{adapter}:{file basename}`` (e.g. ``gsm8k:test.jsonl``) or
        ``{adapter}:hf:{dataset}`` (plus ``:{subset}`` when given and ``:{split}``).
      problem: the problem statement, unchanged.
      reference_solution: a worked solution (GSM8K: without ``<<...>>`` calculator notes and
        without the ``####`` line).
      gold_answer: the final answer, stripped.
    """

    problem_id: str
    source: str
    problem: str
    reference_solution: str
    gold_answer: str


@dataclass(frozen=True)
class Reject:
    """A record that could not be loaded.

    Fields:
      stage: always ``"load"`` for rejects made here.
      record_id: the problem id when known, else ``{basename}#{n}`` (1-based line/row).
      problem_id: the problem id the record would have had, or ``None`` when the record could not
        be parsed at all (bad UTF-8 / bad JSON / not an object).
      reason: short code: ``invalid_utf8``, ``malformed_json``, ``missing_column``, ``bad_type``,
        ``empty_problem``, ``missing_reference_solution``, ``missing_gold_answer``,
        ``duplicate_id``.
      detail: human message naming the record (file and line/row) and the field.
    """

    stage: str
    record_id: str
    problem_id: str | None
    reason: str
    detail: str


class SourceError(ValueError):
    """A source that cannot be read at all (a config error, not a record error): the run stops."""


class RecordError(ValueError):
    """Raised by an adapter for a bad record; ``reason`` is a :class:`Reject` reason code and the
    message names the field. :func:`load_source` turns it into a :class:`Reject`."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


# --------------------------------------------------------------------------- helpers


def _text(rec: dict, col: str, *, required: bool = True) -> str | None:
    """Field ``col`` of ``rec`` as text; ``None`` (missing/null) only when not ``required``."""
    if col not in rec:
        if required:
            raise RecordError("missing_column", f"column {col!r} is missing")
        return None
    value = rec[col]
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, float) and math.isfinite(value):
        return str(value)
    raise RecordError("bad_type", f"column {col!r} should be text, got {value!r}"[:200])


def _first_present(rec: dict, cols: tuple[str, ...]) -> str:
    """Name of the first of ``cols`` present in ``rec``; ``missing_column`` naming all otherwise."""
    for col in cols:
        if col in rec:
            return col
    raise RecordError("missing_column", "column " + " / ".join(repr(c) for c in cols) + " is missing")


# --------------------------------------------------------------------------- adapters
# Each adapter: (record, columns) -> (problem, reference_solution, gold_answer). ``columns`` maps the
# intgen fields problem / reference_solution / gold_answer / id to the record's column names; a value
# may be a tuple of fallbacks (first present wins). Emptiness checks are done by load_source.

_GSM8K_CALC = re.compile(r"<<.*?>>")
_THOUSANDS = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?")


def _gsm8k(rec: dict, cols: dict) -> tuple[str, str, str]:
    """GSM8K (Cobbe et al. 2021, github.com/openai/grade-school-math): ``question``; ``answer`` is
    the worked solution whose last line is ``#### <final answer>``. Gold = text after ``####``,
    stripped, thousands commas removed (``1,000`` -> ``1000``); reference = the lines before the
    ``####`` line with ``<<...>>`` calculator annotations removed. No ``####`` line ->
    ``missing_gold_answer``. Both reference and gold are read from the ``answer`` column unless
    ``columns`` names other columns."""
    problem = _text(rec, cols["problem"])
    ref_text = _text(rec, cols["reference_solution"])
    gold_text = _text(rec, cols["gold_answer"])

    def split(text: str) -> tuple[list[str], str] | None:
        lines = text.split("\n")
        for k in range(len(lines) - 1, -1, -1):
            if lines[k].lstrip().startswith("####"):
                return lines[:k], lines[k].lstrip()[4:].strip()
        return None

    gold_split = split(gold_text)
    if gold_split is None:
        raise RecordError("missing_gold_answer", f"column {cols['gold_answer']!r} has no '####' final-answer line")
    gold = gold_split[1]
    if _THOUSANDS.fullmatch(gold):
        gold = gold.replace(",", "")
    ref_split = split(ref_text)
    ref_lines = ref_split[0] if ref_split is not None else ref_text.split("\n")
    reference = _GSM8K_CALC.sub("", "\n".join(ref_lines)).strip()
    return problem, reference, gold


def _math(rec: dict, cols: dict) -> tuple[str, str, str]:
    r"""MATH (Hendrycks et al. 2021) and MATH-500 (PRM800K, Lightman et al. 2023): ``problem``,
    ``solution``; gold = the ``answer`` field when present and non-empty (MATH-500's curated
    answer), else the content of the last ``\boxed{...}``/``\fbox{...}`` of the solution
    (:func:`intgen.grading.extract_boxed`, the same rule the grader uses); neither -> ``missing_gold_answer``."""
    problem = _text(rec, cols["problem"])
    solution = _text(rec, cols["reference_solution"])
    gold = (_text(rec, cols["gold_answer"], required=False) or "").strip()
    if not gold:
        gold = (extract_boxed(solution) or "").strip()
        if not gold:
            raise RecordError(
                "missing_gold_answer",
                f"column {cols['gold_answer']!r} is absent or empty and {cols['reference_solution']!r} has no \\boxed{{...}}",
            )
    return problem, solution, gold


_DOLLAR_LIST = re.compile(r"\$[^$]*\$(?:\s*,\s*\$[^$]*\$)*")


def _olympiad_answer(answer: str) -> str:
    """``$x$`` -> ``x``; ``$a$,$b$`` (several answers packed in one string) -> ``a, b``; any
    other string (text around the math) is kept, only stripped."""
    answer = answer.strip()
    if _DOLLAR_LIST.fullmatch(answer):
        return ", ".join(part.strip() for part in re.findall(r"\$([^$]*)\$", answer))
    return answer


def _olympiadbench(rec: dict, cols: dict) -> tuple[str, str, str]:
    """OlympiadBench (He et al. 2024; the Qwen2.5-Math evaluation copy): ``question``;
    ``solution`` is a list of full solutions (the first is used); ``final_answer`` is a list of
    strings, each with ``$`` math delimiters stripped, joined with ``", "``. A string scalar is
    accepted in place of either list."""
    problem = _text(rec, cols["problem"])
    out = []
    for key in ("reference_solution", "gold_answer"):
        col = cols[key]
        if col not in rec:
            raise RecordError("missing_column", f"column {col!r} is missing")
        value = rec[col]
        if value is None:
            value = []
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise RecordError("bad_type", f"column {col!r} should be a list of strings, got {type(value).__name__}")
        items = [_text({col: x}, col) for x in value]
        out.append(items)
    solutions, answers = out
    reference = solutions[0] if solutions else ""
    gold = ", ".join(a for a in (_olympiad_answer(x) for x in answers) if a)
    return problem, reference, gold


def _generic(rec: dict, cols: dict) -> tuple[str, str, str]:
    """Any record with plain text columns, named by ``columns`` (defaults: ``problem``;
    ``reference_solution`` else ``solution``; ``answer`` else ``gold_answer``)."""
    vals = []
    for key in ("problem", "reference_solution", "gold_answer"):
        col = cols[key]
        col = _first_present(rec, col) if isinstance(col, tuple) else col
        vals.append(_text(rec, col))
    return vals[0], vals[1], vals[2]


_Adapter = Callable[[dict, dict], "tuple[str, str, str]"]

#: adapter name -> (function, default columns). ``columns=`` passed to load_source overrides these.
ADAPTERS: dict[str, tuple[_Adapter, dict[str, Any]]] = {
    "gsm8k": (_gsm8k, {"problem": "question", "reference_solution": "answer", "gold_answer": "answer", "id": "id"}),
    "math": (_math, {"problem": "problem", "reference_solution": "solution", "gold_answer": "answer", "id": "unique_id"}),
    "olympiadbench": (
        _olympiadbench,
        {"problem": "question", "reference_solution": "solution", "gold_answer": "final_answer", "id": "id"},
    ),
    "generic": (
        _generic,
        {
            "problem": "problem",
            "reference_solution": ("reference_solution", "solution"),
            "gold_answer": ("answer", "gold_answer"),
            "id": "id",
        },
    ),
}


# --------------------------------------------------------------------------- readers
# Each reader yields (n, record_or_None, reason, detail): n is the 1-based line/row number.

_Row = tuple[int, Any, str, str]


def _read_json_lines(path: str) -> Iterator[_Row]:
    with open(path, "rb") as f:
        for n, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield n, None, "invalid_utf8", f"line {n} is not valid UTF-8 ({e.reason} at byte {e.start})"
                continue
            if n == 1:
                line = line.lstrip("\ufeff")
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                yield n, None, "malformed_json", f"line {n} is not valid JSON ({e.msg} at column {e.colno})"
                continue
            yield n, rec, "", ""


def _read_json(path: str) -> Iterator[_Row]:
    with open(path, "rb") as f:
        head = f.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    if not head.startswith(b"["):
        yield from _read_json_lines(path)
        return
    try:
        with open(path, encoding="utf-8-sig") as f:
            records = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SourceError(f"{path}: not a valid JSON array ({e}); fix the file, or write it as JSON lines (.jsonl), "
                          "where a bad line is skipped and recorded") from None
    for n, rec in enumerate(records, start=1):
        yield n, rec, "", ""


def _read_parquet(path: str) -> Iterator[_Row]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow.ArrowInvalid and friends: not a readable Parquet file
        raise SourceError(f"{path}: not a readable Parquet file ({type(e).__name__}: {e})") from None
    for n, rec in enumerate(table.to_pylist(), start=1):
        yield n, rec, "", ""


def _read_dataset(dataset: str, subset: str | None, split: str) -> Iterator[_Row]:
    import datasets

    if os.path.isdir(dataset) and (
        os.path.exists(os.path.join(dataset, "state.json")) or os.path.exists(os.path.join(dataset, "dataset_dict.json"))
    ):
        ds = datasets.load_from_disk(dataset)
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise ValueError(f"{dataset}: no split {split!r}; it has {sorted(ds)}")
            ds = ds[split]
    else:
        try:
            ds = datasets.load_dataset(dataset, subset, split=split)
        except Exception as e:  # offline, unknown name, bad split: a config error that stops the run
            raise SourceError(f"source.dataset {dataset!r}: datasets.load_dataset failed ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''}). Without network access, point "
                              "source.path at a local .jsonl/.parquet copy, or save one with save_to_disk.") from None
    for n, rec in enumerate(ds, start=1):
        yield n, rec, "", ""


# --------------------------------------------------------------------------- load_source


def load_source(
    *,
    path: str | None = None,
    dataset: str | None = None,
    subset: str | None = None,
    split: str = "train",
    adapter: str = "generic",
    columns: dict[str, str] | None = None,
    limit: int | None = None,
) -> tuple[list[Problem], list[Reject]]:
    """Load problems from one source; return ``(problems, rejects)`` in source order.

    Args:
      path: local ``.jsonl`` / ``.json`` (JSON lines or a JSON array) / ``.parquet`` file.
      dataset: a ``save_to_disk`` directory or a ``datasets.load_dataset`` name/folder, read with
        ``subset`` (config name) and ``split`` (for ``save_to_disk`` output: the split of a
        ``DatasetDict``; ignored for a single ``Dataset``).
      adapter: one of :data:`ADAPTERS` (``gsm8k``, ``math``, ``olympiadbench``, ``generic``).
      columns: overrides of the adapter's column names, keyed by ``problem``,
        ``reference_solution``, ``gold_answer``, ``id``.
      limit: keep only the first ``limit`` good problems (reading stops there).

    Record errors never raise: an unreadable line (``invalid_utf8``, ``malformed_json``, also for
    a JSON value that is not an object), an adapter error (``missing_column``, ``bad_type``,
    ``missing_gold_answer``), an empty problem / reference solution / gold answer
    (``empty_problem``, ``missing_reference_solution``, ``missing_gold_answer``) and a repeated
    id (``duplicate_id``; the first record is kept) each become a :class:`Reject`.

    Raises:
      ValueError: not exactly one of ``path``/``dataset``; unknown adapter; unsupported file
        extension; negative ``limit``; a ``.json`` array that does not parse.
      FileNotFoundError: ``path`` does not exist.
      Errors of ``datasets`` (e.g. an unknown dataset name) propagate.
    """
    if (path is None) == (dataset is None):
        raise ValueError("give exactly one of path= (a local file) or dataset= (a datasets name or directory)")
    if adapter not in ADAPTERS:
        raise ValueError(f"unknown adapter {adapter!r}; known adapters: {', '.join(sorted(ADAPTERS))}")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    func, defaults = ADAPTERS[adapter]
    cols = {**defaults, **(columns or {})}

    if path is not None:
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"problem source file not found: {path!r} (cwd {os.getcwd()!r}); "
                "check the path in your config or pass an existing .jsonl/.json/.parquet file"
            )
        # {folder}/{file}: files of the same name in two folders (dA/test.jsonl, dB/test.jsonl) keep distinct ids
        label = f"{os.path.basename(os.path.dirname(os.path.abspath(path)))}/{os.path.basename(path)}"
        source = f"{adapter}:{label}"
        ext = os.path.splitext(path)[1].lower()
        readers = {".jsonl": _read_json_lines, ".json": _read_json, ".parquet": _read_parquet}
        if ext not in readers:
            raise SourceError(f"{path}: unsupported file type {ext!r}; use .jsonl, .json or .parquet")
        rows = readers[ext](path)
    else:
        label = os.path.basename(dataset.rstrip("/")) + (f":{subset}" if subset else "") + f":{split}"
        source = f"{adapter}:hf:{dataset}" + (f":{subset}" if subset else "") + f":{split}"
        rows = _read_dataset(dataset, subset, split)

    problems: list[Problem] = []
    rejects: list[Reject] = []
    seen: dict[str, int] = {}
    if limit == 0:
        return problems, rejects

    for n, rec, reason, detail in rows:
        where = f"{label}#{n}"
        if reason:  # the reader could not read this line
            rejects.append(Reject("load", where, None, reason, f"{where}: {detail}"))
            continue
        if not isinstance(rec, dict):
            rejects.append(
                Reject("load", where, None, "malformed_json", f"{where}: expected a JSON object, got {type(rec).__name__}")
            )
            continue

        own_id = rec.get(cols["id"])
        if own_id is None or own_id == "":
            pid = where
        else:
            pid = f"olympiadbench/{own_id}" if adapter == "olympiadbench" else str(own_id)

        def reject(code: str, msg: str) -> None:
            name = where if pid == where else f"{where} (id {pid!r})"
            rejects.append(Reject("load", pid, pid, code, f"{name}: {msg}"))

        try:
            problem, reference, gold = func(rec, cols)
        except RecordError as e:
            reject(e.reason, f"{e} [adapter {adapter}]")
            continue
        gold = gold.strip()
        try:
            for text in (problem, reference, gold):
                text.encode("utf-8")
        except UnicodeEncodeError as e:
            reject("invalid_utf8", f"a text field holds a character that is not valid UTF-8 ({e.reason})")
            continue
        if not problem.strip():
            reject("empty_problem", f"problem text (column {cols['problem']!r}) is empty")
        elif not reference.strip():
            reject("missing_reference_solution", f"reference solution (column {cols['reference_solution']!r}) is empty")
        elif not gold:
            reject("missing_gold_answer", f"gold answer (column {cols['gold_answer']!r}) is empty")
        elif pid in seen:
            reject("duplicate_id", f"id {pid!r} already used by record #{seen[pid]}; kept the first")
        else:
            seen[pid] = n
            problems.append(Problem(pid, source, problem, reference, gold))
            if limit is not None and len(problems) >= limit:
                break
    return problems, rejects
