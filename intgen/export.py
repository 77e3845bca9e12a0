"""Export a run directory as one Hugging Face dataset with five configs, and its card
(README.md, "Export and the Hub").

``export_run(RUN_DIR)`` writes ``RUN_DIR/export/``::

    export/
      README.md                          dataset card; its YAML ``configs:`` name the configs
      funnel.png, distributions.png      plots the card shows
      dataset_info.json                  LLaMA-Factory's dataset entry for the llamafactory config
      interventions/train-00000-of-0000N.parquet
      sft/...  rl/...  llamafactory/...  processbench/...

so ``datasets.load_dataset(str(RUN_DIR / "export"), "sft", split="train")`` (or, once
pushed, ``load_dataset(REPO_ID, "sft")``) loads one config. Every view is written with an
explicit Arrow schema (the ``*_VIEW`` constants below), so a column that is null in every
row keeps its real type.

The configs (each with the one split ``train``):

``interventions``
    ``interventions.parquet`` as the run wrote it: every parsed candidate with its
    decision, rates, lift and full lineage (schema :data:`intgen.tables.INTERVENTIONS`).
``sft``
    The rows of ``sft.parquet`` in TRL's *conversational prompt-completion* format
    (https://huggingface.co/docs/trl/dataset_formats: ``prompt`` = a list of messages
    ending with the user turn, ``completion`` = a list with one assistant message), plus
    ``prompt_text`` (the prompt rendered with the policy's chat template, as the run's
    backend recorded it in ``manifest.json``) and ``text`` = ``prompt_text`` + the target,
    for trainers that take strings. The target is a *partial* trace: it must be trained
    without an end-of-turn token (``intgen train sft``); ``text`` has none.
``rl``
    Every problem of the run (``problems.parquet``; each has a gradable gold answer, as
    ungradable ones are rejected at load). Columns read by both RL trainers:

    - verl (https://verl.readthedocs.io/en/latest/preparation/prepare_data.html): the five
      fields ``data_source`` (the dataset name that verl's reward manager routes on; here
      the problem's intgen source, e.g. ``gsm8k:gsm8k_test_50.jsonl``, which verl's
      ``default_compute_score`` does not know, so set ``custom_reward_function``),
      ``prompt`` (chat messages, templated by verl's ``RLHFDataset``), ``ability``
      (``"math"``), ``reward_model`` = ``{"style": "rule", "ground_truth": gold}`` (the raw
      gold answer: verl's ``math_verify.compute_score`` wraps it in ``\\boxed{}`` itself)
      and ``extra_info`` (``split``, ``index``, ``problem_id``, ``source``).
    - TRL's GRPOTrainer (https://huggingface.co/docs/trl/grpo_trainer, "Using a custom
      reward function"): ``prompt`` (conversational), and every other column is passed to
      reward functions as a keyword argument: ``answer`` (the raw gold answer) and
      ``solution`` (the gold answer as ``\\boxed{gold}``, the column that
      ``trl.rewards.accuracy_reward`` reads; it parses ``solution`` with math-verify's
      default extraction, which reads a bare ``\\sqrt{51}`` as nothing and
      ``\\left( 3, \\frac{\\pi}{2} \\right)`` as ``3``, but the boxed form correctly).
``llamafactory``
    Alpaca-format rows for LLaMA-Factory (https://github.com/hiyouga/LLaMA-Factory,
    ``data/README.md``): ``instruction`` = the problem, ``input`` = ``""``, ``output`` = the
    target, ``system`` = the system prompt the policy's chats had (the spec's
    ``system_prompt``; null without one, so LLaMA-Factory's template uses its default), plus
    ``candidate_id``; ``dataset_info.json`` holds the entry (``formatting: alpaca``,
    ``columns: {prompt: instruction, query: input, response: output, system: system}``).
    LLaMA-Factory 0.9.5's own loader reads it so (tests/test_consumers.py). The card
    explains why the chat template must not end the assistant turn.
``processbench``
    ProcessBench-style rows (Zheng et al. 2024, arXiv 2412.06559): ``id``, ``generator``,
    ``problem``, ``steps`` (the failed trace's ``\\n\\n`` steps, as numbered for the
    proposer), ``final_answer_correct`` (always false: every trace failed), ``label`` =
    ``location - 1`` of the rollout's selected candidate (0-based). These are *proposer*
    labels, where the proposer put its replacement step, at or before the true first
    error, not human labels; ``label_source`` says ``"proposer"``.
``proposer_prompts``
    ``proposer_prompts.parquet`` as the run wrote it (schema
    :data:`intgen.tables.PROPOSER_PROMPTS`): the exact chat each failed rollout's proposer
    samples were sent, once per rollout (``rollout_id``; the ``interventions`` rows point
    to it by ``proposer_prompt_id``). A run made before this table existed has none, and
    the config is left out.

A view with no rows (a run that accepted nothing has empty ``sft``, ``llamafactory`` and
``processbench``) gets no files and no entry in ``configs:``: ``datasets`` cannot load a
split without rows (a 0-row Parquet file fails with "BatchSize must be greater than 0",
one without row groups with 'Instruction "train" corresponds to no data'). The card says
which configs were left out and why.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import shutil
import statistics
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

import intgen
from intgen import resources, tables

log = logging.getLogger(__name__)

__all__ = [
    "CONFIGS", "OPTIONAL_CONFIGS", "SFT_VIEW", "RL_VIEW", "LLAMAFACTORY_VIEW", "PROCESSBENCH_VIEW", "ExportResult",
    "build_views", "export_run", "export_run_result", "llamafactory_dataset_info", "render_card", "render_prompt",
]

EXPORT_DIRNAME = "export"
SPLIT = "train"
#: the configs, in the order the card lists them
CONFIGS = ("interventions", "sft", "rl", "llamafactory", "processbench", "proposer_prompts")
#: configs a run has only when its spec asks for them: the hard pool (``rollout.keep: hard``, docs/hard-pool.md)
OPTIONAL_CONFIGS = ("hard_pool",)
#: a config is cut into Parquet shards of at most about this many bytes (Arrow's in-memory size)
DEFAULT_MAX_SHARD_BYTES = 256 * 2**20
CARD_TEMPLATE = resources.folder("data_cards") / "intgen_dataset.md.j2"
CARD_NAME = "README.md"
FUNNEL_PNG = "funnel.png"
DISTRIBUTIONS_PNG = "distributions.png"
LLAMAFACTORY_INFO = "dataset_info.json"

_UMASK = os.umask(0)
os.umask(_UMASK)

S, I, F, B = tables.S, tables.I, tables.F, tables.B
MESSAGES = tables.MESSAGES

SFT_VIEW = pa.schema([
    ("prompt", MESSAGES), ("completion", MESSAGES), ("prompt_text", S), ("text", S),
    ("problem_id", S), ("candidate_id", S), ("rollout_id", S), ("location", I), ("check_rate", F), ("lift", F),
])
RL_REWARD_MODEL = pa.struct([("style", S), ("ground_truth", S)])
RL_EXTRA_INFO = pa.struct([("split", S), ("index", I), ("problem_id", S), ("source", S)])
RL_VIEW = pa.schema([
    ("data_source", S), ("prompt", MESSAGES), ("ability", S), ("reward_model", RL_REWARD_MODEL),
    ("extra_info", RL_EXTRA_INFO), ("answer", S), ("solution", S),
])
LLAMAFACTORY_VIEW = pa.schema([("instruction", S), ("input", S), ("output", S), ("system", S), ("candidate_id", S)])
PROCESSBENCH_VIEW = pa.schema([
    ("id", S), ("generator", S), ("problem", S), ("steps", pa.list_(S)), ("final_answer_correct", B),
    ("label", I), ("label_source", S), ("problem_id", S), ("candidate_id", S),
])

PAPER = {
    "title": "Self-Proposed Interventions Enable Credit Assignment in LLM Reasoning",
    "authors": "Matthew Y. R. Yang, Hao Bai, Ian Wu, Gene Yang, Amrith Setlur, Aviral Kumar",
    "short": "Yang et al., 2026",
    "arxiv": "2601.14209",
    "url": "https://arxiv.org/abs/2601.14209",
    "bibtex_key": "yang2026int",
}

#: licenses of the sources intgen ships (data/demo/README.md), by the file name in the
#: problem's ``source`` (``adapter:file``). Anything else is reported as unknown.
KNOWN_SOURCES: dict[str, dict[str, Any]] = {
    "gsm8k_test_50.jsonl": {
        "name": "GSM8K test, lines 1-50 (intgen's demo subset, data/demo)",
        "license": "mit",
        "copyright": ["Copyright (c) 2021 OpenAI"],
        "url": "https://github.com/openai/grade-school-math",
        "citation": 'Cobbe et al. 2021, "Training Verifiers to Solve Math Word Problems", arXiv:2110.14168',
    },
    "math500_50.jsonl": {
        "name": "MATH-500, first 50 problems of level 1-2 (intgen's demo subset, data/demo)",
        "license": "mit",
        "copyright": ["Copyright (c) 2023 OpenAI (PRM800K / MATH-500)", "Copyright (c) 2021 Dan Hendrycks (MATH)"],
        "url": "https://github.com/openai/prm800k",
        "citation": 'Hendrycks et al. 2021, "Measuring Mathematical Problem Solving With the MATH Dataset", '
                    'arXiv:2103.03874; Lightman et al. 2023, "Let\'s Verify Step by Step", arXiv:2305.20050',
    },
}

MIT_NOTICE = (
    'Permission is hereby granted, free of charge, to any person obtaining a copy of this software and associated '
    'documentation files (the "Software"), to deal in the Software without restriction, including without limitation '
    'the rights to use, copy, modify, merge, publish, distribute, sublicense, and/or sell copies of the Software, and '
    'to permit persons to whom the Software is furnished to do so, subject to the following conditions:\n\n'
    'The above copyright notice and this permission notice shall be included in all copies or substantial portions '
    'of the Software.\n\n'
    'THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR IMPLIED, INCLUDING BUT NOT LIMITED '
    'TO THE WARRANTIES OF MERCHANTABILITY, FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL '
    'THE AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER LIABILITY, WHETHER IN AN ACTION OF '
    'CONTRACT, TORT OR OTHERWISE, ARISING FROM, OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER '
    'DEALINGS IN THE SOFTWARE.'
)

#: funnel rows of the card: (stats key, label, denominator key, "of" = share, "per" = ratio)
FUNNEL_STEPS: tuple[tuple[str, str, str | None, str | None], ...] = (
    ("problems", "problems (gradable gold answer)", None, None),
    ("rollouts", "rollouts", "problems", "per"),
    ("hard_problems", "hard problems (pass@k = 0)", "problems", "of"),
    ("failed_rollouts", "failed rollouts (wrong or no answer)", "rollouts", "of"),
    ("candidates", "proposer samples (candidates)", "failed_rollouts", "per"),
    ("parsed_candidates", "parsed candidates", "candidates", "of"),
    ("leaked", "... leaked the answer (rejected)", "parsed_candidates", "of"),
    ("checked", "checked by continuation", "parsed_candidates", "of"),
    ("accepted", "accepted", "checked", "of"),
    ("sft_rows", "selected for SFT", "accepted", "of"),
)
#: the bars of the funnel plot
FUNNEL_PLOT_KEYS = ("problems", "rollouts", "failed_rollouts", "candidates", "parsed_candidates", "checked",
                    "accepted", "sft_rows")


@dataclass
class ExportResult:
    """What :func:`export_run` wrote: the folder, rows per config, and the files of each
    config (relative to the folder). Configs with no rows are in ``rows`` (as 0) but not
    in ``files``."""

    export_dir: Path
    rows: dict[str, int]
    files: dict[str, list[str]] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- views


class ExportError(RuntimeError):
    """A run that cannot be exported as asked; the message names the folder or file and what to do."""


def _read_table(run_dir: Path, name: str) -> pa.Table:
    path = run_dir / f"{name}.parquet"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: {run_dir} is not a finished intgen run directory")
    try:
        return pq.read_table(path)
    except (pa.ArrowException, OSError) as e:
        raise ExportError(f"{path} cannot be read ({type(e).__name__}: {str(e)[:200]}); rerun the intgen generate "
                          f"command that made {run_dir} to write it again") from None


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def _chat_wrapper(manifest: dict[str, Any], role: str = "policy") -> str | None:
    """What the ``role`` model's chat template wraps around one user message, with
    ``{user}`` for the message (recorded by backends that render templates, e.g. vLLM)."""
    wrapper = ((manifest.get("backends") or {}).get(role) or {}).get("template_wraps_user_message_as")
    return wrapper if isinstance(wrapper, str) and wrapper.count("{user}") == 1 else None


def render_prompt(wrapper: str | None, user: str) -> str | None:
    """The rendered prompt for one user message: the wrapper's text around ``{user}``
    (substituted once, so a ``{user}`` inside the message is left alone); None without a wrapper."""
    if wrapper is None:
        return None
    before, _, after = wrapper.partition("{user}")
    return before + user + after


def _boxed(gold: str) -> str:
    return "\\boxed{" + gold + "}"


def _pick_per_rollout(rows: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """One selected candidate per rollout: the highest success rate, ties (and null rates
    from early stopping) broken by the lower candidate index. With ``select.per_rollout``
    ``best`` or ``first`` a rollout has one selected candidate anyway."""
    def rank(r: dict[str, Any]) -> tuple[float, int]:
        return -(r["check_rate"] if r["check_rate"] is not None else 0.0), r["candidate_index"]

    best: dict[str, dict[str, Any]] = {}
    for r in rows:
        cur = best.get(r["rollout_id"])
        if cur is None or rank(r) < rank(cur):
            best[r["rollout_id"]] = r
    return best


def build_views(run_dir: str | Path) -> dict[str, pa.Table]:
    """The views of a finished run (``hard_pool`` only when the run has one), each a table of its explicit schema (the
    ``interventions`` view keeps the schema ``interventions.parquet`` was written with).

    Raises:
        FileNotFoundError: a table of the run directory is missing.
    """
    run_dir = Path(run_dir)
    manifest = _read_json(run_dir / "manifest.json")
    wrapper = _chat_wrapper(manifest, "policy")
    problems = _read_table(run_dir, "problems").to_pylist()
    inter_table = _read_table(run_dir, "interventions")
    inter = inter_table.to_pylist()
    sft = _read_table(run_dir, "sft").to_pylist()

    sft_rows = []
    for r in sft:
        problem = r["prompt"][-1]["content"]
        target = r["completion"][-1]["content"]
        # the recorded wrapper is the template around one user message, so only such a prompt is rendered
        one_user = [m["role"] for m in r["prompt"]] == ["user"]
        prompt_text = render_prompt(wrapper, problem) if one_user else None
        sft_rows.append({
            "prompt": r["prompt"], "completion": r["completion"], "prompt_text": prompt_text,
            "text": None if prompt_text is None else prompt_text + target,
            **{k: r[k] for k in ("problem_id", "candidate_id", "rollout_id", "location", "check_rate", "lift")},
        })

    job = yaml.safe_load((run_dir / "job.yaml").read_text(encoding="utf-8")) if (run_dir / "job.yaml").exists() else {}
    system_prompt = (job or {}).get("system_prompt")
    rl_rows = [{
        "data_source": p["source"],
        # the chat the rollouts were sampled in: the spec's system prompt (if any), then the problem
        "prompt": ([{"role": "system", "content": system_prompt}] if system_prompt else [])
                  + [{"role": "user", "content": p["problem"]}],
        "ability": "math",
        "reward_model": {"style": "rule", "ground_truth": p["gold_answer"]},
        "extra_info": {"split": SPLIT, "index": i, "problem_id": p["problem_id"], "source": p["source"]},
        "answer": p["gold_answer"],
        "solution": _boxed(p["gold_answer"]),
    } for i, p in enumerate(problems)]

    # the system prompt travels in its own column: LLaMA-Factory's alpaca converter reads
    # only instruction/input/output, so without it the template's default system prompt
    # would replace the one the rollouts and checks ran under
    llamafactory_rows = [{
        "instruction": r["prompt"][-1]["content"], "input": "", "output": r["completion"][-1]["content"],
        "system": next((m["content"] for m in r["prompt"] if m["role"] == "system"), None),
        "candidate_id": r["candidate_id"],
    } for r in sft]

    chosen = _pick_per_rollout(r for r in inter if r["selected"])
    processbench_rows = []
    for rollout_id in sorted(chosen, key=lambda k: (chosen[k]["problem_id"], chosen[k]["rollout_index"])):
        r = chosen[rollout_id]
        processbench_rows.append({
            "id": rollout_id, "generator": r["policy_model"], "problem": r["problem"], "steps": r["steps"],
            "final_answer_correct": False, "label": r["location"] - 1, "label_source": "proposer",
            "problem_id": r["problem_id"], "candidate_id": r["candidate_id"],
        })

    prompts_path = run_dir / "proposer_prompts.parquet"
    prompts = (_read_table(run_dir, "proposer_prompts") if prompts_path.exists()
               else tables.table([], tables.PROPOSER_PROMPTS))
    views = {
        "interventions": inter_table,
        "sft": tables.table(sft_rows, SFT_VIEW),
        "rl": tables.table(rl_rows, RL_VIEW),
        "llamafactory": tables.table(llamafactory_rows, LLAMAFACTORY_VIEW),
        "processbench": tables.table(processbench_rows, PROCESSBENCH_VIEW),
        "proposer_prompts": prompts,
    }
    if (run_dir / "hard_pool.parquet").exists():  # rollout.keep: hard (docs/hard-pool.md)
        views["hard_pool"] = _read_table(run_dir, "hard_pool")
    return views


def _content_tag(table: pa.Table) -> str:
    """8 hex digits of the sha256 of the table's Parquet bytes."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return hashlib.sha256(sink.getvalue().to_pybytes()).hexdigest()[:8]


