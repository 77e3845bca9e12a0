"""The grading pool: same verdicts as grade_answer, a hard per-item limit that replaces a
stuck worker, thread safety, and the verdict cache (issue 4, docs/grading.md)."""

import asyncio
import threading
import time

from intgen.grading import Verdict, grade_answer
from intgen.grading_pool import GradingPool

CASES = [
    ("12", "so $\\boxed{12}$", None),
    ("12", "so $\\boxed{13}$", None),
    ("\\frac{1}{2}", "It is \\boxed{0.5}.", None),
    ("12", "the answer is 12", None),
    ("12", "\\boxed{12} and then \\boxed{1", None),
    ("12", "\\boxed{12}", "length"),
    ("12", "\\boxed{\\checkmark}", None),
    ("(1, 2)", "\\boxed{(1,2)}", None),
]


def test_pool_verdicts_equal_in_process_verdicts(grader):
    assert grader.grade_many(CASES) == [grade_answer(*c) for c in CASES]
    assert [v.status for v in grader.grade_many(CASES)] == [
        "correct", "wrong", "correct", "no_answer", "no_answer", "no_answer", "ungradable", "correct"]


def test_stuck_worker_is_killed_and_replaced():
    with GradingPool(workers=1, timeout_s=1.0) as pool:
        assert pool.grade_many([("5", "\\boxed{5}", None)]) == [Verdict("correct", "matches gold", "5")]
        start = time.monotonic()
        verdict = pool.submit("5", "\\boxed{9^{9^{9^{9}}}}").result()
        elapsed = time.monotonic() - start
        assert verdict == Verdict("ungradable", "grader timed out after 1 s", "9^{9^{9^{9}}}")
        assert elapsed < 4.0  # the pool's limit, not math-verify's own 5 s alarm
        # the next item is graded by a fresh worker
        assert pool.submit("7", "\\boxed{7}").result().status == "correct"


def test_usable_from_threads_and_asyncio(grader):
    results = {}

    def work(i):
        results[i] = grader.submit(str(i), f"\\boxed{{{i}}}").result()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert {i: v.status for i, v in results.items()} == {i: "correct" for i in range(8)}

    async def main():
        return await asyncio.gather(*(grader.grade("3", f"\\boxed{{{x}}}") for x in (3, 4)))

    assert [v.status for v in asyncio.run(main())] == ["correct", "wrong"]


def test_cache_is_keyed_by_the_extracted_answer():
    with GradingPool(workers=1) as pool:
        first = pool.submit("\\frac{1}{2}", "long reasoning ... \\boxed{\\frac12}").result()
        again = pool.submit("\\frac{1}{2}", "different text, same box \\boxed{\\frac12}").result()
        assert first == again and first.status == "correct"
        assert (pool.hits, pool.misses) == (1, 1)
        # a cut-off output is a different key
        assert pool.submit("\\frac{1}{2}", "\\boxed{\\frac12}", "length").result().status == "no_answer"
        assert pool.misses == 2


def test_issue4_case_10_pathological_answer_is_ungradable_and_the_pool_goes_on():
    """Issue 4, case 10: gold 2, a tower of powers; ungradable within the pool's limit."""
    with GradingPool(workers=1, timeout_s=1.0) as pool:
        start = time.monotonic()
        verdict = pool.submit("2", r"\boxed{\dfrac{3^{3^{3^{27}}}+1}{4}}").result()
        elapsed = time.monotonic() - start
        assert verdict == Verdict(
            "ungradable", "grader timed out after 1 s", r"\dfrac{3^{3^{3^{27}}}+1}{4}"
        )
        assert elapsed < 4.0  # the pool's limit, not math-verify's own 5 s alarm
        # the next item is answered normally (by a fresh worker)
        assert pool.submit("2", r"\boxed{\dfrac{6}{3}}").result() == Verdict(
            "correct", "matches gold", r"\dfrac{6}{3}"
        )
        assert pool.submit("2", r"\boxed{3}").result().status == "wrong"


