"""``intgen eval localize`` and ``intgen eval lift`` (issue 9).

- metrics by hand for 10 fixed predictions (parse failures, an unanswered sample, and a
  subset with no correct rows, whose F1 is undefined and never printed as 0);
- localize end to end on the shared ProcessBench / PRM800K data with a scripted fake
  proposer (label mapping, the reference join, the no-reference prompt), and on 8
  ProcessBench rows with the real CPU model (SmolLM2-135M on vLLM's CPU build): the
  report agrees with the predictions file;
- lift on a fake-backend run with fixed success patterns equals the hand-computed table.
"""

import asyncio
import json
import re
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from intgen.backends.fake import FakeBackend
from intgen.cli import main
from intgen.config import load_spec
from intgen.evaluation import metrics as M
from intgen.evaluation.lift import lift_async
from intgen.evaluation.localize import build_report, load_examples, localize_async, render_markdown
from intgen.evaluation.spec import load_localize_spec
from intgen.runner import run_job

ROOT = Path(__file__).resolve().parent.parent
EVAL = ROOT / "data" / "eval"  # the samples intgen ships (data/eval/README.md)
PB = EVAL / "processbench_sample.jsonl"
LINKS = EVAL / "processbench_sample_reference_links.jsonl"
PRM = EVAL / "prm800k_stepwise_sample.jsonl"
REFERENCES = ("reference=[{path: %s, adapter: gsm8k}, {path: %s, adapter: math}, {path: %s, adapter: olympiadbench}]"
              % (EVAL / "gsm8k_references.jsonl", EVAL / "math_references.jsonl", EVAL / "olympiadbench_references.jsonl"))


# -- metrics by hand -------------------------------------------------------------------------

# (subset, label, prediction, status); "B" has no correct rows (like PRM800K)
TEN = [
    ("A", 2, 2, "ok"),                  # erroneous, hit, distance 0
    ("A", 3, 1, "ok"),                  # erroneous, miss, distance -2
    ("A", -1, -1, "ok"),                # correct, hit
    ("A", -1, 0, "ok"),                 # correct, miss
    ("A", 1, None, M.PARSE_FAILED),     # erroneous, no prediction
    ("A", -1, None, M.PARSE_FAILED),    # correct, no prediction
    ("B", 4, 4, "ok"),                  # hit, distance 0
    ("B", 2, 3, "ok"),                  # miss, distance +1
    ("B", 0, -1, "ok"),                 # miss; "no error" is not a step: no distance
    ("B", 5, None, M.UNANSWERED),       # miss, never answered
]


def _rows():
    return [{"example_id": f"r{i}", "subset": s, "label": l, "prediction": p, "status": st,
             "parse_status": "ok" if st == "ok" else st} for i, (s, l, p, st) in enumerate(TEN)]


def test_metrics_by_hand_for_ten_predictions():
    got = M.by_subset(_rows())
    a, b, overall = got["subsets"]["A"], got["subsets"]["B"], got["overall"]
    # A: erroneous rows 1, 2, 5 (one hit); correct rows 3, 4, 6 (one hit)
    assert (a["erroneous"], a["correct"]) == (3, 3)
    assert a["acc_erroneous"] == pytest.approx(1 / 3) and a["acc_correct"] == pytest.approx(1 / 3)
    assert a["f1"] == pytest.approx(2 * (1 / 3) * (1 / 3) / (2 / 3))  # = 1/3
    assert a["parse_failures"] == 2 and a["unanswered"] == 0 and a["parse_failure_rate"] == pytest.approx(2 / 6)
    assert a["mean_signed_distance"] == pytest.approx(-1.0) and a["distance_rows"] == 2
    # B: four erroneous rows, one hit; no correct rows: F1 undefined, acc_correct undefined
    assert (b["erroneous"], b["correct"]) == (4, 0)
    assert b["acc_erroneous"] == pytest.approx(0.25)
    assert b["acc_correct"] is None and b["f1"] is None and b["f1_undefined"] == "no correct rows"
    assert b["parse_failures"] == 0 and b["unanswered"] == 1 and b["parse_failure_rate"] == 0.0
    assert b["mean_signed_distance"] == pytest.approx(0.5) and b["distance_rows"] == 2
    # overall: 7 erroneous rows with 2 hits, 3 correct rows with 1 hit
    assert overall["acc_erroneous"] == pytest.approx(2 / 7) and overall["acc_correct"] == pytest.approx(1 / 3)
    assert overall["f1"] == pytest.approx(4 / 13)
    assert overall["parse_failure_rate"] == pytest.approx(2 / 9) and overall["unanswered"] == 1
    assert overall["mean_signed_distance"] == pytest.approx(-0.25) and overall["distance_rows"] == 4
    mean = M.mean_f1(got["subsets"])
    assert mean["value"] == pytest.approx(1 / 3) and mean["left_out"] == ["B"]


