"""The whole pipeline on the scripted fake backend: every branch forced, every table
checked exactly and against the others (issue 2, docs/pipeline.md )."""

import json

import pyarrow.parquet as pq
import pytest

from intgen.backends.fake import FakeBackend
from intgen.config import load_spec
from intgen.runner import run_job

P1, P2, P3 = "p1", "p2", "p3"
TRACE_13 = "Add the apples.\n\nThen 5 + 7 = 13.\n\nSo the total is $\\boxed{13}$."
TRACE_HALF = "Set up the ratio.\n\nThe ratio is 2/3.\n\nSo it is $\\boxed{\\frac{2}{3}}$."

PROBLEMS = [
    {"id": P1, "problem": "Sam has 5 apples and gets 7 more. How many?", "reference_solution": "5 + 7 = 12.", "answer": "12"},
    {"id": P2, "problem": "What fraction is one of two equal parts?", "reference_solution": "It is 1/2.", "answer": "\\frac{1}{2}"},
    {"id": P3, "problem": "What is 1 + 1?", "reference_solution": "1 + 1 = 2.", "answer": "2"},
    {"id": "bad-gold", "problem": "Unparseable gold.", "reference_solution": "none", "answer": "\\frac{"},
    {"id": "no-gold", "problem": "No gold.", "reference_solution": "none", "answer": ""},
    {"id": P1, "problem": "duplicate id", "reference_solution": "x", "answer": "1"},
]


def block(content, location):
    return "Verification log ...\n<intervention>" + json.dumps({"content": content, "location": location}) + "</intervention>"


ROLLOUTS = {
    f"{P1}/rollout-0": "Add them: 5 + 7 = 12.\n\nSo $\\boxed{12}$.",  # passes
    f"{P1}/rollout-1": TRACE_13,  # fails: wrong answer
    f"{P2}/rollout-0": TRACE_HALF,  # fails: wrong answer
    f"{P2}/rollout-1": "I am not sure.\n\nMaybe a half.",  # fails: no box
    f"{P3}/rollout-0": "1 + 1 = 2.\n\n$\\boxed{2}$",
    f"{P3}/rollout-1": "1 + 1 = 2.\n\nSo $\\boxed{2}$.",
}
PROPOSALS = {
    f"{P1}/rollout-1/candidate-0": block("Let me recompute 5 + 7 carefully.", 2),
    f"{P1}/rollout-1/candidate-1": block("So the total is 12 apples.", 2),  # leaks the gold
    f"{P1}/rollout-1/candidate-2": block("Recheck.", 9),  # past the last step
    f"{P1}/rollout-1/candidate-3": "I think it is fine.",  # no tag
    # LaTeX in content with single backslashes, and the location as "Substep 2"
    f"{P2}/rollout-0/candidate-0": '<intervention>{"content": "Two equal parts means $\\frac{1}{n}$ with $n = 2$.", '
                                   '"location": "Substep 2"}</intervention>',
    f"{P2}/rollout-0/candidate-1": block("Each part is one of two.", 2),
    f"{P2}/rollout-0/candidate-2": block("Re-read: equal parts.", 1),
    f"{P2}/rollout-0/candidate-3": block("", 0),  # empty: no critical error
    f"{P2}/rollout-1/candidate-0": block("Think of halves.", 0),  # location 0
    f"{P2}/rollout-1/candidate-1": "<intervention>not json at all</intervention>",
    f"{P2}/rollout-1/candidate-2": block("Split into two equal parts.\nEach one is a half of the whole.", 1),
    f"{P2}/rollout-1/candidate-3": RuntimeError("server hung up"),
}
CORRECT = {P1: "So $\\boxed{12}$.", P2: "So $\\boxed{\\frac12}$."}
WRONG = "So $\\boxed{7}$."
# which continuation samples (of r = 4) answer correctly
CHECK_CORRECT = {
    f"{P1}/rollout-1/candidate-0": {0, 2},  # 2/4
    f"{P2}/rollout-0/candidate-0": set(),  # all fail
    f"{P2}/rollout-0/candidate-1": {1},  # 1/4
    f"{P2}/rollout-0/candidate-2": {0, 1, 3},  # 3/4
    f"{P2}/rollout-1/candidate-2": {3},  # 1/4
}
BASELINE_CORRECT = {f"{P1}/rollout-1/location-2": {0}, f"{P2}/rollout-0/location-2": set(),
                    f"{P2}/rollout-0/location-1": {2}, f"{P2}/rollout-1/location-1": set()}


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
    return "\n\nContinuing.\n\n" + (CORRECT[m["problem_id"]] if m["sample_index"] in table.get(group, ()) else WRONG)


