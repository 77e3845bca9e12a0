"""``intgen rounds`` (issue 18, docs/rounds.md): generate, fine-tune on the SFT rows, generate
again with the fine-tuned policy; resumable from the folders alone.

The rounds run the bundled ``rounds`` spec on the fake backend (the model is faked only at
the backend boundary: every step is a real ``intgen generate`` / ``intgen train sft`` child
process, training real weights). The fake script solves every problem within 8 samples,
so the tests keep every failed rollout (``rollout.keep=failed``) to have SFT rows; one test
keeps the spec's hard pool and ends on its emptiness.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("trl")
pytestmark = pytest.mark.filterwarnings("ignore:TRL currently supports vLLM versions")

from intgen.cli import main  # noqa: E402
from intgen.resources import job_spec  # noqa: E402
from intgen.rounds import ROUNDS_FILE, RoundsJob, run_rounds, run_step  # noqa: E402
from intgen.rundir import RunDirError  # noqa: E402

SPEC = job_spec("rounds")
# every failed rollout goes on (the fake script leaves no hard problem); 4 problems x 4 rollouts x 2 proposals
KEEP_FAILED = ["backend.kind=fake", "rollout.keep=failed", "rollout.wave=null", "rollout.k=4", "propose.m=2"]


def _read(out: Path) -> dict:
    return json.loads((out / ROUNDS_FILE).read_text())


def _kind(args: list[str]) -> str:
    return args[0] if args[0] != "train" else "train"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """A 2-layer random-weight Llama with SmolLM2's tokenizer, saved as a local model folder."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from intgen.models import materialize

    tok = AutoTokenizer.from_pretrained(materialize("smollm2-135m-instruct"))
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id)
    path = tmp_path_factory.mktemp("tiny") / "tiny-llama"
    LlamaForCausalLM(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_two_rounds_train_once_on_smollm2_and_a_rerun_redoes_nothing(tmp_path):
    """Round 1 on SmolLM2, one real SFT step on its rows, round 2 with the fine-tuned folder as
    the policy and the next seed; rounds.json holds the funnel of both; a rerun keeps all."""
    out = tmp_path / "rounds"
    job = RoundsJob(job=SPEC, out=out, rounds=2, overrides=KEEP_FAILED, seed=0, model="smollm2-135m-instruct",
                    train_preset="cpu", train_overrides=["max_steps=1"], limit=4, quiet=True)
    calls: list[list[str]] = []

    def recording(args: list[str]) -> int:
        calls.append(args)
        return run_step(args)

    result = run_rounds(job, step=recording, say=lambda line: None)
    assert [_kind(c) for c in calls] == ["generate", "train", "generate"]
    assert result.ended_by == "rounds_done" and result.exit_status == 0
    assert calls[1][:8] == ["train", "sft", "--data", str(out / "round-1"), "--model", "smollm2-135m-instruct",
                            "--out", str(out / "model-1.partial")]  # renamed to model-1 once trained
    assert calls[1][8:] == ["--preset", "cpu", "max_steps=1"]
    assert calls[0][-2:] == ['model="smollm2-135m-instruct"', "seed=0"]
    assert calls[2][-2:] == [f'model="{out / "model-1"}"', "seed=1"]
    assert not (out / "model-1.partial").exists()

    train = json.loads((out / "model-1" / "intgen_train.json").read_text())
    stats1 = json.loads((out / "round-1" / "stats.json").read_text())
    assert train["global_step"] == 1 and train["rows"] == stats1["funnel"]["sft_rows"] > 0
    assert (out / "model-1" / "model.safetensors").is_file()
    # round 2's run was made by the fine-tuned folder, with the next seed, on the same problems
    manifest2 = json.loads((out / "round-2" / "manifest.json").read_text())
    assert manifest2["complete"]
    import yaml

    job2 = yaml.safe_load((out / "round-2" / "job.yaml").read_text())
    assert job2["model"] == str(out / "model-1") and job2["seed"] == 1
    import pyarrow.parquet as pq

    problems1 = pq.read_table(out / "round-1" / "problems.parquet").column("problem_id").to_pylist()
    problems2 = pq.read_table(out / "round-2" / "problems.parquet").column("problem_id").to_pylist()
    assert problems1 == problems2 and len(problems1) == 4

    record = _read(out)
    assert record["status"] == "complete" and record["ended_by"] == "rounds_done"
    assert [r["round"] for r in record["rounds"]] == [1, 2]
    r1, r2 = record["rounds"]
    assert r1["policy"] == "smollm2-135m-instruct" and r2["policy"] == str(out / "model-1")
    assert r1["sft_rows"] == stats1["funnel"]["sft_rows"]
    assert r1["trained"] == {"model_dir": "model-1", "rows": train["rows"], "global_step": 1, "preset": "cpu"}
    assert "trained" not in r2 and r2["status"] == "complete"
    assert r2["sft_rows"] == json.loads((out / "round-2" / "stats.json").read_text())["funnel"]["sft_rows"]

    calls.clear()
    again = run_rounds(job, step=recording, say=lambda line: None)
    assert calls == [] and again.ended_by == "rounds_done"
    assert _read(out)["rounds"] == record["rounds"]


def test_a_kill_between_rounds_resumes_without_training_again(tmp_path, tiny_model):
    """SIGKILL of the rounds process once model-1 is trained (its round-2 step gets SIGTERM and
    stops); the same command again trains nothing and finishes round 2."""
    import psutil

    out = tmp_path / "rounds"
    cmd = [sys.executable, "-m", "intgen.cli", "rounds", str(SPEC), "--rounds", "2", "--out", str(out), "--limit", "4",
           "--preset", "cpu", "--train", "max_steps=1", "--quiet", *KEEP_FAILED, f"model={tiny_model}"]
    with open(tmp_path / "first.log", "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        marker = out / "model-1" / "intgen_train.json"  # there once trained and renamed
        deadline = time.monotonic() + 600
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        children = psutil.Process(proc.pid).children(recursive=True) if proc.poll() is None else []
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert marker.exists(), (tmp_path / "first.log").read_text()[-3000:]
    _, alive = psutil.wait_procs(children, timeout=120)  # the step ends with its parent (PR_SET_PDEATHSIG)
    assert alive == []
    trained = marker.read_bytes()
    assert not (out / "round-2" / "manifest.json").exists() or not _read_manifest(out / "round-2").get("complete")

    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "model-1 is trained, kept" in done.stdout and "train 1: intgen train sft" not in done.stdout
    assert marker.read_bytes() == trained
    record = _read(out)
    assert record["ended_by"] == "rounds_done" and [r["status"] for r in record["rounds"]] == ["complete"] * 2
    assert record["rounds"][1]["policy"] == str(out / "model-1")


def _read_manifest(run_dir: Path) -> dict:
    return json.loads((run_dir / "manifest.json").read_text())


def test_an_empty_hard_pool_ends_the_job_before_any_training(tmp_path, capsys):
    out = tmp_path / "rounds"
    rc = main(["rounds", "rounds", "--rounds", "3", "--out", str(out), "--limit", "3", "--quiet", "backend.kind=fake"])
    assert rc == 0
    record = _read(out)
    assert record["ended_by"] == "no_hard_problems" and record["status"] == "complete"
    assert [r["hard_problems"] for r in record["rounds"]] == [0]
    assert not (out / "model-1").exists() and not (out / "round-2").exists()
    capsys.readouterr()
    assert main(["inspect", str(out)]) == 0  # a rounds folder: the funnel across rounds
    shown = capsys.readouterr().out.splitlines()
    assert "complete (ended by no_hard_problems" in shown[0]
    assert shown[1].split()[:4] == ["round", "status", "solved", "problems"]
    assert shown[2].split()[:4] == ["1", "complete", "3/3", "3"]


def test_a_round_that_does_not_finish_leaves_the_job_incomplete(tmp_path):
    out = tmp_path / "rounds"
    job = RoundsJob(job=SPEC, out=out, rounds=2, overrides=["backend.kind=fake"], model="smollm2-135m-instruct")
    result = run_rounds(job, step=lambda args: 3, say=lambda line: None)  # a round with failed requests
    assert (result.ended_by, result.exit_status) == ("round_incomplete", 3)
    record = _read(out)
    assert record["status"] == "incomplete" and record["ended_by"] == "round_incomplete"
    assert [(r["round"], r["status"]) for r in record["rounds"]] == [(1, "incomplete")]


def test_bad_folder_rounds_and_training_settings_are_refused_before_any_step(tmp_path, capsys):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    job = RoundsJob(job=SPEC, out=foreign, rounds=2, model="smollm2-135m-instruct")
    with pytest.raises(RunDirError, match="not an intgen rounds folder"):
        run_rounds(job, step=lambda args: pytest.fail("no step may run"))
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]

    assert main(["rounds", "rounds", "--rounds", "2", "--out", str(tmp_path / "a"), "--train", "max_stepz=1",
                 "backend.kind=fake"]) == 2
    assert "max_stepz" in capsys.readouterr().err
    assert main(["rounds", "rounds", "--rounds", "0", "--out", str(tmp_path / "b"), "backend.kind=fake"]) == 2
    assert "--rounds 0" in capsys.readouterr().err
    assert main(["rounds", "rounds", "--rounds", "2", "--out", str(tmp_path / "c"), "check.rr=1"]) == 2
    assert "check.rr" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "c").exists()