def test_f1_is_zero_only_when_both_accuracies_are_zero_and_undefined_without_rows():
    assert M.first_error_metrics([1, -1], [0, 2])["f1"] == 0.0
    m = M.first_error_metrics([-1, -1], [-1, 0])
    assert m["acc_correct"] == 0.5 and m["f1"] is None and m["f1_undefined"] == "no erroneous rows"
    assert M.majority([None, 2, 3, 3, 2]) == 2 and M.majority([None, None]) is None and M.majority([4, 1, 1]) == 1


def test_report_prints_undefined_never_zero():
    rows = _rows()
    steps = {"A": 5, "B": 6}
    ex_rows = [{"example_id": r["example_id"], "subset": r["subset"], "label": r["label"], "reference_id": None,
                "majority": r["prediction"], "majority_status": r["status"], "always_minus_one": -1,
                "always_last": steps[r["subset"]] - 1} for r in rows]
    report = build_report(rows, ex_rows, m=1)
    report.update(data="x.jsonl", model="m", backend="fake", seed=0, samples_per_row=1, skipped_input_rows={},
                  prompts={"with_reference": {"name": "p"}, "without_reference": {"name": "q"}})
    # baselines: always -1 is right on the 3 correct rows only; always-last (4 in A, 5 in B) hits row 10 only
    base = report["baselines"]
    assert base["always_minus_one"]["subsets"]["A"]["f1"] == 0.0
    assert base["always_minus_one"]["subsets"]["B"]["f1"] is None
    assert base["always_last"]["overall"]["acc_erroneous"] == pytest.approx(1 / 7)
    md = render_markdown(report)
    line_b = next(l for l in md.splitlines() if l.startswith("| B |"))
    assert "| 25.0% | undefined | undefined (no correct rows) |" in line_b
    assert "left out, F1 undefined: B" in md


# -- localize on the shipped samples with a scripted proposer ----------------------------------------


def _scripted_proposer(request):
    """Location = the number of substeps (the last one) for gsm8k rows, an empty
    intervention for math rows, no tag for olympiadbench, substep 1 otherwise."""
    critique = next(m["content"] for m in reversed(request.messages) if m["role"] == "user")
    if request.meta.get("stage") == "solve":
        return "My own solution."
    n = len(re.findall(r"\*\*Substep \d+:\*\*", critique))
    pid = request.meta["problem_id"]
    if pid.startswith("gsm8k"):
        return f'<intervention>{{"content": "Check the count again.", "location": {n}}}</intervention>'
    if pid.startswith("math"):
        return '<intervention>{"content": "", "location": 0}</intervention>'
    if pid.startswith("olympiadbench"):
        return "I think it is fine."
    return '<intervention>{"content": "Start over.", "location": "Substep 1"}</intervention>'


