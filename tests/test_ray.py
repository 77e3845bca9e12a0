"""Several engines (issue 16, docs/scale.md): in one process (fake, sim) and on Ray actors over
the fake backend, the tables equal a one-engine run's; an engine actor killed mid-run is
restarted by Ray, its unanswered requests are sent again, and the tables are still the same;
with vLLM's CPU build one actor serves a small spec end to end (slow)."""

import asyncio
import functools
import json
import os
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from intgen.backends import BackendError, make_engines
from intgen.backends.fake import FakeBackend, demo_script
from intgen.config import ExecutorSpec, load_spec
from intgen.runner import run_job, run_job_async

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_shards import ROOT, assert_same_run, demo_spec  # noqa: E402

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'intgen[ray]'; ./setup.sh installs it)")
from intgen.backends.ray_engine import RayEngine, connect  # noqa: E402

SPEC_DIR = ROOT / "pipelines"


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray cluster for this module (2 logical CPUs, no dashboard), shut down after it."""
    started = not ray.is_initialized()
    connect(num_cpus=2)
    yield
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def one_engine(tmp_path_factory, grader):
    out = tmp_path_factory.mktemp("one") / "run"
    r = run_job(demo_spec(), out, spec_dir=SPEC_DIR, progress=False, grader=grader)
    assert r.complete and r.funnel["accepted"] > 0
    return out


def test_several_engines_in_one_process_give_the_same_tables(tmp_path, one_engine, grader):
    r = run_job(demo_spec("executor.engines=3"), tmp_path / "run", spec_dir=SPEC_DIR, progress=False, grader=grader)
    assert r.complete
    assert_same_run(one_engine, tmp_path / "run")
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["executor"] == {"kind": "local", "engines": {"policy": 3, "proposer": 3}}
    busy = r.stats["in_flight_seconds"]
    assert sorted(busy) == ["policy-0", "policy-1", "policy-2"]


def test_route_keys_stay_on_one_engine(tmp_path, grader):
    """Prefix locality: every request of a route key (a candidate's continuations, a rollout's
    proposer requests, a problem's rollouts) is answered by one engine."""
    engines = [FakeBackend(demo_script) for _ in range(3)]
    run_job(demo_spec("limit=12", "source.0.limit=6", "source.1.limit=6"), tmp_path / "run", spec_dir=SPEC_DIR,
            backend=engines, progress=False, grader=grader)
    where: dict[str, set[int]] = {}
    for i, e in enumerate(engines):
        assert e.calls  # every engine got work
        for req in e.calls:
            m = req.meta
            key = {"rollout": m.get("problem_id"), "solve": req.id.rsplit("/", 1)[0],
                   "propose": req.id.rsplit("/", 1)[0], "check": m.get("candidate_id"),
                   "baseline": f"{m.get('rollout_id')}/{m.get('location')}"}[m["stage"]]
            where.setdefault(f"{m['stage']}:{key}", set()).add(i)
    assert where and all(len(v) == 1 for v in where.values())
    # the solve turn and the m proposer samples of one rollout share an engine
    for key in [k for k in where if k.startswith("solve:")]:
        assert where[key] == where[key.replace("solve:", "propose:")]


def test_local_engines_of_a_real_kind_are_refused():
    from intgen.config import BackendSpec

    with pytest.raises(BackendError, match="executor.kind=ray"):
        make_engines(BackendSpec(kind="vllm"), "smollm2-135m-instruct", ExecutorSpec(engines=2))
    with pytest.raises(BackendError, match="sim runs on a virtual clock"):
        make_engines(BackendSpec(kind="sim"), "m", ExecutorSpec(kind="ray", engines=2))


def test_two_ray_actors_give_the_same_tables(tmp_path, one_engine, grader, local_ray):
    spec = demo_spec("executor.kind=ray", "executor.engines=2")
    r = run_job(spec, tmp_path / "run", spec_dir=SPEC_DIR, progress=False, grader=grader)
    assert r.complete
    assert_same_run(one_engine, tmp_path / "run")
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["executor"]["kind"] == "ray" and manifest["backends"]["policy"]["executor"] == "ray"
    sent = sum(st["sent"] for st in manifest["stages"].values())
    answered = sum(st["answered"] for st in manifest["stages"].values())
    assert sent == answered > 0  # every request answered once
    # a resume reads everything back from the store: no actor is started
    r2 = run_job(spec, tmp_path / "run", spec_dir=SPEC_DIR, progress=False, grader=grader)
    assert r2.complete and r2.stats["ledger"]["sessions"][-1]["sent"] == 0
    assert_same_run(one_engine, tmp_path / "run")


def dying_script(marker: str, victim: str, request):
    """The demo script, except that the process answering ``victim`` dies once (os._exit),
    the first time it sees it."""
    if request.id == victim and not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(1)
    return demo_script(request)


class KillingEngine(RayEngine):
    """Kills its actor (``ray.kill(no_restart=False)``, as a node failure would) once it has
    answered ``after`` requests, while others are in flight."""

    def __init__(self, *args, after: int, **kw):
        super().__init__(*args, **kw)
        self.after, self.answered, self.killed_pid = after, 0, None

    async def complete(self, request):
        c = await super().complete(request)
        self.answered += 1
        if self.answered == self.after:
            self.killed_pid = self.pid
            ray.kill(self.actor, no_restart=False)
        return c


@pytest.mark.parametrize("how", ["ray.kill", "os._exit"])
def test_a_killed_actor_is_replaced_and_the_tables_stay_the_same(tmp_path, one_engine, grader, local_ray, how):
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the actor unpickles this module's script
    marker = str(tmp_path / "died")
    spec = demo_spec("executor.kind=ray", "executor.engines=2")
    if how == "ray.kill":
        factory = functools.partial(FakeBackend, demo_script, delay_s=0.02)
        engines = [KillingEngine(factory, FakeBackend(demo_script), after=150 if i == 0 else 10**9, name=f"engine-{i}")
                   for i in range(2)]
    else:
        victim = f"{pq.read_table(one_engine / 'rollouts.parquet').column('rollout_id')[5]}"
        factory = functools.partial(FakeBackend, functools.partial(dying_script, marker, victim), delay_s=0.02)
        engines = [RayEngine(factory, FakeBackend(demo_script), name=f"engine-{i}") for i in range(2)]

    async def go():
        r = await run_job_async(spec, tmp_path / "run", spec_dir=SPEC_DIR, backend=engines, progress=False,
                                close=False, grader=grader)
        pids = [await e.actor.start.remote() for e in engines]
        for e in engines:
            await e.close()
        return r, pids

    r, pids = asyncio.run(go())
    assert r.complete
    if how == "ray.kill":
        assert engines[0].killed_pid is not None and pids[0] != engines[0].killed_pid  # replaced
        assert pids[1] == engines[1].pid
    else:
        assert os.path.exists(marker)
        assert sum(p != e.pid for p, e in zip(pids, engines)) == 1  # exactly one actor was replaced
    assert_same_run(one_engine, tmp_path / "run")
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    for st in manifest["stages"].values():  # nothing lost, nothing answered twice
        assert st["sent"] == st["answered"] and st["failed"] == 0


@pytest.mark.skipif(os.environ.get("INTGEN_SLOW_TESTS") != "1",
                    reason="starts a vLLM CPU engine on a Ray actor (about 2-3 minutes); INTGEN_SLOW_TESTS=1 runs it")
def test_vllm_on_one_ray_actor(tmp_path, grader, local_ray):
    pytest.importorskip("vllm", reason="vLLM is not installed")
    spec = load_spec(ROOT / "pipelines" / "demo-datasets.yaml", ["executor.kind=ray", "executor.engines=1", "limit=1",
                                                        "source.0.limit=1", "source.1.limit=1", "rollout.k=2",
                                                        "propose.m=1", "check.r=2", "sampling.max_tokens=64",
                                                        "backend.max_model_len=2048", "grading.workers=1"])
    t0 = time.monotonic()
    r = run_job(spec, tmp_path / "run", spec_dir=SPEC_DIR, progress=False, grader=grader)
    assert time.monotonic() - t0 < 900, "the time budget of this test"
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["backends"]["policy"]["kind"] == "vllm" and manifest["backends"]["policy"]["executor"] == "ray"
    st = manifest["stages"]["rollout"]
    assert st["sent"] == st["answered"] == 2 and r.funnel["rollouts"] == 2
