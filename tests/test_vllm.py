"""The real pipeline on vLLM's CPU build with SmolLM2-135M-Instruct (issue 3).

One engine for the whole test session (CI time): a single event loop starts it, runs
the probes and the demo spec through it, and the tests assert on what was recorded.
"""

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

pytest.importorskip("vllm", reason="vLLM is not installed (./setup.sh installs vLLM's CPU build)")

from intgen.backends.base import Request, Sampling  # noqa: E402
from intgen.config import load_spec  # noqa: E402
from intgen.runner import run_job_async  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def vllm_session(tmp_path_factory, vllm_engine):
    host, backend = vllm_engine
    spec = load_spec(ROOT / "pipelines" / "demo-datasets.yaml", ["limit=3", "rollout.k=2", "propose.m=2", "check.r=3",
                                                         "sampling.max_tokens=160"])
    out = tmp_path_factory.mktemp("vllm") / "run"
    sampling = Sampling(temperature=0.7, top_p=0.8, top_k=20, max_tokens=48)
    msgs = ({"role": "user", "content": "What is 2 + 3? Answer briefly."},)
    probes = [Request("same-a", msgs, sampling, seed=1234), Request("same-b", msgs, sampling, seed=1234),
              Request("other", msgs, sampling, seed=999)]
    cont = ({"role": "user", "content": "Count to five."}, {"role": "assistant", "content": "One, two,"})
    probes.append(Request("continue", cont, sampling, seed=7, continue_final=True))

    async def probe():
        return {c.request_id: c async for c in backend.stream(probes)}

    answers = host.run(probe())
    rendered = backend.tokenizer.decode(backend.render(cont, continue_final=True))
    result = host.run(run_job_async(spec, out, spec_dir=ROOT / "pipelines", backend=backend, progress=False,
                                    close=False))
    return {"answers": answers, "rendered": rendered, "result": result, "out": out}


def test_same_seed_same_text_and_different_seeds_differ(vllm_session):
    a = vllm_session["answers"]
    assert a["same-a"].text and a["same-a"].finish_reason in ("stop", "length")
    assert a["same-a"].text == a["same-b"].text
    assert a["other"].text != a["same-a"].text


def test_continuation_leaves_the_assistant_turn_open(vllm_session):
    rendered = vllm_session["rendered"]
    assert rendered.endswith("<|im_start|>assistant\nOne, two,")
    assert vllm_session["answers"]["continue"].completion_tokens > 0


def test_demo_spec_end_to_end_on_the_real_model(vllm_session):
    out = vllm_session["out"]
    funnel = vllm_session["result"].funnel
    assert funnel["problems"] == 3 and funnel["rollouts"] == 6
    rollouts = {r["rollout_id"]: r for r in pq.read_table(out / "rollouts.parquet").to_pylist()}
    assert len(rollouts) == 6 and all(r["completion_tokens"] > 0 for r in rollouts.values())
    # two rollouts of one problem differ
    texts = [r["text"] for r in rollouts.values() if r["problem_id"] == "gsm8k/test.jsonl#1"]
    assert len(texts) == 2 and texts[0] != texts[1]
    cands = pq.read_table(out / "candidates.parquet").to_pylist()
    assert funnel["failed_rollouts"] >= 1 and len(cands) == 2 * funnel["failed_rollouts"]
    for c in cands:
        assert rollouts[c["rollout_id"]]["failed"]
        assert c["raw_output"].startswith('<intervention>{"content": "')
    conts = pq.read_table(out / "continuations.parquet").to_pylist()
    parsed_ok = [c for c in cands if c["parse_status"] == "ok"]
    assert parsed_ok, "the compact prompt should get at least one parsed candidate from SmolLM2"
    checks = [c for c in conts if c["kind"] == "check"]
    assert len(checks) == 3 * len(parsed_ok)
    assert all(c["completion_tokens"] > 0 for c in checks)
    inter = {r["candidate_id"]: r for r in pq.read_table(out / "interventions.parquet").to_pylist()}
    for c in parsed_ok:
        row = inter[c["candidate_id"]]
        assert row["check_samples"] == 3
        assert row["check_correct"] == sum(x["verdict"] == "correct" for x in checks if x["candidate_id"] == c["candidate_id"])
        assert row["accepted"] == (row["check_correct"] >= 1)
    stats = json.loads((out / "stats.json").read_text())
    # prefix caching on the CPU build: continuations of one candidate share their prefix
    assert stats["tokens"]["check"]["cached_tokens"] > 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert "You are a helpful AI assistant named SmolLM" in manifest["backends"]["policy"]["template_wraps_user_message_as"]