def test_localize_label_mapping_reference_join_and_report(tmp_path):
    spec = load_localize_spec(None, ["backend.kind=fake", "per_subset=3", "propose.m=2", REFERENCES], model="fake")
    backend = FakeBackend(_scripted_proposer)
    result = asyncio.run(localize_async(spec, PB, tmp_path, backend=backend, progress=False))
    preds = pq.read_table(tmp_path / "predictions.parquet").to_pylist()
    assert len(preds) == 12 * 2
    source = {json.loads(l)["id"]: json.loads(l) for l in PB.open()}
    links = {json.loads(l)["id"]: json.loads(l)["reference"] for l in LINKS.open()}
    for p in preds:
        row = source[p["example_id"]]
        assert p["steps"] == row["steps"] and p["label"] == row["label"]  # steps as given, not re-split
        # the join by problem text agrees with the shared links file
        assert (p["reference_id"] is None) == (links[p["example_id"]] is None)
        assert p["prompt_name"] == ("int-propose" if p["reference_id"] else "int-propose-noref")
        expected = {"gsm8k": len(row["steps"]) - 1, "math": -1, "olympiadbench": None, "omnimath": 0}[p["subset"]]
        assert p["prediction"] == expected
        assert p["status"] == ("parse_failed" if expected is None else "ok")
    # the numbered attempt shows every given step once, numbered from 1
    asked = [r for r in backend.calls if r.meta["stage"] == "propose" and r.meta["problem_id"] == "gsm8k-0"]
    attempt = asked[0].messages[-1]["content"]
    assert all(f"**Substep {i + 1}:** {s}" in attempt for i, s in enumerate(source["gsm8k-0"]["steps"]))
    # no-reference prompt: no reference solution in the omnimath chat; the gsm8k chat has one
    assert "Reference Solution" not in " ".join(m["content"] for m in
                                                next(r for r in backend.calls if r.meta["problem_id"] == "omnimath-2").messages)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report == json.loads(json.dumps(result.report))
    assert report["references"]["with"] == 9 and report["references"]["without"] == 3
    assert report["references"]["rows_without"] == ["omnimath-2", "omnimath-6", "omnimath-12"]
    _assert_report_matches_predictions(report, preds)
    # rerun: every sample comes from the store
    again = FakeBackend(_scripted_proposer)
    asyncio.run(localize_async(spec, PB, tmp_path, backend=again, progress=False))
    assert again.calls == []


def test_prm800k_rows_label_is_the_rated_step_and_last_step_baseline_is_perfect(tmp_path):
    examples, skipped = load_examples(PRM)
    assert len(examples) == 59 and skipped == {"not_first_error": 196 - 59}
    raw = {f"prm800k-{json.loads(l)['row_index']}": json.loads(l) for l in PRM.open()}
    for e in examples:
        r = raw[e.example_id]
        assert list(e.steps) == r["responses"] + [r["next_response"]] and e.label == len(r["responses"])
    spec = load_localize_spec(None, ["backend.kind=fake", "limit=10",
                                     f"reference={{path: {EVAL / 'math500_references.jsonl'}, adapter: math}}"], model="x")
    result = asyncio.run(localize_async(spec, PRM, tmp_path, backend=FakeBackend(_scripted_proposer), progress=False))
    rep = result.report
    assert rep["references"]["with"] == 10  # all PRM800K problems are MATH-500 problems
    last = rep["baselines"]["always_last"]["overall"]
    assert last["acc_erroneous"] == 1.0 and last["f1"] is None and last["f1_undefined"] == "no correct rows"
    assert rep["per_sample"]["overall"]["f1"] is None
    assert "undefined (no correct rows)" in (tmp_path / "report.md").read_text()


def test_spec_overrides_and_errors():
    spec = load_localize_spec(None, ["propose.m=3", "reference.0.path=a.jsonl", "reference.0.adapter=gsm8k",
                                     "sampling.max_tokens=64"], model="smollm2-135m-instruct")
    assert spec.propose.m == 3 and spec.reference[0].path == "a.jsonl" and spec.sampling.max_tokens == 64
    with pytest.raises(ValueError, match="propose.mm: unknown key"):
        load_localize_spec(None, ["propose.mm=3"])


def _assert_report_matches_predictions(report: dict, preds: list[dict]) -> None:
    """Recompute the per-subset numbers from the predictions file with plain code."""
    subsets = sorted({p["subset"] for p in preds})
    for name in subsets + ["overall"]:
        rs = [p for p in preds if name == "overall" or p["subset"] == name]
        got = report["per_sample"]["overall" if name == "overall" else "subsets"]
        got = got if name == "overall" else got[name]
        err = [p for p in rs if p["label"] >= 0]
        cor = [p for p in rs if p["label"] == -1]
        acc_err = sum(p["prediction"] == p["label"] for p in err) / len(err) if err else None
        acc_cor = sum(p["prediction"] == -1 for p in cor) / len(cor) if cor else None
        assert got["rows"] == len(rs) and got["erroneous"] == len(err) and got["correct"] == len(cor)
        assert got["acc_erroneous"] == pytest.approx(acc_err) if acc_err is not None else got["acc_erroneous"] is None
        assert got["acc_correct"] == pytest.approx(acc_cor) if acc_cor is not None else got["acc_correct"] is None
        if acc_err is None or acc_cor is None:
            assert got["f1"] is None
        elif acc_err + acc_cor:
            assert got["f1"] == pytest.approx(2 * acc_err * acc_cor / (acc_err + acc_cor))
        assert got["parse_failures"] == sum(p["status"] == "parse_failed" for p in rs)
        assert got["unanswered"] == sum(p["status"] == "unanswered" for p in rs)
        assert all((p["prediction"] is None) == (p["status"] != "ok") for p in rs)
        for p in rs:  # the mapping from the parsed location
            if p["parse_status"] == "ok":
                assert p["prediction"] == p["location"] - 1
            elif p["parse_status"] == "empty_intervention":
                assert p["prediction"] == -1


