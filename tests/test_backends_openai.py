"""The OpenAI-compatible backend against a fault-injecting fake server (issue 5): retries
only where the openai client retries, 400s never retried and recorded as rejects, fan-out
when a server returns fewer choices, per-sample seeds, aborts, continuation modes, a
proposer on another backend, and the API key never written."""

import asyncio
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from fake_openai_server import FakeOpenAIServer
from intgen.backends import BackendError, Request, Sampling, make_backend
from intgen.backends.fake import FakeBackend, demo_script
from intgen.config import BackendSpec, load_spec
from intgen.runner import run_job

ROOT = Path(__file__).resolve().parent.parent
MODEL = "smollm2-135m-instruct"  # its tokenizer renders and counts locally
SECRET = "sk-intgen-test-0123456789-do-not-write"
PROBLEMS = [
    {"id": f"q{i}", "problem": f"Sam has {i + 2} boxes with {i + 3} pens each. How many pens does Sam have?",
     "reference_solution": f"{i + 2} * {i + 3} = {(i + 2) * (i + 3)}.", "answer": str((i + 2) * (i + 3))}
    for i in range(5)
] + [{"id": "long", "problem": "Read all of this. " * 1400 + "What is 1 + 1?", "reference_solution": "1 + 1 = 2.",
      "answer": "2"}]


def _source(tmp_path) -> str:
    path = tmp_path / "problems.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in PROBLEMS))
    return str(path)


def _spec(tmp_path, url, **over):
    data = {
        "name": "fault-run", "seed": 0, "model": MODEL,
        "source": {"path": _source(tmp_path), "adapter": "generic"},
        "backend": {"kind": "openai", "base_url": url, "served_model_name": "fake-model", "api_key_env": "INTGEN_TEST_KEY",
                    "timeout_s": 1.5, "max_retries": 4, "concurrency": 16},
        "sampling": {"max_tokens": 64},
        "rollout": {"k": 2}, "propose": {"m": 2, "prompt": "prompts/int-propose-compact.yaml"},
        "check": {"r": 3}, "baseline": {"for": "all"},
    }
    for k, v in over.items():
        data[k] = {**data[k], **v} if isinstance(v, dict) and isinstance(data.get(k), dict) else v
    return load_spec(None, data=data)


def test_a_whole_run_survives_faults(tmp_path, grader, monkeypatch):
    """20% of requests fail (429, 500, 503, stall past the timeout, dropped connection,
    fewer choices): the run finishes, every sample is answered exactly once, the prompt
    that is too long gets a 400 that becomes a reject and is never retried."""
    monkeypatch.setenv("INTGEN_TEST_KEY", SECRET)
    answers = {p["problem"]: p["answer"] for p in PROBLEMS}
    with FakeOpenAIServer(fault_rate=0.2, stall_s=2.5, answers=answers, max_prompt_chars=20000) as server:
        spec = _spec(tmp_path, server.url)
        out = tmp_path / "run"
        result = run_job(spec, out, spec_dir=ROOT / "pipelines", progress=False, grader=grader)
    outcomes = server.outcomes()
    for fault in ("429", "500", "503", "stall", "drop", "few", "400"):
        assert outcomes[fault] >= 1, (fault, outcomes)
    # the key went to the server, and nowhere else
    assert {e.authorization for e in server.log} == {f"Bearer {SECRET}"}
    for f in out.rglob("*"):
        if f.is_file():
            assert SECRET.encode() not in f.read_bytes(), f
    # exactly once: every request body was answered once; the 400s were sent once, never retried
    answered = server.answered()
    assert set(answered.values()) == {1}
    bad = {e.body_key for e in server.log if e.outcome == "400"}
    assert bad and not bad & set(answered)
    assert all(e.retry_count == 0 for e in server.log if e.body_key in bad)
    assert sum(1 for e in server.log if e.body_key in bad) == len(bad)
    # the run's tables: one row per sample, the long problem's rollouts are rejects
    rollouts = pq.read_table(out / "rollouts.parquet").to_pylist()
    assert sorted(r["rollout_id"] for r in rollouts) == sorted(f"q{i}/rollout-{j}" for i in range(5) for j in range(2))
    rejects = pq.read_table(out / "rejects.parquet").to_pylist()
    failed = [r for r in rejects if r["reason"] == "request_rejected"]
    assert sorted(r["record_id"] for r in failed) == ["long/rollout-0", "long/rollout-1"]
    assert all("400" in r["detail"] and "not retried" in r["detail"] for r in failed)
    # a 400 is permanent (a rerun gets the same answer): the run is complete
    assert result.complete and not [r for r in rejects if r["reason"] == "request_failed"]
    cands = pq.read_table(out / "candidates.parquet").to_pylist()
    assert len(cands) == 10 * 2 and len({c["candidate_id"] for c in cands}) == 20
    assert all(c["parse_status"] == "ok" for c in cands)
    conts = pq.read_table(out / "continuations.parquet").to_pylist()
    checks = [c for c in conts if c["kind"] == "check"]
    assert len(checks) == 20 * 3 and len({c["continuation_id"] for c in checks}) == 60
    baselines = [c for c in conts if c["kind"] == "baseline"]
    assert len(baselines) == 10 * 3  # one (rollout, location 1) pair per failed rollout
    assert result.funnel["rollouts"] == 10 and result.funnel["accepted"] >= 1
    # every answered body is one sample of the run: rollouts, proposals, checks, baselines
    assert len(answered) == 10 + 20 + 60 + 30
    manifest = json.loads((out / "manifest.json").read_text())
    policy = manifest["backends"]["policy"]
    assert policy["kind"] == "openai" and policy["api_key_env"] == "INTGEN_TEST_KEY"
    assert policy["requests"]["missing_choices"] >= 1 and policy["requests"]["rejected_400"] == 2
    assert policy["prefix_fidelity"].startswith("unchecked")  # the fake server has no /tokenize


