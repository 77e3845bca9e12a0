"""``intgen view RUN``: one self-contained HTML page that shows what a run made (docs/view.md).

The page is rendered with Jinja2 from ``intgen/templates/view.html.j2``; its stylesheet and
script (``view.css``, ``view.js`` beside it) and the math renderer (Temml, MIT, vendored in
``templates/vendor/temml``) are inlined, and the run's plots
(``export/funnel.png``, ``export/distributions.png``, when the run was exported) are
embedded as ``data:`` URIs, so the file opens without network access and can be mailed
or attached as it is.

What the page holds:

- the run's status, models and settings, the funnel (counts and rates, as on the dataset
  card) and the plots; every reason something was dropped, with its count and what it
  means (so a run that accepted nothing still says why);
- one card per *parsed candidate* (a row of ``interventions.parquet``): problem, gold
  answer, reference solution, the failed trace as numbered steps with the kept prefix,
  the blamed step and the intervention in its place, the check and baseline verdicts
  and a few continuations' texts, the rates, the lift and the decision, the proposer's
  output;
- a few proposer outputs that did not parse, by reason.

The cards are not in the HTML: the data is one JSON document in a
``<script type="application/json">`` element (Jinja2's ``tojson``, which writes ``<``,
``>``, ``&`` and ``'`` as ``\\u`` escapes, so model text holding ``</script>`` cannot end
the element), and the page's script renders one page of cards at a time with DOM text
nodes (never ``innerHTML``), so model text is always shown as text and a run of 10,000
candidates stays responsive. Problems and failed traces are stored once, not once per
candidate; continuation texts and proposer outputs longer than ``max_chars`` characters
lose their middle (the cut is marked; the start and the end, where the answer and the
``<intervention>`` block are, stay), the problem, the steps and the intervention are never
cut. By default ``max_chars`` keeps those optional texts to about 64 MB in all: 4,000
characters each up to 4,000 candidates, fewer above (1,600 at 10,000, never under 500).
"""

from __future__ import annotations

import base64
import json
import math
import os
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import yaml

import intgen
from intgen.export import EXPORT_DIRNAME, FUNNEL_PNG, DISTRIBUTIONS_PNG, funnel_rows, run_status

TEMPLATES = Path(__file__).resolve().parent / "templates"
TEMPLATE = "view.html.j2"
#: default file name, inside the run folder
VIEW_NAME = "view.html"
#: in the head of every page, so a later ``intgen view`` knows it may replace the file
GENERATOR = '<meta name="generator" content="intgen view'
#: cards per page unless the reader picks another size
PAGE_SIZE = 20
#: continuation texts and proposer outputs are cut to at most this many characters ...
MAX_CHARS = 4000
#: ... and to at least this many when a large run shares out :data:`TEXT_BUDGET`
MIN_CHARS = 500
#: about how many characters of optional texts (continuations, proposer outputs) a page holds by default
TEXT_BUDGET = 64_000_000
#: continuation texts shown per candidate (check) and per baseline
CHECK_TEXTS = 2
BASELINE_TEXTS = 1
#: proposer outputs that did not parse, shown per reason
UNPARSED_PER_REASON = 3

#: what a decision in ``interventions.parquet`` means (intgen/stages/select.py, docs/pipeline.md)
DECISIONS = {
    "accepted": "at least accept.min_correct check continuations from the kept prefix + the intervention reached "
                "the gold answer",
    "too_few_correct": "fewer than accept.min_correct check continuations reached the gold answer",
    "gave_up": "check.give_up_after failed continuations in a row: the check stage stopped drawing for it",
    "answer_leak": "the intervention states the gold answer (the leak rule), so it was not checked",
    "no_check_samples": "no check continuation was answered (prompt too long for the context, or failed requests)",
}
#: what a reason in ``rejects.parquet`` means, when its ``detail`` alone does not say it
REJECTS = {
    "unclosed_intervention": "the proposer opened an <intervention> block and never closed it (often the token limit)",
    "no_intervention_tag": "the proposer output has no <intervention> block",
    "location_out_of_range": "the proposed location is not a step of the failed trace",
    "unparseable": "the <intervention> block is not a readable {content, location} object",
    "missing_location": "the <intervention> block names no location",
    "empty_intervention": "the <intervention> block has no content",
    "prompt_too_long": "the prompt fills the model's context; the request was not sent",
    "request_failed": "the request failed after the backend's retries (rerun the run to retry it)",
    "request_rejected": "the server rejected the request as invalid",
    "request_aborted": "the request was aborted",
    "empty_trace": "the failed rollout has no text to critique",
    "duplicate_id": "a problem id was loaded twice",
    "gold_unparseable": "the gold answer does not parse, so nothing could be graded",
}
_VERDICT_CODES = {"correct": "c", "wrong": "w", "no_answer": "n", "ungradable": "u"}


