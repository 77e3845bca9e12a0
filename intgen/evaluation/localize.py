"""``intgen eval localize``: run intgen's own proposer prompt on solutions with human
first-error labels and score where it puts the first error (issue 9).

Input rows (``.jsonl``, ``.json`` lines or array, ``.parquet``), one format per row:

- **ProcessBench** (``problem``, ``steps``, ``label``; docs/paper.md): ``label`` is the 0-based
  index of the first wrong step, -1 when every step is right. The subset is the row's
  ``subset``, else its ``id`` without the trailing ``-N``.
- **PRM800K stepwise** (``instruction``, ``responses``, ``next_response``, ``rating``;
  shared ``prm800k/`` data README): a row rated -1 is an example whose steps are
  ``responses + [next_response]`` and whose label is ``len(responses)`` (the accepted steps
  before it are rated 0 or 1, so the rated step is the first error). Other rows are skipped.
  Subset ``prm800k``; id ``prm800k-{row_index}``.

The given ``steps`` are numbered as they are (``**Substep i:**``, i from 1), never
re-split on ``\\n\\n``. The proposer's 1-based ``location`` maps to ``label = location - 1``;
an empty intervention ("no critical error") maps to -1; an output that does not parse
(or a location outside the steps) is a parse failure, no prediction.

The proposer prompt wants a reference solution and the gold answer. A row whose problem
text (whitespace-normalised) is found in one of the spec's ``reference`` sources gets
them and ``propose.prompt``; any other row gets ``propose.prompt_noref``. Every answered
sample is kept in ``OUT/samples.sqlite``, so an interrupted evaluation resumes.
"""

from __future__ import annotations

import json
import os
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import jinja2
import pyarrow as pa
import yaml

from intgen import interventions, tables
from intgen.backends import Backend, Completion, Request, Sampling, make_backend, sample_seed
from intgen.config import SourceSpec, SpecError, resolve_path
from intgen.evaluation import metrics as M
from intgen.evaluation.spec import LocalizeSpec
from intgen.prompts import ProposerPrompt, load_prompt
from intgen.sources import Problem, load_source
from intgen.stages import propose as propose_stage
from intgen.executor import Executor
from intgen.store import STORE_NAME, SampleStore

S, I, F, B = pa.string(), pa.int64(), pa.float64(), pa.bool_()

#: ``predictions.parquet``: one row per proposer sample
PREDICTIONS = pa.schema([
    ("example_id", S), ("subset", S), ("origin", S), ("sample_index", I), ("seed", I),
    ("problem", S), ("steps", pa.list_(S)), ("num_steps", I), ("label", I),
    ("generator", S), ("final_answer_correct", B),
    ("reference_id", S), ("reference_source", S), ("prompt_name", S), ("prompt_sha256", S),
    ("solve_output", S), ("raw_output", S), ("finish_reason", S), ("attempt_shortened", B),
    ("parse_status", S), ("parse_detail", S), ("location", I), ("intervention", S), ("leaks_answer", B),
    ("status", S), ("prediction", I), ("hit", B), ("distance", I),
    ("prompt_tokens", I), ("completion_tokens", I),
])

#: ``rows.parquet``: one row per example, with the majority prediction and the baselines
ROWS = pa.schema([
    ("example_id", S), ("subset", S), ("origin", S), ("num_steps", I), ("label", I),
    ("reference_id", S), ("prompt_name", S), ("samples", I), ("majority", I), ("majority_status", S),
    ("always_minus_one", I), ("always_last", I),
])


class DataError(ValueError):
    """An input file that cannot be evaluated (missing, unreadable, or no usable rows)."""


@dataclass(frozen=True)
class Example:
    """One labelled solution."""

    example_id: str
    subset: str
    problem: str
    steps: tuple[str, ...]
    label: int
    origin: str  # "processbench" or "prm800k"
    generator: str | None = None
    final_answer_correct: bool | None = None