def test_proposer_on_another_backend(tmp_path, grader):
    """Issue item 3: the policy on one backend, the proposer behind a server."""
    from intgen.backends.templates import load_tokenizer

    with FakeOpenAIServer(decode=load_tokenizer(MODEL).decode) as server:
        spec = _spec(tmp_path, "unused", backend={"kind": "fake"}, limit=2,
                     proposer={"model": MODEL, "backend": {"kind": "openai", "base_url": server.url,
                                                           "served_model_name": "fake-model", "continuation": "completions"}})
        policy = FakeBackend(demo_script)
        out = tmp_path / "run"
        run_job(spec, out, backend=policy, progress=False, grader=grader)
    cands = pq.read_table(out / "candidates.parquet").to_pylist()
    assert cands and all("Let me recheck this step carefully." in c["raw_output"] for c in cands)
    assert all(r.meta["stage"] != "propose" for r in policy.calls)
    # the proposer rendered locally and sent token ids to /v1/completions
    assert server.log and all(e.path == "/v1/completions" and isinstance(e.body["prompt"], list) for e in server.log)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["backends"]["proposer"]["kind"] == "openai" and manifest["backends"]["policy"]["kind"] == "fake"


def test_continuation_none_is_refused_as_policy_before_any_request(tmp_path, grader):
    """A run whose check stage could never be served is refused before it spends anything;
    such a server can still be the proposer (test above)."""
    with FakeOpenAIServer() as server:
        spec = _spec(tmp_path, server.url, limit=2, backend={"continuation": "none"},
                     propose={"prompt": "prompts/int-propose.yaml"})
        backend = make_backend(spec.backend, spec.model)
        assert backend.can_continue is False
        out = tmp_path / "run"
        with pytest.raises(BackendError, match="check stage"):
            run_job(spec, out, spec_dir=ROOT / "pipelines", progress=False, grader=grader)
    assert not out.exists()
    assert not [e for e in server.log if e.path.endswith("completions")]


def _requests(n, continue_final=False, max_tokens=16):
    msgs = ({"role": "user", "content": "What is 2 + 3?"},)
    if continue_final:
        msgs += ({"role": "assistant", "content": "Step 1: 2 + 3 = 5.\n\n"},)
    return [Request(f"s{i}", msgs, Sampling(max_tokens=max_tokens), seed=100 + i, continue_final=continue_final)
            for i in range(n)]


