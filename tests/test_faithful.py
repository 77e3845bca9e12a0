"""``faithful: true`` reproduces the paper's released code, difference by difference (issue 15;
docs/faithful.md). One test per numbered item, each in both modes, on the issue's examples,
through whole runs of the fake backend where the item shows in a run."""

import json

import pyarrow.parquet as pq
import pytest

from intgen import interventions
from intgen.backends.fake import FakeBackend
from intgen.config import load_spec
from intgen.evaluation.lift import format_table, lift_table, paper_accuracy
from intgen.runner import run_job
from intgen.stages.propose import chat_sha256, cut_chat
from intgen.steps import build_target, number_steps, split_steps

GOLD = "6"
#: the issue's example trace: a leading separator and a blank run between A and B
TRACE = "\n\nA\n\n\n\nB\n\nC"
PROMPT = "name: tiny\ncritique: |\n  Problem: {{ problem }}\n  Find the first error in:\n  {{ attempt }}\n"


def block(content, location):
    return "Log.\n<intervention>" + json.dumps({"content": content, "location": location}) + "</intervention>"


def continuation(request, correct):
    return "\n\nSo $\\boxed{" + (GOLD if correct else "7") + "}$."


def make_run(tmp_path, grader, problems, script, *overrides, backend=None):
    """Run a job on ``problems`` ({id: text}) with the scripted fake backend; returns
    (run folder, backend, result)."""
    src = tmp_path / "problems.jsonl"
    src.write_text("".join(json.dumps({"id": pid, "problem": text, "solution": "Think.", "answer": GOLD}) + "\n"
                           for pid, text in problems.items()))
    prompt = tmp_path / "tiny.yaml"
    prompt.write_text(PROMPT)
    data = {"name": "f", "source": {"path": str(src)}, "backend": {"kind": "fake"}, "rollout": {"k": 1},
            "propose": {"m": 1, "prompt": str(prompt)}, "check": {"r": 2}, "baseline": {"for": "none"},
            "sampling": {"max_tokens": 32}, "grading": {"workers": 1}}
    spec = load_spec(None, list(overrides), data=data)
    backend = backend or FakeBackend(script)
    out = tmp_path / ("faithful" if spec.faithful else "default")
    result = run_job(spec, out, backend=backend, progress=False, grader=grader)
    return out, backend, result


def read(out, name):
    return pq.read_table(out / f"{name}.parquet").to_pylist()


def by_id(rows, key="candidate_id"):
    return {r[key]: r for r in rows}


MODES = {"default": [], "faithful": ["faithful=true"]}


# -- item 1: empty "\n\n" chunks --------------------------------------------------------------

def test_item1_split_keeps_empty_chunks_in_faithful_mode_only():
    assert split_steps(TRACE) == ["A", "B", "C"]
    assert split_steps(TRACE, keep_empty=True) == ["", "A", "", "B", "C"]
    # location 3: intgen keeps A\n\nB, the paper kept \n\nA
    assert build_target(split_steps(TRACE), 3, "X") == "A\n\nB\n\nX"
    assert build_target(split_steps(TRACE, keep_empty=True), 3, "X", double_newlines=True,
                        any_location=True) == "\n\nA\n\nX"
    assert number_steps(split_steps(TRACE, keep_empty=True)).startswith("**Substep 1:** \n\n**Substep 2:** A")


@pytest.mark.parametrize("mode", MODES)
def test_item1_run_numbers_and_cuts_the_issue_trace(tmp_path, grader, mode):
    def script(request):
        stage = request.meta["stage"]
        if stage == "rollout":
            return TRACE  # no box: failed in both modes
        if stage == "propose":
            return block("Redo B.", 3)
        return continuation(request, True)

    out, backend, _ = make_run(tmp_path, grader, {"q1": "Compute."}, script, *MODES[mode])
    (row,) = read(out, "interventions")
    critique = next(r for r in backend.calls if r.meta["stage"] == "propose").messages[-1]["content"]
    if mode == "faithful":
        assert row["target"] == "\n\nA\n\nRedo B." and row["steps"] == ["", "A", "", "B", "C"]
        assert row["original_step"] == "" and read(out, "rollouts")[0]["num_steps"] == 5
        assert "**Substep 5:** C" in critique and "**Substep 1:** \n\n**Substep 2:** A" in critique
    else:
        assert row["target"] == "A\n\nB\n\nRedo B." and row["steps"] == ["A", "B", "C"]
        assert row["original_step"] == "C" and read(out, "rollouts")[0]["num_steps"] == 3
        assert "**Substep 3:** C" in critique and "**Substep 4:**" not in critique


# -- item 2: the paper's parser -------------------------------------------------------------

