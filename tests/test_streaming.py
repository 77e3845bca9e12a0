"""The streaming dataflow (issue 12): the same tables as the stage-barrier runner, in a
canonical order that does not depend on arrival order; the priority queue; the window;
resume without starting an engine; the barrier schedule; stage status."""

import asyncio
import contextlib
import json
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import test_pipeline
from intgen.backends.base import Request, Sampling
from intgen.backends.fake import FakeBackend
from intgen.config import load_spec
from intgen.executor import Executor
from intgen.runner import run_job

REFERENCE = Path(__file__).resolve().parent / "data" / "streaming_reference"
sys.path.insert(0, str(REFERENCE))
import make as reference  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SORT = {"problems": ["problem_id"], "rollouts": ["rollout_id"], "candidates": ["candidate_id"],
        "continuations": ["continuation_id"], "interventions": ["candidate_id"], "sft": ["candidate_id"],
        "rejects": ["stage", "record_id", "reason"]}


def _sha(path):
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def _sorted(table, name):
    return table.sort_by([(c, "ascending") for c in SORT[name]])


@pytest.mark.parametrize("case", list(reference.CASES))
def test_same_tables_as_the_stage_barrier_runner(tmp_path, case, grader):
    """Tables equal to the ones commit ec7eb6f wrote for the same spec and seeds (as sets of
    rows: the streaming runner writes them in a canonical order; the columns added since are
    left out of the comparison)."""
    pf = reference.problems_file(tmp_path)
    reference.run_case(case, tmp_path / "run", pf)
    for name in reference.TABLES:
        ref = pq.read_table(REFERENCE / case / f"{name}.parquet")
        got = pq.read_table(tmp_path / "run" / f"{name}.parquet")
        assert set(ref.column_names) <= set(got.column_names), name
        if name == "interventions":  # the prompt files' comments changed since (their hash is checked below)
            assert set(got.column("prompt_sha256").to_pylist()) <= {_sha(p) for p in (ROOT / "prompts").glob("*.yaml")}
            ref, got = ref.drop_columns(["prompt_sha256"]), got.drop_columns(["prompt_sha256"])
        got = got.select(ref.column_names)
        assert got.num_rows == ref.num_rows, name
        assert _sorted(got, name).equals(_sorted(ref, name)), name


def test_tables_do_not_depend_on_arrival_order(tmp_path, problems_file, grader):
    """Completions arriving in another order (per-request delays) give byte-equal files:
    every table is written in its canonical order."""
    spec = test_pipeline.make_spec(problems_file, "select.per_rollout=all", "baseline.for=all")
    run_job(spec, tmp_path / "a", backend=FakeBackend(test_pipeline.script), progress=False, grader=grader)
    run_job(spec, tmp_path / "b", backend=FakeBackend(test_pipeline.script, delay_s=0.003), progress=False,
            grader=grader)
    for name in reference.TABLES:
        assert (tmp_path / "a" / f"{name}.parquet").read_bytes() == (tmp_path / "b" / f"{name}.parquet").read_bytes(), name


@pytest.fixture
def problems_file(tmp_path):
    return reference.problems_file(tmp_path)


def test_a_failed_rollout_reaches_the_proposer_before_the_last_rollout_is_answered(tmp_path, problems_file, grader):
    """Streaming, not barriers: the proposer starts while a rollout is still unanswered.
    The fifth rollout is held until a proposer request arrives, and a window of 2 leaves the
    other slot free, so the order does not depend on how fast the grading pool is; under stage
    barriers no proposer request could come before every rollout is answered (the hold gives
    up after 120 s and the assertion fails)."""

    class Gated(FakeBackend):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.proposer_started = asyncio.Event()
            self.rollouts_sent = 0

        async def complete(self, request):
            if request.meta["stage"] != "rollout":
                self.proposer_started.set()
            else:
                self.rollouts_sent += 1
                if self.rollouts_sent == 5:
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(self.proposer_started.wait(), 120)
            return await super().complete(request)

    backend = Gated(test_pipeline.script)
    spec = test_pipeline.make_spec(problems_file, "executor.window=2")
    run_job(spec, tmp_path / "run", backend=backend, progress=False, grader=grader)
    kinds = [r.meta["stage"] for r in backend.calls]  # in answer order
    assert "rollout" in kinds[kinds.index("solve"):], kinds  # a rollout answered after the proposer started


