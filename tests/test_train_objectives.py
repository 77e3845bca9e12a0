"""The trainers' objectives on tiny random models (issue 17, docs/training.md).

- Packed SFT gives the same loss as unpacked SFT (and as each row run alone), to 1e-4: the
  step's loss is the sum over completion tokens divided by the step's completion tokens,
  and no token attends across a packed row's boundary.
- One loss of the RL ``paper`` preset through TRL's GRPOTrainer equals the paper's
  objective computed by hand: advantages centred on the group mean (no std), REINFORCE
  with the importance weight min(ratio, 5).
"""

from __future__ import annotations

import pytest

pytest.importorskip("trl")
pytestmark = pytest.mark.filterwarnings("ignore:TRL currently supports vLLM versions")

MODEL = "smollm2-135m-instruct"


@pytest.fixture(autouse=True)
def one_torch_thread():
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from intgen.models import materialize

    return AutoTokenizer.from_pretrained(materialize(MODEL))


def tiny_model(vocab: int, seed: int = 0, attn: str = "sdpa"):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    config._attn_implementation = attn
    return LlamaForCausalLM(config)


def sft_rows(vocab: int, n: int = 9, seed: int = 1):
    """``n`` rows of 6-40 tokens: a prompt (mask 0) then a completion (mask 1)."""
    import random

    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        length = rng.randint(6, 40)
        prompt = rng.randint(2, length - 2)
        rows.append(([rng.randrange(5, vocab) for _ in range(length)], [0] * prompt + [1] * (length - prompt)))
    return rows


def step_loss(trainer) -> float:
    """The loss of one optimizer step over the whole dataset, as the trainer computes it:
    every micro-batch through ``compute_loss`` with the step's completion-token count."""
    import torch

    batches = list(trainer.get_train_dataloader())
    n_items = trainer._get_num_items_in_batch(batches, torch.device("cpu"))
    with torch.no_grad():
        return float(sum(trainer.compute_loss(trainer.model, b, num_items_in_batch=n_items) for b in batches))


def test_packed_and_unpacked_sft_losses_agree(tokenizer, tmp_path):
    import datasets
    import torch
    import torch.nn.functional as F

    from intgen.train.configs import resolve
    from intgen.train.packing import register_sdpa_rows
    from intgen.train.sft import build_sft_trainer

    vocab = len(tokenizer)
    rows = sft_rows(vocab)
    dataset = datasets.Dataset.from_dict({"input_ids": [r[0] for r in rows], "completion_mask": [r[1] for r in rows]})
    common = ["max_length=64", "effective_batch_size=9", "dataloader_drop_last=false", "shuffle_dataset=false"]
    losses = {}
    # packed on transformers' sdpa (a dense block-diagonal mask) and on intgen's sdpa per row; unpacked with 3 rows
    # per micro-batch, padded
    for name, packing, per_device, attn in (("sdpa", "true", 1, "sdpa"), ("rows", "true", 1, register_sdpa_rows()),
                                            ("unpacked", "false", 3, "sdpa")):
        cfg = resolve("sft", "cpu", [*common, f"packing={packing}", f"per_device_train_batch_size={per_device}"])
        trainer, args, packed, _ = build_sft_trainer(tiny_model(vocab, attn=attn), tokenizer, dataset, cfg,
                                                     tmp_path / name)
        if packed is not None:
            assert packed.rows == len(rows) and packed.sequences < len(rows)  # several rows share a sequence
            assert all(sum(s["seq_lengths"]) <= 64 for s in trainer.train_dataset)
            first = next(iter(trainer.get_train_dataloader()))
            assert "attention_mask" not in first and first["input_ids"].shape[0] == 1
        losses[name] = step_loss(trainer)

    # by hand: every row alone, summed token losses over the completion tokens of all rows
    model = tiny_model(vocab)
    total, count = 0.0, 0
    with torch.no_grad():
        for ids, mask in rows:
            logits = model(input_ids=torch.tensor([ids])).logits[0, :-1]
            target = torch.tensor(ids[1:])
            keep = torch.tensor(mask[1:]).bool()
            total += float(F.cross_entropy(logits[keep], target[keep], reduction="sum"))
            count += int(keep.sum())
    by_hand = total / count
    assert abs(losses["sdpa"] - losses["unpacked"]) < 1e-4 and abs(losses["rows"] - losses["unpacked"]) < 1e-4
    assert abs(losses["rows"] - by_hand) < 1e-4
    assert 9 < by_hand < 12  # a random model over 49k tokens: about ln(49152) = 10.8


def test_packing_refuses_attention_that_mixes_rows(tokenizer, monkeypatch):
    """An implementation whose packed logits differ from the rows' own is refused, naming it."""
    import torch

    from intgen.train import packing

    model = tiny_model(len(tokenizer))
    assert packing.check_row_isolation(model) < 1e-4
    real = packing.padding_free_batch

    def leaky(rows, pad):  # an attention mask of ones: transformers then ignores where rows start
        batch = real(rows, pad)
        batch["attention_mask"] = torch.ones_like(batch["input_ids"])
        return batch

    monkeypatch.setattr(packing, "padding_free_batch", leaky)
    with pytest.raises(packing.PackingError, match="attn_implementation='sdpa'.*packing=false"):
        packing.check_row_isolation(model)