@pytest.fixture
def problems_file(tmp_path):
    (tmp_path / "data").mkdir()
    path = tmp_path / "data" / "problems.jsonl"
    lines = [json.dumps(p) for p in PROBLEMS]
    lines.insert(3, "{broken json")
    path.write_text("\n".join(lines) + "\n")
    return path


def make_spec(problems_file, *overrides):
    data = {"name": "t", "source": {"path": str(problems_file), "adapter": "generic"}, "model": "smollm2-135m-instruct",
            "backend": {"kind": "fake"}, "rollout": {"k": 2}, "propose": {"m": 4}, "check": {"r": 4}}
    return load_spec(None, list(overrides), data=data)


def read(out, name):
    return pq.read_table(out / f"{name}.parquet").to_pylist()


@pytest.fixture
def run(grader):
    def _run(tmp_path, problems_file, *overrides, backend=None):
        backend = backend or FakeBackend(script)
        result = run_job(make_spec(problems_file, *overrides), tmp_path / "run", backend=backend, progress=False,
                         grader=grader)
        return result, tmp_path / "run", backend
    return _run


def test_end_to_end_tables_and_funnel(tmp_path, problems_file, run):
    result, out, backend = run(tmp_path, problems_file)
    assert result.funnel == {"problems": 3, "rollouts": 6, "failed_rollouts": 3, "candidates": 12,
                             "parsed_candidates": 6, "leaked": 1, "checked": 5, "accepted": 4, "sft_rows": 3,
                             "rejects": 11}

    problems = read(out, "problems")
    assert [p["problem_id"] for p in problems] == [P1, P2, P3]
    assert problems[1]["gold_answer"] == "\\frac{1}{2}"

    rejects = {(r["stage"], r["record_id"]): r["reason"] for r in read(out, "rejects")}
    assert rejects == {
        ("load", "data/problems.jsonl#4"): "malformed_json",
        ("load", "no-gold"): "missing_gold_answer",
        ("load", P1): "duplicate_id",
        ("load", "bad-gold"): "gold_unparseable",
        ("propose", f"{P2}/rollout-1/candidate-3"): "request_failed",
        ("propose", f"{P1}/rollout-1/candidate-1"): "answer_leak",
        ("propose", f"{P1}/rollout-1/candidate-2"): "location_out_of_range",
        ("propose", f"{P1}/rollout-1/candidate-3"): "no_intervention_tag",
        ("propose", f"{P2}/rollout-0/candidate-3"): "empty_intervention",
        ("propose", f"{P2}/rollout-1/candidate-0"): "location_out_of_range",
        ("propose", f"{P2}/rollout-1/candidate-1"): "unparseable",
    }

    rollouts = {r["rollout_id"]: r for r in read(out, "rollouts")}
    assert {k: (r["verdict"], r["failed"]) for k, r in rollouts.items()} == {
        f"{P1}/rollout-0": ("correct", False), f"{P1}/rollout-1": ("wrong", True),
        f"{P2}/rollout-0": ("wrong", True), f"{P2}/rollout-1": ("no_answer", True),
        f"{P3}/rollout-0": ("correct", False), f"{P3}/rollout-1": ("correct", False)}
    assert rollouts[f"{P1}/rollout-1"]["extracted_answer"] == "13"
    assert rollouts[f"{P1}/rollout-1"]["num_steps"] == 3

    cands = {c["candidate_id"]: c for c in read(out, "candidates")}
    assert len(cands) == 12
    assert cands[f"{P2}/rollout-0/candidate-0"]["intervention"] == "Two equal parts means $\\frac{1}{n}$ with $n = 2$."
    assert cands[f"{P2}/rollout-0/candidate-0"]["location"] == 2
    assert cands[f"{P1}/rollout-1/candidate-0"]["solve_output"] == "Solved with the reference."

    conts = read(out, "continuations")
    checks = [c for c in conts if c["kind"] == "check"]
    baselines = [c for c in conts if c["kind"] == "baseline"]
    assert len(checks) == 5 * 4
    # baselines for the 4 accepted candidates, at 4 distinct (rollout, location) pairs
    assert {c["continuation_id"] for c in baselines} == {
        f"{g}/baseline-{i}" for g in BASELINE_CORRECT for i in range(4)}
    assert all(c["candidate_id"] is None for c in baselines)

    inter = {r["candidate_id"]: r for r in read(out, "interventions")}
    assert set(inter) == {f"{P1}/rollout-1/candidate-0", f"{P1}/rollout-1/candidate-1", f"{P2}/rollout-0/candidate-0",
                          f"{P2}/rollout-0/candidate-1", f"{P2}/rollout-0/candidate-2", f"{P2}/rollout-1/candidate-2"}
    got = {k: (r["accepted"], r["reject_reason"], r["check_correct"], r["check_rate"], r["baseline_rate"], r["lift"], r["selected"])
           for k, r in inter.items()}
    assert got == {
        f"{P1}/rollout-1/candidate-0": (True, None, 2, 0.5, 0.25, 0.25, True),
        # a baseline belongs to (rollout, location): candidates at a measured location carry it too
        f"{P1}/rollout-1/candidate-1": (False, "answer_leak", 0, None, 0.25, None, False),
        f"{P2}/rollout-0/candidate-0": (False, "too_few_correct", 0, 0.0, 0.0, 0.0, False),
        f"{P2}/rollout-0/candidate-1": (True, None, 1, 0.25, 0.0, 0.25, False),
        f"{P2}/rollout-0/candidate-2": (True, None, 3, 0.75, 0.25, 0.5, True),  # best of its rollout
        f"{P2}/rollout-1/candidate-2": (True, None, 1, 0.25, 0.0, 0.25, True),
    }
    c0 = inter[f"{P1}/rollout-1/candidate-0"]
    assert c0["target"] == "Add the apples.\n\nLet me recompute 5 + 7 carefully."
    assert c0["original_step"] == "Then 5 + 7 = 13."
    assert c0["steps"] == ["Add the apples.", "Then 5 + 7 = 13.", "So the total is $\\boxed{13}$."]
    assert c0["failed_trace"] == TRACE_13 and c0["gold_answer"] == "12" and c0["failed_answer"] == "13"
    assert c0["policy_model"] == "smollm2-135m-instruct" and c0["prompt_name"] == "int-propose"
    assert len(c0["prompt_sha256"]) == 64
    # the newline inside an intervention is kept verbatim outside the faithful preset
    assert inter[f"{P2}/rollout-1/candidate-2"]["target"] == "Split into two equal parts.\nEach one is a half of the whole."

    sft = read(out, "sft")
    assert {r["candidate_id"] for r in sft} == {f"{P1}/rollout-1/candidate-0", f"{P2}/rollout-0/candidate-2",
                                                 f"{P2}/rollout-1/candidate-2"}
    row = next(r for r in sft if r["candidate_id"] == f"{P1}/rollout-1/candidate-0")
    assert row["prompt"] == [{"role": "user", "content": PROBLEMS[0]["problem"]}]
    assert row["completion"] == [{"role": "assistant", "content": "Add the apples.\n\nLet me recompute 5 + 7 carefully."}]

    # the check requests continued the unfinished assistant turn holding the target
    check_req = next(r for r in backend.calls if r.id == f"{P1}/rollout-1/candidate-0/continuation-0")
    assert check_req.continue_final is True
    assert check_req.messages[-1] == {"role": "assistant", "content": c0["target"]}
    base_req = next(r for r in backend.calls if r.id == f"{P1}/rollout-1/location-2/baseline-0")
    assert base_req.messages[-1]["content"] == "Add the apples.\n\nThen 5 + 7 = 13."
    # the proposer chat: solve turn, the model's own answer, then the numbered attempt
    prop = next(r for r in backend.calls if r.id == f"{P1}/rollout-1/candidate-0")
    assert [m["role"] for m in prop.messages] == ["user", "assistant", "user"]
    assert prop.messages[1]["content"] == "Solved with the reference."
    assert "**Substep 2:** Then 5 + 7 = 13." in prop.messages[2]["content"]
    # no system prompt unless the spec gives one
    assert all(m["role"] != "system" for r in backend.calls for m in r.messages)

    stats = json.loads((out / "stats.json").read_text())
    assert stats["funnel"] == result.funnel
    assert stats["tokens"]["check"]["samples"] == 20
    manifest = json.loads((out / "manifest.json").read_text())
    # candidate-3's request failed (the script raised, as a server that hung up): the run is done
    # but not complete, and a rerun sends exactly that request again
    assert {s["status"] for s in manifest["stages"].values()} == {"done"}
    assert manifest["status"] == "incomplete" and manifest["complete"] is False and manifest["failed_requests"] == 1
    assert result.complete is False and result.failed == 1 and stats["failed_requests"]["propose"] == 1


