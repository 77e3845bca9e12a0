"""Export views, the dataset card, and the Hub push through a local fake Hub (issue 7,
README.md, "Export and the Hub").

The runs are made by the scripted fake backend with accepted candidates. The push test
runs the client side (huggingface_hub, datasets) in a subprocess, because both read
``HF_ENDPOINT`` when first imported; the fake Hub (tests/fake_hub.py) runs in this
process on 127.0.0.1, so the test can read every commit it received.
"""

from __future__ import annotations

import argparse
import json
import re
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from intgen import tables
from intgen.backends.fake import FakeBackend
from intgen.config import load_spec
from intgen.export import CONFIGS, export_run, export_run_result, render_prompt
from intgen.runner import run_job

from fake_hub import FakeHub

S, I, F, B = pa.string(), pa.int64(), pa.float64(), pa.bool_()
MSG = pa.list_(pa.struct([("role", S), ("content", S)]))
CHATML = "<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"

# -- a scripted run with accepted candidates ------------------------------------------------

PROBLEMS = [
    {"id": "p1", "problem": "Sam has 5 apples and gets 7 more. How many?", "reference_solution": "5 + 7 = 12.",
     "answer": "12"},
    {"id": "p2", "problem": "What fraction is one of two equal parts?", "reference_solution": "It is 1/2.",
     "answer": "\\frac{1}{2}"},
    {"id": "p3", "problem": "What is the square root of 51?", "reference_solution": "It is sqrt(51).",
     "answer": "\\sqrt{51}"},
    {"id": "p4", "problem": "Convert (0, 3) to polar coordinates.", "reference_solution": "r = 3, theta = pi/2.",
     "answer": "\\left( 3, \\frac{\\pi}{2} \\right)"},
]
ROLLOUTS = {
    "p1/rollout-0": "Add the apples.\n\nThen 5 + 7 = 13.\n\nSo the total is $\\boxed{13}$.",
    "p1/rollout-1": "5 + 7 = 12.\n\nSo $\\boxed{12}$.",
    "p2/rollout-0": "Set up the ratio.\n\nThe ratio is 2/3.\n\nSo it is $\\boxed{\\frac{2}{3}}$.",
    "p2/rollout-1": "I am not sure.\n\nMaybe a half.",
    "p3/rollout-0": "It is $\\boxed{\\sqrt{51}}$.",
    "p3/rollout-1": "So $\\boxed{\\sqrt{51}}$.",
    "p4/rollout-0": "So $\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}$.",
    "p4/rollout-1": "So $\\boxed{(3, \\frac{\\pi}{2})}$.",
}


def block(content, location):
    return "Log.\n<intervention>" + json.dumps({"content": content, "location": location}) + "</intervention>"


PROPOSALS = {
    "p1/rollout-0/candidate-0": block("Let me recompute 5 + 7 carefully.", 2),
    "p1/rollout-0/candidate-1": block("Count again from 5.", 3),
    "p2/rollout-0/candidate-0": block("Equal parts means each is one of two.", 1),
    "p2/rollout-0/candidate-1": "no tag here",
    "p2/rollout-1/candidate-0": block("Think of halves.", 2),
    "p2/rollout-1/candidate-1": "no tag either",
}
CORRECT = {"p1": "So $\\boxed{12}$.", "p2": "So $\\boxed{\\frac12}$."}
CHECK_CORRECT = {"p1/rollout-0/candidate-0": {0, 2}, "p1/rollout-0/candidate-1": {1},
                 "p2/rollout-0/candidate-0": {0, 1, 3}, "p2/rollout-1/candidate-0": set()}
BASELINE_CORRECT = {"p1/rollout-0/location-2": {0}, "p1/rollout-0/location-3": set(),
                    "p2/rollout-0/location-1": set()}


def script(request):
    m = request.meta
    if m["stage"] == "rollout":
        return ROLLOUTS[request.id]
    if m["stage"] == "solve":
        return "Solved with the reference."
    if m["stage"] == "propose":
        return PROPOSALS[request.id]
    group = m["candidate_id"] if m["stage"] == "check" else f"{m['rollout_id']}/location-{m['location']}"
    table = CHECK_CORRECT if m["stage"] == "check" else BASELINE_CORRECT
    return "\n\nGo on.\n\n" + (CORRECT[m["problem_id"]] if m["sample_index"] in table[group] else "So $\\boxed{7}$.")