UNESCAPED = '<intervention>{"content": "He said "wait" here.", "location": 2}</intervention>'


def test_item2_parse_quirks_in_both_parsers():
    d = lambda out: interventions.parse_intervention(out, 3)  # noqa: E731
    p = interventions.parse_intervention_paper
    # an empty content: intgen rejects it, the paper kept it
    assert d(block("", 2)).status == "empty_intervention"
    assert (p(block("", 2)).status, p(block("", 2)).content, p(block("", 2)).location) == ("ok", "", 2)
    # an out-of-range location: intgen rejects it; the paper kept it, and with it the whole attempt
    assert d(block("Go on.", 9)).status == "location_out_of_range"
    assert (p(block("Go on.", 9)).status, p(block("Go on.", 9)).location) == ("ok", 9)
    steps = split_steps("a\n\nb\n\nc", keep_empty=True)
    assert build_target(steps, 9, "Go on.", double_newlines=True, any_location=True) == "a\n\nb\n\nc\n\nGo on."
    # "5 (the product)": intgen finds no location, the paper took the first number
    assert d(block("Go on.", "5 (the product)")).status == "missing_location"
    assert p(block("Go on.", "5 (the product)")).location == 5
    # an output literal_eval cannot read (unescaped quotes): intgen reads it loosely, the paper dropped it
    assert (d(UNESCAPED).status, d(UNESCAPED).content) == ("ok", 'He said "wait" here.')
    assert p(UNESCAPED).status == "unparseable"
    # what both read: "Substep 2" and LaTeX with single backslashes
    latex = '<intervention>{"content": "Use $\\frac{1}{2}$.", "location": "Substep 2"}</intervention>'
    assert d(latex).content == p(latex).content == "Use $\\frac{1}{2}$." and d(latex).location == p(latex).location == 2
    # a location with no number ended the paper's loop over the attempt's samples
    assert p(block("Go on.", "the third")).status == interventions.PAPER_ERROR


@pytest.mark.parametrize("mode", MODES)
def test_item2_the_first_parsed_candidate_is_another_sample(tmp_path, grader, mode):
    proposals = {0: UNESCAPED, 1: block("Check B.", 2)}

    def script(request):
        stage = request.meta["stage"]
        if stage == "rollout":
            return "A\n\nB\n\nC"
        if stage == "propose":
            return proposals[request.meta["candidate_index"]]
        return continuation(request, True)

    out, _, _ = make_run(tmp_path, grader, {"q1": "Compute."}, script, "propose.m=2", "select.per_rollout=first",
                         *MODES[mode])
    cands = by_id(read(out, "candidates"))
    (sft,) = read(out, "sft")
    if mode == "faithful":
        assert cands["q1/rollout-0/candidate-0"]["parse_status"] == "unparseable"
        assert sft["candidate_id"] == "q1/rollout-0/candidate-1"
    else:
        assert cands["q1/rollout-0/candidate-0"]["parse_status"] == "ok"
        assert sft["candidate_id"] == "q1/rollout-0/candidate-0"


# -- item 3: only the first parsed candidate is checked -------------------------------------------

@pytest.mark.parametrize("mode", MODES)
def test_item3_faithful_mode_checks_the_first_parsed_candidate_only(tmp_path, grader, mode):
    # q1: candidate 0 leaks (substring) and 1 is unreadable, so 2 is the first parsed; q2: the
    # paper's loop raised at candidate 0, so none of q2's candidates is checked
    proposals = {
        "q1": {0: block("It is $\\boxed{6}$.", 2), 1: "<intervention>not a dict</intervention>", 2: block("Check B.", 2),
               3: block("Check C.", 3)},
        "q2": {0: block("Go.", "the third"), 1: block("Check B.", 2), 2: block("Check A.", 1), 3: block("X.", 2)},
    }

    def script(request):
        stage, m = request.meta["stage"], request.meta
        if stage == "rollout":
            return "A\n\nB\n\nC"
        if stage == "propose":
            return proposals[m["problem_id"]][m["candidate_index"]]
        return continuation(request, True)

    # per-request delays: proposals arrive out of index order, the join must not depend on it
    backend = FakeBackend(script, delay_s=0.004)
    out, backend, result = make_run(tmp_path, grader, {"q1": "Compute.", "q2": "Compute again."}, script,
                                    "propose.m=4", "check.r=3", *MODES[mode], backend=backend)
    checked = sorted({r.meta["candidate_id"] for r in backend.calls if r.meta["stage"] == "check"})
    inter = by_id(read(out, "interventions"))
    stats = json.loads((out / "stats.json").read_text())
    if mode == "faithful":
        assert checked == ["q1/rollout-0/candidate-2"]
        assert inter["q1/rollout-0/candidate-3"]["reject_reason"] == "not_first"
        assert inter["q2/rollout-0/candidate-1"]["reject_reason"] == "after_paper_loop_error"
        # not sent: r = 3 for each of q1's candidate 3 and q2's candidates 1, 2, 3
        assert stats["check_requests_not_sent"] == 3 * 4
        assert result.funnel["checked"] == 1 and result.funnel["accepted"] == 1
    else:
        assert checked == ["q1/rollout-0/candidate-2", "q1/rollout-0/candidate-3", "q2/rollout-0/candidate-1",
                           "q2/rollout-0/candidate-2", "q2/rollout-0/candidate-3"]
        assert stats["check_requests_not_sent"] == 0 and result.funnel["checked"] == 5
    assert sum(r.meta["stage"] == "check" for r in backend.calls) == 3 * len(checked)


