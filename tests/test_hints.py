"""Hint conditions (issue 18, docs/hints.md): the same r samples per condition for the same
candidates; hint-only once per problem; the rates and lifts in ``interventions``; the hint
table of ``intgen eval lift --hints``."""

import json

import pyarrow.parquet as pq
import pytest

from intgen.backends.fake import FakeBackend
from intgen.config import SpecError, load_spec
from intgen.runner import run_job
from intgen.stages.hint import hint_report, hint_text

PROBLEMS = [
    {"id": "a", "problem": "What is 2 + 3?", "answer": "5",
     "reference_solution": "Take 2.\n\nAdd 3.\n\nThat is 5.\n\nSo 5."},
    {"id": "b", "problem": "What is 4 + 4?", "answer": "8", "reference_solution": "Take 4.\nAdd 4.\nSo 8."},
]
ROLLOUT = "First I read it.\n\nThen I add wrongly.\n\nSo $\\boxed{0}$."
INTERVENTION = "Let me add the numbers again."
#: correct sample indices (of r = 4) per condition
CORRECT = {"check": {0}, "baseline": set(), "hint": {0, 1, 2}, "hint+intervention": {0, 1}}


def script(request):
    m = request.meta
    if m["stage"] == "rollout":
        return ROLLOUT
    if m["stage"] == "solve":
        return "Solved with the reference."
    if m["stage"] == "propose":
        return "Log.\n<intervention>" + json.dumps({"content": INTERVENTION, "location": 2}) + "</intervention>"
    cond = m.get("condition", m["stage"])
    good = m["sample_index"] in CORRECT[cond]
    return f"\n\nSo $\\boxed{{{m['gold_answer'] if good else 0}}}$."


@pytest.fixture
def problems_file(tmp_path):
    path = tmp_path / "problems.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in PROBLEMS))
    return path


def spec(problems_file, *overrides):
    data = {"name": "hints", "source": {"path": str(problems_file)}, "backend": {"kind": "fake"},
            "rollout": {"k": 2}, "propose": {"m": 1}, "check": {"r": 4}, "baseline": {"for": "all"},
            "conditions": ["intervention", "hint", "hint+intervention", "original_step"], "hint": {"fraction": 0.5}}
    return load_spec(None, list(overrides), data=data)


def test_hint_text_is_the_first_fraction_of_the_reference_steps():
    assert hint_text(PROBLEMS[0]["reference_solution"], 0.5) == ("Take 2.\n\nAdd 3.", 2)
    assert hint_text(PROBLEMS[1]["reference_solution"], 0.5) == ("Take 4.", 1)  # one line per step
    assert hint_text(PROBLEMS[1]["reference_solution"], 1.0) == ("Take 4.\n\nAdd 4.\n\nSo 8.", 3)
    assert hint_text("", 0.5) == ("", 0)


