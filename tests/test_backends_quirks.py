"""Servers that are not vLLM (issue 20, docs/servers.md), imitated by the fake server's
quirks: the probe picks the modes, the demo spec runs end to end against each imitation
with the same token ids reaching the model as on the in-process path (intgen's rendering,
sent as ids), text prompts do not double the BOS, and a refusal that no retry can fix is
sent once and stops the run with the server's message."""

import asyncio
import copy
import json
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from fake_openai_server import IMITATIONS, FakeOpenAIServer
from intgen.backends import BackendError, Request, Sampling, make_backend
from intgen.backends.templates import ChatRenderer, load_tokenizer
from intgen.config import BackendSpec, load_spec
from intgen.runner import run_job

ROOT = Path(__file__).resolve().parent.parent
MODEL = "smollm2-135m-instruct"
OVERRIDES = ["limit=2", "rollout.k=2", "propose.m=2", "check.r=2", "sampling.max_tokens=64", "baseline.for=all"]
#: imitation -> (policy continuation, policy prompt format, proposer prompt format) that the probe must pick
EXPECTED = {
    "vllm": ("server", None, "token_ids"),
    "llama.cpp-python": ("completions", "text", "text"),
    "no-continue-final": ("completions", "token_ids", "token_ids"),
    "no-tokenize": ("completions", "token_ids", "token_ids"),
    "token-ids-500": ("server", None, "text"),
}
TABLES = ("rollouts", "candidates", "continuations", "interventions", "sft")


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(MODEL)


def _answers():
    """The demo problems' gold answers, so that some continuations are correct (the fake
    server answers correctly for one seed in three)."""
    answers = {}
    for name in ("gsm8k_test_50.jsonl", "math500_50.jsonl"):
        for line in (ROOT / "data" / "demo" / name).read_text().splitlines()[:3]:
            row = json.loads(line)
            if "question" in row:
                answers[row["question"]] = row["answer"].split("####")[-1].strip()
            else:
                answers[row["problem"]] = row["answer"]
    return answers


def _demo(tmp_path, tok, grader, quirks, extra=()):
    """The demo-server spec against the fake server; returns the run folder, the token ids
    of every answered generation request, the manifest and the server."""
    with FakeOpenAIServer(served=MODEL, tokenizer=tok, quirks=quirks, answers=_answers()) as server:
        spec = load_spec(ROOT / "pipelines" / "demo-server.yaml", [
            f"backend.base_url={server.url}", f"proposer.backend.base_url={server.url}", *OVERRIDES, *extra])
        out = tmp_path / f"run-{quirks if isinstance(quirks, str) else 'ref'}"
        result = run_job(spec, out, spec_dir=ROOT / "pipelines", progress=False, grader=grader)
    assert result.complete
    ids = Counter(tuple(e.prompt_ids) for e in server.log if e.outcome == "ok")
    assert sum(ids.values()) == len(server.log)  # nothing refused, nothing retried
    return out, ids, json.loads((out / "manifest.json").read_text()), server


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tok, grader):
    """The in-process path: intgen renders every prompt and sends its token ids, as the
    vLLM engine in process gets them."""
    tmp = tmp_path_factory.mktemp("reference")
    return _demo(tmp, tok, grader, (), ["backend.continuation=completions", "backend.prompt_format=token_ids",
                                        "proposer.backend.prompt_format=token_ids"])


@pytest.mark.parametrize("imitation", sorted(IMITATIONS))
def test_the_demo_runs_against_each_imitation(imitation, reference, tmp_path, tok, grader):
    ref_out, ref_ids, _, ref_server = reference
    out, ids, manifest, server = _demo(tmp_path, tok, grader, imitation)
    # the probe picked the modes, and the manifest records them with the probe's report
    policy, proposer = manifest["backends"]["policy"], manifest["backends"]["proposer"]
    cont, policy_fmt, proposer_fmt = EXPECTED[imitation]
    assert policy["modes"]["continuation"] == cont and policy["modes"]["continuation_setting"] == "auto"
    assert policy["modes"]["prompt_format"] == policy_fmt
    assert proposer["modes"]["continuation"] == "completions" and proposer["modes"]["prompt_format"] == proposer_fmt
    assert set(policy["server_probe"]["features"]) == {"chat", "completions_token_ids", "completions_text",
                                                       "continue_final_message", "n", "seeds", "tokenize"}
    if imitation == "llama.cpp-python":
        assert policy["server_probe"]["features"]["n"]["ok"] is False
        assert all(isinstance(e.body["prompt"], str) for e in server.log)
    # the same token ids reached the model, request for request, as on the in-process path
    assert ids == ref_ids and sum(ids.values()) > 20
    for name in TABLES:
        assert pq.read_table(out / f"{name}.parquet").equals(pq.read_table(ref_out / f"{name}.parquet")), name