def _write_shards(table: pa.Table, folder: Path, max_shard_bytes: int) -> list[str]:
    """Write a non-empty table as ``train-<tag>-0000i-of-0000n.parquet`` shards of about
    ``max_shard_bytes`` each (rows split evenly); returns the file names.

    ``<tag>`` is a hash of the content. ``datasets`` caches a local folder under its name
    and config, so without it ``load_dataset("runs/x/export", "sft")`` after a re-export
    (or of another run's ``export`` folder) returned the cached rows of an earlier one
    (measured with datasets 5.2; huggingface/datasets#2956). The card lists the files by
    name, so new content is a new config to the cache."""
    n = max(1, min(table.num_rows, math.ceil(table.nbytes / max_shard_bytes)))
    bounds = [round(i * table.num_rows / n) for i in range(n + 1)]
    tag = _content_tag(table)
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(n):
        name = f"{SPLIT}-{tag}-{i:05d}-of-{n:05d}.parquet"
        pq.write_table(table.slice(bounds[i], bounds[i + 1] - bounds[i]), folder / name)
        names.append(name)
    return names


# --------------------------------------------------------------------------- card statistics


def _share(num: float, den: float) -> float | None:
    return num / den if den else None


def funnel_rows(funnel: dict[str, int]) -> list[dict[str, Any]]:
    """The funnel as card rows: label, count, and the rate against the step it narrows."""
    labels = {k: label for k, label, _, _ in FUNNEL_STEPS}
    rows = []
    for key, label, den, kind in FUNNEL_STEPS:
        if key not in funnel:
            continue
        count = funnel[key]
        rate = None
        if den is not None and den in funnel:
            value = _share(count, funnel[den])
            if value is not None:
                rate = f"{value:.1%} of {labels[den].split(' (')[0]}" if kind == "of" else \
                    f"{value:.2f} per {labels[den].split(' (')[0].rstrip('s')}"
        rows.append({"key": key, "label": label, "count": count, "rate": rate or ""})
    known = {k for k, *_ in FUNNEL_STEPS}
    rows += [{"key": k, "label": k.replace("_", " "), "count": v, "rate": ""}
             for k, v in funnel.items() if k not in known]
    return rows