def test_tables_agree_with_each_other(tmp_path, problems_file, run):
    _, out, _ = run(tmp_path, problems_file)
    rollouts = {r["rollout_id"]: r for r in read(out, "rollouts")}
    problems = {p["problem_id"] for p in read(out, "problems")}
    cands = read(out, "candidates")
    conts = read(out, "continuations")
    inter = read(out, "interventions")
    for r in rollouts.values():
        assert r["problem_id"] in problems
    for c in cands:
        assert rollouts[c["rollout_id"]]["failed"], "every candidate's rollout exists and failed"
    for row in inter:
        correct = sum(1 for c in conts if c["candidate_id"] == row["candidate_id"] and c["verdict"] == "correct")
        assert row["check_correct"] == correct
        if row["accepted"]:
            assert correct >= 1
            assert row["target"].endswith(row["intervention"])
            assert row["target"].startswith("\n\n".join(row["steps"][: row["location"] - 1]))
    sft_ids = {r["candidate_id"] for r in read(out, "sft")}
    assert sft_ids == {r["candidate_id"] for r in inter if r["selected"]}
    assert all(r["accepted"] for r in inter if r["selected"])


@pytest.mark.parametrize("per_rollout,expected", [
    ("best", {f"{P1}/rollout-1/candidate-0", f"{P2}/rollout-0/candidate-2", f"{P2}/rollout-1/candidate-2"}),
    ("all", {f"{P1}/rollout-1/candidate-0", f"{P2}/rollout-0/candidate-1", f"{P2}/rollout-0/candidate-2",
             f"{P2}/rollout-1/candidate-2"}),
    # first parsed candidate per rollout, kept only if accepted: p2/rollout-0's first (candidate-0) failed its checks
    ("first", {f"{P1}/rollout-1/candidate-0", f"{P2}/rollout-1/candidate-2"}),
])
def test_select_per_rollout(tmp_path, problems_file, per_rollout, expected, run):
    result, out, _ = run(tmp_path, problems_file, f"select.per_rollout={per_rollout}")
    assert {r["candidate_id"] for r in read(out, "sft")} == expected
    assert result.funnel["sft_rows"] == len(expected)