def test_later_stages_go_first(tmp_path, problems_file, grader):
    """Priority: with a window of 1 the engine takes one request at a time, and once a
    candidate's checks are queued nothing earlier in the pipeline goes before them."""
    backend = FakeBackend(test_pipeline.script, delay_s=0.001)
    spec = test_pipeline.make_spec(problems_file, "executor.window=1")
    run_job(spec, tmp_path / "run", backend=backend, progress=False, grader=grader)
    kinds = [r.meta["stage"] for r in backend.calls]
    first_check = kinds.index("check")
    assert kinds[first_check:first_check + 4] == ["check"] * 4


def test_barrier_schedule_gives_the_same_tables(tmp_path, problems_file, grader):
    stream = test_pipeline.make_spec(problems_file)
    barrier = test_pipeline.make_spec(problems_file, "executor.schedule=barrier", "executor.slice=3")
    b1, b2 = FakeBackend(test_pipeline.script), FakeBackend(test_pipeline.script)
    run_job(stream, tmp_path / "s", backend=b1, progress=False, grader=grader)
    run_job(barrier, tmp_path / "b", backend=b2, progress=False, grader=grader)
    for name in reference.TABLES:
        assert (tmp_path / "s" / f"{name}.parquet").read_bytes() == (tmp_path / "b" / f"{name}.parquet").read_bytes()
    order = ["rollout", "solve", "propose", "check", "baseline"]
    kinds = [order.index(r.meta["stage"]) for r in b2.calls]
    assert kinds == sorted(kinds)  # stage by stage


def test_manifest_stage_status_and_counts(tmp_path, problems_file, grader):
    spec = test_pipeline.make_spec(problems_file)
    run_job(spec, tmp_path / "run", backend=FakeBackend(test_pipeline.script), progress=False, grader=grader)
    stages = json.loads((tmp_path / "run" / "manifest.json").read_text())["stages"]
    assert set(stages) == {"rollout", "solve", "propose", "check", "baseline"}
    assert {k: (v["status"], v["requests"], v["sent"], v["answered"], v["failed"], v["from_store"])
            for k, v in stages.items()} == {
        "rollout": ("done", 6, 6, 6, 0, 0), "solve": ("done", 3, 3, 3, 0, 0),
        "propose": ("done", 12, 12, 11, 1, 0), "check": ("done", 20, 20, 20, 0, 0),
        "baseline": ("done", 16, 16, 16, 0, 0)}
    assert all(v["first_at"] <= v["last_at"] for v in stages.values())
    # a resume answers everything from the store
    run_job(spec, tmp_path / "run", backend=FakeBackend(test_pipeline.script), progress=False, grader=grader)
    stages = json.loads((tmp_path / "run" / "manifest.json").read_text())["stages"]
    assert stages["check"]["from_store"] == 20 and stages["check"]["sent"] == 0
    assert stages["propose"]["sent"] == 1  # the failed request is sent again


class _NeverStarts(FakeBackend):
    """A fake whose engine start is recorded (a resume with nothing to do must not start it)."""

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.starts = 0

    async def start(self):
        self.starts += 1


def test_resume_with_nothing_to_do_does_not_start_the_engine(tmp_path, problems_file, grader):
    def script(request):  # no failed requests: everything is answered and stored
        reply = test_pipeline.script(request)
        return "no tag here" if isinstance(reply, Exception) else reply

    spec = test_pipeline.make_spec(problems_file)
    first = _NeverStarts(script)
    run_job(spec, tmp_path / "run", backend=first, progress=False, grader=grader)
    assert first.starts == 1
    again = _NeverStarts(script)
    run_job(spec, tmp_path / "run", backend=again, progress=False, grader=grader)
    assert again.starts == 0 and again.calls == []


def test_executor_keeps_the_window_and_delivers_each_request_once():
    class Counting(FakeBackend):
        def __init__(self):
            super().__init__(lambda r: "x", delay_s=0.002)
            self.now = self.peak = 0

        async def complete(self, request):
            self.now += 1
            self.peak = max(self.peak, self.now)
            try:
                return await super().complete(request)
            finally:
                self.now -= 1

    backend = Counting()
    ex = Executor(["a", "b"], window=3)
    ex.add_engine("policy", backend, "m")
    got: list[str] = []
    sampling = Sampling(max_tokens=8)

    def handler(req, c, v):
        got.append(req.id)
        if req.id.startswith("a"):  # each a-record sends one b-request
            ex.send([Request("b" + req.id[1:], (), sampling, 0)], handler, stage="b")

    async def main():
        ex.send([Request(f"a{i}", (), sampling, 0) for i in range(20)], handler, stage="a")
        await ex.run()

    asyncio.run(main())
    assert sorted(got) == sorted([f"a{i}" for i in range(20)] + [f"b{i}" for i in range(20)])
    assert backend.peak == 3
    assert ex.status()["b"]["status"] == "done" and ex.status()["b"]["answered"] == 20


