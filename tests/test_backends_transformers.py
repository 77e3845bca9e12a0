"""The transformers backend (issue 5, item 2): the demo spec with ``--limit 2`` through the
command line, and per-sample seeds that do not depend on the batch."""

import asyncio
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

pytest.importorskip("transformers")

from intgen.backends import Request, Sampling, make_backend  # noqa: E402
from intgen.cli import main  # noqa: E402
from intgen.config import BackendSpec  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def test_the_demo_spec_runs_on_transformers(tmp_path, capsys):
    out = tmp_path / "run"
    status = main(["generate", str(ROOT / "pipelines" / "demo-datasets.yaml"), "backend.kind=transformers", "--limit", "2",
                   "--out", str(out), "--quiet", "rollout.k=2", "propose.m=1", "check.r=2", "sampling.max_tokens=32",
                   "grading.workers=1"])
    assert status == 0, capsys.readouterr().err
    assert "funnel:" in capsys.readouterr().out
    stats = json.loads((out / "stats.json").read_text())
    funnel = stats["funnel"]
    assert funnel["problems"] == 2 and funnel["rollouts"] == 4
    rollouts = pq.read_table(out / "rollouts.parquet").to_pylist()
    assert all(r["completion_tokens"] > 0 for r in rollouts)
    cands = pq.read_table(out / "candidates.parquet").to_pylist()
    assert len(cands) == funnel["failed_rollouts"]
    assert all(c["raw_output"].startswith('<intervention>{"content": "') for c in cands)  # continued the prefix
    conts = pq.read_table(out / "continuations.parquet").to_pylist()
    assert len([c for c in conts if c["kind"] == "check"]) == 2 * funnel["checked"]
    manifest = json.loads((out / "manifest.json").read_text())
    policy = manifest["backends"]["policy"]
    assert policy["kind"] == "transformers" and policy["device"] == "cpu" and policy["max_model_len"] == 8192
    assert "You are a helpful AI assistant named SmolLM" in policy["template_wraps_user_message_as"]


def test_a_samples_text_depends_on_its_seed_not_on_its_batch():
    msgs = ({"role": "user", "content": "Write one short sentence about the sea."},)
    s = Sampling(max_tokens=8)

    async def run(batch_size, seeds):
        b = make_backend(BackendSpec(kind="transformers", batch_size=batch_size), "smollm2-135m-instruct")
        await b.start()
        reqs = [Request(f"r{i}", msgs, s, seed=seed) for i, seed in enumerate(seeds)]
        return {c.request_id: c.text async for c in b.stream(reqs)}

    together = asyncio.run(run(4, [1, 2, 3, 1]))
    alone = asyncio.run(run(1, [1]))
    assert together["r0"] == together["r3"] == alone["r0"]
    assert len({together["r0"], together["r1"], together["r2"]}) >= 2