def test_a_rerun_with_other_settings_or_lora_is_refused(tmp_path, capsys):
    out = tmp_path / "rounds"
    assert main(["rounds", "rounds", "--rounds", "3", "--out", str(out), "--limit", "2", "--quiet",
                 "backend.kind=fake"]) == 0  # ends at once: the fake model leaves no hard problem
    before = (out / ROUNDS_FILE).read_bytes()
    capsys.readouterr()
    assert main(["rounds", "rounds", "--rounds", "3", "--out", str(out), "--limit", "3", "--quiet",
                 "backend.kind=fake"]) == 2
    assert "limit = 2" in capsys.readouterr().err
    assert main(["rounds", "rounds", "--rounds", "3", "--out", str(out), "--limit", "2", "--quiet",
                 "backend.kind=fake", "rollout.k=4"]) == 2
    assert "overrides" in capsys.readouterr().err
    assert (out / ROUNDS_FILE).read_bytes() == before
    assert main(["rounds", "rounds", "--rounds", "2", "--out", str(tmp_path / "l"), "--train", "lora.r=8",
                 "backend.kind=fake"]) == 2
    assert "LoRA is not offered" in capsys.readouterr().err
    # --rounds alone may change: the same folder, more rounds
    assert main(["rounds", "rounds", "--rounds", "4", "--out", str(out), "--limit", "2", "--quiet",
                 "backend.kind=fake"]) == 0