def test_min_correct_two(tmp_path, problems_file, run):
    _, out, _ = run(tmp_path, problems_file, "accept.min_correct=2")
    accepted = {r["candidate_id"] for r in read(out, "interventions") if r["accepted"]}
    assert accepted == {f"{P1}/rollout-1/candidate-0", f"{P2}/rollout-0/candidate-2"}


def test_faithful_preset(tmp_path, problems_file, run):
    result, out, _ = run(tmp_path, problems_file, "faithful=true")
    inter = {r["candidate_id"]: r for r in read(out, "interventions")}
    # doubled newlines in the target
    assert inter[f"{P2}/rollout-1/candidate-2"]["target"] == "Split into two equal parts.\n\nEach one is a half of the whole."
    # substring leak test: "Two equal parts means $\frac{1}{n}$ with $n = 2$." contains neither "\frac{1}{2}" ...
    assert inter[f"{P2}/rollout-0/candidate-0"]["reject_reason"] == "too_few_correct"
    # ... only the first parsed candidate per rollout is checked (the paper kept location 0 of
    # p2/rollout-1/candidate-0: its first parsed candidate, which fails its checks), and select keeps it
    assert inter[f"{P2}/rollout-1/candidate-0"]["reject_reason"] == "too_few_correct"
    assert inter[f"{P2}/rollout-1/candidate-2"]["reject_reason"] == "not_first"
    assert {r["candidate_id"] for r in read(out, "sft")} == {f"{P1}/rollout-1/candidate-0"}
    import yaml
    job = yaml.safe_load((out / "job.yaml").read_text())
    assert job["faithful"] is True and job["select"]["per_rollout"] == "first"