def _records(path: Path) -> Iterable[tuple[int, Any]]:
    ext = path.suffix.lower()
    if ext == ".parquet":
        import pyarrow.parquet as pq

        yield from enumerate(pq.read_table(path).to_pylist(), start=1)
        return
    if ext not in (".jsonl", ".json"):
        raise DataError(f"{path}: unsupported file type {ext!r}; use .jsonl, .json or .parquet")
    text = path.read_text(encoding="utf-8-sig")
    if text.lstrip().startswith("["):  # ProcessBench's own files are JSON arrays
        try:
            yield from enumerate(json.loads(text), start=1)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: not a valid JSON array ({e})") from None
        return
    for n, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                yield n, json.loads(line)
            except json.JSONDecodeError:
                yield n, None


def _subset_of(rec: dict, default: str) -> str:
    if isinstance(rec.get("subset"), str) and rec["subset"]:
        return rec["subset"]
    rid = str(rec.get("id") or "")
    head, sep, tail = rid.rpartition("-")
    return head if sep and tail.isdigit() and head else default


def load_examples(path: str | Path) -> tuple[list[Example], dict[str, int]]:
    """Read labelled rows (module docstring); returns (examples, skipped counts by reason).

    Reasons: ``not_json``, ``unknown_format``, ``bad_record`` (wrong types, a label outside
    -1..len(steps)-1), ``not_first_error`` (a PRM800K row not rated -1), ``duplicate_id``.

    Raises:
        DataError: the file is missing or of an unsupported type, or has no usable row.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"--data {path}: no such file")
    out: list[Example] = []
    skipped: Counter = Counter()
    seen: set[str] = set()
    for n, rec in _records(path):
        if not isinstance(rec, dict):
            skipped["not_json"] += 1
            continue
        if "steps" in rec and "label" in rec and "problem" in rec:
            steps, label, problem = rec["steps"], rec["label"], rec["problem"]
            if (not isinstance(problem, str) or not isinstance(steps, list) or not steps
                    or not all(isinstance(s, str) for s in steps) or isinstance(label, bool)
                    or not isinstance(label, int) or not -1 <= label < len(steps)):
                skipped["bad_record"] += 1
                continue
            ex = Example(str(rec.get("id") or f"{path.name}#{n}"), _subset_of(rec, path.stem), problem, tuple(steps),
                         label, "processbench", rec.get("generator"), rec.get("final_answer_correct"))
        elif "instruction" in rec and "responses" in rec and "next_response" in rec and "rating" in rec:
            if rec["rating"] != -1:
                skipped["not_first_error"] += 1
                continue
            responses, nxt = rec["responses"], rec["next_response"]
            if (not isinstance(rec["instruction"], str) or not isinstance(responses, list) or not isinstance(nxt, str)
                    or not all(isinstance(s, str) for s in responses)):
                skipped["bad_record"] += 1
                continue
            rid = f"prm800k-{rec['row_index']}" if rec.get("row_index") is not None else f"{path.name}#{n}"
            ex = Example(rid, "prm800k", rec["instruction"], tuple(responses) + (nxt,), len(responses), "prm800k")
        else:
            skipped["unknown_format"] += 1
            continue
        if ex.example_id in seen:
            skipped["duplicate_id"] += 1
            continue
        seen.add(ex.example_id)
        out.append(ex)
    if not out:
        raise DataError(f"--data {path}: no usable row (skipped: {dict(skipped) or 'none'}); expected ProcessBench "
                        "rows (problem, steps, label) or PRM800K stepwise rows (instruction, responses, "
                        "next_response, rating)")
    return out, dict(skipped)


def select_examples(examples: list[Example], spec: LocalizeSpec) -> list[Example]:
    """Apply ``subsets``, then ``per_subset`` (the first N rows of each subset), then ``limit``."""
    out = [e for e in examples if spec.subsets is None or e.subset in spec.subsets]
    if spec.per_subset is not None:
        taken: Counter = Counter()
        kept = []
        for e in out:
            if taken[e.subset] < spec.per_subset:
                taken[e.subset] += 1
                kept.append(e)
        out = kept
    return out[: spec.limit] if spec.limit is not None else out


def normalize_problem(text: str) -> str:
    """Whitespace-normalised problem text: the join key (as the shared reference links use)."""
    return " ".join(text.split())


@dataclass
class ReferenceIndex:
    """Problems of the reference sources by normalised text; the first source wins."""

    by_text: dict[str, Problem] = field(default_factory=dict)
    sources: list[str] = field(default_factory=list)
    conflicts: int = 0  # texts found again with another gold answer (the first is kept)

    def lookup(self, problem: str) -> Problem | None:
        return self.by_text.get(normalize_problem(problem))


def build_reference_index(sources: Sequence[SourceSpec], spec_dir: Path | None = None) -> ReferenceIndex:
    """Load the reference sources with :func:`intgen.sources.load_source`.

    Raises:
        FileNotFoundError: a source file is missing.
    """
    index = ReferenceIndex()
    for src in sources:
        path = str(resolve_path(src.path, spec_dir, "reference.path")) if src.path else None
        problems, _ = load_source(path=path, dataset=src.dataset, subset=src.subset, split=src.split,
                                  adapter=src.adapter, columns=src.columns, limit=src.limit)
        index.sources.append(path or str(src.dataset))
        for p in problems:
            key = normalize_problem(p.problem)
            first = index.by_text.setdefault(key, p)
            if first is not p and first.gold_answer != p.gold_answer:
                index.conflicts += 1
    return index


def _values(example: Example, reference: Problem | None) -> dict[str, Any]:
    values: dict[str, Any] = {"problem": example.problem, "num_steps": len(example.steps)}
    if reference is not None:
        values.update(reference_solution=reference.reference_solution, gold_answer=reference.gold_answer)
    return values


def solve_message(example: Example, prompt: ProposerPrompt, reference: Problem | None) -> dict[str, str]:
    """Message (1) of the proposer chat (the solve turn)."""
    return {"role": "user", "content": prompt.render_solve(**_values(example, reference))}


def proposer_chat(example: Example, prompt: ProposerPrompt, reference: Problem | None, solve_output: str | None,
                  fits: Callable[[tuple[dict, ...]], bool] | None) -> tuple[tuple[dict, ...], range | None] | None:
    """The propose stage's chat (:func:`intgen.stages.propose.proposer_chat`) on the row's own
    ``steps`` (numbered as given, not re-split). Returns (messages, the step numbers omitted
    from a shortened attempt or None), or None when even the shortest attempt does not fit."""
    solve_turn = None
    if prompt.solve is not None:
        solve_turn = (solve_message(example, prompt, reference)["content"], solve_output or "")
    return propose_stage.proposer_chat(prompt, _values(example, reference), list(example.steps), solve_turn, fits)


def to_prediction(raw: str, num_steps: int, omitted: range | None = None, echoed: tuple[str, ...] = ()
                  ) -> tuple[interventions.ParsedIntervention, str, int | None]:
    """Parse one proposer output: (parsed, status, predicted label). ``ok`` -> location - 1;
    an empty intervention -> -1 (no critical error); anything else -> a parse failure,
    including a location among the steps omitted from a shortened attempt
    (``location_not_shown``, as the propose stage rejects it)."""
    parsed = propose_stage.shown_location(interventions.parse_intervention(raw, num_steps, echoed), omitted)
    if parsed.status == "location_not_shown":
        return parsed, M.PARSE_FAILED, None
    if parsed.status == interventions.OK:
        return parsed, "ok", parsed.location - 1
    if parsed.status == interventions.EMPTY:
        return parsed, "ok", -1
    return parsed, M.PARSE_FAILED, None


def _check_prompt(prompt: ProposerPrompt, with_reference: bool, key: str) -> None:
    values: dict[str, Any] = {"problem": "p", "num_steps": 1, "attempt": "**Substep 1:** a"}
    if with_reference:
        values.update(reference_solution="r", gold_answer="1")
    try:
        prompt.render_critique(**values)
        if prompt.solve is not None:
            prompt.render_solve(**values)
    except jinja2.UndefinedError as e:
        what = "problem, attempt, num_steps" + (", reference_solution, gold_answer" if with_reference else "")
        raise SpecError(f"propose.{key} ({prompt.path}): {e.message}; its templates may use only {what}") from None


@dataclass
class LocalizeResult:
    """What ``eval localize`` wrote and its report (the content of ``report.json``)."""

    out_dir: Path
    report: dict[str, Any]


async def localize_async(spec: LocalizeSpec, data: str | Path, out_dir: str | Path, spec_dir: Path | None = None,
                         backend: Backend | None = None, progress: bool = True, close: bool = True) -> LocalizeResult:
    """Evaluate the proposer on labelled rows and write ``out_dir`` (README, "Evaluation").

    Raises:
        DataError: the data file has no usable row.
        FileNotFoundError: a prompt or reference file is missing.
        SpecError: a prompt uses a variable it cannot have.
        BackendError: the backend cannot be built or started.
    """
    data = Path(data)
    examples, skipped = load_examples(data)
    examples = select_examples(examples, spec)
    if not examples:
        raise DataError(f"--data {data}: no row left after subsets/per_subset/limit")
    prompt_ref = load_prompt(resolve_path(spec.propose.prompt, spec_dir, "propose.prompt"))
    prompt_noref = load_prompt(resolve_path(spec.propose.prompt_noref, spec_dir, "propose.prompt_noref"))
    _check_prompt(prompt_ref, True, "prompt")
    _check_prompt(prompt_noref, False, "prompt_noref")
    index = build_reference_index(spec.reference, spec_dir)
    refs = {e.example_id: index.lookup(e.problem) for e in examples}
    prompts = {e.example_id: prompt_ref if refs[e.example_id] is not None else prompt_noref for e in examples}

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} is a file, not a folder")
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "eval.yaml", "w", encoding="utf-8") as f:
        yaml.safe_dump({"data": str(data.resolve()), **spec.resolved()}, f, sort_keys=False, allow_unicode=True)
    s = spec.sampling
    sampling = Sampling(s.temperature, s.top_p, s.top_k, s.max_tokens)
    store = SampleStore(out / STORE_NAME)
    proposer = backend or make_backend(spec.backend, spec.model)
    ex = Executor(("solve", "propose"), store, progress=progress)
    ex.add_engine("proposer", proposer, spec.model)
    unanswered: dict[str, str] = {}  # request id or example id -> why
    solve_out: dict[str, str] = {}
    omitted: dict[str, range | None] = {}
    answers: dict[str, Completion] = {}

    def propose(e: Example) -> None:
        """The m proposer samples of one row, sent as soon as its solve turn is answered."""
        prompt = prompts[e.example_id]
        shaped = proposer_chat(e, prompt, refs[e.example_id], solve_out.get(e.example_id), fits)
        if shaped is None:
            unanswered[e.example_id] = "prompt_too_long"
            return
        messages, omitted[e.example_id] = shaped
        reqs = [Request(f"{e.example_id}/candidate-{i}", messages, sampling,
                        sample_seed(spec.seed, f"{e.example_id}/candidate-{i}"),
                        continue_final=prompt.response_prefix is not None,
                        meta={"stage": "propose", "problem_id": e.example_id, "candidate_index": i,
                              "gold_answer": refs[e.example_id].gold_answer if refs[e.example_id] else ""})
                for i in range(spec.propose.m)]
        sent = {r.id for r in ex.send(reqs, lambda r, c, v: answers.__setitem__(r.id, c), stage="propose",
                                      role="proposer", route=e.example_id)}
        for r in reqs:
            if r.id not in sent:
                unanswered[r.id] = "prompt_too_long"

    def solved(e: Example, c: Completion) -> None:
        if c.finish_reason in ("error", "abort"):
            unanswered.setdefault(e.example_id, "solve_failed")
            return
        solve_out[e.example_id] = c.text
        propose(e)

    try:
        await ex.prepare()
        ctx = proposer.max_model_len
        reserve = min(sampling.max_tokens, ctx // 4) if ctx else 0
        fits = (lambda msgs: proposer.count_prompt_tokens(msgs) + reserve <= ctx) if ctx else None
        for e in examples:
            prompt = prompts[e.example_id]
            if prompt.solve is None:
                propose(e)
                continue
            rid = f"{e.example_id}/solve"
            req = Request(rid, (solve_message(e, prompt, refs[e.example_id]),), sampling, sample_seed(spec.seed, rid),
                          meta={"stage": "solve", "problem_id": e.example_id})
            if not ex.send([req], lambda r, c, v, e=e: solved(e, c), stage="solve", role="proposer",
                           route=e.example_id):
                unanswered[e.example_id] = "prompt_too_long"
        await ex.run()
    finally:
        store.close()
        if close:
            await proposer.close()

    # -- predictions --------------------------------------------------------------------------
    pred_rows: list[dict] = []
    for e in examples:
        prompt, ref = prompts[e.example_id], refs[e.example_id]
        for i in range(spec.propose.m):
            rid = f"{e.example_id}/candidate-{i}"
            c = answers.get(rid)
            row = {"example_id": e.example_id, "subset": e.subset, "origin": e.origin, "sample_index": i,
                   "seed": sample_seed(spec.seed, rid), "problem": e.problem, "steps": list(e.steps),
                   "num_steps": len(e.steps), "label": e.label, "generator": e.generator,
                   "final_answer_correct": e.final_answer_correct,
                   "reference_id": ref.problem_id if ref else None, "reference_source": ref.source if ref else None,
                   "prompt_name": prompt.name, "prompt_sha256": prompt.sha256,
                   "solve_output": solve_out.get(e.example_id), "attempt_shortened": (omitted[e.example_id] is not None) if e.example_id in omitted else None}
            if c is None or c.finish_reason in ("error", "abort"):
                why = unanswered.get(rid) or unanswered.get(e.example_id) or "request_failed"
                row.update(status=M.UNANSWERED, parse_status=why, finish_reason=c.finish_reason if c else None,
                           parse_detail=(c.error or "") if c else "", prediction=None)
            else:
                raw = (prompt.response_prefix or "") + c.text
                parsed, status, pred = to_prediction(raw, len(e.steps), omitted.get(e.example_id),
                                                     interventions.echoed_blocks(e.problem, *e.steps))
                leaks = (interventions.leaks_answer(parsed.content, ref.gold_answer)
                         if ref is not None and parsed.content else None)
                row.update(raw_output=raw, finish_reason=c.finish_reason, parse_status=parsed.status,
                           parse_detail=parsed.detail, location=parsed.location, intervention=parsed.content,
                           leaks_answer=leaks, status=status, prediction=pred,
                           prompt_tokens=c.prompt_tokens, completion_tokens=c.completion_tokens)
            pred = row["prediction"]
            row["hit"] = pred == e.label
            row["distance"] = pred - e.label if pred is not None and pred >= 0 and e.label >= 0 else None
            pred_rows.append(row)
    row_rows = example_rows(examples, pred_rows, refs, prompts)
    report = build_report(pred_rows, row_rows, spec.propose.m)
    report.update({
        "data": str(data.resolve()), "model": spec.model, "backend": spec.backend.kind, "seed": spec.seed,
        "samples_per_row": spec.propose.m, "skipped_input_rows": skipped,
        "sampling": spec.sampling.model_dump(),
        "prompts": {"with_reference": {"name": prompt_ref.name, "path": prompt_ref.path, "sha256": prompt_ref.sha256},
                    "without_reference": {"name": prompt_noref.name, "path": prompt_noref.path,
                                          "sha256": prompt_noref.sha256}},
        "reference_sources": index.sources, "reference_conflicts": index.conflicts,
    })
    tables.write_parquet(pred_rows, PREDICTIONS, out / "predictions.parquet")
    tables.write_parquet(row_rows, ROWS, out / "rows.parquet")
    tables.write_json(report, out / "report.json")
    _atomic_text(out / "report.md", render_markdown(report))
    return LocalizeResult(out, report)


def example_rows(examples: list[Example], pred_rows: list[dict], refs: dict[str, Problem | None],
                 prompts: dict[str, ProposerPrompt]) -> list[dict]:
    """One row per example: its majority prediction over its samples and the trivial baselines."""
    by_ex: dict[str, list[dict]] = defaultdict(list)
    for r in pred_rows:
        by_ex[r["example_id"]].append(r)
    out = []
    for e in examples:
        rs = by_ex[e.example_id]
        maj = M.majority([r["prediction"] for r in rs])
        if maj is not None:
            status = "ok"
        elif any(r["status"] == M.PARSE_FAILED for r in rs):
            status = M.PARSE_FAILED
        else:
            status = M.UNANSWERED
        ref = refs[e.example_id]
        out.append({"example_id": e.example_id, "subset": e.subset, "origin": e.origin, "num_steps": len(e.steps),
                    "label": e.label, "reference_id": ref.problem_id if ref else None,
                    "prompt_name": prompts[e.example_id].name, "samples": len(rs), "majority": maj,
                    "majority_status": status, "always_minus_one": -1, "always_last": len(e.steps) - 1})
    return out


def build_report(pred_rows: list[dict], row_rows: list[dict], m: int) -> dict[str, Any]:
    """The metrics of ``report.json``, computed from the two tables alone (so a reader can
    recompute them from ``predictions.parquet`` and ``rows.parquet``)."""
    per_sample = M.by_subset(pred_rows)
    refs: dict[str, dict[str, int]] = defaultdict(lambda: {"with": 0, "without": 0})
    for r in row_rows:
        refs[r["subset"]]["with" if r["reference_id"] else "without"] += 1
    report: dict[str, Any] = {
        "rows": len(row_rows), "samples": len(pred_rows),
        "per_sample": {**per_sample, "mean_subset_f1": M.mean_f1(per_sample["subsets"])},
        "baselines": {},
        "references": {"by_subset": dict(sorted(refs.items())),
                       "with": sum(v["with"] for v in refs.values()),
                       "without": sum(v["without"] for v in refs.values()),
                       "rows_with": [r["example_id"] for r in row_rows if r["reference_id"]],
                       "rows_without": [r["example_id"] for r in row_rows if not r["reference_id"]]},
        "parse_status": dict(sorted(Counter(r["parse_status"] for r in pred_rows).items())),
    }
    if m > 1:
        maj = M.by_subset(row_rows, "majority", "majority_status")
        report["majority"] = {**maj, "mean_subset_f1": M.mean_f1(maj["subsets"])}
    for key in ("always_minus_one", "always_last"):
        b = M.by_subset(row_rows, key, None)
        report["baselines"][key] = {**b, "mean_subset_f1": M.mean_f1(b["subsets"])}
    return report


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _f1_cell(m: dict) -> str:
    return f"undefined ({m['f1_undefined']})" if m["f1"] is None else f"{100 * m['f1']:.1f}"


def _f1_short(m: dict) -> str:
    return "undef" if m["f1"] is None else f"{100 * m['f1']:.1f}"


def _metric_table(block: dict, baselines: dict) -> list[str]:
    lines = ["| subset | rows | erroneous / correct | acc. erroneous | acc. correct | F1 | parse failures "
             "| unanswered | mean signed distance (rows) | F1 always -1 | F1 always last |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    names = list(block["subsets"]) + ["overall"]
    for name in names:
        m = block["overall"] if name == "overall" else block["subsets"][name]
        b1 = baselines["always_minus_one"]["overall" if name == "overall" else "subsets"]
        b2 = baselines["always_last"]["overall" if name == "overall" else "subsets"]
        b1 = b1 if name == "overall" else b1[name]
        b2 = b2 if name == "overall" else b2[name]
        dist = "-" if m["mean_signed_distance"] is None else f"{m['mean_signed_distance']:+.2f} ({m['distance_rows']})"
        pf = M.fmt_rate(m["parse_failure_rate"], "-")
        lines.append(f"| {'**overall**' if name == 'overall' else name} | {m['rows']} | {m['erroneous']} / {m['correct']} "
                     f"| {M.fmt_rate(m['acc_erroneous'])} | {M.fmt_rate(m['acc_correct'])} | {_f1_cell(m)} "
                     f"| {m['parse_failures']} ({pf}) | {m['unanswered']} | {dist} | {_f1_cell(b1)} | {_f1_cell(b2)} |")
    return lines


def render_markdown(report: dict) -> str:
    """``report.md``: the tables of ``report.json`` for reading."""
    p = report["prompts"]
    r = report["references"]
    lines = [f"# intgen eval localize: {Path(report['data']).name}", "",
             f"- model: `{report['model']}` (backend {report['backend']}), {report['samples_per_row']} proposer "
             f"sample(s) per row, seed {report['seed']}; {report['rows']} rows, {report['samples']} samples",
             f"- prompts: `{p['with_reference']['name']}` for {r['with']} rows with a reference solution and gold "
             f"answer, `{p['without_reference']['name']}` for {r['without']} rows without",
             "- labels are ProcessBench's: 0-based first wrong step, -1 when all steps are right; a prediction is "
             "location - 1, or -1 for an empty intervention",
             "- F1 is the harmonic mean of the two accuracies; it is undefined (not 0) when a subset has no "
             "erroneous or no correct rows. Parse failures and unanswered samples count as wrong.",
             "- mean signed distance: predicted - true step, on erroneous rows whose prediction is a step "
             "(negative: too early)", ""]
    lines += ["## Per sample (every proposer sample is one prediction)", ""]
    lines += _metric_table(report["per_sample"], report["baselines"])
    mf = report["per_sample"]["mean_subset_f1"]
    lines += ["", f"Mean F1 over subsets (ProcessBench's headline): "
              + ("undefined" if mf["value"] is None else f"{100 * mf['value']:.1f}")
              + (f" (left out, F1 undefined: {', '.join(mf['left_out'])})" if mf["left_out"] else ""), ""]
    if "majority" in report:
        lines += ["## Majority vote over the samples of a row", ""]
        lines += _metric_table(report["majority"], report["baselines"])
        lines.append("")
    lines += ["## Trivial baselines on the same rows", "",
              "| subset | always -1: acc. erroneous / acc. correct / F1 | always the last step: acc. erroneous / acc. correct / F1 |",
              "|---|---|---|"]
    b1, b2 = report["baselines"]["always_minus_one"], report["baselines"]["always_last"]
    for name in list(b1["subsets"]) + ["overall"]:
        x = b1["overall"] if name == "overall" else b1["subsets"][name]
        y = b2["overall"] if name == "overall" else b2["subsets"][name]
        lines.append(f"| {name} | {M.fmt_rate(x['acc_erroneous'])} / {M.fmt_rate(x['acc_correct'])} / {_f1_cell(x)} "
                     f"| {M.fmt_rate(y['acc_erroneous'])} / {M.fmt_rate(y['acc_correct'])} / {_f1_cell(y)} |")
    lines += ["", "## Reference solutions", "", "| subset | with reference | without |", "|---|---|---|"]
    for name, v in r["by_subset"].items():
        lines.append(f"| {name} | {v['with']} | {v['without']} |")
    if r["rows_without"]:
        lines += ["", "Rows without a reference: " + ", ".join(r["rows_without"])]
    lines += ["", "## Parse status of the samples", "", "| status | samples |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in report["parse_status"].items()]
    if report["skipped_input_rows"]:
        lines += ["", "Input rows skipped: " + ", ".join(f"{k} {v}" for k, v in report["skipped_input_rows"].items())]
    return "\n".join(lines) + "\n"


def print_summary(report: dict) -> None:
    """The overall and per-subset numbers, for the terminal."""
    ps = report["per_sample"]
    print(f"{report['rows']} rows, {report['samples']} samples; references: {report['references']['with']} with, "
          f"{report['references']['without']} without")
    print(f"  {'subset':<14} {'rows':>5} {'err/cor':>8} {'acc err':>8} {'acc cor':>8} {'F1':>7} {'parse fail':>10} "
          f"{'dist':>6} {'F1 -1':>7} {'F1 last':>7}")
    for name in list(ps["subsets"]) + ["overall"]:
        m = ps["overall"] if name == "overall" else ps["subsets"][name]
        b = {k: (v["overall"] if name == "overall" else v["subsets"][name]) for k, v in report["baselines"].items()}
        dist = "-" if m["mean_signed_distance"] is None else f"{m['mean_signed_distance']:+.2f}"
        print(f"  {name:<14} {m['rows']:>5} {str(m['erroneous']) + '/' + str(m['correct']):>8} "
              f"{M.fmt_rate(m['acc_erroneous'], 'undef'):>8} {M.fmt_rate(m['acc_correct'], 'undef'):>8} "
              f"{_f1_short(m):>7} {M.fmt_rate(m['parse_failure_rate'], '-'):>10} {dist:>6} "
              f"{_f1_short(b['always_minus_one']):>7} {_f1_short(b['always_last']):>7}")
    if any(v["f1"] is None for v in list(ps["subsets"].values()) + [ps["overall"]]):
        print("  undef: F1 is undefined where a subset has no erroneous or no correct rows (see report.md)")