def test_server_continuation_sends_vllms_extension_and_seeds(tmp_path):
    async def main(server):
        b = make_backend(BackendSpec(kind="openai", base_url=server.url, served_model_name="fake-model",
                                     chat_template_kwargs={"enable_thinking": False}), MODEL)
        await b.start()
        try:
            return [c async for c in b.stream(_requests(4, continue_final=True) + _requests(2))], b.describe()
        finally:
            await b.close()

    with FakeOpenAIServer() as server:
        out, info = asyncio.run(main(server))
    assert len(out) == 6 and all(c.finish_reason == "stop" for c in out)
    bodies = [e.body for e in server.log]
    assert sorted(b["seed"] for b in bodies) == [100, 100, 101, 101, 102, 103]
    assert all(b["n"] == 1 and b["top_k"] == 20 for b in bodies)
    assert all(b["chat_template_kwargs"] == {"enable_thinking": False} for b in bodies)
    cont = [b for b in bodies if b.get("continue_final_message")]
    assert len(cont) == 4 and all(b["add_generation_prompt"] is False for b in cont)
    assert info["max_model_len"] == 8192 and "INTGEN" not in json.dumps(info)


def test_completions_mode_sends_the_locally_checked_token_ids():
    from intgen.backends.templates import ChatRenderer, load_tokenizer

    tok = load_tokenizer(MODEL)

    async def main(server):
        b = make_backend(BackendSpec(kind="openai", base_url=server.url, served_model_name="fake-model",
                                     continuation="completions"), MODEL)
        await b.start()
        try:
            return [c async for c in b.stream(_requests(3, continue_final=True))]
        finally:
            await b.close()

    with FakeOpenAIServer(decode=tok.decode) as server:
        out = asyncio.run(main(server))
    assert all(c.finish_reason == "stop" and "boxed" in c.text for c in out)
    expected = ChatRenderer(tok).ids(_requests(1, continue_final=True)[0].messages, True)
    assert all(e.body["prompt"] == expected for e in server.log)
    assert tok.decode(expected).endswith("<|im_start|>assistant\nStep 1: 2 + 3 = 5.\n\n")


def test_a_400_is_an_error_completion_and_never_retried():
    async def main(server):
        b = make_backend(BackendSpec(kind="openai", base_url=server.url, served_model_name="fake-model",
                                     max_retries=5), MODEL)
        await b.start()
        try:
            long = [Request("long", ({"role": "user", "content": "x " * 200},), Sampling(max_tokens=8), seed=1)]
            return [c async for c in b.stream(long + _requests(1))]
        finally:
            await b.close()

    with FakeOpenAIServer(max_prompt_chars=300) as server:
        out = {c.request_id: c for c in asyncio.run(main(server))}
    assert out["long"].finish_reason == "error" and "400" in out["long"].error and "maximum context" in out["long"].error
    assert out["s0"].finish_reason == "stop"
    assert [e.outcome for e in server.log].count("400") == 1


@pytest.mark.parametrize("fault", ["429", "503", "stall", "drop", "few"])
def test_retries_exhausted_give_one_error_per_sample(fault):
    """Every try fails (one try and one retry): each sample gets exactly one error completion."""
    async def main(server):
        # outage_s=0: no waiting for the server; a timeout far above a loaded machine's answer time
        b = make_backend(BackendSpec(kind="openai", base_url=server.url, served_model_name="fake-model",
                                     max_retries=1, timeout_s=4.0, outage_s=0), MODEL)
        await b.start()
        try:
            return [c async for c in b.stream(_requests(3))], b.describe()
        finally:
            await b.close()

    with FakeOpenAIServer(fault_rate=1.0, faults=(fault,), stall_s=6.0, max_faults_per_body=2) as server:
        out, info = asyncio.run(main(server))
    assert sorted(c.request_id for c in out) == ["s0", "s1", "s2"]
    assert all(c.finish_reason == "error" and c.error for c in out), out
    assert not server.answered() and len(server.log) == 6
    if fault == "few":
        assert "no choice" in out[0].error and info["requests"]["missing_choices"] == 6