def test_the_reference_sends_what_the_renderer_renders(reference, tok):
    """The reference's ids are the chat renderer's (what vLLM in process gets): the rollout
    prompt of the first demo problem is among them, and every prompt decodes to a chat."""
    out, ids, manifest, server = reference
    funnel = json.loads((out / "stats.json").read_text())["funnel"]
    assert funnel["rollouts"] == 4 and funnel["parsed_candidates"] >= 2 and funnel["checked"] >= 2
    assert funnel["accepted"] >= 1  # the whole pipeline ran, continuations included
    renderer = ChatRenderer(tok)
    first = next(e for e in server.log if "Solve the problem" in tok.decode(e.prompt_ids) and e.path == "/v1/completions")
    system = load_spec(ROOT / "pipelines" / "demo-server.yaml").system_prompt
    problem = tok.decode(first.prompt_ids).split("<|im_start|>user\n", 1)[1].split("<|im_end|>", 1)[0]
    rollout = renderer.ids(({"role": "system", "content": system}, {"role": "user", "content": problem}))
    assert tuple(rollout) in ids
    assert all(tok.decode(list(k)).startswith("<|im_start|>") for k in ids)


def _bos_tokenizer(folder: Path):
    """SmolLM2's tokenizer made to add a BOS (``<|im_start|>``) when it tokenizes, as Llama 3's
    adds ``<|begin_of_text|>``: the template already writes it."""
    from tokenizers import processors

    t = copy.deepcopy(load_tokenizer(MODEL))
    t._tokenizer.post_processor = processors.TemplateProcessing(single="<|im_start|> $A", pair="<|im_start|> $A $B",
                                                                special_tokens=[("<|im_start|>", 1)])
    t.save_pretrained(folder)
    return load_tokenizer(str(folder))


@pytest.mark.parametrize("imitation", ["llama.cpp-python", "token-ids-500"])
def test_text_prompts_do_not_double_the_bos(imitation, tmp_path):
    tok = _bos_tokenizer(tmp_path / "bos")
    assert tok("hi")["input_ids"][0] == tok.bos_token_id
    msgs = ({"role": "user", "content": "What is 2 + 3?"}, {"role": "assistant", "content": "Step 1: 2 + 3 = 5.\n\n"})
    reqs = [Request(f"s{i}", msgs[: 1 + (i % 2)], Sampling(max_tokens=8), seed=i, continue_final=bool(i % 2))
            for i in range(4)]

    async def main(server):
        b = make_backend(BackendSpec(kind="openai", base_url=server.url, served_model_name="fake-model",
                                     continuation="completions", tokenizer=str(tmp_path / "bos")), MODEL)
        await b.start()
        try:
            return [c async for c in b.stream(reqs)], b.describe()
        finally:
            await b.close()

    with FakeOpenAIServer(tokenizer=tok, quirks=imitation) as server:
        out, info = asyncio.run(main(server))
    assert all(c.finish_reason == "stop" for c in out)
    assert info["modes"]["prompt_format"] == "text"
    renderer = ChatRenderer(tok)
    want = {tuple(renderer.ids(r.messages, r.continue_final)) for r in reqs}
    got = {tuple(e.prompt_ids) for e in server.log}
    assert got == want and all(ids[0] == tok.bos_token_id != ids[1] for ids in got)  # one BOS, not two
    assert all(isinstance(e.body["prompt"], str) and not e.body["prompt"].startswith("<|im_start|>") for e in server.log)
    if imitation == "token-ids-500":  # the server's tokenizer endpoint checked each distinct prompt
        assert info["requests"]["text_prompts_checked"] == 2 and "server's tokenizer" in info["prefix_fidelity"]


REFUSALS = [
    (500, "1 validation error for CreateCompletionRequest\nprompt\n  Input should be a valid string"),
    (400, "Unrecognized request argument supplied: top_k"),
    (422, "Field required: messages"),
    (409, "conflict"),
]


@pytest.mark.parametrize("status,message", REFUSALS)
def test_a_refusal_no_retry_can_fix_is_sent_once_and_stops(status, message):
    async def main(server):
        b = make_backend(BackendSpec(kind="openai", base_url=server.url, served_model_name="fake-model",
                                     max_retries=5, outage_s=0), MODEL)
        await b.start()
        try:
            return await b.complete(Request("r0", ({"role": "user", "content": "Hi"},), Sampling(max_tokens=8), seed=1))
        finally:
            await b.close()

    with FakeOpenAIServer(refuse=(status, message)) as server:
        with pytest.raises(BackendError) as info:
            asyncio.run(main(server))
        assert len(server.log) == 1  # exactly one HTTP attempt
    assert f"{status}: " in str(info.value) and message.split("\n")[0] in str(info.value)
    assert "nothing was retried" in str(info.value)


