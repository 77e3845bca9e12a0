"""A real vLLM CPU server (issue 5): started once for this module by the test, as the
README's demo-server spec says; the in-process engine's rendering, the server's own
rendering (``continuation: server``) and intgen's rendering sent to ``/v1/completions``
put identical token ids in front of the model; the backends behave alike on seeds and
continuations; and the demo spec runs against the server."""

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pyarrow.parquet as pq
import pytest

pytest.importorskip("vllm", reason="vLLM is not installed (./setup.sh installs vLLM's CPU build)")

from intgen.backends import Request, Sampling, make_backend  # noqa: E402
from intgen.backends.templates import ChatRenderer  # noqa: E402
from intgen.config import BackendSpec, load_spec  # noqa: E402
from intgen.models import materialize  # noqa: E402
from intgen.runner import run_job  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
MODEL = "smollm2-135m-instruct"
SYSTEM = "Solve the problem step by step, with a blank line between steps. Put the final answer in \\boxed{}."
PROBLEM = "Tom has 3 bags with 4 apples each. He eats 2. How many apples are left?"
CHATS = [
    # a check-stage continuation: system prompt, problem, partial trace ending in a blank line
    ({"role": "system", "content": SYSTEM}, {"role": "user", "content": PROBLEM},
     {"role": "assistant", "content": "Tom has 3 bags of 4 apples.\n\nStep 2: 3 * 4 = 12 apples.\n\n"}),
    # no system prompt: SmolLM2's template injects its own
    ({"role": "user", "content": PROBLEM}, {"role": "assistant", "content": "<think>\nLet me count.\n\n"}),
    # the proposer's response prefix
    ({"role": "user", "content": "Reply with a tag."}, {"role": "assistant", "content": '<intervention>{"content": "'}),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """``python -m vllm.entrypoints.openai.api_server`` on a free loopback port (ENV.md)."""
    port = _free_port()
    log = tmp_path_factory.mktemp("vllm-server") / "server.log"
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", materialize(MODEL),
           "--served-model-name", MODEL, "--max-model-len", "2048", "--dtype", "bfloat16", "--enforce-eager",
           "--no-enable-chunked-prefill", "--max-num-batched-tokens", "2048", "--seed", "0",
           "--host", "127.0.0.1", "--port", str(port)]
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_LOGGING_LEVEL": "WARNING"}
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 300
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the vLLM server exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(url + "/v1/models", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.time() > deadline:
                raise RuntimeError(f"the vLLM server did not start in 300 s:\n{log.read_text()[-3000:]}")
            time.sleep(1)
        yield url + "/v1"
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _openai(url, continuation):
    return make_backend(BackendSpec(kind="openai", base_url=url, continuation=continuation), MODEL)


def test_identical_prompt_ids_on_every_path(server, vllm_engine):
    """The same continuation request, read back from the in-process engine (its request
    output) and from the server (``return_token_ids`` and ``/tokenize``), puts the same
    ids in front of the model on both continuation modes."""
    from vllm import SamplingParams

    host, engine = vllm_engine
    tokenizer = engine.tokenizer

    async def in_process(i, chat):
        final = None
        async for out in engine.engine.generate({"prompt_token_ids": engine.render(chat, continue_final=True)},
                                                SamplingParams(max_tokens=1, seed=i), request_id=f"readback-{i}"):
            final = out
        return list(final.prompt_token_ids)

    async def over_http():
        seen = {}
        for mode in ("server", "completions"):
            b = _openai(server, mode)
            await b.start()
            try:
                for i, chat in enumerate(CHATS):
                    req = Request(f"c{i}", chat, Sampling(max_tokens=4), seed=i, continue_final=True)
                    endpoint, kwargs, _ = b.request_body(req)
                    kwargs["extra_body"] = {**kwargs.get("extra_body", {}), "return_token_ids": True}
                    create = b.client.completions.create if endpoint == "completions" else b.client.chat.completions.create
                    resp = await create(**kwargs)
                    ids = (resp.choices[0].model_extra if endpoint == "completions" else resp.model_extra)["prompt_token_ids"]
                    seen[(mode, i)] = ids
                    assert resp.usage.prompt_tokens == len(ids)
                    assert b.count_prompt_tokens(chat, True) == len(ids)
                    tokenized = await b.client.post(b.root_url + "/tokenize", cast_to=object,
                                                    body=b._chat_body(chat, True))
                    seen[("tokenize", i)] = tokenized["tokens"]
            finally:
                await b.close()
        return seen

    seen = asyncio.run(over_http())
    for i, chat in enumerate(CHATS):
        local = host.run(in_process(i, chat))
        assert tokenizer.decode(local).endswith("<|im_start|>assistant\n" + chat[-1]["content"])
        assert seen[("server", i)] == local
        assert seen[("completions", i)] == local
        assert seen[("tokenize", i)] == local


@pytest.fixture(scope="module")
def transformers_backend():
    b = make_backend(BackendSpec(kind="transformers", batch_size=4), MODEL)
    asyncio.run(b.start())
    return b


@pytest.mark.parametrize("kind", ["server", "completions", "transformers"])
def test_backends_agree_on_seeds_and_continuations(kind, server, transformers_backend):
    """The stage contract every backend keeps: one completion per request, the same seed
    gives the same text in the same batch composition, other seeds other texts, a
    continuation continues."""
    backend = transformers_backend if kind == "transformers" else _openai(server, kind)
    sampling = Sampling(temperature=0.7, top_p=0.8, top_k=20, max_tokens=16)
    ask = ({"role": "user", "content": "Name three colours."},)
    cont = CHATS[0]
    reqs = [Request("a", ask, sampling, seed=11), Request("a-again", ask, sampling, seed=11),
            Request("b", ask, sampling, seed=12), Request("c", ask, sampling, seed=13),
            Request("cont", cont, sampling, seed=5, continue_final=True)]

    async def main():
        await backend.start()
        try:
            if kind == "transformers":  # same seed, same batch: same text (the backend's per-row generators)
                return {c.request_id: c async for c in backend.stream(reqs)}
            # a server reproduces a seed only for the same batch composition (docs/architecture.md,
            # "Reproducibility"): the two requests with seed 11 each go alone, the rest together
            out = {"a": await backend.complete(reqs[0]), "a-again": await backend.complete(reqs[1])}
            out.update({c.request_id: c async for c in backend.stream(reqs[2:])})
            return out
        finally:
            if backend is not transformers_backend:
                await backend.close()

    out = asyncio.run(main())
    assert sorted(out) == sorted(r.id for r in reqs)
    assert all(c.finish_reason in ("stop", "length") and c.completion_tokens > 0 for c in out.values())
    assert out["a"].text == out["a-again"].text
    assert len({out["a"].text, out["b"].text, out["c"].text}) >= 2
    assert out["cont"].prompt_tokens == len(ChatRenderer(transformers_backend.tokenizer).ids(cont, True))


def test_the_demo_runs_against_the_server(server, tmp_path, grader):
    """pipelines/demo-server.yaml: the probe finds everything; the policy (continuation
    auto) continues through the server's extension (checked against the local rendering
    via /tokenize), the proposer through /v1/completions with token ids."""
    spec = load_spec(ROOT / "pipelines" / "demo-server.yaml", [
        f"backend.base_url={server}", f"proposer.backend.base_url={server}", "limit=2", "rollout.k=2",
        "propose.m=2", "check.r=2", "sampling.max_tokens=96", "baseline.for=all"])
    out = tmp_path / "run"
    result = run_job(spec, out, spec_dir=ROOT / "pipelines", progress=False, grader=grader)
    assert result.funnel["problems"] == 2 and result.funnel["rollouts"] == 4
    cands = pq.read_table(out / "candidates.parquet").to_pylist()
    assert len(cands) == 2 * result.funnel["failed_rollouts"]
    assert all(c["raw_output"].startswith('<intervention>{"content": "') for c in cands)
    conts = pq.read_table(out / "continuations.parquet").to_pylist()
    assert len([c for c in conts if c["kind"] == "check"]) == 2 * result.funnel["checked"]
    assert all(c["completion_tokens"] > 0 for c in conts)
    manifest = json.loads((out / "manifest.json").read_text())
    policy, proposer = manifest["backends"]["policy"], manifest["backends"]["proposer"]
    assert policy["continuation"] == "server" and proposer["continuation"] == "completions"
    # the probe (docs/servers.md): vLLM takes everything; auto picks server mode, the proposer sends token ids
    probe = policy["server_probe"]
    print("vLLM server probe:", json.dumps(probe["features"], indent=1))
    assert {k: v["ok"] for k, v in probe["features"].items()} == {
        "chat": True, "completions_token_ids": True, "completions_text": True, "continue_final_message": True,
        "n": True, "seeds": True, "tokenize": True}
    assert probe["tokenize"] == "vllm" and probe["chat_tokenize"] is True
    assert policy["modes"]["continuation_setting"] == "auto" and proposer["modes"]["prompt_format"] == "token_ids"
    if result.funnel["checked"]:
        assert policy["prefix_fidelity"] == "server /tokenize ids equal to the local rendering"
    assert policy["max_model_len"] == 2048
    assert "You are a helpful AI assistant named SmolLM" in policy["template_wraps_user_message_as"]