class TemplatedFake(FakeBackend):
    """The fake backend, recording a chat template as the vLLM backend does."""

    def describe(self):
        return {**super().describe(), "template_wraps_user_message_as": CHATML}


def make_run(out: Path, problems_file: Path, grader, *overrides: str, backend=None) -> Path:
    data = {"name": "exp", "source": {"path": str(problems_file), "adapter": "generic"},
            "model": "smollm2-135m-instruct", "backend": {"kind": "fake"}, "rollout": {"k": 2}, "propose": {"m": 2},
            "check": {"r": 4}}
    run_job(load_spec(None, list(overrides), data=data), out, backend=backend or TemplatedFake(script),
            progress=False, grader=grader)
    return out


@pytest.fixture(scope="module")
def problems_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("src") / "problems.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in PROBLEMS))
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory, problems_file, grader):
    out = make_run(tmp_path_factory.mktemp("run") / "run", problems_file, grader)
    export_run(out)
    return out


def rows(path: Path) -> list[dict]:
    return pq.read_table(path).to_pylist()


def view(run: Path, config: str) -> pa.Table:
    files = sorted((run / "export" / config).glob("*.parquet"))
    return pa.concat_tables([pq.read_table(f) for f in files])


# -- schemas and loading ----------------------------------------------------------------------

EXPECTED = {
    "sft": [("prompt", MSG), ("completion", MSG), ("prompt_text", S), ("text", S), ("problem_id", S),
            ("candidate_id", S), ("rollout_id", S), ("location", I), ("check_rate", F), ("lift", F)],
    "rl": [("data_source", S), ("prompt", MSG), ("ability", S),
           ("reward_model", pa.struct([("style", S), ("ground_truth", S)])),
           ("extra_info", pa.struct([("split", S), ("index", I), ("problem_id", S), ("source", S)])),
           ("answer", S), ("solution", S)],
    "llamafactory": [("instruction", S), ("input", S), ("output", S), ("system", S), ("candidate_id", S)],
    "processbench": [("id", S), ("generator", S), ("problem", S), ("steps", pa.list_(S)),
                     ("final_answer_correct", B), ("label", I), ("label_source", S), ("problem_id", S),
                     ("candidate_id", S)],
    "interventions": [(f.name, f.type) for f in tables.INTERVENTIONS],
    "proposer_prompts": [(f.name, f.type) for f in tables.PROPOSER_PROMPTS],
}


@pytest.mark.parametrize("config", CONFIGS)
def test_view_schema_column_by_column(run, config):
    schema = view(run, config).schema
    assert [(f.name, f.type) for f in schema] == EXPECTED[config]


def test_every_config_loads_with_the_parquet_builder_and_by_config_name(run):
    import datasets

    export = run / "export"
    for config in CONFIGS:
        expected = view(run, config)
        by_files = datasets.load_dataset("parquet", data_files=str(export / config / "*.parquet"), split="train")
        by_name = datasets.load_dataset(str(export), config, split="train")
        assert by_files.num_rows == by_name.num_rows == expected.num_rows > 0
        assert by_name.data.table.to_pylist() == expected.to_pylist()
        assert [(f.name, f.type) for f in by_name.data.table.schema] == EXPECTED[config]


def test_interventions_view_is_the_run_table(run):
    assert view(run, "interventions").to_pylist() == rows(run / "interventions.parquet")


# -- each view's content ----------------------------------------------------------------------


def test_sft_rows_are_trl_prompt_completion_plus_rendered_text(run):
    sft = view(run, "sft").to_pylist()
    source = {r["candidate_id"]: r for r in rows(run / "sft.parquet")}
    assert {r["candidate_id"] for r in sft} == set(source) == {"p1/rollout-0/candidate-0",
                                                               "p2/rollout-0/candidate-0"}
    for r in sft:
        src = source[r["candidate_id"]]
        assert r["prompt"] == src["prompt"] and r["completion"] == src["completion"]
        assert [m["role"] for m in r["prompt"]] == ["user"] and [m["role"] for m in r["completion"]] == ["assistant"]
        problem, target = r["prompt"][0]["content"], r["completion"][0]["content"]
        assert r["prompt_text"] == CHATML.replace("{user}", problem)
        # the text ends with the partial target: no end-of-turn token after it
        assert r["text"] == r["prompt_text"] + target and not r["text"].endswith("<|im_end|>\n")
    row = next(r for r in sft if r["candidate_id"] == "p1/rollout-0/candidate-0")
    assert row["completion"][0]["content"] == "Add the apples.\n\nLet me recompute 5 + 7 carefully."