def test_abort_cancels_pending_requests():
    async def main_abort(server):
        b = make_backend(BackendSpec(kind="openai", base_url=server.url, served_model_name="fake-model",
                                     timeout_s=30, concurrency=2), MODEL)
        await b.start()
        try:
            reqs = _requests(4)
            loop = asyncio.get_running_loop()
            loop.call_later(0.5, b.abort, [r.id for r in reqs])
            return [c async for c in b.stream(reqs)]
        finally:
            await b.close()

    with FakeOpenAIServer(fault_rate=1.0, faults=("stall",), stall_s=20) as server:
        out = asyncio.run(asyncio.wait_for(main_abort(server), 10))
    assert sorted(c.request_id for c in out) == ["s0", "s1", "s2", "s3"]
    assert all(c.finish_reason == "abort" for c in out)


def test_start_names_what_to_fix():
    async def start(spec):
        b = make_backend(spec, MODEL)
        try:
            await b.start()
        finally:
            await b.close()

    with pytest.raises(BackendError, match="base_url"):
        make_backend(BackendSpec(kind="openai"), MODEL)
    with FakeOpenAIServer(served="other-model") as server:
        with pytest.raises(BackendError, match="served_model_name"):
            asyncio.run(start(BackendSpec(kind="openai", base_url=server.url)))
    with FakeOpenAIServer(api_key=SECRET) as server:
        with pytest.raises(BackendError, match="INTGEN_UNSET_KEY is not set"):
            asyncio.run(start(BackendSpec(kind="openai", base_url=server.url, served_model_name="fake-model",
                                          api_key_env="INTGEN_UNSET_KEY")))
    with pytest.raises(BackendError, match="cannot reach"):
        asyncio.run(start(BackendSpec(kind="openai", base_url="http://127.0.0.1:9/v1", max_retries=0)))


def _tokenizer_with(name: str, folder: Path):
    """SmolLM2's tokenizer with one of the TRL templates (tests/data/templates), saved to a folder."""
    import copy

    from intgen.backends.templates import load_tokenizer

    tok = copy.copy(load_tokenizer(MODEL))
    if name != "smollm2":
        tok.chat_template = (Path(__file__).parent / "data" / "templates" / f"{name}.jinja").read_text()
    tok.save_pretrained(folder)
    return tok


def _continue(server_url, continuation="server", tokenizer=None, model=MODEL):
    async def main():
        b = make_backend(BackendSpec(kind="openai", base_url=server_url, served_model_name="fake-model",
                                     continuation=continuation, tokenizer=tokenizer), model)
        await b.start()
        try:
            return [c async for c in b.stream(_requests(2, continue_final=True))], b
        finally:
            await b.close()

    return asyncio.run(main())


def test_server_mode_checks_the_servers_rendering_against_the_local_one(tmp_path):
    ok = _tokenizer_with("smollm2", tmp_path / "smollm2")
    with FakeOpenAIServer(tokenizer=ok) as server:
        out, b = _continue(server.url)
        assert all(c.finish_reason == "stop" for c in out)
        assert b.fidelity == "server /tokenize ids equal to the local rendering"
        assert len(server.log) == 2  # the two samples (the server's log holds no /tokenize calls)
    # a server started with another chat template
    qwen = _tokenizer_with("qwen3", tmp_path / "qwen3")
    with FakeOpenAIServer(tokenizer=qwen) as server:
        with pytest.raises(BackendError, match="renders the continuation differently"):
            _continue(server.url)
        assert not server.log  # nothing was generated


def test_a_template_that_needs_a_repair_needs_completions_mode(tmp_path):
    llama = _tokenizer_with("llama3", tmp_path / "llama3")
    with FakeOpenAIServer(tokenizer=llama, decode=llama.decode) as server:
        with pytest.raises(BackendError, match="continuation=completions"):
            _continue(server.url, tokenizer=str(tmp_path / "llama3"))
        assert not server.log
        out, b = _continue(server.url, continuation="completions", tokenizer=str(tmp_path / "llama3"))
        assert all(c.finish_reason == "stop" for c in out)
        assert b.renderer.repairs["restored_whitespace"] == 1  # one prompt, rendered once
        assert all(llama.decode(e.body["prompt"]).endswith("<|end_header_id|>\n\nStep 1: 2 + 3 = 5.\n\n")
                   for e in server.log)