def token_rows(tokens: dict[str, dict[str, float]]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The token ledger: one row per stage (stats.json order: rollout, solve, propose,
    check, baseline, then any other) and the totals."""
    order = ["rollout", "solve", "propose", "check", "baseline"]
    stages = [s for s in order if s in tokens] + sorted(s for s in tokens if s not in order)
    keys = ("samples", "prompt_tokens", "completion_tokens", "cached_tokens", "seconds")
    rows = [{"stage": s, **{k: tokens[s].get(k, 0) or 0 for k in keys}} for s in stages]
    total = {"stage": "total", **{k: sum(r[k] for r in rows) for k in keys}}
    return rows, total


def _summary(values: list[float]) -> dict[str, Any] | None:
    if not values:
        return None
    return {"n": len(values), "mean": statistics.fmean(values), "median": statistics.median(values),
            "min": min(values), "max": max(values)}


LIFT_BINS = (("< -0.25", lambda x: x < -0.25), ("[-0.25, 0)", lambda x: -0.25 <= x < 0), ("= 0", lambda x: x == 0),
             ("(0, 0.25]", lambda x: 0 < x <= 0.25), ("(0.25, 0.5]", lambda x: 0.25 < x <= 0.5),
             ("> 0.5", lambda x: x > 0.5))
POSITION_BINS = tuple((f"{lo}-{lo + 20}%", lo / 100, (lo + 20) / 100) for lo in range(0, 100, 20))


def lift_stats(inter: list[dict[str, Any]]) -> dict[str, Any]:
    """Lift (check rate - baseline rate) of the accepted candidates that have both rates."""
    values = [r["lift"] for r in inter if r["accepted"] and r["lift"] is not None]
    hist = [{"bin": label, "count": sum(1 for v in values if test(v))} for label, test in LIFT_BINS]
    return {"summary": _summary(values), "hist": hist, "positive": sum(v > 0 for v in values),
            "accepted": sum(1 for r in inter if r["accepted"]),
            "without_baseline": sum(1 for r in inter if r["accepted"] and r["lift"] is None)}


def location_stats(inter: list[dict[str, Any]]) -> dict[str, Any]:
    """Where the proposer put its step: the location (1-based step index) and its relative
    position ``(location - 1) / num_steps`` in the failed trace, for every parsed candidate
    and for the accepted ones."""
    def one(rows: list[dict[str, Any]]) -> dict[str, Any]:
        rel = [(r["location"] - 1) / r["num_steps"] for r in rows if r["num_steps"]]
        hist = []
        for label, lo, hi in POSITION_BINS:
            hist.append({"bin": label, "count": sum(1 for x in rel if lo <= x < hi or (hi == 1.0 and x == 1.0))})
        return {"summary": _summary([float(r["location"]) for r in rows]), "hist": hist,
                "first_step": sum(1 for r in rows if r["location"] == 1), "n": len(rows)}

    return {"parsed": one(inter), "accepted": one([r for r in inter if r["accepted"]])}


# --------------------------------------------------------------------------- plots


def _plot_funnel(funnel: dict[str, int], path: Path) -> bool:
    """Horizontal bars of the funnel counts; False (and no file) without matplotlib."""
    try:
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        log.warning("matplotlib is not installed: the card has no funnel plot")
        return False
    labels = {k: label for k, label, _, _ in FUNNEL_STEPS}
    keys = [k for k in FUNNEL_PLOT_KEYS if k in funnel]
    counts = [funnel[k] for k in keys]
    fig = Figure(figsize=(7, 0.45 * len(keys) + 1.2), dpi=110)
    ax = fig.subplots()
    ax.barh(range(len(keys)), counts, color="#4c72b0")
    ax.set_yticks(range(len(keys)), [labels[k].split(" (")[0] for k in keys])
    ax.invert_yaxis()
    top = max(counts, default=0) or 1
    for i, c in enumerate(counts):
        ax.text(c + top * 0.01, i, str(c), va="center", fontsize=9)
    ax.set_xlim(0, top * 1.12)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("count")
    ax.set_title("intgen funnel")
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    fig.tight_layout()
    fig.savefig(path, format="png", metadata={"Software": None})
    return True


def _plot_distributions(inter: list[dict[str, Any]], path: Path) -> bool:
    """Histograms of the accepted candidates' lift and of the relative error location."""
    try:
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        return False
    lifts = [r["lift"] for r in inter if r["accepted"] and r["lift"] is not None]
    rel_all = [(r["location"] - 1) / r["num_steps"] for r in inter if r["num_steps"]]
    rel_acc = [(r["location"] - 1) / r["num_steps"] for r in inter if r["num_steps"] and r["accepted"]]
    fig = Figure(figsize=(9, 3.2), dpi=110)
    ax1, ax2 = fig.subplots(1, 2)
    ax1.hist(lifts, bins=[i / 10 for i in range(-10, 11)], color="#55a868")
    ax1.set_title(f"lift of accepted candidates (n={len(lifts)})")
    ax1.set_xlabel("check rate - baseline rate")
    ax2.hist([rel_all, rel_acc], bins=[i / 10 for i in range(11)], label=["parsed", "accepted"],
             color=["#8da0cb", "#4c72b0"])
    ax2.set_title("where the proposer intervened")
    ax2.set_xlabel("(location - 1) / steps in the failed trace")
    ax2.legend(fontsize=8)
    for ax in (ax1, ax2):
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    fig.savefig(path, format="png", metadata={"Software": None})
    return True


# --------------------------------------------------------------------------- card


def _source_rows(problems: list[dict[str, Any]]) -> list[dict[str, Any]]:
    counts = Counter(p["source"] for p in problems)
    rows = []
    for source, n in counts.items():
        label = source.split(":", 1)[1] if ":" in source else source
        known = KNOWN_SOURCES.get(label.rsplit("/", 1)[-1])  # labels are {folder}/{file}
        rows.append({"source": source, "problems": n, "known": known,
                     "license": known["license"].upper() if known else "unknown (not recorded by intgen)"})
    return rows


def _card_license(sources: list[dict[str, Any]]) -> str:
    """The card's ``license``: the sources' one license when all are known and agree;
    ``unknown`` when any is unknown; ``other`` for a mix of known licenses."""
    licenses = {s["known"]["license"] if s["known"] else None for s in sources}
    if not licenses or None in licenses:
        return "unknown"
    return licenses.pop() if len(licenses) == 1 else "other"


def _size_category(n: int) -> str:
    for limit, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < limit:
            return label
    return "1M<n<10M"


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]+", "_", name).strip("_") or "run"