def test_early_stop_draws_waves_and_keeps_the_decisions(tmp_path, problems_file, run):
    # waves of 2 of r = 4; the rule is applied when a wave is complete, whatever the arrival order
    result, out, backend = run(tmp_path, problems_file, "check.early_stop=true", "check.wave=2",
                               backend=FakeBackend(script, delay_s=0.01))
    inter = {r["candidate_id"]: r for r in read(out, "interventions")}
    got = {k: (r["accepted"], r["check_samples"], r["check_correct"], r["check_rate"], r["check_stopped"])
           for k, r in inter.items() if r["reject_reason"] != "answer_leak"}
    assert got == {
        f"{P1}/rollout-1/candidate-0": (True, 2, 1, 0.5, "early_stop"),  # correct at 0 (and 2)
        f"{P2}/rollout-0/candidate-0": (False, 4, 0, 0.0, None),  # never: all r drawn
        f"{P2}/rollout-0/candidate-1": (True, 2, 1, 0.5, "early_stop"),  # correct at 1
        f"{P2}/rollout-0/candidate-2": (True, 2, 2, 1.0, "early_stop"),  # correct at 0, 1 (and 3)
        f"{P2}/rollout-1/candidate-2": (True, 4, 1, 0.25, None),  # correct at 3: the last wave
    }
    # the same accepted set as drawing all r (test_end_to_end_tables_and_funnel)
    assert result.funnel["accepted"] == 4
    sent = [r for r in backend.calls if r.meta["stage"] == "check"]
    assert len(sent) == 14  # of 20


