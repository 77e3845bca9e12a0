"""Grading throughput and agreement: the pool, one process per item, and in-process.

Issue 4: on the same 1,000 realistic (gold, output) pairs, verdicts per second for

* ``pool``: :class:`intgen.grading_pool.GradingPool` (spawned workers, cold verdict cache:
  a fresh pool whose workers are started before the clock but have graded nothing of
  the set);
* ``per-item``: one fresh ``multiprocessing`` process per verdict, the paper's way
  (``fork`` by default; the parent's caches are cleared first so every child starts cold),
  measured on a subset and reported per verdict;
* ``in-process``: :func:`intgen.grading.grade_answer` in this process, caches cleared;

printed side by side with their ratio to in-process, and the agreement between them (the
fraction of identical verdict statuses on the items both graded).

The pairs are built from ``/work/shared/data`` (MATH-500 and GSM8K golds) with a fixed
seed: the reference solution (MATH-500) or a released GPT-3 solution (GSM8K) as the
reasoning text, ending in a box that holds the gold as written, the gold in another form
(decimal, mixed number, ``\\dfrac``, a unit in ``\\text{}``, grouped digits, plain-text
``pi``/``sqrt``, ...), a wrong answer, the model's own answer (GSM8K), a retracted box
followed by a final one, no box, an output cut off at the token limit, or a box that does
not parse.

Run: ``.venv/bin/python benchmarks/grading.py`` (about a minute on 2 cores); see
``--help`` for the sizes.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import re
import sys
import time
from collections import Counter
from fractions import Fraction
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from intgen import grading  # noqa: E402
from intgen.grading import Verdict, extract_boxed, grade_answer  # noqa: E402
from intgen.grading_pool import GradingPool  # noqa: E402

DATA = Path(os.environ.get("INTGEN_SHARED_DATA", "/work/shared/data"))
Triple = tuple[str, str, "str | None"]

# ------------------------------------------------------------------------------ the pairs

_CALC = re.compile(r"<<[^>]*>>")
_INT = re.compile(r"-?\d+")
_FRAC = re.compile(r"(-?)\\[dt]?frac\{(\d+)\}\{(\d+)\}")


def _unbox(text: str) -> str:
    """``text`` with every ``\\boxed{X}`` replaced by ``X`` (a solution without its answer box)."""
    while True:
        i = text.find("\\boxed{")
        if i < 0:
            return text
        depth, j = 0, i + len("\\boxed")
        for j in range(j, len(text)):
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            if depth == 0:
                break
        else:
            return text[:i] + text[i + len("\\boxed{") :]
        text = text[:i] + text[i + len("\\boxed{") : j] + text[j + 1 :]


def _grouped(n: int, rng: random.Random) -> str:
    sep = rng.choice([",", "{,}", "\\,", " "])
    return f"{n:,}".replace(",", sep)


def _other_forms(gold: str, rng: random.Random) -> list[str]:
    """Correct answers written differently from ``gold`` (may be empty)."""
    g = gold.strip()
    forms: list[str] = []
    if _INT.fullmatch(g):
        n = int(g)
        forms += [f"{n}.0", f"x = {n}", f"\\text{{{n} {rng.choice(['apples', 'marbles', 'dollars', 'cm', 'people'])}}}",
                  f"{n} \\text{{ units}}", f"\\frac{{{2 * n}}}{{2}}", f"${n}$"]
        if abs(n) >= 1000:
            forms += [_grouped(n, rng)] * 3
        if n >= 0:
            forms += [f"\\${n}", f"{n}^\\circ"]
        return forms
    m = _FRAC.fullmatch(g)
    if m is not None:
        sign, a, b = m.group(1), int(m.group(2)), int(m.group(3))
        f = Fraction(a, b)
        forms += [f"{sign}\\dfrac{{{a}}}{{{b}}}", f"{sign}{a}/{b}", f"{sign}\\frac{a}{b}" if a < 10 and b < 10 else f"{sign}({a})/({b})"]
        if f.denominator in (1, 2, 4, 5, 8, 10, 16, 20, 25, 40, 50, 100):
            forms.append(f"{sign}{float(f):g}")
        if a > b and f.denominator > 1:
            w, r = divmod(f.numerator, f.denominator)
            forms += [f"{sign}{w} {r}/{f.denominator}", f"{sign}{w}\\frac{{{r}}}{{{f.denominator}}}"]
        return forms
    if "\\pi" in g and "\\frac" not in g:
        forms.append(g.replace("\\pi", "pi").replace(" ", ""))
    if re.fullmatch(r"\\sqrt\{\d+\}", g):
        forms.append("sqrt(" + g[6:-1] + ")")
    if g.startswith("\\text{") and g.endswith("}"):
        forms.append(g[6:-1])
    forms += [f"${g}$", g.replace("\\frac", "\\dfrac")] if "\\frac" in g else [f"${g}$"]
    return forms


def _wrong(gold: str, rng: random.Random) -> str:
    """A wrong answer near ``gold``."""
    g = gold.strip()
    if _INT.fullmatch(g):
        n = int(g)
        return str(rng.choice([n + 1, n - 1, 2 * n + 1, -n - 1, n + 10]))
    m = _FRAC.fullmatch(g)
    if m is not None:
        a, b = int(m.group(2)), int(m.group(3))
        return rng.choice([f"\\frac{{{b}}}{{{a}}}" if a != b else "0", f"\\frac{{{a + 1}}}{{{b}}}", f"{a}/{b + 1}"])
    digits = [i for i, c in enumerate(g) if c.isdigit()]
    if digits:
        i = rng.choice(digits)
        return g[:i] + str((int(g[i]) + rng.randint(1, 8)) % 10) + g[i + 1 :]
    if g.startswith("\\text{"):
        return "\\text{" + rng.choice(["(A)", "(B)", "(E)", "Bob", "odd"]) + "}"
    return g + " + 1"


def _close(rng: random.Random, box: str) -> str:
    return rng.choice([
        f"\n\nTherefore, the final answer is $\\boxed{{{box}}}$.",
        f"\n\nSo the answer is \\boxed{{{box}}}.",
        f"\n\n**Final Answer**\n\\[\n\\boxed{{{box}}}\n\\]",
        f" Hence $\\boxed{{{box}}}$",
    ])


def build_pairs(n: int = 1000, seed: int = 0) -> list[Triple]:
    """``n`` deterministic (gold, output, finish_reason) triples, half MATH-500, half GSM8K."""
    rng = random.Random(seed)
    math500 = [json.loads(line) for line in open(DATA / "math500" / "test.jsonl")]
    gsm = [json.loads(line) for line in open(DATA / "gsm8k" / "example_model_solutions.jsonl")]
    models = ["6b_finetuning", "6b_verification", "175b_finetuning", "175b_verification"]
    kinds = ["same", "other", "other", "wrong", "wrong", "retracted", "no_box", "cut", "garbage"]
    pairs: list[Triple] = []
    for k in range(n):
        if k % 2 == 0:
            rec = math500[rng.randrange(len(math500))]
            gold, body, own = rec["answer"], _unbox(rec["solution"]), None
        else:
            rec = gsm[rng.randrange(len(gsm))]
            gold = rec["ground_truth"].rsplit("A:", 1)[-1].strip()
            sol = rec[rng.choice(models)]["solution"]
            body, _, own = _CALC.sub("", sol).rpartition("A:")
            body, own = body.strip() or sol, own.strip()
        kind = rng.choice(kinds + (["model", "model", "model"] if own else []))
        finish: str | None = rng.choice([None, "stop"])
        if kind == "same":
            out = body + _close(rng, gold)
        elif kind == "other":
            forms = _other_forms(gold, rng)
            out = body + _close(rng, rng.choice(forms) if forms else gold)
        elif kind == "wrong":
            out = body + _close(rng, _wrong(gold, rng))
        elif kind == "model":
            out = body + _close(rng, own)
        elif kind == "retracted":
            first, last = (gold, _wrong(gold, rng)) if rng.random() < 0.5 else (_wrong(gold, rng), gold)
            out = f"{body}\n\nSo we get $\\boxed{{{first}}}$. Wait, let me double-check that step." + _close(rng, last)
        elif kind == "no_box":
            out = body + f"\n\nFinal Answer: **{gold}**"
        elif kind == "cut":
            full = body + _close(rng, gold)
            out, finish = full[: rng.randrange(len(full) // 3, len(full))], "length"
        else:  # garbage
            out = body + _close(rng, rng.choice(["\\frac{}{}", "see above", "3 + ", "\\left(", "5 \\checkmark 10"]))
        pairs.append((gold, out, finish))
    return pairs


# ------------------------------------------------------------------------------ the three ways

def clear_caches() -> None:
    grading._compare.cache_clear()
    grading._parse_answer.cache_clear()
    grading._answer_kind.cache_clear()
    grading._plain_int.cache_clear()


def run_in_process(pairs: list[Triple]) -> tuple[list[Verdict], float]:
    clear_caches()
    start = time.perf_counter()
    verdicts = [grade_answer(*p) for p in pairs]
    return verdicts, time.perf_counter() - start


def _child(conn, gold: str, output: str, finish_reason: str | None) -> None:
    conn.send(grade_answer(gold, output, finish_reason))
    conn.close()


def run_per_item(pairs: list[Triple], method: str, timeout_s: float) -> tuple[list[Verdict], float]:
    """One new process per verdict (the paper's grader): start, grade, send back, exit."""
    ctx = multiprocessing.get_context(method)
    clear_caches()  # a forked child must not inherit warm caches
    verdicts: list[Verdict] = []
    start = time.perf_counter()
    for gold, output, finish in pairs:
        recv, send = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_child, args=(send, gold, output, finish))
        proc.start()
        send.close()
        if recv.poll(timeout_s):
            verdicts.append(recv.recv())
        else:
            proc.kill()
            verdicts.append(Verdict("ungradable", f"grader timed out after {timeout_s:g} s", extract_boxed(output)))
        proc.join()
        recv.close()
    return verdicts, time.perf_counter() - start