def test_render_prompt_substitutes_the_message_once():
    assert render_prompt("<u>{user}</u>", "a {user} b") == "<u>a {user} b</u>"
    assert render_prompt(None, "x") is None


def test_rl_rows_follow_verls_documented_fields(run, problems_file):
    """verl docs, preparation/prepare_data: data_source, prompt (chat messages), ability,
    reward_model {style: rule, ground_truth}, extra_info {split, index}."""
    rl = view(run, "rl").to_pylist()
    problems = rows(run / "problems.parquet")
    assert len(rl) == len(problems) == 4
    for i, (r, p) in enumerate(zip(rl, problems)):
        assert list(r)[:5] == ["data_source", "prompt", "ability", "reward_model", "extra_info"]
        assert r["data_source"] == p["source"] == f"generic:{problems_file.parent.name}/problems.jsonl"
        assert r["prompt"] == [{"role": "user", "content": p["problem"]}]
        assert r["ability"] == "math"
        assert r["reward_model"] == {"style": "rule", "ground_truth": p["gold_answer"]}
        assert r["extra_info"] == {"split": "train", "index": i, "problem_id": p["problem_id"], "source": p["source"]}


def _verl_math_verify_score(solution_str: str, ground_truth: str) -> float:
    """What verl.utils.reward_score.math_verify.compute_score does with a row's ground truth."""
    from math_verify.metric import math_metric
    from math_verify.parser import ExprExtractionConfig, LatexExtractionConfig

    verify = math_metric(gold_extraction_target=(LatexExtractionConfig(),),
                         pred_extraction_target=(ExprExtractionConfig(), LatexExtractionConfig()))
    score, _ = verify(["\\boxed{" + ground_truth + "}"], [solution_str])
    return score


def test_rl_ground_truth_grades_with_verls_math_verify_scorer(run):
    for r in view(run, "rl").to_pylist():
        gt = r["reward_model"]["ground_truth"]
        assert _verl_math_verify_score(f"So the answer is $\\boxed{{{gt}}}$.", gt) == 1.0
        assert _verl_math_verify_score("So the answer is $\\boxed{7}$.", gt) == 0.0


def _trl_accuracy_reward(completions, solution, **kwargs):
    """trl.rewards.accuracy_reward's grading (TRL 1.x): parse ``solution`` with
    math-verify's default extraction; the completion with boxed-first LaTeX extraction."""
    from latex2sympy2_extended import NormalizationConfig
    from math_verify import LatexExtractionConfig, parse, verify

    out = []
    for completion, sol in zip(completions, solution, strict=True):
        gold = parse(sol)
        if not gold:
            out.append(None)
            continue
        pred = parse(completion[0]["content"], extraction_config=[LatexExtractionConfig(
            normalization_config=NormalizationConfig(units=True), boxed_match_priority=0,
            try_extract_without_anchor=False)], extraction_mode="first_match")
        out.append(float(verify(gold, pred)))
    return out


def _grpo_kwargs(rl: list[dict]) -> dict[str, list]:
    """How TRL's GRPOTrainer calls reward functions: every column but ``prompt`` as a keyword."""
    return {k: [r[k] for r in rl] for k in rl[0] if k != "prompt"}