def llamafactory_dataset_info(run_name: str, repo_id: str | None = None) -> dict[str, Any]:
    """The ``dataset_info.json`` entries for the llamafactory config: the local one
    (``dataset_dir`` = the export folder, ``file_name`` = the config's folder of Parquet
    shards) and, when the repo is known, the Hub one (``hf_hub_url`` + ``subset``).
    Format: LLaMA-Factory ``data/README.md`` (alpaca: ``columns`` maps ``prompt``,
    ``query``, ``response``, ``system`` to the dataset's columns)."""
    columns = {"prompt": "instruction", "query": "input", "response": "output", "system": "system"}
    name = f"intgen_{_slug(run_name)}"
    info: dict[str, Any] = {name: {"file_name": "llamafactory", "formatting": "alpaca", "columns": columns}}
    if repo_id:
        info[f"{name}_hub"] = {"hf_hub_url": repo_id, "subset": "llamafactory", "split": SPLIT,
                               "formatting": "alpaca", "columns": columns}
    return info


def _cost(run_dir: Path, stats: dict[str, Any]) -> dict[str, Any] | None:
    """The run's measured engine time (``stats.json`` ledger) and the plan made when it started."""
    led = stats.get("ledger")
    if not isinstance(led, dict) or "gpu_hours" not in led:
        return None
    plan = _read_json(run_dir / "plan.json")
    sessions = led.get("sessions") or []
    return {"gpu_hours": led["gpu_hours"], "sessions": len(sessions),
            "engines": max((x.get("engines", 1) for x in sessions), default=1),
            "planned": plan.get("gpu_hours") if plan else None}


