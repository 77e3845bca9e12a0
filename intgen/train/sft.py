"""``intgen train sft``: TRL's SFTTrainer on the ``sft`` view, trained on prefix +
intervention only and without an end-of-turn token (docs/training.md).

intgen tokenizes every row itself (:mod:`intgen.train.data`: one tokenization of the
rendered prompt + the target, mask from character offsets). Then either

- **packed** (``packing=true``, both presets' default): intgen builds the labels, cuts and
  packs the rows (:mod:`intgen.train.packing`) and hands TRL the packed dataset with
  ``packing=True`` / ``padding_free=True`` and ``skip_prepare_dataset``; TRL's
  padding-free collator gives the model one row of tokens per micro-batch with position
  ids restarting at every packed row. The accumulation steps follow from the rows per
  packed sequence (:func:`intgen.train.configs.apply_packed_batch`); or
- **unpacked**: TRL receives ``input_ids`` and ``completion_mask``. TRL 1.x treats a
  dataset with an ``input_ids`` column as processed: it adds no EOS (that happens only for
  untokenized string rows) and, with ``completion_only_loss=True`` (set here; TRL's
  automatic choice would be False for rows without ``prompt``/``completion`` columns),
  turns the mask into ``labels`` (-100 outside it). Rows longer than ``max_length`` are
  cut (keeping the start).

In both, the loss of an optimizer step is the sum of the completion tokens' losses divided
by the completion tokens of the whole step (all micro-batches and processes): transformers
counts them (``num_items_in_batch``) and TRL's ``SFTTrainer.compute_loss`` divides by that
count, so packed and unpacked runs give the same loss.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from intgen.train import common
from intgen.train.configs import (PackedBatch, ResolvedConfig, apply_effective_batch, apply_packed_batch,
                                  build_trl_config, default_preset, resolve)
from intgen.train.data import SFTData, build_sft_dataset, load_view
from intgen.train.packing import PackedData, attention_of, check_row_isolation, choose_attention, pack_sft_dataset

log = logging.getLogger(__name__)


@dataclass
class SFTResult:
    out: Path
    trainer: Any
    data: SFTData
    config: ResolvedConfig
    metrics: dict[str, Any]
    packed: PackedData | None = None
    batch: PackedBatch | None = None


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
        preset: a preset name (default: :func:`intgen.train.configs.default_preset`).
        overrides: ``key=value`` items (:mod:`intgen.train.configs`).
        lora: train a LoRA adapter.
        limit: use only the first ``limit`` rows.
        train: False builds everything (dataset, trainer) without training or saving.

    Raises:
        intgen.train.configs.ConfigError, intgen.train.data.DataError,
        intgen.models.UnknownModelError, intgen.train.packing.PackingError (packing on an
        attention implementation that lets packed rows see each other).
    """
    cfg = resolve("sft", preset or default_preset(model), overrides, lora=lora)
    packing = bool(cfg.intgen["packing"])
    out = Path(out) if out else default_out(model, "sft")
    view = load_view(data, "sft")
    attn = choose_attention(cfg.intgen["attn_implementation"], packing)
    loaded = common.load_model(model, cfg.intgen["dtype"], attn)
    sft_data = build_sft_dataset(view, loaded.tokenizer, max_length=cfg.trl.get("max_length", 1024),
                                 chat_template_kwargs=cfg.intgen.get("chat_template_kwargs"), limit=limit)
    trainer, args, packed, batch = build_sft_trainer(loaded.model, loaded.tokenizer, sft_data.dataset, cfg, out)
    log.info("sft: %d rows, %d tokens, preset %s%s", sft_data.rows, sft_data.tokens, cfg.preset,
             " (LoRA)" if cfg.lora else "")
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
                           "attn_implementation": attention_of(trainer.model),
                           "packing": packing_record(packed, batch),
                           "global_step": trainer.state.global_step, "metrics": metrics})
            common.write_record(out, record)
    return SFTResult(out, trainer, sft_data, cfg, metrics, packed, batch)


def build_sft_trainer(model, tokenizer, dataset, cfg: ResolvedConfig, out: str | Path,
                      processes: int | None = None) -> tuple[Any, Any, PackedData | None, PackedBatch | None]:
    """TRL's ``SFTTrainer`` for a tokenized ``sft`` dataset (``input_ids``, ``completion_mask``:
    :func:`intgen.train.data.build_sft_dataset`), packed or not as ``cfg`` says (module
    docstring). Sets ``gradient_accumulation_steps`` in ``cfg`` (from the rows per packed
    sequence when packing). Returns ``(trainer, trl_args, packed, batch)``; the last two
    are None without packing.

    Raises:
        intgen.train.configs.ConfigError, intgen.train.packing.PackingError.
    """
    from trl import SFTTrainer

    packed: PackedData | None = None
    batch: PackedBatch | None = None
    max_length = cfg.trl.get("max_length", 1024)  # SFTConfig's default
    if cfg.intgen["packing"]:
        packed = pack_sft_dataset(dataset, max_length)
        batch = apply_packed_batch(cfg, packed.rows, packed.sequences, packed.tokens, processes)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        check_row_isolation(model, pad)  # refuses (PackingError) when packed rows would see each other
        args = build_trl_config(cfg, str(out), completion_only_loss=True, packing=True, padding_free=True,
                                packing_strategy="bfd", dataset_kwargs={"skip_prepare_dataset": True})
        train_dataset = packed.dataset
        log.info("sft: %d rows packed into %d sequences of up to %d tokens (%.1f rows each), attention %s; "
                 "%d accumulation steps: %.1f rows per optimizer step on average (target %s)", packed.rows,
                 packed.sequences, max_length, packed.rows / packed.sequences, attention_of(model),
                 args.gradient_accumulation_steps, batch.mean_rows_per_step if batch else float("nan"),
                 batch.target_rows if batch else "none")
    else:
        apply_effective_batch(cfg, processes)
        args = build_trl_config(cfg, str(out), completion_only_loss=True)
        train_dataset = dataset
    trainer = SFTTrainer(model=model, args=args, train_dataset=train_dataset, processing_class=tokenizer,
                         peft_config=common.lora_config(cfg))
    # The step's loss is sum / (completion tokens of the whole optimizer step) only when transformers counts
    # those tokens (num_items_in_batch), which it does for models whose forward takes loss kwargs; TRL's
    # compute_loss divides by the count itself, so counting is safe for every model.
    trainer.model_accepts_loss_kwargs = True
    return trainer, args, packed, batch


def packing_record(packed: PackedData | None, batch: PackedBatch | None) -> dict[str, Any] | None:
    """The run record's ``packing`` entry: what was packed, and rows per optimizer step
    (wanted and reached on average); None without packing."""
    if packed is None:
        return None
    return {"max_length": packed.max_length, "rows": packed.rows, "sequences": packed.sequences,
            "tokens": packed.tokens, "rows_without_labels_dropped": packed.dropped,
            "rows_per_sequence": round(packed.rows / packed.sequences, 3),
            "mean_row_tokens": round(packed.tokens / packed.rows, 1),
            "target_rows_per_step": batch.target_rows if batch else None,
            "mean_rows_per_step": round(batch.mean_rows_per_step, 2) if batch else None,
            "gradient_accumulation_steps": batch.gradient_accumulation_steps if batch else None}