def test_a_stage_error_stops_the_run(tmp_path):
    ex = Executor(["a"])
    ex.add_engine("policy", FakeBackend(lambda r: "x"), "m")

    def handler(req, c, v):
        raise RuntimeError("a bug in a stage")

    async def main():
        ex.send([Request("a", (), Sampling(), 0)], handler, stage="a")
        await ex.run()

    with pytest.raises(RuntimeError, match="a bug in a stage"):
        asyncio.run(main())


def _sim_problems(folder, n):
    from intgen.backends.sim import marker

    path = folder / "sim.jsonl"
    path.write_text("".join(json.dumps({"id": f"s{i}", "problem": f"P{i} {marker(150)}",
                                        "reference_solution": f"R {marker(600)}", "answer": str(1000 + i)}) + "\n"
                            for i in range(n)))
    return path


def _sim_run(tmp_path, name, problems, *overrides, grader=None):
    from intgen.backends import make_backend

    spec = load_spec(None, ["backend.kind=sim", *overrides], data={
        "source": {"path": str(problems)}, "rollout": {"k": 2}, "propose": {"m": 2}, "check": {"r": 8},
        "sampling": {"max_tokens": 16384}})
    backend = make_backend(spec.backend, spec.model)
    run_job(spec, tmp_path / name, backend=backend, progress=False, grader=grader)
    return tmp_path / name, backend


def test_sim_engine_is_deterministic_for_a_seed(tmp_path, grader):
    problems = _sim_problems(tmp_path, 12)
    a, ba = _sim_run(tmp_path, "a", problems, grader=grader)
    b, bb = _sim_run(tmp_path, "b", problems, grader=grader)
    assert ba.occupancy() == bb.occupancy() and ba.clock.now > 0
    for name in reference.TABLES:
        assert (a / f"{name}.parquet").read_bytes() == (b / f"{name}.parquet").read_bytes(), name
    c, bc = _sim_run(tmp_path, "c", problems, "backend.sim.seed=1", grader=grader)
    assert (a / "rollouts.parquet").read_bytes() != (c / "rollouts.parquet").read_bytes()
    # the funnel follows the spec's rates (12 problems x 2 rollouts: no correct rollout at p_correct=0)
    d, _ = _sim_run(tmp_path, "d", problems, "backend.sim.p_correct=0", "backend.sim.p_parse=1", grader=grader)
    funnel = json.loads((d / "stats.json").read_text())["funnel"]
    assert funnel["failed_rollouts"] == 24 and funnel["parsed_candidates"] == 48


def test_stopping_rules_replay_exactly_on_an_all_r_run(tmp_path, grader):
    """benchmarks/schedule.py replays the rules on an all-r run's verdicts; a run with the
    rule draws exactly the same samples and takes the same decisions."""
    from intgen.stages.check import replay_stopping

    problems = _sim_problems(tmp_path, 30)
    full, _ = _sim_run(tmp_path, "full", problems, "backend.sim.p_good=0.6", grader=grader)
    ruled, _ = _sim_run(tmp_path, "ruled", problems, "backend.sim.p_good=0.6", "check.early_stop=true",
                        "check.give_up_after=4", "check.wave=2", grader=grader)
    by_cand: dict = {}
    for c in pq.read_table(full / "continuations.parquet").to_pylist():
        if c["kind"] == "check":
            by_cand.setdefault(c["candidate_id"], []).append((c["sample_index"], c["verdict"]))
    got = {r["candidate_id"]: (r["check_samples"], r["check_stopped"], r["accepted"])
           for r in pq.read_table(ruled / "interventions.parquet").to_pylist()}
    assert len(got) > 10
    for cid, samples in by_cand.items():
        verdicts = [v for _, v in sorted(samples)]
        drawn, stopped = replay_stopping(verdicts, 8, 2, 1, True, 4)
        assert got[cid] == (drawn, stopped, sum(v == "correct" for v in verdicts[:drawn]) >= 1), cid
    assert {s for _, s, _ in got.values()} >= {"early_stop", "gave_up"}