def render_card(run_dir: str | Path, views: dict[str, pa.Table], result: ExportResult, *,
                repo_id: str | None = None, plots: dict[str, bool] | None = None, partial: bool = False) -> str:
    """The dataset card (README.md with YAML metadata) from ``data_cards/`` (Jinja2).

    The YAML block comes from huggingface_hub's :class:`~huggingface_hub.DatasetCardData`
    (license, configs with their data files, tags, size); the body is rendered with
    ``StrictUndefined`` so a missing value is an error, never a silent blank.
    """
    import jinja2
    from huggingface_hub import DatasetCard, DatasetCardData

    run_dir = Path(run_dir)
    job = yaml.safe_load((run_dir / "job.yaml").read_text(encoding="utf-8")) if (run_dir / "job.yaml").exists() else {}
    manifest = _read_json(run_dir / "manifest.json")
    stats = _read_json(run_dir / "stats.json")
    inter = views["interventions"].to_pylist()
    problems = _read_table(run_dir, "problems").to_pylist()
    sources = _source_rows(problems)
    funnel = stats.get("funnel", {})
    token_table, token_total = token_rows(stats.get("tokens", {}))
    accepted = funnel.get("accepted", sum(1 for r in inter if r["accepted"]))
    present = [c for c in CONFIGS + OPTIONAL_CONFIGS if result.files.get(c)]
    card_data = DatasetCardData(
        license=_card_license(sources),
        pretty_name=f"intgen interventions: {job.get('name', run_dir.name)}",
        language=["en"],
        task_categories=["text-generation"],
        tags=["intgen", "interventions", "math", "reasoning", "sft", "grpo"],
        size_categories=[_size_category(views["interventions"].num_rows)],
        configs=[{"config_name": c, "data_files": [{"split": SPLIT, "path": list(result.files[c])}],
                  **({"default": True} if c == "sft" else {})} for c in present],
    )
    backends = manifest.get("backends") or {}
    wrappers = {role: _chat_wrapper(manifest, role) for role in ("policy", "proposer")}
    proposer = job.get("proposer") or {}
    prompt_hashes = sorted({(r["prompt_name"], r["prompt_sha256"]) for r in inter})
    ctx = {
        "card_data": card_data.to_yaml(),
        "name": job.get("name", run_dir.name),
        "repo_id": repo_id,
        "load_path": repo_id or "path/to/export",
        "paper": PAPER,
        "intgen_version": (manifest.get("versions") or {}).get("intgen", intgen.__version__),
        "versions": manifest.get("versions") or {},
        "spec_fingerprint": manifest.get("spec_fingerprint"),
        "job": job,
        "policy_model": job.get("model"),
        "proposer_model": proposer.get("model") or job.get("model"),
        "backends": backends,
        "wrappers": {k: v for k, v in wrappers.items() if v},
        "wrapper_sha256": {k: _sha256(v) for k, v in wrappers.items() if v},
        "prompt": manifest.get("prompt") or {},
        "prompt_hashes": prompt_hashes,
        "sources": sources,
        "mit_notice": MIT_NOTICE if any(s["known"] and s["known"]["license"] == "mit" for s in sources) else None,
        "funnel": funnel_rows(funnel),
        "pass_at_k": [{"source": k, **v} for k, v in (stats.get("pass_at_k") or {}).items()],
        "rollout_k": (job.get("rollout") or {}).get("k"),
        "tokens": token_table,
        "tokens_total": token_total,
        "tokens_per_accepted": (token_total["completion_tokens"] / accepted) if accepted else None,
        "lift": lift_stats(inter),
        "locations": location_stats(inter),
        "rows": result.rows,
        "present": present,
        "skipped": result.skipped,
        "plots": plots or {},
        "funnel_png": FUNNEL_PNG,
        "distributions_png": DISTRIBUTIONS_PNG,
        "columns": {c: views[c].schema.names for c in CONFIGS + OPTIONAL_CONFIGS if c in views},
        "llamafactory_info": json.dumps(llamafactory_dataset_info(job.get("name", run_dir.name), repo_id), indent=2),
        "llamafactory_name": f"intgen_{_slug(job.get('name', run_dir.name))}",
        "has_prompt_text": views["sft"].num_rows > 0 and views["sft"].column("prompt_text").null_count == 0,
        "partial": partial,
        "cost": _cost(run_dir, stats),
        "failed_requests": manifest.get("failed_requests", 0),
    }
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                             keep_trailing_newline=True, autoescape=False)
    env.filters["pct"] = lambda x: "n/a" if x is None else f"{x:.1%}"
    env.filters["num"] = lambda x, d=2: "n/a" if x is None else f"{x:,.{d}f}"
    env.filters["int"] = lambda x: f"{int(x):,}"
    text = env.from_string(CARD_TEMPLATE.read_text(encoding="utf-8")).render(**ctx)
    DatasetCard(text)  # parses the YAML block: a broken card fails here, not on the Hub
    return text