def test_each_condition_sends_its_prompt_and_its_rates_land_in_the_table(tmp_path, problems_file, grader):
    backend = FakeBackend(script, delay_s=0.002)
    result = run_job(spec(problems_file), tmp_path / "run", backend=backend, progress=False, grader=grader)
    assert result.complete
    out = tmp_path / "run"
    inter = {r["candidate_id"]: r for r in pq.read_table(out / "interventions.parquet").to_pylist()}
    assert len(inter) == 4  # 2 problems x 2 failed rollouts x 1 candidate
    hint_reqs = [q for q in backend.calls if q.meta["stage"] == "hint"]
    only = [q for q in hint_reqs if q.meta["condition"] == "hint"]
    both = [q for q in hint_reqs if q.meta["condition"] == "hint+intervention"]
    # hint alone: once per problem (r samples), not once per candidate; a fresh answer
    assert sorted(q.id for q in only) == sorted(f"{p}/hint-0.5/sample-{l}" for p in "ab" for l in range(4))
    for q in only:
        hint = "Take 2.\n\nAdd 3." if q.meta["problem_id"] == "a" else "Take 4."
        problem = PROBLEMS[0 if q.meta["problem_id"] == "a" else 1]["problem"]
        assert [m["role"] for m in q.messages] == ["user"] and not q.continue_final
        assert q.messages[0]["content"] == f"{problem}\n\nHint: a solution begins as follows.\n\n{hint}"
    # hint + intervention: the same hinted user message, continuing the candidate's prefix + intervention
    assert sorted(q.id for q in both) == sorted(f"{c}/hint-0.5/continuation-{l}" for c in inter for l in range(4))
    for q in both:
        row = inter[q.meta["candidate_id"]]
        assert q.continue_final and [m["role"] for m in q.messages] == ["user", "assistant"]
        assert "Hint: a solution begins as follows." in q.messages[0]["content"]
        assert q.messages[1]["content"] == row["target"] and row["target"].endswith(INTERVENTION)
        assert row["target"].startswith("First I read it.")
    # the same r per condition; rates and lifts over the original step
    for row in inter.values():
        assert (row["check_samples"], row["baseline_samples"], row["hint_samples"],
                row["hint_intervention_samples"]) == (4, 4, 4, 4)
        assert (row["check_rate"], row["baseline_rate"], row["hint_rate"], row["hint_intervention_rate"]) == (
            0.25, 0.0, 0.75, 0.5)
        assert (row["lift"], row["hint_lift"], row["hint_intervention_lift"]) == (0.25, 0.75, 0.5)
        assert row["hint_fraction"] == 0.5 and row["hint_steps"] == (2 if row["problem_id"] == "a" else 1)
    samples = pq.read_table(out / "conditions.parquet").to_pylist()
    assert len(samples) == 8 + 16 and [s["condition"] for s in samples[:4]] == ["hint"] * 4
    table = {t["condition"]: t for t in json.loads((out / "stats.json").read_text())["conditions"]["table"]}
    assert {c: (t["solved"], t["problems"], t["mean_success"], t["items"]) for c, t in table.items()} == {
        "intervention": (2, 2, 0.25, 4), "hint": (2, 2, 0.75, 2), "hint+intervention": (2, 2, 0.5, 4),
        "original_step": (0, 2, 0.0, 4)}
    report = hint_report(out)
    assert "hint+intervention       2 / 2" in report and "75.0%" in report


def test_default_spec_sends_no_hint_request(tmp_path, problems_file, grader):
    data = {"name": "d", "source": {"path": str(problems_file)}, "backend": {"kind": "fake"},
            "rollout": {"k": 2}, "propose": {"m": 1}, "check": {"r": 4}}
    backend = FakeBackend(script)
    run_job(load_spec(None, [], data=data), tmp_path / "run", backend=backend, progress=False, grader=grader)
    assert not any(q.meta["stage"] == "hint" for q in backend.calls)
    assert not (tmp_path / "run" / "conditions.parquet").exists()
    rows = pq.read_table(tmp_path / "run" / "interventions.parquet").to_pylist()
    assert rows and all(r["hint_rate"] is None for r in rows)


def test_conditions_are_validated(problems_file):
    with pytest.raises(SpecError, match="intervention condition"):
        spec(problems_file, "conditions=[hint]")
    with pytest.raises(SpecError, match="baseline.for=none"):
        spec(problems_file, "baseline.for=none")
    with pytest.raises(SpecError, match="same r samples"):
        spec(problems_file, "check.early_stop=true")
    with pytest.raises(SpecError, match="must contain"):
        spec(problems_file, "hint.template=no fields")


def test_shards_of_a_hint_and_hard_pool_run_merge_to_the_unsharded_tables(tmp_path, problems_file, grader):
    from intgen.shards import Shard, merge_runs

    s = spec(problems_file, "rollout.keep=hard")
    run_job(s, tmp_path / "whole", backend=FakeBackend(script), progress=False, grader=grader)
    for i in range(2):
        run_job(s, tmp_path / f"s{i}", backend=FakeBackend(script), progress=False, grader=grader, shard=Shard(i, 2))
    merge_runs([tmp_path / "s0", tmp_path / "s1"], tmp_path / "merged")
    for name in ("hard_pool", "conditions", "interventions"):
        assert pq.read_table(tmp_path / "merged" / f"{name}.parquet").equals(
            pq.read_table(tmp_path / "whole" / f"{name}.parquet")), name
    whole, merged = (json.loads((tmp_path / d / "stats.json").read_text()) for d in ("whole", "merged"))
    assert merged["pass_at_k"] == whole["pass_at_k"] and merged["conditions"] == whole["conditions"]