# -- localize with the real CPU model ---------------------------------------------------------


def test_localize_cpu_model_eight_processbench_rows(tmp_path, vllm_engine):
    from intgen.evaluation.localize import localize_async
    from intgen.evaluation.spec import load_localize_spec

    host, backend = vllm_engine  # the session's one engine (tests/conftest.py)
    rows = [json.loads(l) for l in PB.open()]
    picked = []
    for subset in ("gsm8k", "math", "olympiadbench", "omnimath"):  # per subset: one erroneous, one correct row
        picked.append(next(r for r in rows if r["subset"] == subset and r["label"] >= 0))
        picked.append(next(r for r in rows if r["subset"] == subset and r["label"] == -1))
    data = tmp_path / "pb8.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in picked))
    out = tmp_path / "out"
    spec = load_localize_spec(None, ["sampling.max_tokens=64", "propose.prompt=prompts/int-propose-compact.yaml",
                                     "propose.prompt_noref=prompts/int-propose-compact-noref.yaml", REFERENCES],
                              model="smollm2-135m-instruct")
    host.run(localize_async(spec, data, out, spec_dir=ROOT, backend=backend, progress=False, close=False))
    preds = pq.read_table(out / "predictions.parquet").to_pylist()
    report = json.loads((out / "report.json").read_text())
    assert len(preds) == 8 and report["rows"] == 8 and report["samples"] == 8
    assert {p["example_id"] for p in preds} == {r["id"] for r in picked}
    assert report["references"]["with"] == 6 and report["references"]["without"] == 2
    assert all(p["raw_output"].startswith('<intervention>{"content": "') for p in preds if p["status"] != "unanswered")
    assert all(p["completion_tokens"] > 0 for p in preds if p["status"] != "unanswered")
    _assert_report_matches_predictions(report, preds)
    rows_table = pq.read_table(out / "rows.parquet").to_pylist()
    assert [r["always_last"] for r in rows_table] == [len(r["steps"]) - 1 for r in picked]
    print(json.dumps({k: report["per_sample"]["overall"][k] for k in
                      ("acc_erroneous", "acc_correct", "f1", "parse_failure_rate", "mean_signed_distance")}))
    print((out / "report.md").read_text())


# -- lift ----------------------------------------------------------------------------------

GOLD = "7"
# correct sample indices per (stage, problem); the run uses r = 4, eval lift r = 6
PATTERN = {
    ("check", "p1"): {0, 5}, ("check", "p2"): {1, 2}, ("check", "p3"): set(),      # p3: never accepted
    ("baseline", "p1"): set(), ("baseline", "p2"): {3},
    ("lift-problem", "p1"): set(), ("lift-problem", "p2"): {0},
    ("lift-prefix", "p1"): {2, 4}, ("lift-prefix", "p2"): set(),
}
LOCATION = {"p1": 2, "p2": 1, "p3": 3}


def _lift_script(request):
    stage, pid = request.meta["stage"], request.meta["problem_id"]
    if stage == "rollout":
        return "First I add.\n\nThen I multiply.\n\nThen I subtract.\n\nSo the answer is $\\boxed{8}$."
    if stage == "propose":  # continues the compact prompt's '<intervention>{"content": "'
        return f'Let me redo the addition.", "location": {LOCATION[pid]}}}</intervention>'
    i = request.meta["sample_index"]
    if stage == "lift-problem" and pid == "p1" and i == 1:
        return "I am not sure."  # no_answer: graded, not correct
    answer = GOLD if i in PATTERN[(stage, pid)] else "8"
    return f"\n\nSo the answer is $\\boxed{{{answer}}}$."