# --------------------------------------------------------------------------- export


#: written in every export folder; a folder named ``export`` without it is not replaced
EXPORT_MARKER = ".intgen-export"
#: what an export folder of an intgen version before the marker held
_LEGACY_EXPORT = {CARD_NAME, LLAMAFACTORY_INFO, FUNNEL_PNG, DISTRIBUTIONS_PNG, *CONFIGS, *OPTIONAL_CONFIGS}


def _check_own_export(dest: Path) -> None:
    """intgen replaces only an export folder it wrote: one with :data:`EXPORT_MARKER`, or
    (written before the marker existed) holding nothing but what an export holds.

    Raises:
        ExportError: ``dest`` holds something else; the message names it.
    """
    if not dest.exists() or (dest / EXPORT_MARKER).exists():
        return
    foreign = sorted(p.name for p in dest.iterdir() if p.name not in _LEGACY_EXPORT) if dest.is_dir() else [dest.name]
    if foreign:
        raise ExportError(f"{dest} was not written by intgen (it holds {', '.join(foreign[:5])}); intgen never deletes "
                          "what it did not write: move it away, then export again")


def _remove_stale(run_dir: Path) -> None:
    """Temporary and old export folders left by a killed export (intgen's own names; the
    caller holds the run's lock, so no other export is writing them)."""
    for p in run_dir.glob(f".{EXPORT_DIRNAME}.*"):
        if p.is_dir() and (p.name.startswith(f".{EXPORT_DIRNAME}.tmp-") or p.name.startswith(f".{EXPORT_DIRNAME}.old-")):
            shutil.rmtree(p, ignore_errors=True)