def test_without_a_local_tokenizer_the_server_rendering_is_decoded_and_checked(tmp_path):
    with FakeOpenAIServer(tokenizer=_tokenizer_with("smollm2", tmp_path / "s")) as server:
        out, b = _continue(server.url, model="nobody/no-such-model")
        assert b.renderer is None and all(c.finish_reason == "stop" for c in out)
        assert b.fidelity == "server /tokenize ids decode to text ending with the prefix"
        assert b.count_prompt_tokens(_requests(1, True)[0].messages, True) > 10  # from the server's /tokenize
    with FakeOpenAIServer(tokenizer=_tokenizer_with("llama3", tmp_path / "l")) as server:
        with pytest.raises(BackendError, match="does not end with the unfinished assistant message"):
            _continue(server.url, model="nobody/no-such-model")


def _cli_spec(tmp_path, url, **backend):
    import yaml

    spec = _spec(tmp_path, url, backend={"max_retries": 1, "timeout_s": 4.0, **backend}, baseline={"for": "accepted"})
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(spec.resolved()))
    return path


def test_an_outage_longer_than_outage_s_ends_incomplete_and_a_rerun_completes(tmp_path, monkeypatch, capsys):
    """The server goes away mid-run and stays away past backend.outage_s: the run ends
    incomplete (exit 3, the resume command printed, no export), inspect says so, export is
    refused; once the server is back, the same command retries exactly the failed requests
    and the tables equal an uninterrupted run's."""
    from intgen.cli import main

    monkeypatch.setenv("INTGEN_TEST_KEY", SECRET)
    with FakeOpenAIServer() as clean:
        job = _cli_spec(tmp_path, clean.url)
        assert main(["generate", str(job), "--out", str(tmp_path / "ref"), "--quiet"]) == 0
    with FakeOpenAIServer(down_after=25) as server:
        job = _cli_spec(tmp_path, server.url, outage_s=2)
        out = tmp_path / "run"
        assert main(["generate", str(job), "--out", str(out), "--quiet"]) == 3
        err = capsys.readouterr().err
        assert "incomplete" in err and f"intgen generate {job} --out {out}" in err
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["status"] == "incomplete" and manifest["failed_requests"] > 0
        assert manifest["backends"]["policy"]["requests"]["outage_probes"] >= 2
        assert not (out / "export").exists()
        assert main(["inspect", str(out)]) == 0
        assert f"incomplete: {manifest['failed_requests']} requests failed, rerun to retry them" in capsys.readouterr().out
        assert main(["export", str(out)]) == 2
        assert "not a complete run" in capsys.readouterr().err
        answered_before = set(server.answered())
        server.down_after, server.down = None, False  # the server is back, for good
        assert main(["generate", str(job), "--out", str(out), "--quiet"]) == 0
        assert set(server.answered()) >= answered_before
        again = [e.body_key for e in server.log if e.outcome == "ok" and e.body_key in answered_before]
        assert len(again) == len(answered_before)  # nothing answered before the outage was asked again
    for name in ("rollouts", "candidates", "continuations", "interventions", "sft"):
        assert pq.read_table(out / f"{name}.parquet").equals(pq.read_table(tmp_path / "ref" / f"{name}.parquet")), name
    assert json.loads((out / "manifest.json").read_text())["status"] == "complete"


def test_a_short_outage_is_waited_out(tmp_path, monkeypatch, grader):
    """The server is away for about 2 s, well within backend.outage_s: the requests wait for
    it and the run completes."""
    import threading

    monkeypatch.setenv("INTGEN_TEST_KEY", SECRET)
    with FakeOpenAIServer(down_after=25) as server:
        def bring_back():
            while not server.down:
                threading.Event().wait(0.05)
            threading.Event().wait(2.0)
            server.down_after, server.down = None, False

        threading.Thread(target=bring_back, daemon=True).start()
        spec = _spec(tmp_path, server.url, backend={"max_retries": 1, "timeout_s": 4.0, "outage_s": 120})
        result = run_job(spec, tmp_path / "run", spec_dir=ROOT / "pipelines", progress=False, grader=grader)
    assert result.complete and server.refused >= 1
    counts = json.loads((tmp_path / "run" / "manifest.json").read_text())["backends"]["policy"]["requests"]
    assert counts["outages"] >= 1 and counts["sent_again_after_outage"] >= 1
    assert counts["http_requests"] > counts["answered"]  # the retries and probes, counted