def run_pool(pairs: list[Triple], workers: int, timeout_s: float) -> tuple[list[Verdict], float, float, tuple[int, int, int]]:
    """A fresh pool, its workers started first; returns (verdicts, seconds, startup seconds,
    (workers, cache hits, cache misses) on the set)."""
    pool = GradingPool(workers=workers, timeout_s=timeout_s)
    start = time.perf_counter()
    # start every worker on items outside the set, so the cache is cold for the set
    pool.grade_many([(str(10_000 + i), f"\\boxed{{{10_000 + i}}}", None) for i in range(4 * workers)])
    startup = time.perf_counter() - start
    hits0, misses0 = pool.hits, pool.misses
    start = time.perf_counter()
    verdicts = pool.grade_many(pairs)
    elapsed = time.perf_counter() - start
    pool.close()
    return verdicts, elapsed, startup, (pool.workers, pool.hits - hits0, pool.misses - misses0)


def agreement(a: list[Verdict], b: list[Verdict]) -> float:
    n = min(len(a), len(b))
    return sum(x.status == y.status for x, y in zip(a[:n], b[:n])) / n


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1000, help="pairs (default 1000)")
    ap.add_argument("--per-item", type=int, default=100, help="pairs graded one process each (default 100)")
    ap.add_argument("--per-item-start", default="fork", choices=["fork", "spawn", "forkserver"])
    ap.add_argument("--workers", type=int, default=None, help="pool workers (default: GradingPool's, half the cores)")
    ap.add_argument("--timeout", type=float, default=10.0, help="per-item limit, pool and per-item (s)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    pairs = build_pairs(args.n, args.seed)
    sub = pairs[: args.per_item]
    print(f"{len(pairs)} pairs (seed {args.seed}): {sum(len(o) for _, o, _ in pairs) / len(pairs):.0f} chars an output on average; "
          f"{os.cpu_count()} cores; per-item on the first {len(sub)}", flush=True)

    # one process per item first: children are forked from a process that has graded nothing
    per_item, t_per_item = run_per_item(sub, args.per_item_start, args.timeout)
    in_proc, t_in_proc = run_in_process(pairs)
    pool_v, t_pool, t_startup, (workers, hits, misses) = run_pool(
        pairs, args.workers or max(1, (os.cpu_count() or 2) // 2), args.timeout)

    rate_in = len(pairs) / t_in_proc
    rows = [
        (f"pool ({workers} worker{'s' if workers > 1 else ''})", len(pairs), t_pool),
        (f"one process per item ({args.per_item_start})", len(sub), t_per_item),
        ("in-process", len(pairs), t_in_proc),
    ]
    print()
    print(f"{'method':<34} {'items':>6} {'seconds':>8} {'verdicts/s':>11} {'ms/verdict':>11} {'vs in-process':>14}")
    for name, n, t in rows:
        rate = n / t
        print(f"{name:<34} {n:>6} {t:>8.2f} {rate:>11.1f} {1000 * t / n:>11.2f} {rate / rate_in:>13.2f}x")
    print(f"\npool: {t_startup:.2f} s to start its workers (once per pool, not in the table); "
          f"verdict cache {hits} hits / {misses} misses on the set (same gold and box)")
    print("\nagreement (identical statuses):")
    print(f"  pool vs in-process:         {agreement(pool_v, in_proc):.4f} on {len(pairs)}")
    print(f"  per-item vs in-process:     {agreement(per_item, in_proc):.4f} on {len(sub)}")
    print(f"  pool vs per-item:           {agreement(pool_v, per_item):.4f} on {len(sub)}")
    diffs = [(i, a.status, b.status) for i, (a, b) in enumerate(zip(pool_v, in_proc)) if a.status != b.status]
    for i, a, b in diffs[:5]:
        print(f"  differs at {i}: pool {a}, in-process {b}: {pairs[i][0]!r} / {extract_boxed(pairs[i][1])!r}")
    counts = Counter(v.status for v in in_proc)
    print("\nin-process statuses: " + ", ".join(f"{s} {counts[s]}" for s in ("correct", "wrong", "no_answer", "ungradable")))


if __name__ == "__main__":
    main()