def _replace_dir(new: Path, dest: Path) -> None:
    """Put the folder ``new`` at ``dest``, replacing what is there: a rename of a complete
    folder, so a reader sees the old export or the new one, never a half-written one."""
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
        if old.exists():
            shutil.rmtree(old)
        os.replace(dest, old)
        os.replace(new, dest)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(new, dest)


def export_run(run_dir: str | Path, *, repo_id: str | None = None,
               max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES, allow_partial: bool = False) -> Path:
    """Write ``RUN_DIR/export/`` (module docstring) and return its path.

    Idempotent: the folder is built beside the run in a temporary folder and renamed
    over the old export, so exporting again replaces it whole (no stale shards).

    Args:
        run_dir: a finished run directory (``intgen generate``'s output).
        repo_id: the Hub repo the export is meant for; the card's loading snippets and the
            LLaMA-Factory entry then name it (``intgen push`` passes it).
        max_shard_bytes: cut a config into Parquet shards of about this size.
        allow_partial: export a run that is not complete (failed requests, or stopped); the
            card then says it is partial.

    Raises:
        FileNotFoundError: ``run_dir`` lacks one of the run's tables.
        ExportError: the run is not complete (and ``allow_partial`` is off), a table cannot
            be read, or ``export/`` holds files intgen did not write.
        RunDirError: another intgen process is working in ``run_dir``.
    """
    return export_run_result(run_dir, repo_id=repo_id, max_shard_bytes=max_shard_bytes,
                             allow_partial=allow_partial).export_dir