def test_issue4_case_11_pool_from_four_threads_gives_the_serial_verdicts():
    """Issue 4, case 11: the same 200 pairs from 4 threads at once, through a cold pool."""
    from test_grading import _pairs_200  # tests/ is on sys.path (pytest prepend import mode)

    pairs = _pairs_200()
    serial = [grade_answer(*p) for p in pairs]
    results: dict[int, list[Verdict]] = {}
    with GradingPool(workers=2) as pool:
        def work(i: int) -> None:
            shift = i * 50  # each thread submits in a different order
            order = list(range(shift, len(pairs))) + list(range(shift))
            futures = {j: pool.submit(*pairs[j]) for j in order}
            results[i] = [futures[j].result() for j in range(len(pairs))]

        threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert len(results) == 4
    for i in range(4):
        assert results[i] == serial


def test_several_boxes_reach_the_workers(grader):
    """Override 15: the pool keeps every box, so a set or tuple gold is judged on all of them."""
    out = r"the two solutions are \boxed{5} and \boxed{7}"
    triples = [("5, 7", out, None), ("(5, 7)", out, None), ("7", out, None), ("5", out, None)]
    assert [v.status for v in grader.grade_many(triples)] == ["correct", "correct", "correct", "wrong"]
    assert grader.grade_many(triples) == [grade_answer(*t) for t in triples]


def _issue13_and_15_triples() -> list[tuple[str, str, str | None]]:
    """Every case of the kinds added for issues 13 and 15 (tests/test_grading.py)."""
    from test_grading import (  # tests/ is on sys.path (pytest prepend import mode)
        COMPLEX_CASES,
        FAITHFUL_CASES,
        LONG_INT_CASES,
        SEVERAL_BOXES_CASES,
        UNBALANCED_GOLD_CASES,
        boxed,
    )

    triples = [(g, o, None) for g, o, _, _ in SEVERAL_BOXES_CASES]
    triples += [(g, boxed(p), None) for g, p, _ in COMPLEX_CASES + LONG_INT_CASES]
    triples += [(g, boxed("1"), None) for g, _ in UNBALANCED_GOLD_CASES]
    triples += [(g, o, f) for g, o, f, _, _ in FAITHFUL_CASES]
    return triples


def test_pool_verdicts_equal_in_process_verdicts_on_the_new_kinds(grader):
    """Issues 13 and 15: through the pool (compacted outputs), in both modes, the verdicts
    of grade_answer on the full outputs."""
    triples = _issue13_and_15_triples()
    assert grader.grade_many(triples) == [grade_answer(*t) for t in triples]
    assert grader.grade_many(triples, faithful=True) == [grade_answer(*t, faithful=True) for t in triples]


def test_faithful_is_part_of_the_cache_key(grader):
    out = "so the answer is \\boxed{42} and then the model went on and on"
    assert grader.submit("42", out, "length").result().status == "no_answer"
    assert grader.submit("42", out, "length", faithful=True).result() == Verdict("correct", "matches gold", "42")
    assert grader.submit("42", out, "length").result().status == "no_answer"

    async def main():
        return await grader.grade("5, 7", r"\boxed{5} and \boxed{7}", faithful=True)

    assert asyncio.run(main()).status == "wrong"


def test_faithful_timeout_scores_zero():
    """The paper's grader: a 10 s limit (here 1 s), score 0 on timeout."""
    with GradingPool(workers=1, timeout_s=1.0) as pool:
        verdict = pool.submit("5", r"\boxed{9^{9^{9^{9}}}}", faithful=True).result()
        assert verdict == Verdict(
            "wrong", "grader timed out after 1 s; the paper's grader scored it 0", "9^{9^{9^{9}}}"
        )
        assert pool.submit("5", r"\boxed{5}", "length", faithful=True).result().status == "correct"


def test_compact_output_holds_the_same_boxes():
    """The compacted output reads back as the same boxes (or the same cut-off), whatever
    the braces, escapes and box forms around them: 20,000 random outputs."""
    import random

    from intgen.grading import _scan_boxes
    from intgen.grading_pool import _compact

    tokens = ["\\boxed", "\\fbox", "{", "}", "\\{", "\\}", "\\\\", " ", "5", "$", "x",
              "\\boxed ", "\\boxed{", "7}", "\t", "\\"]
    rng = random.Random(0)
    for _ in range(20_000):
        output = "".join(rng.choice(tokens) for _ in range(rng.randint(0, 14)))
        boxes, cut = _scan_boxes(output)
        for faithful in (False, True):
            expected = ([], True) if cut else (boxes[-1:] if faithful else boxes, False)
            assert _scan_boxes(_compact(output, faithful)) == expected, (output, faithful)
    assert _compact("\\boxed \\} and \\boxed{5}") == "\\boxed \\ \\boxed{5}"