def test_a_server_error_is_still_retried():
    async def main(server):
        b = make_backend(BackendSpec(kind="openai", base_url=server.url, served_model_name="fake-model",
                                     max_retries=2, outage_s=0), MODEL)
        await b.start()
        try:
            return await b.complete(Request("r0", ({"role": "user", "content": "Hi"},), Sampling(max_tokens=8), seed=1))
        finally:
            await b.close()

    with FakeOpenAIServer(refuse=(503, "the engine is overloaded")) as server:
        c = asyncio.run(main(server))
        assert len(server.log) == 3  # one try and two retries
    assert c.finish_reason == "error" and not c.permanent and "503" in c.error


def test_generate_stops_at_the_first_refusal_with_the_servers_message(tmp_path, capsys):
    """The issue's llama.cpp run: every request refused with a 500 validation error. It
    was retried 6 times each and ended with 0 rollouts; now the first refusal is sent once
    and stops the run, loudly, with the server's message (exit 2, manifest stopped)."""
    from intgen.cli import main

    tok = load_tokenizer(MODEL)
    with FakeOpenAIServer(served=MODEL, tokenizer=tok, refuse=(500, "1 validation error for ChatCompletionRequest")) as s:
        out = tmp_path / "run"
        rc = main(["generate", str(ROOT / "pipelines" / "demo-server.yaml"), "--out", str(out), "--quiet",
                   f"backend.base_url={s.url}", f"proposer.backend.base_url={s.url}", "backend.concurrency=1",
                   *OVERRIDES])
        assert rc == 2 and len(s.log) == 1 and s.probes  # the probe went through; one generation request, once
    err = capsys.readouterr().err
    assert "1 validation error for ChatCompletionRequest" in err and "nothing was retried" in err
    assert f"--out {out}" in err  # the resume command
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "stopped" and "validation error" in manifest["stopped_by"]
    assert main(["inspect", str(out)]) == 0
    assert "stopped: " in capsys.readouterr().out


def test_check_server_reports_what_each_imitation_supports(capsys, tok):
    from intgen.cli import main

    with FakeOpenAIServer(served=MODEL, tokenizer=tok, quirks="llama.cpp-python") as server:
        assert main(["check-server", server.url.removesuffix("/v1"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    feats = {k: v["ok"] for k, v in report["probe"]["features"].items()}
    assert feats == {"chat": True, "completions_token_ids": False, "completions_text": True,
                     "continue_final_message": False, "n": False, "seeds": True, "tokenize": False}
    assert report["modes"]["continuation"] == "completions" and report["modes"]["prompt_format"] == "text"
    with FakeOpenAIServer(served=MODEL, tokenizer=tok) as server:
        assert main(["check-server", server.url, "--model", MODEL]) == 0
    text = capsys.readouterr().out
    assert "continuation=server" in text and "POST /tokenize (vllm form)" in text
    assert main(["check-server", "http://127.0.0.1:9/v1", "--model", MODEL]) == 2


def test_a_server_that_refuses_seeds_gets_none(tok):
    async def main(server):
        b = make_backend(BackendSpec(kind="openai", base_url=server.url, served_model_name=MODEL), MODEL)
        await b.start()
        try:
            reqs = [Request(f"s{i}", ({"role": "user", "content": "Hi"},), Sampling(max_tokens=8), seed=i) for i in range(2)]
            return [c async for c in b.stream(reqs)], b.describe()
        finally:
            await b.close()

    with FakeOpenAIServer(served=MODEL, tokenizer=tok, quirks={"no_seed"}) as server:
        out, info = asyncio.run(main(server))
        assert all(c.finish_reason == "stop" for c in out) and len(server.log) == 2
        assert all("seed" not in e.body for e in server.log)
    assert info["modes"]["seeds"].startswith("not sent: a request with a seed was refused")


def test_auto_finds_no_way_to_continue_and_the_policy_is_refused_before_any_request(tmp_path, tok, grader):
    """No local tokenizer (so no completions mode) and a server that closes the open turn:
    auto picks none, and the run is refused before the run folder or any generation request."""
    with FakeOpenAIServer(served=MODEL, tokenizer=tok, quirks="no-continue-final") as server:
        spec = load_spec(ROOT / "pipelines" / "demo-server.yaml", [
            f"backend.base_url={server.url}", f"proposer.backend.base_url={server.url}", *OVERRIDES])
        policy = make_backend(BackendSpec(kind="openai", base_url=server.url, served_model_name=MODEL,
                                          continuation="auto"), "nobody/no-such-model")
        out = tmp_path / "run"
        with pytest.raises(BackendError, match="check stage"):
            run_job(spec, out, spec_dir=ROOT / "pipelines", backend=policy, progress=False, grader=grader)
        assert policy.describe()["modes"]["continuation"] == "none"
        assert not out.exists() and not server.log and server.probes