def test_paper_rl_loss_equals_the_objective_by_hand(tokenizer, tmp_path):
    import datasets
    import torch
    from trl import GRPOTrainer

    from intgen.train.configs import build_trl_config, resolve

    vocab = len(tokenizer)
    cfg = resolve("rl", "paper", ["bf16=false", "gradient_checkpointing=false", "num_generations=4",
                                  "per_device_train_batch_size=8", "generation_batch_size=8", "effective_batch_size=8",
                                  "max_completion_length=6", "save_strategy=no", "vllm=false"])
    from intgen.train.configs import apply_effective_batch

    apply_effective_batch(cfg, processes=1)
    args = build_trl_config(cfg, str(tmp_path), remove_unused_columns=False, use_vllm=False)
    assert (args.loss_type, args.epsilon_high, args.scale_rewards, args.max_grad_norm, args.beta) == (
        "cispo", 5.0, "none", 0.3, 0.0)

    seen: list[tuple[list[int], float]] = []

    def reward(completions, completion_ids, **_):  # deterministic and spread: the first token's residue
        values = [float(ids[0] % 5) for ids in completion_ids]
        seen.extend(zip(completion_ids, values))
        return values

    prompts = [[{"role": "user", "content": "What is 2 + 2?"}], [{"role": "user", "content": "Name a prime."}]]
    data = datasets.Dataset.from_dict({"prompt": prompts, "answer": ["4", "2"]})
    trainer = GRPOTrainer(model=tiny_model(vocab, seed=3), reward_funcs=[reward], args=args, train_dataset=data,
                          processing_class=tokenizer)
    trainer.model.train()
    torch.manual_seed(0)
    batch = [{"prompt": p, "answer": a} for p, a in zip(prompts, ["4", "2"]) for _ in range(4)]
    inputs = trainer._generate_and_score_completions(batch)
    trainer.current_gradient_accumulation_steps = 1

    # advantages: reward minus its group's mean, not divided by the group's std
    rewards = torch.tensor([r for _, r in seen])
    groups = rewards.view(2, 4)
    expected_adv = (groups - groups.mean(dim=1, keepdim=True)).flatten()
    assert groups.std(dim=1).gt(0).any()  # the test is not vacuous
    assert torch.allclose(inputs["advantages"], expected_adv, atol=1e-6)

    # the completions' log-probabilities under the model, by hand
    ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
    attn = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
    with torch.no_grad():
        logits = trainer.model(input_ids=ids, attention_mask=attn).logits
    c = inputs["completion_ids"].size(1)
    logp = torch.log_softmax(logits[:, -c - 1:-1].float() / 1.0, dim=-1)
    logp = logp.gather(-1, inputs["completion_ids"].unsqueeze(-1)).squeeze(-1)
    mask = inputs["completion_mask"].float()
    n_tokens, n_seqs = mask.sum(), mask.size(0)

    def paper_objective(weights):
        """PipelineRL's REINFORCE: -(1/sequences) sum_i sum_t min(ratio, 5) A_i log p_it."""
        return float(-(weights.clamp(max=5.0) * expected_adv.unsqueeze(1) * logp * mask).sum() / n_seqs)

    # on-policy (the first update on fresh rollouts): every ratio is 1
    with torch.no_grad():
        loss = float(trainer.compute_loss(trainer.model, inputs))
    on_policy = paper_objective(torch.ones_like(logp))
    # TRL divides the same sum by the completion tokens instead of the sequences (the named difference)
    assert loss == pytest.approx(on_policy * n_seqs / float(n_tokens), abs=1e-5)

    # off-policy: old log-probs below the current ones give ratios e^3 (capped at 5) and e^0.5
    shift = torch.tensor([3.0, 0.5]).repeat(c)[:c].expand_as(logp)
    inputs["old_per_token_logps"] = logp - shift
    with torch.no_grad():
        loss = float(trainer.compute_loss(trainer.model, inputs))
    off_policy = paper_objective(torch.exp(shift))
    assert off_policy != pytest.approx(on_policy, abs=1e-3)
    assert loss == pytest.approx(off_policy * n_seqs / float(n_tokens), abs=1e-5)


def test_paper_system_prompt_goes_before_prompts_without_one():
    import datasets

    from intgen.train.configs import resolve
    from intgen.train.rl import with_system_prompt

    system = resolve("rl", "paper").intgen["system_prompt"]
    view = datasets.Dataset.from_dict({"prompt": [[{"role": "user", "content": "a"}],
                                                  [{"role": "system", "content": "own"}, {"role": "user", "content": "b"}]],
                                       "answer": ["1", "2"]})
    out, added = with_system_prompt(view, system)
    assert added == 1
    assert out["prompt"][0] == [{"role": "system", "content": system}, {"role": "user", "content": "a"}]
    assert out["prompt"][1] == view["prompt"][1]
