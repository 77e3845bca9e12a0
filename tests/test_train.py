"""``intgen train sft`` / ``intgen train rl`` on SmolLM2 on the CPU (issue 8, docs/paper.md, "Training settings").

One scripted fake-backend run with two accepted candidates is exported; SFT and GRPO run
2 steps each on its views. For both SFT rows the test asserts exactly which token
positions carry labels: the whole prefix + intervention, none of the prompt, nothing
after the target. The ``half`` row's failed trace starts with two spaces (an indented
first line), so its target starts with ``"  "``: byte-level BPE merges the assistant
header's ``"\\n"`` with the first space into one token ``"\\n "`` (``ĊĠ``), which
encoding prompt and target apart would never produce. That straddling token is labelled
(intgen.train.data documents why).
"""

from __future__ import annotations

import gc
import json
import shutil

import pytest

pytest.importorskip("trl")
pytest.importorskip("peft")
pytestmark = pytest.mark.filterwarnings("ignore:TRL currently supports vLLM versions")

from intgen.backends.fake import FakeBackend  # noqa: E402
from intgen.cli import main  # noqa: E402
from intgen.config import load_spec  # noqa: E402
from intgen.export import export_run  # noqa: E402
from intgen.runner import run_job  # noqa: E402

MODEL = "smollm2-135m-instruct"
PROBLEMS = [
    {"id": "apples", "problem": "Sam has 5 apples and gets 7 more. How many apples does he have?",
     "reference_solution": "5 + 7 = 12.", "answer": "12"},
    {"id": "half", "problem": "What is half of 10?", "reference_solution": "10 / 2 = 5.", "answer": "5"},
]
GOLD = {p["problem"]: p["answer"] for p in PROBLEMS}
ROLLOUTS = {"apples": "Add the apples.\n\nThen 5 + 7 = 13.\n\nSo the total is $\\boxed{13}$.",
            "half": "  Half of 10 is 4.\n\nSo it is $\\boxed{4}$."}  # first line indented by two spaces
INTERVENTIONS = {"apples": ("Let me recompute 5 + 7 carefully.", 2), "half": ("Recheck: 10 / 2 = 5, not 4.", 2)}
TARGETS = {"apples": "Add the apples.\n\nLet me recompute 5 + 7 carefully.",
           "half": "  Half of 10 is 4.\n\nRecheck: 10 / 2 = 5, not 4."}
# tiny GRPO: 2 problems x 2 generations of 8 tokens, LoRA
RL_TINY = ["max_steps=2", "num_generations=2", "per_device_train_batch_size=2", "effective_batch_size=2",
           "max_completion_length=8"]


def script(request):
    m = request.meta
    pid = m["problem_id"]
    if m["stage"] == "rollout":
        return ROLLOUTS[pid]
    if m["stage"] == "solve":
        return "Solved with the reference."
    if m["stage"] == "propose":
        content, location = INTERVENTIONS[pid]
        return "Log.\n<intervention>" + json.dumps({"content": content, "location": location}) + "</intervention>"
    gold = {"apples": "12", "half": "5"}[pid]
    return "\n\nSo it is $\\boxed{" + (gold if m["stage"] == "check" else "0") + "}$."


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Train with one intra-op thread: on a shared 2-core machine, OpenMP's spinning barriers
    made token-by-token generation up to 20 times slower with 2 threads (GRPO: 10 s vs 207 s)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, grader):
    base = tmp_path_factory.mktemp("train")
    problems = base / "problems.jsonl"
    problems.write_text("\n".join(json.dumps(p) for p in PROBLEMS) + "\n")
    spec = load_spec(None, [], data={
        "name": "train-test", "source": {"path": str(problems), "adapter": "generic"}, "model": MODEL,
        "backend": {"kind": "fake"}, "rollout": {"k": 1}, "propose": {"m": 1}, "check": {"r": 1}})
    out = base / "run"
    result = run_job(spec, out, backend=FakeBackend(script), progress=False, grader=grader)
    assert result.funnel["sft_rows"] == 2
    export_run(out)
    return out


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from intgen.models import materialize

    return AutoTokenizer.from_pretrained(materialize(MODEL))


def _prompt_text(tok, problem):
    return tok.apply_chat_template([{"role": "user", "content": problem}], tokenize=False, add_generation_prompt=True)


# --------------------------------------------------------------------------- SFT