class ViewError(RuntimeError):
    """A run that cannot be shown; the message names the folder and what to do."""


def _clip(text: str | None, limit: int) -> str | None:
    """``text`` without its middle when longer than ``limit`` characters: the first and
    the last ``limit // 2``, the cut marked with how much was left out."""
    if text is None or len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]}\n\n[… {len(text) - 2 * half:,} characters not shown …]\n\n{text[len(text) - half:]}"


def default_max_chars(candidates: int) -> int:
    """:data:`MAX_CHARS`, or less when ``candidates`` x (the texts shown per candidate)
    would pass :data:`TEXT_BUDGET`; never under :data:`MIN_CHARS`."""
    per_candidate = CHECK_TEXTS + BASELINE_TEXTS + 1  # + the proposer output
    return max(MIN_CHARS, min(MAX_CHARS, TEXT_BUDGET // max(1, candidates * per_candidate)))


def _num(x: float | None) -> float | None:
    """A rate for JSON: None for a missing or non-finite value (JSON has no NaN)."""
    return x if x is not None and math.isfinite(x) else None


def _read(run_dir: Path, name: str, columns: list[str] | None = None) -> list[dict[str, Any]] | None:
    path = run_dir / f"{name}.parquet"
    if not path.exists():
        return None
    try:
        return pq.read_table(path, columns=columns).to_pylist()
    except Exception as e:  # a truncated or foreign file
        raise ViewError(f"{path} cannot be read ({type(e).__name__}: {str(e)[:200]}); rerun the intgen generate "
                        f"command that made {run_dir} to write it again") from None


def _json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _plot(path: Path) -> str | None:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii") if path.is_file() else None


def _continuations(run_dir: Path, max_chars: int) -> tuple[dict[str, dict], dict[tuple[str, int], dict]]:
    """Check continuations by candidate id and baselines by (rollout id, location): the
    verdicts in sample order (one letter each: c, w, n, u) and a few texts."""
    path = run_dir / "continuations.parquet"
    if not path.exists():
        return {}, {}
    try:
        t = pq.read_table(path)
    except Exception as e:
        raise ViewError(f"{path} cannot be read ({type(e).__name__}); rerun the intgen generate command that made "
                        f"{run_dir} to write it again") from None
    meta = t.select(["kind", "candidate_id", "rollout_id", "location", "sample_index", "verdict",
                     "extracted_answer"]).to_pylist()
    groups: dict[Any, list[int]] = defaultdict(list)
    for i, r in enumerate(meta):
        key = r["candidate_id"] if r["kind"] == "check" else (r["rollout_id"], r["location"])
        groups[(r["kind"] == "check", key)].append(i)
    texts = t.column("text")
    checks: dict[str, dict] = {}
    baselines: dict[tuple[str, int], dict] = {}
    for (is_check, key), rows in groups.items():
        rows.sort(key=lambda i: meta[i]["sample_index"])
        verdicts = "".join(_VERDICT_CODES.get(meta[i]["verdict"], "?") for i in rows)
        # a few texts: the correct ones first (what the intervention made possible), then in sample order
        n = CHECK_TEXTS if is_check else BASELINE_TEXTS
        shown = sorted(sorted(rows, key=lambda i: meta[i]["verdict"] != "correct")[:n],
                       key=lambda i: meta[i]["sample_index"])
        entry = {"v": verdicts, "a": [meta[i]["extracted_answer"] for i in rows],
                 "t": [{"i": meta[i]["sample_index"], "v": meta[i]["verdict"], "a": meta[i]["extracted_answer"],
                        "x": _clip(texts[i].as_py(), max_chars)} for i in shown]}
        (checks if is_check else baselines)[key] = entry
    return checks, baselines


def _reasons(rejects: list[dict], inter: list[dict]) -> list[dict[str, Any]]:
    """Every reason something was dropped, with its stage, count, meaning and one detail."""
    counts: Counter = Counter()
    example: dict[tuple[str, str], str] = {}
    for r in rejects:
        key = (r["stage"], r["reason"])
        counts[key] += 1
        if r.get("detail") and key not in example:
            example[key] = r["detail"]
    # a leaked candidate is a row of both tables (the propose stage's reject and a parsed candidate): count it once
    leaks_counted = ("propose", "answer_leak") in counts
    for r in inter:
        if r["reject_reason"] == "answer_leak" and not leaks_counted:
            counts[("propose", "answer_leak")] += 1
        elif r["reject_reason"] and r["reject_reason"] != "answer_leak":
            counts[("check", r["reject_reason"])] += 1
    order = {"load": 0, "rollout": 1, "solve": 2, "propose": 3, "check": 4, "baseline": 5}
    return [{"stage": s, "reason": reason, "count": n,
             "meaning": DECISIONS.get(reason) or REJECTS.get(reason) or "", "detail": example.get((s, reason), "")}
            for (s, reason), n in sorted(counts.items(), key=lambda kv: (order.get(kv[0][0], 9), -kv[1], kv[0][1]))]


def _funnel(stats: dict[str, Any], inter: list[dict], rollouts: list[dict] | None, candidates: list[dict] | None,
            problems: list[dict] | None, rejects: list[dict]) -> dict[str, int]:
    """``stats.json``'s funnel, or (a run that never wrote it) the same counts from the tables."""
    funnel = stats.get("funnel")
    if isinstance(funnel, dict) and funnel:
        return funnel
    out: dict[str, int] = {}
    if problems is not None:
        out["problems"] = len(problems)
    if rollouts is not None:
        out["rollouts"] = len(rollouts)
        out["failed_rollouts"] = sum(1 for r in rollouts if r["failed"])
    if candidates is not None:
        out["candidates"] = len(candidates)
    out["parsed_candidates"] = len(inter)
    out["leaked"] = sum(1 for r in inter if r["reject_reason"] == "answer_leak")
    out["checked"] = sum(1 for r in inter if r["check_samples"])
    out["accepted"] = sum(1 for r in inter if r["accepted"])
    out["sft_rows"] = sum(1 for r in inter if r["selected"])
    out["rejects"] = len(rejects)
    return out


def build_view_data(run_dir: str | Path, *, max_chars: int | None = None) -> dict[str, Any]:
    """Everything the page shows, as JSON-ready data (module docstring).

    Returns:
        ``{"run": {...}, "funnel": [...], "reasons": [...], "sources": [...],
        "problems": {problem_id: {...}}, "rollouts": {rollout_id: {...}},
        "candidates": [...], "unparsed": [...]}``; each candidate has its ids, ``loc``
        (1-based blamed step), ``iv`` (the intervention), the decision, rates, lift, the
        check and baseline verdicts (``"cwn..."``) and a few continuation texts.

    Raises:
        ViewError: ``run_dir`` holds no run, or its tables are not written yet (a run still
            in its first session), or a table cannot be read.
    """
    run_dir = Path(run_dir)
    if not (run_dir / "manifest.json").is_file() and not (run_dir / "interventions.parquet").is_file():
        raise ViewError(f"{run_dir} holds no intgen run (no manifest.json)")
    inter = _read(run_dir, "interventions")
    if inter is None:
        raise ViewError(f"{run_dir} has no interventions.parquet yet: a run writes its tables when its session ends "
                        f"(complete, incomplete or stopped); `intgen inspect {run_dir}` shows where it stands")
    if max_chars is None:
        max_chars = default_max_chars(len(inter))
    manifest = _json(run_dir / "manifest.json")
    stats = _json(run_dir / "stats.json")
    job: dict[str, Any] = {}
    if (run_dir / "job.yaml").is_file():
        try:
            job = yaml.safe_load((run_dir / "job.yaml").read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError):
            job = {}
    problems = _read(run_dir, "problems")
    rollouts = _read(run_dir, "rollouts", ["rollout_id", "failed"])
    candidates = _read(run_dir, "candidates", ["candidate_id", "parse_status", "parse_detail", "raw_output"])
    rejects = _read(run_dir, "rejects", ["stage", "reason", "detail"]) or []
    checks, baselines = _continuations(run_dir, max_chars)
    status, failed = run_status(run_dir)

    prob: dict[str, dict] = {}
    traces: dict[str, dict] = {}
    cards = []
    for r in inter:
        if r["problem_id"] not in prob:
            prob[r["problem_id"]] = {"p": r["problem"], "ref": r["reference_solution"], "gold": r["gold_answer"],
                                     "src": r["source"]}
        if r["rollout_id"] not in traces:
            traces[r["rollout_id"]] = {"steps": r["steps"], "ans": r["failed_answer"], "verdict": r["failed_verdict"],
                                       "i": r["rollout_index"]}
        check = checks.get(r["candidate_id"], {})
        base = baselines.get((r["rollout_id"], r["location"]), {})
        cards.append({
            "id": r["candidate_id"], "pid": r["problem_id"], "rid": r["rollout_id"], "ci": r["candidate_index"],
            "loc": r["location"], "iv": r["intervention"], "acc": r["accepted"], "sel": r["selected"],
            "why": r["reject_reason"], "stop": r.get("check_stopped"),
            "cs": r["check_samples"], "cc": r["check_correct"], "cr": _num(r["check_rate"]),
            "bs": r["baseline_samples"], "bc": r["baseline_correct"], "br": _num(r["baseline_rate"]),
            "lift": _num(r["lift"]),
            "cv": check.get("v", ""), "ca": check.get("a", []), "ct": check.get("t", []),
            "bv": base.get("v", ""), "ba": base.get("a", []), "bt": base.get("t", []),
            "prop": _clip(r["proposer_output"], max_chars), "solve": _clip(r["solve_output"], max_chars),
        })

    unparsed: list[dict] = []
    shown: Counter = Counter()
    for c in candidates or []:
        if c["parse_status"] in ("ok", "answer_leak") or shown[c["parse_status"]] >= UNPARSED_PER_REASON:
            continue
        shown[c["parse_status"]] += 1
        unparsed.append({"id": c["candidate_id"], "why": c["parse_status"], "detail": c["parse_detail"],
                         "out": _clip(c["raw_output"], max_chars)})

    ledger = stats.get("ledger") if isinstance(stats.get("ledger"), dict) else {}
    accept = job.get("accept") or {}
    run = {
        "name": job.get("name") or run_dir.name, "dir": str(run_dir), "status": status,
        "failed_requests": failed, "resumed": bool(manifest.get("resumed")),
        "sessions": len(ledger.get("sessions") or []) or None,
        "policy_model": job.get("model"),
        "proposer_model": (job.get("proposer") or {}).get("model") or job.get("model"),
        "k": (job.get("rollout") or {}).get("k"), "m": (job.get("propose") or {}).get("m"),
        "r": (job.get("check") or {}).get("r"), "min_correct": accept.get("min_correct"),
        "baseline_for": (job.get("baseline") or {}).get("for"), "per_rollout": (job.get("select") or {}).get("per_rollout"),
        "intgen_version": (manifest.get("versions") or {}).get("intgen") or intgen.__version__,
        "backend": ((manifest.get("backends") or {}).get("policy") or {}).get("kind"),
        "max_chars": max_chars,
    }
    funnel = _funnel(stats, inter, rollouts, candidates, problems, rejects)
    top = max((v for k, v in funnel.items() if k != "rejects" and isinstance(v, int)), default=0) or 1
    frows = funnel_rows(funnel)
    for row in frows:
        row["width"] = round(100 * row["count"] / top, 1) if row["key"] != "rejects" else 0
    return {
        "run": run,
        "funnel": frows,
        "reasons": _reasons(rejects, inter),
        "sources": sorted({p["src"] for p in prob.values()}),
        "decisions": sorted({c["why"] or "accepted" for c in cards}),
        "problems": prob,
        "rollouts": traces,
        "candidates": cards,
        "unparsed": unparsed,
    }


def _math_assets() -> dict[str, str]:
    """Temml (vendored, MIT; ``templates/vendor/temml/README.md``): its script, its stylesheet
    with its one font inlined as a ``data:`` URI, and its license notice."""
    folder = TEMPLATES / "vendor" / "temml"
    font = "data:font/woff2;base64," + base64.b64encode((folder / "Temml.woff2").read_bytes()).decode("ascii")
    css = (folder / "Temml-Local.css").read_text(encoding="utf-8").replace("url('Temml.woff2')", f"url('{font}')")
    return {"name": "Temml 0.13.5 (https://temml.org)", "js": (folder / "temml.min.js").read_text(encoding="utf-8"),
            "css": css, "license": " ".join((folder / "LICENSE").read_text(encoding="utf-8").split())}


def render_view(run_dir: str | Path, *, max_chars: int | None = None, page_size: int = PAGE_SIZE,
                math: bool = True) -> str:
    """The page of a run as one HTML string (module docstring). With ``math`` the page
    carries Temml (about 180 kB) and renders the LaTeX of problems, reference solutions,
    steps and interventions as MathML; without it, all text is shown as written.

    Raises:
        ViewError: as :func:`build_view_data`.
    """
    import jinja2
    from markupsafe import Markup

    run_dir = Path(run_dir)
    data = build_view_data(run_dir, max_chars=max_chars)
    export = run_dir / EXPORT_DIRNAME
    plots = [(name, uri) for name, uri in (("funnel", _plot(export / FUNNEL_PNG)),
                                           ("distributions", _plot(export / DISTRIBUTIONS_PNG))) if uri]
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    # ``tojson`` escapes <, >, & and ' as \u sequences (jinja2.utils.htmlsafe_json_dumps); compact, UTF-8 kept
    env.policies["json.dumps_kwargs"] = {"ensure_ascii": False, "separators": (",", ":")}
    css = (TEMPLATES / "view.css").read_text(encoding="utf-8")
    js = (TEMPLATES / "view.js").read_text(encoding="utf-8")
    assets = _math_assets() if math else None
    # inline code must not end its element early (HTML: script data, raw text elements)
    for text, end in ((css, "</style"), (js, "</script"), (js, "<!--"), *(((assets["css"], "</style"),
                      (assets["js"], "</script"), (assets["js"], "<!--"), (assets["license"], "--")) if assets else ())):
        if end in text.lower():
            raise AssertionError(f"an inlined file of the page holds {end!r}")
    return env.get_template(TEMPLATE).render(
        data=data, run=data["run"], funnel=data["funnel"], reasons=data["reasons"], plots=plots,
        page_size=page_size, css=Markup(css), js=Markup(js),
        math={"name": assets["name"], "license": assets["license"], "js": Markup(assets["js"]),
              "css": Markup(assets["css"])} if assets else None,
        made_at=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        accepted=sum(1 for c in data["candidates"] if c["acc"]), parsed=len(data["candidates"]))


def write_view(run_dir: str | Path, out: str | Path | None = None, *, max_chars: int | None = None,
               page_size: int = PAGE_SIZE, math: bool = True) -> Path:
    """Write the page (atomically: a temporary file renamed into place) to ``out``, by
    default ``RUN_DIR/view.html``; returns its path.

    Raises:
        ViewError: as :func:`build_view_data`; or ``out`` is a file that intgen view did not
            write (intgen never replaces what it did not write).
        IsADirectoryError: ``out`` is a folder.
    """
    run_dir = Path(run_dir)
    out = Path(out) if out is not None else run_dir / VIEW_NAME
    if out.is_dir():
        raise IsADirectoryError(f"--out {out} is a folder; give a file name such as {out / VIEW_NAME}")
    if out.exists():
        with open(out, "rb") as f:
            head = f.read(4096)
        if GENERATOR.encode() not in head:
            raise ViewError(f"--out {out} exists and is not a page intgen view wrote; intgen never replaces what it "
                            "did not write: choose another --out, or move that file away")
    html = render_view(run_dir, max_chars=max_chars, page_size=page_size, math=math)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(html)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out