def test_give_up_after_failures_in_a_row_changes_decisions(tmp_path, problems_file, run):
    result, out, backend = run(tmp_path, problems_file, "check.give_up_after=2", "check.wave=2")
    inter = {r["candidate_id"]: r for r in read(out, "interventions")}
    got = {k: (r["accepted"], r["reject_reason"], r["check_samples"], r["check_stopped"])
           for k, r in inter.items() if r["reject_reason"] != "answer_leak"}
    assert got == {
        f"{P1}/rollout-1/candidate-0": (True, None, 4, None),
        f"{P2}/rollout-0/candidate-0": (False, "gave_up", 2, "gave_up"),
        f"{P2}/rollout-0/candidate-1": (True, None, 4, None),  # accepted at sample 1: not hopeless
        f"{P2}/rollout-0/candidate-2": (True, None, 4, None),
        f"{P2}/rollout-1/candidate-2": (False, "gave_up", 2, "gave_up"),  # its success (sample 3) is never drawn
    }
    stats = json.loads((out / "stats.json").read_text())
    assert stats["check_stopped"] == {"gave_up": 2}


def test_stopping_rules_are_refused_in_faithful_mode(problems_file):
    from intgen.config import SpecError
    with pytest.raises(SpecError, match="check.give_up_after"):
        make_spec(problems_file, "faithful=true", "check.give_up_after=12")


def test_continuations_that_all_fail_reject_every_candidate(tmp_path, problems_file, run):
    def all_wrong(request):
        if request.meta["stage"] in ("check", "baseline"):
            return "\n\n" + WRONG
        return script(request)
    result, out, _ = run(tmp_path, problems_file, backend=FakeBackend(all_wrong))
    assert result.funnel["accepted"] == 0 and result.funnel["sft_rows"] == 0
    assert read(out, "sft") == []
    assert [c for c in read(out, "continuations") if c["kind"] == "baseline"] == []


def test_system_prompt_is_sent_to_policy_chats_only(tmp_path, problems_file, run):
    _, _, backend = run(tmp_path, problems_file, "system_prompt=Box the answer.")
    for r in backend.calls:
        has_system = r.messages[0] == {"role": "system", "content": "Box the answer."}
        assert has_system == (r.meta["stage"] in ("rollout", "check", "baseline"))


def test_backend_that_cannot_continue_is_refused_before_any_model_call(tmp_path, problems_file, run):
    from intgen.backends import BackendError
    backend = FakeBackend(script, can_continue=False)
    with pytest.raises(BackendError, match="cannot\n?.*do"):
        run(tmp_path, problems_file, backend=backend)
    assert backend.calls == [] and not (tmp_path / "run").exists()


def test_context_limit_shortens_attempt_and_rejects_what_cannot_fit(tmp_path, problems_file, run):
    long_trace = "\n\n".join(f"Step {i}: " + "word " * 30 for i in range(1, 41)) + "\n\n$\\boxed{13}$"

    def long_rollouts(request):
        if request.meta["stage"] == "rollout" and request.id == f"{P1}/rollout-1":
            return long_trace
        if request.meta["stage"] == "propose" and request.id.startswith(f"{P1}/rollout-1/"):
            return block("Recompute.", 40)
        return script(request)

    backend = FakeBackend(long_rollouts, max_model_len=1200)
    _, out, _ = run(tmp_path, problems_file, "sampling.max_tokens=100", backend=backend)
    cands = {c["candidate_id"]: c for c in read(out, "candidates")}
    assert cands[f"{P1}/rollout-1/candidate-0"]["attempt_shortened"] is True
    assert cands[f"{P2}/rollout-0/candidate-0"]["attempt_shortened"] is False
    sent = next(r for r in backend.calls if r.id == f"{P1}/rollout-1/candidate-0")
    assert "[omitted for length]" in sent.messages[-1]["content"]
    assert "**Substep 41:**" in sent.messages[-1]["content"]
    assert backend.count_prompt_tokens(sent.messages) + 100 <= 1200


def test_missing_source_file_and_unknown_model_stop_at_once(tmp_path):
    from intgen.models import UnknownModelError
    data = {"source": {"path": str(tmp_path / "nope.jsonl")}, "backend": {"kind": "fake"}}
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        run_job(load_spec(None, data=data), tmp_path / "r1", progress=False)
    (tmp_path / "ok.jsonl").write_text('{"problem": "1+1?", "reference_solution": "2", "answer": "2"}\n')
    data = {"source": {"path": str(tmp_path / "ok.jsonl")}, "backend": {"kind": "fake"}, "model": "smollm3"}
    with pytest.raises(UnknownModelError, match="smollm3"):
        run_job(load_spec(None, data=data), tmp_path / "r2", progress=False)