# -- item 4: grading ------------------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
def test_item4_grading_cut_off_boxes_and_ungradable_rollouts(tmp_path, grader, mode):
    def script(request):
        stage, pid = request.meta["stage"], request.meta["problem_id"]
        if stage == "rollout":
            if pid == "cut":  # a complete, correct box, then cut at the length limit
                return "A\n\nSo $\\boxed{6}$ and then", "length"
            return "A\n\nSo $\\boxed{6\\text{ or more}}$."  # does not parse: ungradable
        if stage == "propose":
            return block("Check A.", 1)
        # continuations: a correct box, cut at the length limit
        return "\n\nSo $\\boxed{6}$, and", "length"

    out, backend, result = make_run(tmp_path, grader, {"cut": "Compute.", "ung": "Compute again."}, script,
                                    *MODES[mode])
    rollouts = by_id(read(out, "rollouts"), "rollout_id")
    proposed = {r.meta["problem_id"] for r in backend.calls if r.meta["stage"] == "propose"}
    inter = read(out, "interventions")
    if mode == "faithful":  # the paper graded the last box whatever the finish, and scored the rest 0
        assert rollouts["cut/rollout-0"]["verdict"] == "correct" and not rollouts["cut/rollout-0"]["failed"]
        assert rollouts["ung/rollout-0"]["verdict"] == "wrong" and rollouts["ung/rollout-0"]["failed"]
        assert proposed == {"ung"}
        assert [(r["check_correct"], r["accepted"]) for r in inter] == [(2, True)]
    else:
        assert rollouts["cut/rollout-0"]["verdict"] == "no_answer" and rollouts["cut/rollout-0"]["failed"]
        assert rollouts["ung/rollout-0"]["verdict"] == "ungradable" and not rollouts["ung/rollout-0"]["failed"]
        assert proposed == {"cut"}
        assert [(r["check_correct"], r["accepted"]) for r in inter] == [(0, False)]


# -- item 5: the paper cut the rendered prompt --------------------------------------------------

LONG_TRACE = "\n\n".join(f"Step {i} adds {i} to the running total of the sum." for i in range(1, 31))


@pytest.mark.parametrize("mode", MODES)
def test_item5_a_long_proposer_chat(tmp_path, grader, mode):
    def script(request):
        stage = request.meta["stage"]
        if stage == "rollout":
            return LONG_TRACE
        if stage == "propose":
            return block("Check step 2.", 2)
        return continuation(request, True)

    if mode == "faithful":
        backend = FakeBackend(script)
        out, backend, _ = make_run(tmp_path, grader, {"q1": "Compute."}, script, "faithful=true",
                                   "propose.cut_prompt_tokens=60", backend=backend)
    else:  # intgen shortens the attempt to fit the context (here 200 fake tokens)
        backend = FakeBackend(script, max_model_len=200)
        out, backend, _ = make_run(tmp_path, grader, {"q1": "Compute."}, script, backend=backend)
    (req,) = {r.id: r for r in backend.calls if r.meta["stage"] == "propose"}.values()
    (row,) = read(out, "proposer_prompts")
    text = req.messages[-1]["content"]
    if mode == "faithful":
        # the first 60 tokens of the rendered chat, left open: no end of turn, no generation header
        assert req.continue_final and req.messages[-1]["role"] == "user"
        assert backend.count_prompt_tokens(req.messages, True) <= 60
        assert text.startswith("Problem: Compute.\nFind the first error in:\n**Substep 1:** Step 1 adds")
        assert "omitted for length" not in text and "**Substep 30:**" not in text
        assert row["cut_at_tokens"] == 60 and row["omitted_first"] is None
    else:
        assert not req.continue_final and "[omitted for length]" in text and "**Substep 30:**" in text
        assert row["cut_at_tokens"] is None and row["omitted_first"] is not None