def test_rl_rows_follow_trls_grpo_reward_convention(run):
    from math_verify import parse

    rl = view(run, "rl").to_pylist()
    prompts = [r["prompt"] for r in rl]
    assert all(isinstance(p, list) and p[-1]["role"] == "user" for p in prompts)  # conversational prompt-only
    kwargs = _grpo_kwargs(rl)
    assert {"answer", "solution"} <= set(kwargs)
    right = [[{"role": "assistant", "content": f"Thus $\\boxed{{{a}}}$."}] for a in kwargs["answer"]]
    wrong = [[{"role": "assistant", "content": "Thus $\\boxed{7}$."}] for _ in rl]
    assert _trl_accuracy_reward(prompts=prompts, completions=right, **kwargs) == [1.0] * len(rl)
    assert _trl_accuracy_reward(prompts=prompts, completions=wrong, **kwargs) == [0.0] * len(rl)
    # why `solution` is boxed: the raw gold is not parsed (or misparsed) by the default extraction
    raw = dict(zip(kwargs["answer"], [parse(a) for a in kwargs["answer"]]))
    assert raw["\\sqrt{51}"] == [] and str(raw["\\left( 3, \\frac{\\pi}{2} \\right)"][0]) == "3"


def test_rl_rows_with_trl_itself(run):
    rewards = pytest.importorskip("trl.rewards")
    rl = view(run, "rl").to_pylist()
    right = [[{"role": "assistant", "content": f"Thus $\\boxed{{{r['answer']}}}$."}] for r in rl]
    kwargs = _grpo_kwargs(rl)
    assert rewards.accuracy_reward(completions=right, prompts=[r["prompt"] for r in rl], **kwargs) == [1.0] * len(rl)


def test_llamafactory_rows_and_dataset_info(run):
    lf = view(run, "llamafactory").to_pylist()
    sft = {r["candidate_id"]: r for r in view(run, "sft").to_pylist()}
    assert len(lf) == len(sft) == 2
    for r in lf:
        s = sft[r["candidate_id"]]
        assert (r["instruction"], r["input"], r["output"], r["system"]) == (s["prompt"][0]["content"], "",
                                                                           s["completion"][0]["content"], None)
    info = json.loads((run / "export" / "dataset_info.json").read_text())
    entry = info["intgen_exp"]
    assert entry == {"file_name": "llamafactory", "formatting": "alpaca",
                     "columns": {"prompt": "instruction", "query": "input", "response": "output", "system": "system"}}
    # LLaMA-Factory loads every file of a folder and needs them of one type
    assert {p.suffix for p in (run / "export" / entry["file_name"]).iterdir()} == {".parquet"}


def test_llamafactory_rows_carry_the_policys_system_prompt(tmp_path, problems_file, grader):
    """LLaMA-Factory's alpaca converter reads the system prompt only from a mapped column:
    without it, its template's default system prompt replaces the one the checks ran under."""
    out = make_run(tmp_path / "run", problems_file, grader, "system_prompt=Reason step by step.")
    export_run(out)
    sft = {r["candidate_id"]: r for r in view(out, "sft").to_pylist()}
    lf = view(out, "llamafactory").to_pylist()
    assert len(lf) == len(sft) == 2
    for r in lf:
        assert sft[r["candidate_id"]]["prompt"][0] == {"role": "system", "content": "Reason step by step."}
        assert r["system"] == "Reason step by step." and r["instruction"] == sft[r["candidate_id"]]["prompt"][1]["content"]


def test_processbench_labels_are_the_selected_candidates_location_minus_one(run):
    pb = {r["id"]: r for r in view(run, "processbench").to_pylist()}
    selected = {r["rollout_id"]: r for r in rows(run / "interventions.parquet") if r["selected"]}
    assert set(pb) == set(selected) == {"p1/rollout-0", "p2/rollout-0"}
    for rid, r in pb.items():
        s = selected[rid]
        assert r["label"] == s["location"] - 1 and r["steps"] == s["steps"] and r["problem"] == s["problem"]
        assert r["candidate_id"] == s["candidate_id"] and r["label_source"] == "proposer"
        assert r["final_answer_correct"] is False and r["generator"] == "smollm2-135m-instruct"
    assert pb["p1/rollout-0"]["label"] == 1 and pb["p2/rollout-0"]["label"] == 0