def test_kill_during_check_and_resume_on_vllm(tmp_path):
    """Kill the real-engine run during the check stage, resume: no sample answered before
    the kill is requested again, and the final tables are complete and consistent."""
    import os
    import signal
    import sqlite3
    import subprocess
    import sys

    child = Path(__file__).resolve().parent / "vllm_resume_child.py"
    out, first, second = tmp_path / "run", tmp_path / "sent1.log", tmp_path / "sent2.log"
    # SIGKILL leaves vLLM's engine-core and worker processes orphaned (they are not in the
    # child's process group either): every process started for this test carries a marker in
    # its environment, and all of them are killed afterwards, as a scheduler kills a preempted
    # job. The child's stderr goes to a file: an orphan holding a pipe would block the test.
    import uuid

    marker = uuid.uuid4().hex
    env = {**os.environ, "INTGEN_TEST_MARK": marker}
    tag = f"INTGEN_TEST_MARK={marker}".encode()

    def marked() -> list[int]:
        # /proc/PID/environ read raw: psutil's environ() missed the marker of vLLM's
        # engine core once it had renamed itself (setproctitle)
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                if tag in (entry / "environ").read_bytes().split(b"\0"):
                    stat = (entry / "stat").read_text()
                    if stat[stat.rindex(")") + 2] != "Z":  # a zombie is dead, only not reaped
                        pids.append(int(entry.name))
            except (OSError, ProcessLookupError, ValueError):
                pass
        return pids

    def kill_marked():
        for pid in marked():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    with open(tmp_path / "child1.err", "w") as err:
        proc = subprocess.Popen([sys.executable, str(child), str(out), str(first), "2"], stdout=subprocess.DEVNULL,
                                stderr=err, env=env)
        try:
            proc.wait(timeout=900)
            # SIGKILL of the main process alone (as the OOM killer does): the engine process,
            # its workers and the grading workers end with it
            import time

            deadline = time.monotonic() + 10
            while marked() and time.monotonic() < deadline:
                time.sleep(0.25)
            survivors = marked()
        finally:
            kill_marked()
    assert proc.returncode == -9, (tmp_path / "child1.err").read_text()[-3000:]
    assert survivors == [], [Path(f"/proc/{p}/cmdline").read_bytes()[:80] for p in survivors if Path(f"/proc/{p}").exists()]
    with sqlite3.connect(out / "samples.sqlite") as db:
        answered = {rid for (rid,) in db.execute("SELECT request_id FROM samples")}
    assert sum("/continuation-" in rid for rid in answered) >= 2
    with open(tmp_path / "child2.err", "w") as err:
        try:
            resumed = subprocess.run([sys.executable, str(child), str(out), str(second), "0"],
                                     stdout=subprocess.DEVNULL, stderr=err, env=env, timeout=900)
        finally:
            kill_marked()
    assert resumed.returncode == 0, (tmp_path / "child2.err").read_text()[-3000:]
    sent_again = set(second.read_text().split()) if second.exists() else set()
    assert answered.isdisjoint(sent_again)
    cands = pq.read_table(out / "candidates.parquet").to_pylist()
    conts = pq.read_table(out / "continuations.parquet").to_pylist()
    inter = pq.read_table(out / "interventions.parquet").to_pylist()
    ok = [c["candidate_id"] for c in cands if c["parse_status"] == "ok"]
    checks = [c for c in conts if c["kind"] == "check"]
    assert sorted({c["candidate_id"] for c in checks}) == sorted(ok)
    assert len(checks) == 3 * len(ok)
    assert {r["candidate_id"] for r in inter} >= set(ok)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] and manifest["resumed"]