def test_seeds_are_stable_and_distinct(tmp_path, problems_file, run):
    _, out, _ = run(tmp_path, problems_file)
    rollouts = read(out, "rollouts")
    seeds = [r["seed"] for r in rollouts]
    assert len(set(seeds)) == len(seeds)
    _, out2, _ = run(tmp_path / "again", problems_file)
    assert [r["seed"] for r in read(out2, "rollouts")] == seeds


def test_pathological_boxed_answer_in_an_intervention_cannot_hang_the_run(tmp_path, problems_file):
    from intgen.grading_pool import GradingPool

    def tower(request):
        if request.meta["stage"] == "propose" and request.id == f"{P1}/rollout-1/candidate-0":
            return block("Maybe it is $\\boxed{10^{10^{10^{10}}}}$, let me check.", 2)
        return script(request)

    with GradingPool(workers=1, timeout_s=1.0) as pool:
        result = run_job(make_spec(problems_file), tmp_path / "run", backend=FakeBackend(tower), progress=False,
                         grader=pool)
    cands = {c["candidate_id"]: c for c in read(tmp_path / "run", "candidates")}
    # the boxed tower is ungradable (not equal to the gold), so it is not a leak; the run finished
    assert cands[f"{P1}/rollout-1/candidate-0"]["parse_status"] == "ok"
    assert result.funnel["checked"] == 5


def test_location_among_omitted_steps_is_rejected(tmp_path, problems_file, run):
    long_trace = "\n\n".join(f"Step {i}: " + "word " * 30 for i in range(1, 41)) + "\n\n$\\boxed{13}$"

    def omitted(request):
        if request.meta["stage"] == "rollout" and request.id == f"{P1}/rollout-1":
            return long_trace
        if request.meta["stage"] == "propose" and request.id == f"{P1}/rollout-1/candidate-0":
            return block("Recompute.", 20)
        return script(request)

    _, out, _ = run(tmp_path, problems_file, "sampling.max_tokens=100", backend=FakeBackend(omitted, max_model_len=1200))
    cand = {c["candidate_id"]: c for c in read(out, "candidates")}[f"{P1}/rollout-1/candidate-0"]
    assert cand["attempt_shortened"] and cand["parse_status"] == "location_not_shown" and cand["location"] == 20


def test_backend_aborts_nobody_asked_for_are_recorded(tmp_path, problems_file, run):
    from intgen.backends.base import Completion

    def aborting(request):
        if request.id == f"{P1}/rollout-1/candidate-0/continuation-1":
            return Completion(request.id, "", "abort")
        return script(request)

    _, out, _ = run(tmp_path, problems_file, backend=FakeBackend(aborting))
    rejects = {(r["record_id"], r["reason"]) for r in read(out, "rejects")}
    assert (f"{P1}/rollout-1/candidate-0/continuation-1", "request_aborted") in rejects
    row = {r["candidate_id"]: r for r in read(out, "interventions")}[f"{P1}/rollout-1/candidate-0"]
    assert row["check_samples"] == 3


def test_end_of_run_summary_counts_each_dropped_record_once(tmp_path, problems_file, run):
    """A leaked candidate is in rejects.parquet and in interventions.parquet; the summary's
    reasons count it once (the funnel says leaked 1)."""
    from intgen.commands.generate import dropped_reasons

    result, out, _ = run(tmp_path, problems_file)
    assert result.funnel["leaked"] == 1
    reasons = dropped_reasons(out)
    assert reasons["answer_leak"] == 1 and reasons["too_few_correct"] >= 1