def test_sft_two_steps_label_exactly_prefix_and_intervention(run_dir, tmp_path):
    from intgen.train.sft import train_sft

    out = tmp_path / "sft"
    result = train_sft(str(run_dir), MODEL, out,
                       overrides=["max_steps=2", "per_device_train_batch_size=1", "effective_batch_size=1"])
    trainer = result.trainer
    assert trainer.state.global_step == 2
    # every optimizer step moved the weights (a warmup over a 2-step run would leave step 1 at lr 0)
    lrs = [h["learning_rate"] for h in trainer.state.log_history if "learning_rate" in h]
    assert len(lrs) == 2 and all(float(lr) > 0 for lr in lrs), lrs
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    record = json.loads((out / "intgen_train.json").read_text())
    assert record["rows"] == 2 and record["rows_with_straddling_token"] == 1 and record["global_step"] == 2
    assert record["trl"]["completion_only_loss"] is True
    # packing is the cpu preset's default: both rows in one packed sequence of up to 2048 tokens, sdpa per row
    assert record["trl"]["packing"] is True and record["trl"]["padding_free"] is True
    assert record["attn_implementation"] == "intgen_sdpa_rows"
    assert json.loads((out / "config.json").read_text()).get("_attn_implementation") is None  # not saved
    assert {k: record["packing"][k] for k in ("rows", "sequences", "rows_per_sequence", "target_rows_per_step",
                                              "mean_rows_per_step", "gradient_accumulation_steps")} == {
        "rows": 2, "sequences": 1, "rows_per_sequence": 2.0, "target_rows_per_step": 1, "mean_rows_per_step": 2.0,
        "gradient_accumulation_steps": 1}

    tok = trainer.processing_class
    end_of_turn = {tok.eos_token_id, tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|im_start|>")}
    # what TRL trains on: the packed sequence split back into its rows (labels = -100 outside the loss)
    trained = _trained_rows(trainer.train_dataset)
    assert len(trained) == 2
    problem = {p["id"]: p["problem"] for p in PROBLEMS}

    def labelled(pid):
        prompt = _prompt_text(tok, problem[pid])
        assert prompt.endswith("<|im_start|>assistant\n")
        ids = tok(prompt + TARGETS[pid], add_special_tokens=False)["input_ids"]
        labels = trained[tuple(ids)]  # the row was tokenized as one string, and nothing was appended
        positions = [i for i, lab in enumerate(labels) if lab != -100]
        assert all(labels[i] == ids[i] for i in positions)
        assert not set(ids[positions[0]:]) & end_of_turn  # no end-of-turn, no EOS
        return prompt, ids, positions

    # apples: no merge at the boundary; labels = exactly the target's tokens, all of them, up to the end
    prompt, ids, positions = labelled("apples")
    prompt_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    assert ids[:len(prompt_ids)] == prompt_ids
    assert positions == list(range(len(prompt_ids), len(ids)))
    assert tok.decode(ids[len(prompt_ids):]) == TARGETS["apples"]

    # half: the header's "\n" and the target's first space merge into one token "\n " (ĊĠ)
    prompt, ids, positions = labelled("half")
    prompt_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    apart = prompt_ids + tok(TARGETS["half"], add_special_tokens=False)["input_ids"]
    assert apart != ids  # encoding the pieces apart would give other tokens
    k = len(prompt_ids) - 1  # the straddling token replaces the prompt's last token ("\n")
    assert tok.convert_ids_to_tokens(prompt_ids[-1]) == "Ċ"
    assert ids[:k] == prompt_ids[:-1]
    assert tok.convert_ids_to_tokens(ids[k]) == "ĊĠ"
    # documented choice: the straddling token is labelled (it holds the target's first character), so the
    # labels are every token from it to the end: the target plus the one prompt character it carries
    assert positions == list(range(k, len(ids)))
    assert tok.decode(ids[k:]) == "\n" + TARGETS["half"]
    assert tok.decode(ids[:k]) + tok.decode(ids[k:]) == prompt + TARGETS["half"]

    del result, trainer
    gc.collect()


def _trained_rows(dataset) -> dict[tuple[int, ...], list[int]]:
    """``{input_ids: labels}`` of every row a trainer's dataset holds, packed or not."""
    from intgen.train.packing import unpack_rows

    out = {}
    for r in dataset:
        for ids, labels in (unpack_rows(r) if "seq_lengths" in r else [(r["input_ids"], r["labels"])]):
            out[tuple(ids)] = labels
    return out


def test_packed_labels_equal_unpacked_row_for_row(run_dir, tmp_path):
    """Packing changes nothing a row is trained on: the same tokens and labels row for row as
    TRL's unpacked preparation, also after TRL's padding-free collator; the labelled tokens
    decode to exactly the target (no end-of-turn token)."""
    from intgen.train.packing import unpack_rows
    from intgen.train.sft import train_sft

    packed = train_sft(str(run_dir), MODEL, tmp_path / "p", train=False)
    unpacked = train_sft(str(run_dir), MODEL, tmp_path / "u", overrides=["packing=false"], train=False)
    assert packed.packed is not None and unpacked.packed is None
    assert packed.trainer.args.gradient_accumulation_steps == 1  # 2 rows per packed sequence, target 2 rows
    rows_p, rows_u = _trained_rows(packed.trainer.train_dataset), _trained_rows(unpacked.trainer.train_dataset)
    assert len(rows_p) == 2 and rows_p == rows_u

    tok = packed.trainer.processing_class
    end_of_turn = {tok.eos_token_id, tok.convert_tokens_to_ids("<|im_end|>")}
    problem = {p["id"]: p["problem"] for p in PROBLEMS}
    for pid, target in TARGETS.items():
        ids = tuple(tok(_prompt_text(tok, problem[pid]) + target, add_special_tokens=False)["input_ids"])
        labelled = [t for t in rows_p[ids] if t != -100]
        assert not set(labelled) & end_of_turn
        # the "half" row's first labelled token also carries the header's "\n" (the straddling token)
        assert tok.decode(labelled) == ("\n" if pid == "half" else "") + target

    # the collator's batch (one row of tokens, position ids restarting per row) keeps the labels
    sequence = packed.trainer.train_dataset[0]
    batch = packed.trainer.data_collator([sequence])
    assert "attention_mask" not in batch
    starts = [0, sequence["seq_lengths"][0]]
    assert batch["position_ids"][0].tolist() == [i for n in sequence["seq_lengths"] for i in range(n)]
    expected = [lab for _, labels in unpack_rows(sequence) for lab in labels]
    assert all(expected[s] == -100 for s in starts)
    assert batch["labels"][0].tolist() == expected
    del packed, unpacked
    gc.collect()


def test_encode_sft_row_masks_from_offsets(tokenizer):
    from intgen.train.data import DataError, encode_sft_row

    msgs = [{"role": "user", "content": "Hi"}]
    prompt = _prompt_text(tokenizer, msgs[0]["content"])
    # a completion message and a plain-string completion give the same row
    a = encode_sft_row(tokenizer, msgs, [{"role": "assistant", "content": "\n\nStep one."}])
    b = encode_sft_row(tokenizer, msgs, "\n\nStep one.")
    assert (a.input_ids, a.completion_mask) == (b.input_ids, b.completion_mask)
    assert a.text == prompt + "\n\nStep one." and a.boundary == len(prompt)
    # "\n" + "\n\n" -> "ĊĊ" straddles, then "Ċ": the mask starts at the straddling token
    assert a.straddle is not None
    assert tokenizer.convert_ids_to_tokens(a.input_ids[a.straddle:a.straddle + 2]) == ["ĊĊ", "Ċ"]
    assert a.completion_mask == [0] * a.straddle + [1] * (len(a.input_ids) - a.straddle)
    # a string prompt is used verbatim (no template)
    c = encode_sft_row(tokenizer, "Q: 2+2?\nA:", " 4")
    assert c.straddle is None and tokenizer.decode([t for t, m in zip(c.input_ids, c.completion_mask) if m]) == " 4"
    with pytest.raises(DataError, match="empty completion"):
        encode_sft_row(tokenizer, msgs, "")


# --------------------------------------------------------------------------- RL


def test_reward_values_both_formats_and_count_mismatch(grader):
    from intgen.train.rl import GradingReward

    reward = GradingReward(grader)
    answers = ["12", "12", "\\frac{1}{2}", "5", "5"]
    texts = ["5 + 7 = 12, so $\\boxed{12}$.", "So $\\boxed{13}$.", "It is $\\boxed{0.5}$.", "The answer is 5.",
             "$\\boxed{\\frac{10}{2}}$"]
    expected = [1.0, 0.0, 1.0, 0.0, 1.0]
    assert reward(prompts=["p"] * 5, completions=texts, answer=answers) == expected
    chats = [[{"role": "assistant", "content": t}] for t in texts]
    assert reward(prompts=[[{"role": "user", "content": "p"}]] * 5, completions=chats, answer=answers) == expected
    # without an answer column the boxed `solution` column is read
    assert reward(completions=texts, solution=["\\boxed{" + a + "}" for a in answers]) == expected
    assert reward.counts == {"correct": 9, "wrong": 3, "no_answer": 3}

    # a completion that ran to max_completion_length without EOS is cut off: no_answer, reward 0
    cut = GradingReward(grader, eos_token_ids=[2], max_completion_length=3)
    assert cut(completions=["\\boxed{12}", "\\boxed{12}"], completion_ids=[[5, 6, 7], [5, 6, 2]],
               answer=["12", "12"]) == [0.0, 1.0]

    with pytest.raises(ValueError, match="2 completions but 3 gold answers"):
        reward(completions=texts[:2], answer=answers[:3])
    with pytest.raises(ValueError, match="3 completions but 2 gold answers"):
        reward(completions=chats[:3], answer=answers[:2])
    with pytest.raises(ValueError, match="2 completions but 1 prompts"):
        reward(prompts=["p"], completions=texts[:2], answer=answers[:2])
    with pytest.raises(ValueError, match="neither an `answer` nor a `solution`"):
        reward(completions=texts)


def test_grpo_two_steps_through_the_cli(run_dir, tmp_path, monkeypatch, capsys):
    from intgen.train.rl import GradingReward

    calls = []
    original = GradingReward.__call__

    def recording(self, **kwargs):
        rewards = original(self, **kwargs)
        calls.append((kwargs["prompts"], kwargs["completions"], kwargs["answer"], rewards))
        return rewards

    monkeypatch.setattr(GradingReward, "__call__", recording)
    out = tmp_path / "rl"
    rc = main(["train", "rl", "--data", str(run_dir), "--model", MODEL, "--out", str(out), "--lora", *RL_TINY])
    assert rc == 0, capsys.readouterr().err
    assert "2 steps" in capsys.readouterr().out
    assert (out / "adapter_model.safetensors").is_file()
    record = json.loads((out / "intgen_train.json").read_text())
    assert record["global_step"] == 2 and record["lora"]["r"] == 16 and record["trl"]["beta"] == 0.0
    assert sum(record["verdicts"].values()) == 4
    # one reward call per step, 2 completions each, every gold answer the one of its own prompt
    assert len(calls) == 2
    for prompts, completions, answers, rewards in calls:
        assert len(completions) == len(answers) == len(rewards) == 2
        assert all(isinstance(c, list) and c[0]["role"] == "assistant" for c in completions)  # chat format
        assert [GOLD[p[-1]["content"]] for p in prompts] == answers
        assert rewards == [0.0, 0.0]  # 8 tokens: cut off before any \boxed{}


# --------------------------------------------------------------------------- configs and data


def test_presets_and_overrides():
    from intgen.train.configs import ConfigError, apply_effective_batch, resolve

    sft = resolve("sft", "paper")
    assert {k: sft.trl[k] for k in ("learning_rate", "num_train_epochs", "lr_scheduler_type", "lr_scheduler_kwargs",
                                    "warmup_steps", "max_length")} == {
        "learning_rate": 1e-6, "num_train_epochs": 4, "lr_scheduler_type": "cosine_with_min_lr",
        "lr_scheduler_kwargs": {"min_lr_rate": 0.1}, "warmup_steps": 0.1, "max_length": 16384}
    apply_effective_batch(sft, processes=4)  # the paper: 1 per device x 16 accumulation x 4 GPUs = 64
    assert sft.trl["gradient_accumulation_steps"] == 16
    assert sft.intgen["packing"] is True and resolve("sft", "cpu").intgen["packing"] is True
    rl = resolve("rl", "paper")
    assert {k: rl.trl[k] for k in ("learning_rate", "num_generations", "beta", "entropy_coef", "temperature")} == {
        "learning_rate": 1e-6, "num_generations": 8, "beta": 0.0, "entropy_coef": 0.0, "temperature": 1.0}
    # the paper's objective (docs/training.md): REINFORCE with min(ratio, 5), no std, clip 0.3, its system prompt
    assert {k: rl.trl[k] for k in ("loss_type", "epsilon_high", "scale_rewards", "max_grad_norm",
                                   "vllm_max_model_length")} == {
        "loss_type": "cispo", "epsilon_high": 5.0, "scale_rewards": "none", "max_grad_norm": 0.3,
        "vllm_max_model_length": 12000}
    assert rl.intgen["system_prompt"] == "Please reason step by step, and put your final answer within \\boxed{}."
    default = resolve("rl", "trl-default")
    assert "loss_type" not in default.trl and default.intgen["system_prompt"] is None
    from intgen.train.configs import preset_names

    assert preset_names("rl") == ["paper", "trl-default", "cpu"] and preset_names("sft") == ["paper", "cpu"]
    assert resolve("sft", "paper", ["packing=false"]).intgen["packing"] is False  # the intgen key, not TRL's field
    with pytest.raises(ConfigError, match="'padding_free' cannot be overridden"):
        resolve("sft", "cpu", ["padding_free=true"])
    with pytest.raises(ConfigError, match="applies to intgen train sft"):
        resolve("rl", "cpu", ["packing=true"])

    cfg = resolve("sft", "cpu", ["learning_rate=1e-6", "max_length=null", "lora.r=8",
                                 "lora.target_modules=q_proj,v_proj", "lr_scheduler_kwargs={min_lr_rate: 0.2}"])
    assert cfg.trl["learning_rate"] == 1e-6 and cfg.trl["max_length"] is None
    assert cfg.trl["lr_scheduler_kwargs"] == {"min_lr_rate": 0.2}
    assert cfg.lora["r"] == 8 and cfg.lora["target_modules"] == ["q_proj", "v_proj"]  # lora.* turns LoRA on
    with pytest.raises(ConfigError, match="unknown key 'learnin_rate'.*did you mean learning_rate"):
        resolve("sft", "cpu", ["learnin_rate=1e-5"])
    with pytest.raises(ConfigError, match="'completion_only_loss' cannot be overridden"):
        resolve("sft", "cpu", ["completion_only_loss=false"])
    with pytest.raises(ConfigError, match="max_length='many'"):
        resolve("sft", "cpu", ["max_length=many"])
    with pytest.raises(ConfigError, match="unknown key 'lora.rank'"):
        resolve("rl", "cpu", ["lora.rank=4"])
    with pytest.raises(ConfigError, match="effective_batch_size=3"):
        apply_effective_batch(resolve("sft", "cpu", ["effective_batch_size=3", "per_device_train_batch_size=2"]),
                              processes=1)


def test_cli_errors_name_the_problem(run_dir, tmp_path, capsys):
    assert main(["train", "sft", "--data", str(run_dir), "--model", MODEL, "num_train_epoch=2"]) == 2
    assert "unknown key 'num_train_epoch'" in capsys.readouterr().err
    assert main(["train", "rl", "--data", str(tmp_path / "missing"), "--model", MODEL]) == 2
    assert "no such folder" in capsys.readouterr().err
    empty = tmp_path / "export-without-sft"
    shutil.copytree(run_dir / "export" / "rl", empty / "rl")
    assert main(["train", "sft", "--data", str(empty), "--model", MODEL]) == 2
    assert "has no 'sft' config" in capsys.readouterr().err


def test_run_dir_is_exported_when_its_export_is_missing(run_dir, tmp_path):
    from intgen.train.data import load_view, resolve_data

    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("export"))
    assert resolve_data(str(copy)) == (str(copy / "export"), "local")
    assert (copy / "export" / "README.md").is_file()
    rl = load_view(str(copy), "rl")
    assert sorted(rl["answer"]) == ["12", "5"]
    assert resolve_data(str(copy / "export")) == (str(copy / "export"), "local")
    assert resolve_data("someone/int-data") == ("someone/int-data", "hub")


def test_gguf_marker_is_cleared_only_on_float_weights():
    from transformers import LlamaConfig, LlamaForCausalLM

    from intgen.train.common import clear_gguf_marker

    config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1)
    model = LlamaForCausalLM(config)
    assert clear_gguf_marker(model) is False  # no marker: nothing to do
    # what transformers 5 leaves on a model loaded from a GGUF file (weights dequantized to floats)
    model.hf_quantizer = type("GgufHfQuantizer", (), {})()
    model.is_quantized = True
    model.config.quantization_config = {"quant_method": "gguf"}
    assert clear_gguf_marker(model) is True
    assert model.hf_quantizer is None and model.is_quantized is False
    assert getattr(model.config, "quantization_config", None) is None
