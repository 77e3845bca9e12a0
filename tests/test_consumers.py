"""Each trainer view loaded by its consumer's own code (issue 14): verl's ``RLHFDataset``
over the ``rl`` config, LLaMA-Factory's data pipeline over the ``llamafactory`` config with
the ``dataset_info.json`` intgen wrote. (TRL reads the ``sft`` and ``rl`` views in
tests/test_export.py and tests/test_train.py.)

Neither trainer installs beside intgen's own stack, so each runs in its own virtual
environment, built by ``tests/consumers/setup_consumers.sh`` (``./setup.sh`` calls it) under
``$INTGEN_CONSUMER_VENVS`` (default ``.consumers/`` in the checkout). A test skips
when its environment was never built, and fails when a build was tried and failed (the
script leaves ``FAILED`` with the reason). The loader scripts in tests/consumers/ run in
that environment and write what the consumer made of the view as JSON; the assertions are
here, against the run's own tables.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from intgen.export import export_run
from test_export import PROBLEMS, make_run

pytestmark = pytest.mark.consumers

ROOT = Path(__file__).resolve().parent.parent
HERE = ROOT / "tests" / "consumers"
SETUP = "tests/consumers/setup_consumers.sh"
SYSTEM_PROMPT = "Reason step by step."


def venvs() -> Path:
    return Path(os.environ.get("INTGEN_CONSUMER_VENVS") or ROOT / ".consumers")


def consumer(name: str) -> tuple[Path, dict]:
    """The consumer environment's python and its READY record (versions); skips when it
    was never built, fails when its build failed."""
    folder = venvs() / name
    failed = venvs() / f"{name}.FAILED"
    if failed.exists():
        pytest.fail(f"building the {name} environment failed ({failed}):\n{failed.read_text()[-2000:]}")
    if not (folder / "READY").exists():
        pytest.skip(f"no {name} environment at {folder}: build it with {SETUP} {name} (./setup.sh does)")
    ready = json.loads((folder / "READY").read_text())
    if not Path(ready["reuses"]).is_dir():
        pytest.fail(f"the {name} environment reuses {ready['reuses']}, which is gone: rebuild it with {SETUP} {name}")
    return folder / "bin" / "python", ready


def run_loader(python: Path, script_name: str, *args, tmp_path: Path) -> dict:
    """Run a loader script in a consumer environment; returns the JSON it wrote."""
    out = tmp_path / f"{script_name}.json"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # intgen is not importable there
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_CACHE=str(tmp_path / "hf-datasets"), TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run([str(python), str(HERE / script_name), *map(str, args), str(out)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{script_name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def verl_env():
    return consumer("verl")


@pytest.fixture(scope="module")
def llamafactory_env():
    return consumer("llamafactory")


@pytest.fixture(scope="module")
def exported(tmp_path_factory, grader):
    """A fake run with a system prompt and accepted candidates, exported."""
    problems_file = tmp_path_factory.mktemp("consumers-src") / "problems.jsonl"
    problems_file.write_text("".join(json.dumps(p) + "\n" for p in PROBLEMS))
    out = make_run(tmp_path_factory.mktemp("run") / "run", problems_file, grader, f"system_prompt={SYSTEM_PROMPT}")
    export_run(out)
    return out


@pytest.fixture(scope="module")
def model_dir():
    from intgen.models import materialize

    return materialize("smollm2-135m-instruct")


def view(run: Path, config: str) -> list[dict]:
    files = sorted((run / "export" / config).glob("*.parquet"))
    return pa.concat_tables([pq.read_table(f) for f in files]).to_pylist()


def test_verl_rlhfdataset_reads_the_rl_view(verl_env, exported, model_dir, tmp_path):
    python, ready = verl_env
    got = run_loader(python, "load_verl.py", exported / "export", model_dir, tmp_path / "verl-cache", tmp_path=tmp_path)
    assert got["verl"] == ready["installed"]["verl"]
    problems = pq.read_table(exported / "problems.parquet").to_pylist()
    rl = view(exported, "rl")
    # every problem kept: each prompt templated by SmolLM2's tokenizer within max_prompt_length
    # (verl counts a prompt it cannot template as too long and drops it)
    assert got["rows"] == len(rl) == len(problems) == 4
    assert {"raw_prompt", "data_source", "reward_model", "extra_info", "index", "dummy_tensor"} <= set(got["batch_keys"])

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    for i, (item, row, p) in enumerate(zip(got["items"], rl, problems)):
        assert item["raw_prompt"] == row["prompt"] == [{"role": "system", "content": SYSTEM_PROMPT},
                                                       {"role": "user", "content": p["problem"]}]
        assert item["reward_model"] == {"style": "rule", "ground_truth": p["gold_answer"]}
        assert item["data_source"] == p["source"] and item["ability"] == "math"
        assert item["index"] == i and item["extra_info"]["problem_id"] == p["problem_id"]
        # the token ids verl computes for the prompt are those of SmolLM2's chat template here
        text = tokenizer.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=False)
        assert item["input_ids"] == tokenizer(text, add_special_tokens=False)["input_ids"]
        assert item["prompt_text"].startswith(f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\n")
        assert item["prompt_text"].endswith(f"{p['problem']}<|im_end|>\n<|im_start|>assistant\n")
        # verl's math-verify scorer boxes the raw ground truth itself
        assert (item["score_right"], item["score_wrong"]) == (1.0, 0.0), p["gold_answer"]
        # verl routes rewards on data_source: an intgen source needs custom_reward_function (the card says so)
        assert item["default_reward"].startswith("NotImplementedError") and p["source"] in item["default_reward"]


def test_llamafactory_get_dataset_reads_the_view_through_dataset_info(llamafactory_env, exported, model_dir, tmp_path):
    python, ready = llamafactory_env
    info = json.loads((exported / "export" / "dataset_info.json").read_text())
    (name,) = info
    got = run_loader(python, "load_llamafactory.py", exported / "export", name, model_dir, tmp_path / "work",
                     tmp_path=tmp_path)
    assert got["llamafactory"] == ready["installed"]["llamafactory"]
    lf = view(exported, "llamafactory")
    assert len(lf) == len(got["converted"]) == 2
    # LLaMA-Factory's alpaca converter: prompt = instruction, response = output, system = system
    for row, conv in zip(lf, got["converted"]):
        assert conv["_prompt"] == [{"role": "user", "content": row["instruction"]}]
        assert conv["_response"] == [{"role": "assistant", "content": row["output"]}]
        assert conv["_system"] == row["system"] == SYSTEM_PROMPT

    head = f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\n"
    for template in ("smollm2", "smollm2_noeos"):
        assert len(got["examples"][template]) == 2
        for row, ex in zip(lf, got["examples"][template]):
            assert ex["text"].startswith(head + row["instruction"] + "<|im_end|>\n<|im_start|>assistant\n" + row["output"])
    # the stock template closes the assistant turn after the partial target (the card's warning) ...
    assert [ex["target"] for ex in got["examples"]["smollm2"]] == [r["output"] + "<|im_end|>\n" for r in lf]
    # ... the card's recipe (assistant formatter = the content alone) trains exactly the target
    assert [ex["target"] for ex in got["examples"]["smollm2_noeos"]] == [r["output"] for r in lf]
    assert all(ex["text"].endswith(r["output"]) for r, ex in zip(lf, got["examples"]["smollm2_noeos"]))