def run_status(run_dir: Path) -> tuple[str, int]:
    """(``complete``, ``incomplete`` or ``running``, failed requests) from ``manifest.json``;
    a run written before the status field is ``complete`` when its manifest says so."""
    manifest = _read_json(run_dir / "manifest.json")
    status = manifest.get("status") or ("complete" if manifest.get("complete") else "running")
    return status, int(manifest.get("failed_requests") or 0)


def export_run_result(run_dir: str | Path, *, repo_id: str | None = None,
                      max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES, allow_partial: bool = False) -> ExportResult:
    """:func:`export_run`, returning the rows and files of each config too."""
    from intgen.rundir import run_lock

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory not found: {run_dir}")
    status, failed = run_status(run_dir)
    if status != "complete" and not allow_partial:
        why = (f"{failed} requests failed" if status == "incomplete" else "it was stopped before it finished")
        raise ExportError(f"{run_dir} is not a complete run ({why}): rerun its intgen generate command to finish it, "
                          "or export it as it is with --allow-partial (the card then says it is partial)")
    with run_lock(run_dir, "export"):
        return _export(run_dir, repo_id, max_shard_bytes, partial=status != "complete")


def _export(run_dir: Path, repo_id: str | None, max_shard_bytes: int, partial: bool) -> ExportResult:
    _remove_stale(run_dir)
    dest = run_dir / EXPORT_DIRNAME
    _check_own_export(dest)
    views = build_views(run_dir)
    tmp = Path(tempfile.mkdtemp(prefix=f".{EXPORT_DIRNAME}.tmp-", dir=run_dir))
    try:
        result = ExportResult(dest, rows={c: views[c].num_rows for c in CONFIGS + OPTIONAL_CONFIGS if c in views})
        for c in [c for c in CONFIGS + OPTIONAL_CONFIGS if c in views]:
            if views[c].num_rows == 0:
                result.skipped.append(c)
                continue
            result.files[c] = [f"{c}/{n}" for n in _write_shards(views[c], tmp / c, max_shard_bytes)]
        if result.skipped:
            log.info("export: no rows in %s; left out of the dataset", ", ".join(result.skipped))
        job = yaml.safe_load((run_dir / "job.yaml").read_text(encoding="utf-8")) if (run_dir / "job.yaml").exists() else {}
        name = job.get("name", run_dir.name)
        (tmp / LLAMAFACTORY_INFO).write_text(json.dumps(llamafactory_dataset_info(name, repo_id), indent=2) + "\n",
                                             encoding="utf-8")
        stats = _read_json(run_dir / "stats.json")
        inter = views["interventions"].to_pylist()
        plots = {"funnel": _plot_funnel(stats.get("funnel", {}), tmp / FUNNEL_PNG),
                 "distributions": _plot_distributions(inter, tmp / DISTRIBUTIONS_PNG)}
        card = render_card(run_dir, views, result, repo_id=repo_id, plots=plots, partial=partial)
        (tmp / CARD_NAME).write_text(card, encoding="utf-8")
        (tmp / EXPORT_MARKER).write_text("written by intgen export; intgen replaces this folder whole\n",
                                         encoding="utf-8")
        os.chmod(tmp, 0o777 & ~_UMASK)  # mkdtemp makes 0700; the export is as readable as the run's other files
        _replace_dir(tmp, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return result