def test_processbench_keeps_one_row_per_rollout_when_several_are_selected(tmp_path, problems_file, grader):
    out = make_run(tmp_path / "run", problems_file, grader, "select.per_rollout=all")
    export_run(out)
    selected = [r["candidate_id"] for r in rows(out / "interventions.parquet") if r["selected"]]
    assert len(selected) == 3 and view(out, "sft").num_rows == 3
    pb = {r["id"]: r for r in view(out, "processbench").to_pylist()}
    # p1/rollout-0 has two selected candidates: the one with the higher success rate gives the label
    assert pb["p1/rollout-0"]["candidate_id"] == "p1/rollout-0/candidate-0" and pb["p1/rollout-0"]["label"] == 1
    assert len(pb) == 2


# -- the card -----------------------------------------------------------------------------------


def test_card_metadata_funnel_ledger_and_notes(run):
    from huggingface_hub import DatasetCard

    export = run / "export"
    text = (export / "README.md").read_text()
    card = DatasetCard(text)
    assert card.data.license == "unknown"  # the test source is not one intgen knows
    assert [c["config_name"] for c in card.data.configs] == list(CONFIGS)
    (rl_file,) = card.data.configs[2]["data_files"][0]["path"]
    assert card.data.configs[2]["data_files"][0]["split"] == "train"
    assert re.fullmatch(r"rl/train-[0-9a-f]{8}-00000-of-00001\.parquet", rl_file)
    stats = json.loads((run / "stats.json").read_text())
    f = stats["funnel"]
    assert f["accepted"] == 3 and f["sft_rows"] == 2
    assert f"| accepted | {f['accepted']} | 75.0% of checked by continuation |" in text
    assert f"| rollouts | {f['rollouts']} | 2.00 per problem |" in text
    total = sum(t["completion_tokens"] for t in stats["tokens"].values())
    assert f"| **total** | {sum(t['samples'] for t in stats['tokens'].values()):,} |" in text
    assert f"{total:,}" in text
    assert "arXiv 2601.14209" in text and "proposer labels, not human\nlabels" in text
    assert "intgen train sft" in text and "end-of-turn" in text
    prompt = json.loads((run / "manifest.json").read_text())["prompt"]
    assert prompt["sha256"] in text and "intgen | 0." in text
    for config in CONFIGS:
        assert f'load_dataset("path/to/export", "{config}", split="train")' in text
    # lift: p1 candidate-0 0.5 - 0.25, candidate-1 0.25 - 0.0, p2 candidate-0 0.75 - 0.0
    assert "mean 0.417" in text and "3 of 3 are positive" in text
    assert "![funnel](funnel.png)" in text
    for png in ("funnel.png", "distributions.png"):
        assert (export / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_card_of_the_demo_sources_carries_their_mit_license(tmp_path, grader):
    from huggingface_hub import DatasetCard

    REPO_ROOT = Path(__file__).resolve().parent.parent

    spec = load_spec(str(REPO_ROOT / "pipelines" / "demo-datasets.yaml"), ["backend.kind=fake", "limit=2"])
    out = tmp_path / "demo"
    run_job(spec, out, spec_dir=REPO_ROOT / "pipelines", progress=False, grader=grader)
    text = (export_run(out) / "README.md").read_text()
    assert DatasetCard(text).data.license == "mit"
    assert "Copyright (c) 2021 OpenAI" in text and "Permission is hereby granted" in text


# -- export behaviour --------------------------------------------------------------------------


def test_export_again_replaces_the_folder_whole(run, tmp_path):
    small = export_run_result(run, max_shard_bytes=500)
    assert len(small.files["interventions"]) > 1 and len(small.files["rl"]) > 1
    files = {p.relative_to(run / "export").as_posix() for p in (run / "export").rglob("*") if p.is_file()}
    assert {f for f in files if f.endswith(".parquet")} == {f for fs in small.files.values() for f in fs}
    again = export_run_result(run)
    files = {p.relative_to(run / "export").as_posix() for p in (run / "export").rglob("*") if p.is_file()}
    assert {re.sub(r"train-[0-9a-f]{8}-", "train-", f) for f in files if f.endswith(".parquet")} == {
        f"{c}/train-00000-of-00001.parquet" for c in CONFIGS}
    assert again.rows == small.rows
    assert [p.name for p in run.iterdir() if p.name.startswith(".") and p.name != ".intgen.lock"] == []  # no temporary folders left


def test_configs_without_rows_are_left_out(tmp_path, problems_file, grader):
    def nothing_accepted(request):
        return "\n\nSo $\\boxed{7}$." if request.meta["stage"] in ("check", "baseline") else script(request)

    out = make_run(tmp_path / "run", problems_file, grader, backend=TemplatedFake(nothing_accepted))
    result = export_run_result(out)
    assert result.skipped == ["sft", "llamafactory", "processbench"]
    assert not (out / "export" / "sft").exists()
    text = (out / "export" / "README.md").read_text()
    assert "config_name: sft" not in text and "Left out of this dataset" in text

    import datasets
    assert datasets.load_dataset(str(out / "export"), "interventions", split="train").num_rows == 4


def test_cli_export_and_registration(run, capsys):
    from intgen import cli
    from intgen.commands import export as export_cmd

    assert "intgen.commands.export" in cli.COMMANDS
    parser = argparse.ArgumentParser()
    export_cmd.register(parser.add_subparsers())
    args = parser.parse_args(["export", str(run)])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "sft" in out and "rl" in out
    args = parser.parse_args(["export", str(run / "missing")])
    assert args.func(args) == 2


def test_push_without_a_token_stops_before_exporting(run, monkeypatch):
    import huggingface_hub

    from intgen.hub import PushError, push_run
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    with pytest.raises(PushError, match="HF_TOKEN"):
        push_run(run, "tester/x")
    with pytest.raises(PushError, match="NAMESPACE/NAME"):
        push_run(run, "no-namespace")


def test_transient_errors_are_the_retried_ones():
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError

    from intgen.hub import is_transient

    def http_error(status):
        request = httpx2.Request("POST", "http://127.0.0.1/api/datasets/a/b/commit/main")
        return HfHubHTTPError("x", response=httpx2.Response(status, request=request))

    assert is_transient(http_error(503)) and is_transient(http_error(500)) and is_transient(http_error(429))
    assert not is_transient(http_error(400)) and not is_transient(http_error(412))
    assert is_transient(httpx2.ReadTimeout("slow")) and is_transient(httpx2.ConnectError("refused"))
    assert not is_transient(ValueError("bug"))


# -- push through the fake Hub ------------------------------------------------------------------

TOKEN = "hf_intgen_test_token_7c1d2e9f0a"

PUSH_SCRIPT = textwrap.dedent('''
    import argparse, json, logging, sys
    from pathlib import Path
    import pyarrow.parquet as pq
    logging.basicConfig(level=logging.DEBUG, stream=sys.stderr)
    import datasets
    datasets.logging.set_verbosity_debug()
    from intgen.hub import push_run
    from intgen.commands import export as export_cmd

    run1, run2, run3, repo, out = sys.argv[1:6]
    out = Path(out)

    def load_all(tag, run):
        from huggingface_hub import DatasetCard
        readme = (Path(run) / "export" / "README.md").read_text()
        for c in DatasetCard(readme).data.configs:
            ds = datasets.load_dataset(repo, c["config_name"], split="train")
            (out / tag).mkdir(parents=True, exist_ok=True)
            pq.write_table(ds.data.table, out / tag / (c["config_name"] + ".parquet"))

    # 1: the big run in small shards, through the API
    push_run(run1, repo, max_shard_bytes=800, wait_s=0.01)
    load_all("push1", run1)
    # 2: a smaller run in one shard per config, through the CLI, asking for a private repo
    parser = argparse.ArgumentParser()
    export_cmd.register(parser.add_subparsers())
    args = parser.parse_args(["push", run2, repo, "--private"])
    assert args.func(args) == 0
    load_all("push2", run2)
    # 3: a run that accepted nothing: only interventions and rl remain
    args = parser.parse_args(["push", run3, repo])
    assert args.func(args) == 0
    load_all("push3", run3)
''')


def _export_files(run: Path) -> set[str]:
    export = run / "export"
    return {p.relative_to(export).as_posix() for p in export.rglob("*") if p.is_file()}


def test_push_round_trips_through_a_fake_hub(tmp_path, problems_file, grader):
    run1 = make_run(tmp_path / "run1", problems_file, grader)
    run2 = make_run(tmp_path / "run2", problems_file, grader, "limit=1")

    def nothing_accepted(request):
        return "\n\nSo $\\boxed{7}$." if request.meta["stage"] in ("check", "baseline") else script(request)

    run3 = make_run(tmp_path / "run3", problems_file, grader, "limit=2", backend=TemplatedFake(nothing_accepted))
    repo, out = "tester/intgen-exp", tmp_path / "loaded"
    # one transient failure at each step that can fail: huggingface_hub retries preupload and the
    # LFS upload itself; intgen retries create_repo and the commit
    fail = {("POST", r"^/api/repos/create$"): 1, ("POST", r"/preupload/"): 1, ("PUT", r"^/lfs-upload/"): 1,
            ("POST", r"/commit/"): 1}
    with FakeHub(token=TOKEN, fail=fail) as hub:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
        env.update(HF_ENDPOINT=hub.url, HF_HUB_DISABLE_XET="1", HF_TOKEN=TOKEN, HF_HOME=str(tmp_path / "hf"),
                   HF_HUB_VERBOSITY="debug", HF_HUB_DISABLE_TELEMETRY="1", PYTHONUNBUFFERED="1")
        proc = subprocess.run([sys.executable, "-c", PUSH_SCRIPT, str(run1), str(run2), str(run3), repo, str(out)],
                              env=env, capture_output=True, text=True, timeout=240)
        log = proc.stdout + proc.stderr
        assert proc.returncode == 0, log[-6000:]
        assert all(v == 0 for v in hub.fail.values()), hub.fail  # every injected failure was met and retried
        assert hub.unauthorized == []
        commits = hub.repos[repo].commits
        snapshots = [{p: b.data for p, b in files.items()} for _, files in commits]
        private = hub.repos[repo].private

    # the repo creation plus exactly one commit per push
    assert len(commits) == 4
    for snap, run, tag in zip(snapshots[1:], (run1, run2, run3), ("push1", "push2", "push3")):
        # the repo holds exactly the files of that push's export, byte for byte
        assert set(snap) == _export_files(run) | {".gitattributes"}, tag
        for rel in _export_files(run):
            assert snap[rel] == (run / "export" / rel).read_bytes(), (tag, rel)
        # every config loads back by repo id and config, equal row for row to the export
        configs = [c for c in CONFIGS if (run / "export" / c).exists()]
        assert sorted(p.stem for p in (out / tag).iterdir()) == sorted(configs)
        for c in configs:
            loaded = pq.read_table(out / tag / f"{c}.parquet")
            assert loaded.to_pylist() == view(run, c).to_pylist(), (tag, c)
            assert [(f.name, f.type) for f in loaded.schema] == EXPECTED[c]
    assert len([p for p in snapshots[1] if p.startswith("rl/")]) > 1
    assert [re.sub(r"train-[0-9a-f]{8}-", "train-", p) for p in snapshots[2] if p.startswith("rl/")] == [
        "rl/train-00000-of-00001.parquet"]
    assert not any(p.startswith(("sft/", "processbench/", "llamafactory/")) for p in snapshots[3])
    assert private is True  # --private made the existing public repo private
    assert f'load_dataset("{repo}", "sft", split="train")' in snapshots[2]["README.md"].decode()

    # the token is in no file of the run directories, no log line, and not in the card
    assert TOKEN not in log
    assert "Retrying" in log or "retrying" in log
    for run in (run1, run2, run3):
        for path in run.rglob("*"):
            if path.is_file():
                assert TOKEN.encode() not in path.read_bytes(), path
    for snap in snapshots:
        assert all(TOKEN.encode() not in data for data in snap.values())


def test_loading_by_folder_never_returns_an_earlier_exports_rows(tmp_path, problems_file, grader):
    """datasets caches a local folder by its name and config: two runs' ``export`` folders,
    or one run exported again, must not share a cache entry."""
    import datasets

    first = make_run(tmp_path / "a" / "run", problems_file, grader)
    second = make_run(tmp_path / "b" / "run", problems_file, grader, "check.r=2")
    export_run(first)
    export_run(second)
    a = datasets.load_dataset(str(first / "export"), "interventions", split="train")
    b = datasets.load_dataset(str(second / "export"), "interventions", split="train")
    assert a["check_samples"] != b["check_samples"]
    assert set(b["check_samples"]) <= {0, 2}
