"""``intgen train rl``: TRL's GRPOTrainer on the ``rl`` view, with a binary outcome reward
from intgen's grader (docs/training.md, "RL").

The reward is 1.0 when :func:`intgen.grading.grade_answer` says ``correct`` and 0.0 for
``wrong``, ``no_answer`` and ``ungradable``. Grading runs in intgen's
:class:`~intgen.grading_pool.GradingPool` (worker processes with a hard per-item time
limit; never a thread: math-verify's timeouts use ``signal.alarm``). A completion that hit
``max_completion_length`` without an end-of-sequence token is graded as cut off
(``finish_reason="length"``: ``no_answer``), as intgen grades every other sample.
"""

from __future__ import annotations

import importlib.util
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from intgen.grading import extract_boxed
from intgen.grading_pool import GradingPool
from intgen.train import common
from intgen.train.configs import ResolvedConfig, apply_effective_batch, build_trl_config, default_preset, resolve
from intgen.train.data import DataError, message_text, load_view
from intgen.train.sft import default_out

log = logging.getLogger(__name__)


def completion_to_text(completion: Any) -> str:
    """The text a completion answers with: a plain string as is; for chat messages (TRL's
    conversational format, a list of ``{"role", "content"}``), the assistant messages'
    contents joined (usually one message)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        completion = [completion]
    if isinstance(completion, Sequence):
        parts = [message_text(m.get("content") or "") for m in completion
                 if isinstance(m, dict) and m.get("role", "assistant") == "assistant"]
        return "".join(parts)
    raise TypeError(f"a completion must be a string or a list of chat messages, not {type(completion).__name__}")


class GradingReward:
    """TRL reward function: 1.0 for a ``correct`` completion, 0.0 otherwise.

    Called by GRPOTrainer as ``reward(prompts=..., completions=..., completion_ids=...,
    answer=[...], **other_columns)``; the gold answer comes from the ``answer`` column (the
    raw gold answer of the ``rl`` view), or from ``solution`` (``\\boxed{gold}``) when
    ``answer`` is absent.

    Args:
        pool: the grading pool (not closed by this object).
        eos_token_ids: when given, a completion whose ``completion_ids`` do not end in one of
            them and are ``max_completion_length`` long is graded as cut off.
        max_completion_length: see ``eos_token_ids``.

    Raises (on call):
        ValueError: the number of gold answers (or prompts, or completion ids) differs from
            the number of completions, or no gold answers were passed; it never returns a
            different number of rewards than completions.
    """

    __name__ = "intgen_correct"

    def __init__(self, pool: GradingPool, eos_token_ids: Sequence[int] | None = None,
                 max_completion_length: int | None = None):
        self.pool = pool
        self.eos_token_ids = set(eos_token_ids) if eos_token_ids is not None else None
        self.max_completion_length = max_completion_length
        self.counts: Counter[str] = Counter()

    def _golds(self, n: int, answer: Sequence[str] | None, solution: Sequence[str] | None) -> list[str]:
        if answer is not None:
            golds, column = list(answer), "answer"
        elif solution is not None:
            golds, column = [extract_boxed(s) or s for s in solution], "solution"
        else:
            raise ValueError("the reward needs the gold answers: the dataset has neither an `answer` nor a "
                             "`solution` column")
        if len(golds) != n:
            raise ValueError(f"{n} completions but {len(golds)} gold answers (column {column!r}): the reward would "
                             "not be one per completion")
        return [str(g) for g in golds]

    def _cut_off(self, ids: Sequence[int] | None) -> bool:
        if self.eos_token_ids is None or ids is None or self.max_completion_length is None:
            return False
        return len(ids) >= self.max_completion_length and (not ids or ids[-1] not in self.eos_token_ids)

    def __call__(self, prompts: Sequence[Any] | None = None, completions: Sequence[Any] | None = None,
                 completion_ids: Sequence[Sequence[int]] | None = None, answer: Sequence[str] | None = None,
                 solution: Sequence[str] | None = None, log_metric=None, **_: Any) -> list[float]:
        if completions is None:
            raise ValueError("no completions given")
        n = len(completions)
        golds = self._golds(n, answer, solution)
        if prompts is not None and len(prompts) != n:
            raise ValueError(f"{n} completions but {len(prompts)} prompts")
        if completion_ids is not None and len(completion_ids) != n:
            raise ValueError(f"{n} completions but {len(completion_ids)} completion_ids")
        texts = [completion_to_text(c) for c in completions]
        finish = [("length" if self._cut_off(completion_ids[i] if completion_ids is not None else None) else "stop")
                  for i in range(n)]
        verdicts = self.pool.grade_many(list(zip(golds, texts, finish)))
        rewards = [1.0 if v.status == "correct" else 0.0 for v in verdicts]
        if len(rewards) != n:  # grade_many returns one verdict per item; keep the promise explicit
            raise ValueError(f"{len(rewards)} rewards for {n} completions")
        batch = Counter(v.status for v in verdicts)
        self.counts.update(batch)
        if log_metric is not None:
            for status in ("correct", "wrong", "no_answer", "ungradable"):
                log_metric(f"intgen/{status}", batch.get(status, 0) / n)
        return rewards


def with_system_prompt(view, system_prompt: str):
    """The ``rl`` view with ``{"role": "system", "content": system_prompt}`` put before every
    conversational prompt that has no system message (the paper's RL prompt, docs/training.md);
    string prompts and prompts with their own system message are kept. Returns ``(view,
    prompts changed)``.

    Raises:
        DataError: a prompt that is neither a string nor a list of messages.
    """
    added = 0

    def add(row, idx):
        nonlocal added
        prompt = row["prompt"]
        if isinstance(prompt, str):
            return {"prompt": prompt}
        if not isinstance(prompt, list):
            raise DataError(f"rl row {idx}: the prompt is {type(prompt).__name__}, not a string or a list of messages")
        if prompt and prompt[0].get("role") == "system":
            return {"prompt": prompt}
        added += 1
        return {"prompt": [{"role": "system", "content": system_prompt}, *prompt]}

    if not view or isinstance(view[0]["prompt"], str):
        return view, 0
    out = view.map(add, with_indices=True, load_from_cache_file=False)
    return out, added


@dataclass
class RLResult:
    out: Path
    trainer: Any
    reward: GradingReward
    config: ResolvedConfig
    metrics: dict[str, Any]


def _use_vllm(setting: str) -> bool:
    if setting == "false":
        return False
    if setting == "true":
        return True
    import torch

    if not torch.cuda.is_available() or importlib.util.find_spec("vllm") is None:
        return False
    from trl.import_utils import is_vllm_available

    available = bool(is_vllm_available())
    if available:
        import vllm

        log.info("rl: generating with vLLM %s (TRL's colocate mode); vllm=false generates with transformers",
                 getattr(vllm, "__version__", "?"))
    return available


def train_rl(data: str, model: str, out: str | Path | None = None, *, preset: str | None = None,
             overrides: list[str] | None = None, lora: bool = False, limit: int | None = None,
             train: bool = True, grader: GradingPool | None = None) -> RLResult:
    """GRPO on the ``rl`` view of ``data`` with :class:`GradingReward`; save the model (or
    LoRA adapter) and tokenizer to ``out`` with ``intgen_train.json``.

    Args are those of :func:`intgen.train.sft.train_sft`, plus ``grader``: a pool to use
    (default: a new one with ``grader_workers`` processes, closed at the end).

    Raises:
        intgen.train.configs.ConfigError, intgen.train.data.DataError,
        intgen.models.UnknownModelError.
    """
    from trl import GRPOTrainer

    cfg = resolve("rl", preset or default_preset(model), overrides, lora=lora)
    apply_effective_batch(cfg)
    out = Path(out) if out else default_out(model, "rl")
    use_vllm = _use_vllm(cfg.intgen["vllm"])
    extra: dict[str, Any] = {"remove_unused_columns": False, "use_vllm": use_vllm}
    if use_vllm and "vllm_mode" not in cfg.trl:
        extra["vllm_mode"] = "colocate"
    args = build_trl_config(cfg, str(out), **extra)

    view = load_view(data, "rl")
    if "prompt" not in view.column_names or not ({"answer", "solution"} & set(view.column_names)):
        raise DataError(f"the rl view needs a `prompt` and an `answer` (or `solution`) column; it has "
                        f"{view.column_names}")
    if limit is not None:
        view = view.select(range(min(limit, len(view))))
    if cfg.intgen.get("system_prompt"):
        view, added = with_system_prompt(view, cfg.intgen["system_prompt"])
        log.info("rl: the system prompt was put before %d of %d prompts (the others have their own)", added, len(view))
    from intgen.train.packing import choose_attention

    loaded = common.load_model(model, cfg.intgen["dtype"], choose_attention(cfg.intgen["attn_implementation"], False))
    own_pool = grader is None
    pool = grader or GradingPool(workers=cfg.intgen.get("grader_workers"), timeout_s=cfg.intgen["grader_timeout_s"])
    try:
        reward = GradingReward(pool, max_completion_length=args.max_completion_length)
        log.info("rl: %d problems, preset %s, %d generations each%s%s", len(view), cfg.preset,
                 args.num_generations, " (LoRA)" if cfg.lora else "", ", vLLM generation" if use_vllm else "")
        trainer = GRPOTrainer(model=loaded.model, reward_funcs=[reward], args=args, train_dataset=view,
                              processing_class=loaded.tokenizer, peft_config=common.lora_config(cfg))
        reward.eos_token_ids = set(trainer.eos_token_ids)
        metrics: dict[str, Any] = {}
        if train:
            result = trainer.train()
            metrics = dict(result.metrics)
            trainer.save_model(str(out))
            if trainer.is_world_process_zero():
                loaded.tokenizer.save_pretrained(str(out))
                record = common.base_record("rl", data, loaded, cfg, args)
                record.update({"problems": len(view), "use_vllm": use_vllm, "verdicts": dict(reward.counts),
                               "global_step": trainer.state.global_step, "metrics": metrics})
                common.write_record(out, record)
    finally:
        if own_pool:
            pool.close()
    return RLResult(out, trainer, reward, cfg, metrics)