def _fake_run(tmp_path, grader):
    src = tmp_path / "problems.jsonl"
    src.write_text("".join(json.dumps({"id": pid, "problem": f"Problem {pid}: compute 3 + 4.", "solution": "3 + 4 = 7.",
                                       "answer": GOLD}) + "\n" for pid in ("p1", "p2", "p3")))
    spec = load_spec(None, data={"name": "lift", "source": {"path": str(src)}, "backend": {"kind": "fake"},
                                 "rollout": {"k": 1}, "propose": {"m": 1, "prompt": "prompts/int-propose-compact.yaml"},
                                 "check": {"r": 4}, "sampling": {"max_tokens": 64}})
    out = tmp_path / "run"
    run_job(spec, out, spec_dir=ROOT, backend=FakeBackend(_lift_script), progress=False, grader=grader)
    return out


def test_lift_table_equals_hand_computed(tmp_path, grader):
    out = _fake_run(tmp_path, grader)
    interventions = pq.read_table(out / "interventions.parquet").to_pylist()
    assert sorted(r["problem_id"] for r in interventions if r["accepted"]) == ["p1", "p2"]
    backend = FakeBackend(_lift_script)
    result = asyncio.run(lift_async(out, backend=backend, r=6, progress=False, grader=grader))
    table = {r["condition"]: r for r in result.lift["rows"]}
    # hand-computed: 2 accepted candidates (p1 at location 2, p2 at location 1), 6 samples each per row
    expected = {"problem": (1, 12, 1), "prefix": (2, 12, 1), "prefix_step": (1, 12, 1), "intervention": (4, 12, 2)}
    for cond, (correct, graded, covered) in expected.items():
        row = table[cond]
        assert (row["correct"], row["graded"], row["covered"], row["problems"]) == (correct, graded, covered, 2), cond
        assert row["success_rate"] == pytest.approx(correct / graded) and row["coverage"] == covered / 2
    assert table["prefix_step"]["from_run"] == 8 and table["intervention"]["from_run"] == 8  # 4 per candidate
    assert table["problem"]["from_run"] == 0
    # generated: (a) 12, (b) 12, and the 2 extra samples of (c) and (d) per candidate
    assert len(backend.calls) == 12 + 12 + 4 + 4 and result.lift["generated"] == 32
    assert not any(c.id.endswith(("/continuation-0", "/baseline-0")) for c in backend.calls)
    # (b) for location 1 is a fresh rollout (no assistant prefix); for location 2, step 1 + "\n\n"
    prefix_p1 = next(c for c in backend.calls if c.meta["stage"] == "lift-prefix" and c.meta["problem_id"] == "p1")
    assert prefix_p1.continue_final and prefix_p1.messages[-1]["content"] == "First I add.\n\n"
    prefix_p2 = next(c for c in backend.calls if c.meta["stage"] == "lift-prefix" and c.meta["problem_id"] == "p2")
    assert not prefix_p2.continue_final and prefix_p2.messages[-1]["role"] == "user"
    # written: lift.parquet (the table recomputes from it), stats.json's lift key, the plot
    rows = pq.read_table(out / "lift.parquet").to_pylist()
    assert len(rows) == 2 * 4 * 6
    for cond, (correct, graded, _) in expected.items():
        assert sum(r["verdict"] == "correct" for r in rows if r["condition"] == cond) == correct
    stats = json.loads((out / "stats.json").read_text())
    assert stats["lift"]["rows"] == json.loads(json.dumps(result.lift["rows"])) and "funnel" in stats
    assert (out / "lift.png").stat().st_size > 1000
    # resumable: a second run generates nothing and gives the same table
    again = FakeBackend(_lift_script)
    second = asyncio.run(lift_async(out, backend=again, r=6, progress=False, grader=grader))
    assert again.calls == [] and second.lift["rows"] == result.lift["rows"]


def test_lift_cli_on_a_dry_run(tmp_path, capsys):
    out = tmp_path / "dry"
    assert main(["generate", str(ROOT / "pipelines" / "demo-datasets.yaml"), "backend.kind=fake", "--out", str(out),
                 "--quiet", "limit=2", "check.r=3"]) == 0
    assert main(["eval", "lift", str(out), "--r", "3", "--quiet", "backend.kind=fake", "grading.workers=1"]) == 0
    text = capsys.readouterr().out
    assert "(a) problem alone" in text and "(d) prefix + intervention" in text
    assert "lift" in json.loads((out / "stats.json").read_text())
    assert main(["eval", "lift", str(out), "sampling.temperature=0"]) == 2
