"""How busy the engine stays, streaming against stage barriers, on vLLM's CPU build (issue 12).

    .venv/bin/python benchmarks/occupancy_vllm.py            # about 10 minutes on 2 cores
    .venv/bin/python benchmarks/occupancy_vllm.py --skip-barrier --keep runs/bench

Runs ``benchmarks/vllm-cpu.yaml`` (SmolLM2-135M-Instruct, 20 demo problems, an engine
batch of ``max_num_seqs: 16``) through ``intgen generate`` twice, each in its own process
with a fresh engine: with the streaming schedule, and with ``executor.schedule=barrier``
(every stage waits for the one before it, all its requests at once: the schedule of intgen
before the streaming dataflow). For each it prints the share of generation time with 8 or
fewer requests in the engine while requests were still to come (from ``stats.json``'s
``in_flight_seconds``: the executor's window is 2 x 16, so the engine runs min(in flight,
16) sequences), and the wall time.

Then it calibrates the simulated engine to this machine (decode step time at 1 and 16
sequences, prefill time per token, measured on a fresh engine), takes the funnel rates and
output lengths that the streaming run measured, runs the same spec on ``backend.kind=sim``
and prints the simulator's predicted generation time beside the measured one.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "benchmarks" / "vllm-cpu.yaml"
CAP = 8


def generate(out: Path, *overrides: str) -> float:
    """One ``intgen generate`` of the benchmark spec in its own process; returns its wall seconds."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "intgen.cli", "generate", str(SPEC), "--out", str(out), "--quiet",
                    *overrides], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def generation_seconds(out: Path) -> float:
    """From the first request to the last completion (manifest stage times)."""
    stages = json.loads((out / "manifest.json").read_text())["stages"].values()
    return max(s["last_at"] for s in stages if s["last_at"]) - min(s["first_at"] for s in stages if s["first_at"])


def low_share(out: Path) -> tuple[float, float]:
    """(share of the time with <= CAP requests in flight, seconds) while requests were still to come."""
    (hist,) = json.loads((out / "stats.json").read_text())["in_flight_seconds"].values()
    total = sum(hist)
    return (sum(hist[: CAP + 1]) / total if total else 0.0), total


async def _calibrate() -> dict[str, float]:
    from intgen.backends.base import Request, Sampling
    from intgen.backends.vllm import VLLMBackend
    from intgen.config import BackendSpec

    backend = VLLMBackend("smollm2-135m-instruct", BackendSpec(max_model_len=8192, engine_args={"max_num_seqs": 16}))
    await backend.start()
    try:
        sampling = Sampling(temperature=1.0, top_p=1.0, top_k=-1, max_tokens=160)

        async def rate(n: int, tag: str) -> float:
            reqs = [Request(f"{tag}-{i}", ({"role": "user", "content": f"Write a long story about the number {i}."},),
                            sampling, seed=i) for i in range(n)]
            await backend.complete(Request(f"{tag}-warm", reqs[0].messages, Sampling(max_tokens=4), 0))
            start = time.perf_counter()
            done = [c async for c in backend.stream(reqs)]
            elapsed = time.perf_counter() - start
            steps = max(c.completion_tokens for c in done)
            return 1000 * elapsed / steps  # ms per decode step with (about) n sequences

        one, sixteen = await rate(1, "one"), await rate(16, "sixteen")
        long_prompt = ({"role": "user", "content": " ".join(f"w{i}" for i in range(1500))},)
        n = backend.count_prompt_tokens(long_prompt)
        start = time.perf_counter()
        await backend.complete(Request("prefill", long_prompt, Sampling(max_tokens=1), 0))
        prefill = 1000 * (time.perf_counter() - start) / n
    finally:
        await backend.close()
    per_seq = max(0.0, (sixteen - one) / 15)
    return {"step_ms": max(0.0, one - per_seq), "step_ms_per_seq": per_seq, "prefill_ms_per_token": prefill}


def measured_funnel(out: Path) -> dict[str, float]:
    """The run's funnel (:func:`intgen.plan.measured_funnel`) as simulator settings."""
    from intgen.plan import measured_funnel as measure

    f = measure(out)
    conts = pq.read_table(out / "continuations.parquet").to_pylist()
    base = [c for c in conts if c["kind"] == "baseline"]
    return {"p_correct": 1 - f.p_failed, "p_parse": f.p_parse, "p_good": f.p_good, "good_rate": f.good_rate,
            "baseline_rate": sum(c["verdict"] == "correct" for c in base) / max(1, len(base)),
            "rollout_tokens": f.rollout_tokens, "proposer_tokens": f.proposer_tokens,
            "continuation_tokens": f.continuation_tokens, "length_sigma": f.length_sigma}


def predict(out: Path, folder: Path, constants: dict[str, float]) -> float:
    """The simulator's generation time for the benchmark spec, calibrated by ``constants`` and the run in ``out``."""
    from intgen.backends import make_backend
    from intgen.config import load_spec
    from intgen.runner import run_job

    sim = {**constants, **measured_funnel(out), "max_running": 16}
    spec = load_spec(SPEC, ["backend.kind=sim", "grading.workers=1", *(f"backend.sim.{k}={v}" for k, v in sim.items())])
    backend = make_backend(spec.backend, spec.model)
    run_job(spec, folder / "sim", spec_dir=SPEC.parent, backend=backend, progress=False)
    return backend.clock.now


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keep", help="keep the run folders here")
    ap.add_argument("--skip-barrier", action="store_true", help="run the streaming schedule only")
    args = ap.parse_args()
    folder = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="intgen-occupancy-"))
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, overrides in (("streaming", ()), ("stage barriers", ("executor.schedule=barrier",))):
        if args.skip_barrier and name != "streaming":
            continue
        out = folder / name.replace(" ", "-")
        shutil.rmtree(out, ignore_errors=True)
        wall = generate(out, *overrides)
        share, seconds = low_share(out)
        rows.append((name, share, seconds, generation_seconds(out), wall, out))
    print(f"benchmarks/vllm-cpu.yaml on vLLM's CPU build (max_num_seqs 16): time with <= {CAP} requests in the engine "
          "while requests were still to come")
    print(f"  {'schedule':<16} {'<= 8 in flight':>15} {'generation s':>13} {'command s':>10}")
    for name, share, seconds, gen, wall, _ in rows:
        print(f"  {name:<16} {share:>15.3f} {gen:>13.0f} {wall:>10.0f}")
    constants = asyncio.run(_calibrate())
    print("calibrated simulator constants: " + ", ".join(f"{k} {v:.3f}" for k, v in constants.items()))
    stream_out, measured = rows[0][5], rows[0][3]
    predicted = predict(stream_out, folder, constants)
    print(f"simulator's prediction for the streaming run: {predicted:.0f} s of generation; measured {measured:.0f} s "
          f"({predicted / measured:.2f}x)")
    if len(rows) == 2:
        print(f"share of generation time at half load or less while work remains: {rows[0][1]:.2f} (streaming) vs "
              f"{rows[1][1]:.2f} (stage barriers)")
    if not args.keep:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