def test_item5_cut_chat_is_the_longest_start_within_the_limit():
    def count(messages, continue_final):  # words, plus 2 per message, plus 3 for a generation header
        return sum(len(m["content"].split()) + 2 for m in messages) + (0 if continue_final else 3)

    chat = ({"role": "user", "content": "one two three"}, {"role": "assistant", "content": "four five"},
            {"role": "user", "content": "six seven eight nine ten"})
    assert cut_chat(chat, False, 100, count) == (chat, False, False)
    cut, open_, was_cut = cut_chat(chat, False, 14, count)
    assert was_cut and open_ and cut[:2] == chat[:2] and cut[2]["content"] == "six seven eight "
    assert count(cut, True) == 14
    # only the generation header does not fit: the whole chat, left open
    assert cut_chat(chat, False, 16, count) == (chat, True, True)


# -- item 6: the proposer chat, once per rollout ------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
def test_item6_proposer_prompts_table(tmp_path, grader, mode):
    def script(request):
        stage = request.meta["stage"]
        if stage == "rollout":
            return "A\n\nB\n\nC"
        if stage == "propose":
            return block("Check B.", 2)
        return continuation(request, True)

    out, backend, _ = make_run(tmp_path, grader, {"q1": "Compute.", "q2": "Compute again."}, script, "propose.m=3",
                               *MODES[mode])
    prompts = by_id(read(out, "proposer_prompts"), "rollout_id")
    assert sorted(prompts) == ["q1/rollout-0", "q2/rollout-0"]  # once per rollout, not per candidate
    for req in (r for r in backend.calls if r.meta["stage"] == "propose"):
        row = prompts[req.meta["rollout_id"]]
        assert tuple(row["messages"]) == req.messages and row["continue_final"] == req.continue_final
        assert row["sha256"] == chat_sha256(req.messages, req.continue_final) and row["prompt_name"] == "tiny"
    cands = read(out, "candidates")
    assert len(cands) == 6 and all(c["proposer_prompt_id"] == c["rollout_id"] for c in cands)
    assert all(r["proposer_prompt_id"] in prompts for r in read(out, "interventions"))


# -- eval lift: the paper's units -------------------------------------------------------------

def test_lift_prints_the_papers_units_beside_its_own():
    # p1: 1 of 2 samples correct; p2: 0 of 4 (one ungradable: the paper scored it 0, intgen leaves it out)
    rows = ([{"condition": "intervention", "problem_id": "p1", "verdict": v, "origin": "lift"}
             for v in ("correct", "wrong")]
            + [{"condition": "intervention", "problem_id": "p2", "verdict": v, "origin": "lift"}
               for v in ("wrong", "wrong", "no_answer", "ungradable")])
    assert paper_accuracy(rows) == pytest.approx((1 / 2 + 0 / 4) / 2)
    table = {r["condition"]: r for r in lift_table(rows, ["p1", "p2"])}
    row = table["intervention"]
    assert row["success_rate"] == pytest.approx(1 / 5) and (row["paper_solved"], row["problems"]) == (1, 2)
    text = format_table({"items": 2, "candidates": "accepted", "rollouts": 2, "problems": 2, "r": 3, "fresh": False,
                         "rows": list(table.values()), "note": None})
    line = next(x for x in text.splitlines() if x.strip().startswith("(d)"))
    assert "20.00%" in line and line.rstrip().endswith("1/2    25.00%")
    assert "paper:" in text.splitlines()[1]


def test_item5_cut_equals_the_papers_decoded_prefix_with_a_real_tokenizer():
    """With SmolLM2's tokenizer, the cut chat renders to exactly ``decode(ids[:N])`` of the
    whole rendered chat with its generation header (the paper's cut)."""
    from intgen.backends.templates import ChatRenderer, load_tokenizer

    tok = load_tokenizer("smollm2-135m-instruct")
    renderer = ChatRenderer(tok)
    chat = ({"role": "user", "content": "Solve the problem with the reference. " * 20},
            {"role": "assistant", "content": "I solved it. " * 20},
            {"role": "user", "content": "Check every substep: " + " ".join(f"Substep {i}: x = {i}." for i in range(200))})
    count = lambda messages, continue_final: len(renderer.ids(messages, continue_final))  # noqa: E731
    cut, open_, was_cut = cut_chat(chat, False, 300, count)
    assert was_cut and open_ and cut[:2] == chat[:2] and count(cut, True) == 300
    ids = tok(tok.apply_chat_template(list(chat), tokenize=False, add_generation_prompt=True),
              add_special_tokens=False)["input_ids"]
    assert len(ids) > 2000
    assert renderer.render(cut, True).text == tok.decode(ids[:300])
