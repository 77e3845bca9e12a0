"""Data-parallel engines (issue 16; docs/scale.md): scaling on the simulated engine, and the
cost of dispatching through Ray actors.

    .venv/bin/python benchmarks/scale.py                   # 1,000 problems on 1, 2, 4, 8 engines
    .venv/bin/python benchmarks/scale.py --problems 250 --ray-requests 2000 --jobs 1

1. The paper's setup (k = 4, m = 4, r = 32, the full proposer prompt with its solve turn,
   16,384 new tokens) on synthetic problems, run through ``intgen generate`` on 1, 2, 4 and
   8 simulated engines with their fixed defaults (``backend.kind=sim``, ``executor.engines=N``:
   one virtual clock, the streaming scheduler dispatching to N engines, route keys kept on
   one engine). Printed per N: virtual wall time, scaling efficiency time(1) / (N x time(N)),
   mean engine occupancy, and a check that every N takes the same decisions. ``--jobs``
   runs (default 2) go at once, each in its own process; virtual times do not depend on it.
2. Ray's overhead per request on this machine: the same requests through the executor to the
   scripted fake backend (no delay) in this process, on 1 Ray actor and on 2 Ray actors (a
   local Ray cluster); the overhead is the wall time per request above the in-process run.

The last line is the summary the issue names.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from schedule import problems_file  # noqa: E402

from intgen.backends import make_engines  # noqa: E402
from intgen.backends.base import Request, Sampling  # noqa: E402
from intgen.backends.fake import FakeBackend  # noqa: E402
from intgen.config import load_spec  # noqa: E402
from intgen.executor import Executor  # noqa: E402
from intgen.runner import run_job  # noqa: E402


def sim_run(folder: Path, problems: Path, engines: int) -> dict:
    """One run on ``engines`` simulated engines: virtual seconds, mean occupancy, the accepted
    candidates (count and a hash of their ids), real and CPU seconds of this process."""
    spec = load_spec(None, ["backend.kind=sim", "grading.workers=1", f"executor.engines={engines}"], data={
        "name": f"engines-{engines}", "source": {"path": str(problems)},
        "propose": {"prompt": str(ROOT / "prompts/int-propose.yaml"), "m": 4},
        "rollout": {"k": 4}, "check": {"r": 32}, "sampling": {"max_tokens": 16384}})
    backends = make_engines(spec.backend, spec.model, spec.executor)
    out = folder / spec.name
    start, cpu = time.perf_counter(), time.process_time()
    run_job(spec, out, backend=backends, progress=False)
    real, cpu = time.perf_counter() - start, time.process_time() - cpu
    wall = backends[0].clock.now
    occupancy = sum(b.area for b in backends) / (wall * engines * backends[0].spec.max_running)
    accepted = sorted(r["candidate_id"] for r in pq.read_table(out / "interventions.parquet").to_pylist()
                      if r["accepted"])
    shutil.rmtree(out, ignore_errors=True)
    return {"engines": engines, "wall": wall, "occupancy": occupancy, "accepted": len(accepted),
            "accepted_sha": hashlib.sha256("\n".join(accepted).encode()).hexdigest(), "real": real, "cpu": cpu}


def sim_runs(folder: Path, problems: Path, counts: list[int], jobs: int):
    """Yield :func:`sim_run`'s result for each engine count, in order, running ``jobs`` of
    them at once, each in its own process (the virtual times do not depend on it)."""
    if jobs <= 1:
        for n in counts:
            yield sim_run(folder, problems, n)
        return
    procs: dict[int, subprocess.Popen] = {}
    pending = list(counts)

    def launch() -> None:
        while pending and sum(p.poll() is None for p in procs.values()) < jobs:
            n = pending.pop(0)
            procs[n] = subprocess.Popen([sys.executable, __file__, "--one", str(n), "--problems-file", str(problems),
                                         "--keep", str(folder)], stdout=subprocess.PIPE, text=True)

    for n in counts:
        launch()
        while procs.get(n) is None:
            launch()
            time.sleep(0.5)
        out, _ = procs[n].communicate()
        if procs[n].returncode:
            raise SystemExit(f"the run on {n} engines failed (exit {procs[n].returncode})")
        launch()
        yield json.loads(out.strip().splitlines()[-1])


def _reply(request: Request) -> str:
    return "The answer is $\\boxed{1}$."


async def dispatch(engines, n: int) -> float:
    """Wall seconds to send n short requests through the executor to ``engines`` and get every answer."""
    ex = Executor(["rollout"], window=256)
    for e in engines:
        ex.add_engine("policy", e, "m")
    await ex.prepare()
    s = Sampling(max_tokens=16)
    done = []
    for i in range(n):  # one route key per request: the executor spreads them over the engines
        ex.send([Request(f"q{i}", ({"role": "user", "content": "1?"},), s, i, meta={"stage": "rollout"})],
                lambda req, c, v: done.append(c), stage="rollout")
    for e in engines:  # start (and warm up) every engine before the clock starts
        await e.start()
    t0 = time.perf_counter()
    await ex.run()
    elapsed = time.perf_counter() - t0
    assert len(done) == n and all(c.finish_reason == "stop" for c in done)
    for e in engines:
        await e.close()
    return elapsed


def ray_overhead(n: int) -> dict[str, float]:
    """Seconds per request: in process, on 1 Ray actor, on 2 Ray actors."""
    import ray

    from intgen.backends.ray_engine import RayEngine, connect

    connect(num_cpus=2)
    factory = functools.partial(FakeBackend, _reply)
    out = {"in process": asyncio.run(dispatch([FakeBackend(_reply)], n)) / n}
    for k in (1, 2):
        engines = [RayEngine(factory, FakeBackend(_reply), num_cpus=0, name=f"engine-{i}") for i in range(k)]
        asyncio.run(dispatch(engines, min(200, n)))  # warm-up: actor processes, Ray's connections
        engines = [RayEngine(factory, FakeBackend(_reply), num_cpus=0, name=f"engine-{i}") for i in range(k)]
        out[f"{k} Ray actor{'s' if k > 1 else ''}"] = asyncio.run(dispatch(engines, n)) / n
    ray.shutdown()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--problems", type=int, default=1000)
    ap.add_argument("--engines", default="1,2,4,8", help="engine counts (the first is the reference)")
    ap.add_argument("--ray-requests", type=int, default=5000, help="requests of the Ray overhead measurement")
    ap.add_argument("--jobs", type=int, default=2, help="simulated runs at once, each in its own process (default 2)")
    ap.add_argument("--keep", help="keep the run folders here")
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)  # a child: one run, its result as JSON
    ap.add_argument("--problems-file", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(sim_run(Path(args.keep), Path(args.problems_file), args.one)))
        return
    folder = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="intgen-scale-"))
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    counts = [int(x) for x in args.engines.split(",")]
    pf = problems_file(folder, args.problems)
    print(f"the paper's setup on simulated engines: {args.problems} problems, k=4, m=4, r=32, 16,384 new tokens; "
          "each engine: 256 sequences, step 8 ms + 0.094 ms x running, prefill 0.02 ms/token")
    print(f"  {'engines':>7} {'virtual wall':>13} {'speed-up':>9} {'efficiency':>11} {'occupancy':>10} {'real s':>7} "
          f"{'CPU s':>6}")
    results = {}
    for res in sim_runs(folder, pf, counts, args.jobs):
        n, wall = res["engines"], res["wall"]
        results[n] = res
        base = results[counts[0]]["wall"] * counts[0]
        print(f"  {n:>7} {wall / 3600:>11.2f} h {base / wall:>9.2f} {base / (n * wall):>11.3f} {res['occupancy']:>10.3f} "
              f"{res['real']:>7.0f} {res['cpu']:>6.0f}", flush=True)
        assert res["accepted_sha"] == results[counts[0]]["accepted_sha"], "every engine count must take the same decisions"
    print(f"  same decisions on every engine count: yes ({results[counts[0]]['accepted']} accepted)")

    print(f"\nRay overhead per request ({args.ray_requests} short requests through the executor to the fake backend, "
          "local Ray cluster):")
    per = ray_overhead(args.ray_requests)
    for name, s in per.items():
        extra = "" if name == "in process" else f"   overhead {1000 * (s - per['in process']):.3f} ms"
        print(f"  {name:<14} {1000 * s:>7.3f} ms/request{extra}")
    print(f"\nreal time: {time.perf_counter() - t0:.0f} s; runs in {folder}")
    if not args.keep:
        shutil.rmtree(folder, ignore_errors=True)
    over = max(per[k] for k in per if k != "in process") - per["in process"]
    print(f"Ray overhead per request: {1000 * over:.2f} ms (1 and 2 actors, the larger)")
    n = max(counts)
    print(f"scaling efficiency at {n} engines: {results[counts[0]]['wall'] * counts[0] / (n * results[n]['wall']):.3f}")


if __name__ == "__main__":
    main()
