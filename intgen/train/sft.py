"""``intgen train sft``: TRL's SFTTrainer on the ``sft`` view, trained on prefix +
intervention only and without an end-of-turn token (DESIGN section 8).

intgen tokenizes every row itself (:mod:`intgen.train.data`: one tokenization of the
rendered prompt + the target, mask from character offsets) and hands TRL a pre-tokenized
dataset with ``input_ids`` and ``completion_mask``. TRL 1.x treats a dataset with an
``input_ids`` column as processed: it adds no EOS (that happens only for untokenized
string rows) and, with ``completion_only_loss=True`` (set here; TRL's automatic choice
would be False for rows without ``prompt``/``completion`` columns), turns the mask into
``labels`` (-100 outside it). Rows longer than ``max_length`` are cut (keeping the start).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from intgen.train import common
from intgen.train.configs import ResolvedConfig, apply_effective_batch, build_trl_config, default_preset, resolve
from intgen.train.data import SFTData, build_sft_dataset, load_view

log = logging.getLogger(__name__)


@dataclass
class SFTResult:
    out: Path
    trainer: Any
    data: SFTData
    config: ResolvedConfig
    metrics: dict[str, Any]


def default_out(model: str, kind: str) -> Path:
    """``checkpoints/<model>-<kind>`` under the current folder (a path's last part, an id's name)."""
    tail = Path(model.rstrip("/")).name or "model"
    return Path("checkpoints") / f"{tail}-{kind}"


def train_sft(data: str, model: str, out: str | Path | None = None, *, preset: str | None = None,
              overrides: list[str] | None = None, lora: bool = False, limit: int | None = None,
              train: bool = True) -> SFTResult:
    """Fine-tune ``model`` on the ``sft`` view of ``data``; save the model (or the LoRA
    adapter) and tokenizer to ``out``, with ``intgen_train.json``.

    Args:
        data: run directory, export folder, or Hub dataset repo id.
        model: intgen short name, Hugging Face id, or local path.
        out: output folder (default ``checkpoints/<model>-sft``).
        preset: ``paper`` or ``cpu`` (default: :func:`intgen.train.configs.default_preset`).
        overrides: ``key=value`` items (:mod:`intgen.train.configs`).
        lora: train a LoRA adapter.
        limit: use only the first ``limit`` rows.
        train: False builds everything (dataset, trainer) without training or saving.

    Raises:
        intgen.train.configs.ConfigError, intgen.train.data.DataError,
        intgen.models.UnknownModelError.
    """
    from trl import SFTTrainer

    cfg = resolve("sft", preset or default_preset(model), overrides, lora=lora)
    apply_effective_batch(cfg)
    out = Path(out) if out else default_out(model, "sft")
    args = build_trl_config(cfg, str(out), completion_only_loss=True)

    view = load_view(data, "sft")
    loaded = common.load_model(model, cfg.intgen["dtype"])
    sft_data = build_sft_dataset(view, loaded.tokenizer, max_length=args.max_length,
                                 chat_template_kwargs=cfg.intgen.get("chat_template_kwargs"), limit=limit)
    log.info("sft: %d rows, %d tokens, preset %s%s", sft_data.rows, sft_data.tokens, cfg.preset,
             " (LoRA)" if cfg.lora else "")
    trainer = SFTTrainer(model=loaded.model, args=args, train_dataset=sft_data.dataset,
                         processing_class=loaded.tokenizer, peft_config=common.lora_config(cfg))
    metrics: dict[str, Any] = {}
    if train:
        result = trainer.train()
        metrics = dict(result.metrics)
        trainer.save_model(str(out))
        if trainer.is_world_process_zero():
            loaded.tokenizer.save_pretrained(str(out))
            record = common.base_record("sft", data, loaded, cfg, args)
            record.update({"rows": sft_data.rows, "tokens": sft_data.tokens,
                           "rows_with_straddling_token": sft_data.straddled,
                           "rows_longer_than_max_length": sft_data.too_long,
                           "global_step": trainer.state.global_step, "metrics": metrics})
            common.write_record(out, record)
    return SFTResult(out, trainer, sft_data, cfg, metrics)