def test_a_killed_training_is_redone_from_scratch_and_a_foreign_model_folder_is_refused(tmp_path):
    out = tmp_path / "rounds"
    job = RoundsJob(job=SPEC, out=out, rounds=2, overrides=KEEP_FAILED, model="smollm2-135m-instruct", limit=4,
                    quiet=True)
    calls: list[list[str]] = []

    def generate_only(args: list[str]) -> int:
        calls.append(args)
        if args[0] == "train":  # killed while saving: a half-written weights file, no record
            partial = Path(args[args.index("--out") + 1])
            partial.mkdir(parents=True)
            (partial / ".tmpweights").write_bytes(b"x" * 100)
            return -9
        return run_step(args)

    result = run_rounds(job, step=generate_only, say=lambda line: None)
    assert (result.ended_by, result.exit_status) == ("train_failed", 137)
    assert not (out / "model-1").exists()

    def fake_train(args: list[str]) -> int:
        calls.append(args)
        if args[0] != "train":
            return run_step(args)
        partial = Path(args[args.index("--out") + 1])
        assert not partial.exists()  # the killed training's leftovers are gone
        partial.mkdir()
        (partial / "config.json").write_text("{}")
        (partial / "model.safetensors").write_bytes(b"")
        (partial / "intgen_train.json").write_text(json.dumps({"rows": 1, "global_step": 1, "preset": "cpu"}))
        return 0

    calls.clear()
    result = run_rounds(job, step=fake_train, say=lambda line: None)
    assert [_kind(c) for c in calls] == ["train", "generate"] and result.ended_by == "rounds_done"
    assert sorted(p.name for p in (out / "model-1").iterdir()) == ["config.json", "intgen_train.json",
                                                                  "model.safetensors"]
    # a model folder that is not a finished training is never replaced
    other = tmp_path / "other"
    job2 = RoundsJob(job=SPEC, out=other, rounds=1, overrides=KEEP_FAILED, model="smollm2-135m-instruct", limit=4,
                     quiet=True)
    assert run_rounds(job2, step=run_step, say=lambda line: None).ended_by == "rounds_done"
    job2.rounds = 2
    (other / "model-1").mkdir()
    (other / "model-1" / "notes.txt").write_text("mine")
    from intgen.rounds import RoundsError

    with pytest.raises(RoundsError, match="holds no finished training"):
        run_rounds(job2, step=run_step, say=lambda line: None)
    assert (other / "model-1" / "notes.txt").read_text() == "mine"
