"""The hard pool (issue 18, docs/hard-pool.md): rollouts in index-ordered waves that stop at
the first wave holding a correct answer; only problems with pass@k = 0 go on to propose; the
pool is its own table and export config, and a later job's source."""

import json

import pyarrow.parquet as pq
import pytest

from intgen.backends.fake import FakeBackend
from intgen.config import SpecError, load_spec
from intgen.export import export_run
from intgen.runner import run_job

PROBLEMS = [
    {"id": "late", "problem": "What is 2 + 3?", "reference_solution": "2 + 3 = 5.", "answer": "5"},
    {"id": "early", "problem": "What is 1 + 1?", "reference_solution": "1 + 1 = 2.", "answer": "2"},
    {"id": "never", "problem": "What is 4 + 4?", "reference_solution": "4 + 4 = 8.", "answer": "8"},
    {"id": "beyond", "problem": "What is 3 + 3?", "reference_solution": "3 + 3 = 6.", "answer": "6"},
]
#: the rollout indices that answer correctly (k = 8, waves of 4)
CORRECT = {"late": {5}, "early": {1, 6}, "never": set(), "beyond": {9}}


def script(request):
    m = request.meta
    if m["stage"] == "rollout":
        good = m["rollout_index"] in CORRECT[m["problem_id"]]
        return f"I add the numbers.\n\nSo the answer is $\\boxed{{{m['gold_answer'] if good else 0}}}$."
    if m["stage"] == "propose":
        return "The attempt looks fine to me."  # no intervention: the run stops at propose
    return "\n\nDone. $\\boxed{0}$"


@pytest.fixture
def problems_file(tmp_path):
    path = tmp_path / "problems.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in PROBLEMS))
    return path


def spec(source, *overrides):
    data = {"name": "hard", "source": source, "backend": {"kind": "fake"},
            "rollout": {"k": 8, "keep": "hard", "wave": 4}, "propose": {"m": 1}, "check": {"r": 2}}
    return load_spec(None, list(overrides), data=data)


def read(out, name):
    return pq.read_table(out / f"{name}.parquet").to_pylist()


def test_pool_holds_exactly_the_unsolved_and_waves_stop_at_a_success(tmp_path, problems_file, grader):
    backend = FakeBackend(script, delay_s=0.002)  # answers arrive out of order
    result = run_job(spec({"path": str(problems_file)}), tmp_path / "run", backend=backend, progress=False,
                     grader=grader)
    out = tmp_path / "run"
    assert result.complete
    asked = {}
    for r in backend.calls:
        if r.meta["stage"] == "rollout":
            asked.setdefault(r.meta["problem_id"], set()).add(r.meta["rollout_index"])
    # early: its first wave holds a success, so the second is never sent; late: the second wave
    # (indices 4-7) holds index 5; never/beyond: all k = 8 spent (beyond's success is past k)
    assert asked == {"early": set(range(4)), "late": set(range(8)), "never": set(range(8)),
                     "beyond": set(range(8))}
    pool = read(out, "hard_pool")
    assert [(h["problem_id"], h["samples_spent"], h["waves"]) for h in pool] == [("never", 8, 2), ("beyond", 8, 2)]  # problem order
    assert pool[0]["reference_solution"] == "4 + 4 = 8." and pool[0]["gold_answer"] == "8"
    # only the hard problems' failed rollouts reach the proposer, all k of each
    proposed = sorted(r.meta["rollout_id"] for r in backend.calls if r.meta["stage"] == "propose")
    assert proposed == sorted(f"{p}/rollout-{j}" for p in ("never", "beyond") for j in range(8))
    assert result.funnel["hard_problems"] == 2 and result.funnel["rollouts"] == 4 + 8 + 8 + 8
    assert result.stats["pass_at_k"] == {next(iter(result.stats["pass_at_k"])): {
        "problems": 4, "solved": 2, "pass_at_k": 0.5}}

    export_run(out)
    exported = pq.read_table(out / "export" / "hard_pool").to_pylist()
    assert [h["problem_id"] for h in exported] == ["never", "beyond"]
    card = (out / "export" / "README.md").read_text()
    assert "hard_pool" in card and "| 4 | 2 | 50.0% |" in card

    # the pool is a later job's source
    later = load_spec(None, ["rollout.k=2"], data={
        "name": "later", "backend": {"kind": "fake"}, "propose": {"m": 1}, "check": {"r": 2},
        "source": {"path": str(out / "hard_pool.parquet"), "adapter": "generic", "columns": {"id": "problem_id"}}})
    run_job(later, tmp_path / "later", backend=FakeBackend(script), progress=False, grader=grader)
    assert [(p["problem_id"], p["gold_answer"]) for p in read(tmp_path / "later", "problems")] == [
        ("never", "8"), ("beyond", "6")]


def test_same_pool_whatever_the_arrival_order(tmp_path, problems_file, grader):
    for i, delay in enumerate((0.0, 0.003)):
        run_job(spec({"path": str(problems_file)}), tmp_path / f"run{i}", backend=FakeBackend(script, delay_s=delay),
                progress=False, grader=grader)
    assert (tmp_path / "run0" / "hard_pool.parquet").read_bytes() == (tmp_path / "run1" / "hard_pool.parquet").read_bytes()
    assert (tmp_path / "run0" / "rollouts.parquet").read_bytes() == (tmp_path / "run1" / "rollouts.parquet").read_bytes()


def test_default_keeps_every_failed_rollout_and_writes_no_pool(tmp_path, problems_file, grader):
    data = {"name": "d", "source": {"path": str(problems_file)}, "backend": {"kind": "fake"},
            "rollout": {"k": 8}, "propose": {"m": 1}, "check": {"r": 2}}
    backend = FakeBackend(script)
    run_job(load_spec(None, [], data=data), tmp_path / "run", backend=backend, progress=False, grader=grader)
    assert sum(r.meta["stage"] == "rollout" for r in backend.calls) == 32
    assert not (tmp_path / "run" / "hard_pool.parquet").exists()


def test_wave_must_divide_k_and_needs_keep_hard(problems_file):
    with pytest.raises(SpecError, match="multiple of wave"):
        spec({"path": str(problems_file)}, "rollout.wave=3")
    with pytest.raises(SpecError, match="keep=hard"):
        spec({"path": str(problems_file)}, "rollout.keep=failed")
