"""Training presets and ``key=value`` overrides (docs/training.md, "Presets").

A preset is a set of values for TRL's config (``trl.SFTConfig`` / ``trl.GRPOConfig``)
plus a few intgen keys. The presets (:data:`PRESETS`; ``intgen train sft --help`` lists them):

``paper``
    The paper's settings for Qwen3-4B-Instruct-2507 on GPUs (docs/paper.md, "Training
    settings"). For ``rl`` it is the paper's PipelineRL objective as far as
    ``trl.GRPOConfig`` can express it; its description names every difference.
``trl-default`` (``rl``)
    The paper's batch sizes and sampling with TRL's default objective (the ``paper``
    preset before issue 17).
``cpu``
    A small CPU configuration for SmolLM2-135M-Instruct: the tests and the README use it.

The default preset is ``cpu`` for the model ``smollm2-135m-instruct`` and ``paper`` for any
other model; ``--preset`` picks one explicitly. Presets live here, as Python, so that they
ship with the package (setup.cfg installs no data files).

Overrides (``intgen train sft ... learning_rate=1e-5 max_steps=2``), applied on top:

- a field of the TRL config (``SFTConfig`` for ``sft``, ``GRPOConfig`` for ``rl``); the
  value is converted to the field's type (``1e-6`` is a float, ``none`` or ``null`` is None
  where the field allows None, lists as ``[a,b]`` or ``a,b``, dicts as JSON/YAML);
- ``lora.FIELD``: a field of ``peft.LoraConfig`` (``lora.r=8``); setting one turns LoRA on;
- an intgen key (:data:`INTGEN_KEYS`).

An unknown key is an error that names it (and the closest known keys). Keys that intgen
sets itself because the method depends on them are refused (:data:`RESERVED`).
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import json
import os
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

import yaml

Kind = Literal["sft", "rl"]

#: intgen's own keys (not TRL fields), with their meaning; the same for both commands
#: unless noted
INTGEN_KEYS: dict[str, str] = {
    "effective_batch_size": "rows (sft) or completions (rl) per optimizer step over all processes; sets "
                            "gradient_accumulation_steps = effective_batch_size / (per_device_train_batch_size x "
                            "processes), or, for packed sft, / (rows per packed sequence x per_device_train_batch_size "
                            "x processes) rounded, so a step holds that many rows on average. null: use "
                            "gradient_accumulation_steps as given",
    "packing": "(sft) pack rows, padding-free, into sequences of up to max_length tokens (position ids restart at "
               "each row, no attention across rows); per_device_train_batch_size counts packed sequences",
    "attn_implementation": "attention kernel the model is loaded with: auto (sft with packing: flash_attention_2 "
                           "when flash-attn is installed, else flex_attention on CUDA, else sdpa; otherwise the "
                           "model's default), or a transformers name (sdpa, eager, flex_attention, "
                           "flash_attention_2, ...)",
    "dtype": "dtype the model is loaded in: float32, bfloat16, float16 or auto",
    "lora": "train a LoRA adapter (peft) instead of all weights (also --lora); lora.FIELD sets a peft.LoraConfig field",
    "chat_template_kwargs": "(sft) extra keyword arguments for the chat template when rendering prompts; "
                            "rl: use GRPOConfig's own chat_template_kwargs",
    "vllm": "(rl) generate with vLLM (TRL's colocate mode): auto (when CUDA and vLLM are available), true or false",
    "grader_workers": "(rl) processes of intgen's grading pool",
    "grader_timeout_s": "(rl) seconds one verdict may take before it counts as ungradable (reward 0)",
    "system_prompt": "(rl) system message put before each prompt that has none; null: none",
}
_INTGEN_TYPES: dict[str, Any] = {
    "effective_batch_size": int | None, "dtype": str, "lora": bool, "chat_template_kwargs": dict | None,
    "vllm": str, "grader_workers": int | None, "grader_timeout_s": float, "packing": bool,
    "attn_implementation": str, "system_prompt": str | None,
}
_KIND_ONLY = {"chat_template_kwargs": "sft", "vllm": "rl", "grader_workers": "rl", "grader_timeout_s": "rl",
              "packing": "sft", "system_prompt": "rl"}

#: TRL fields intgen sets itself, and why they cannot be overridden
RESERVED: dict[Kind, dict[str, str]] = {
    "sft": {
        "completion_only_loss": "intgen hands TRL pre-tokenized rows with a completion mask; the loss must be "
                                "restricted to it (prefix + intervention)",
        "assistant_only_loss": "intgen builds the completion mask itself from character offsets",
        "dataset_text_field": "intgen tokenizes the rows itself",
        "padding_free": "follows the intgen key packing (intgen packs the rows itself, keeping its labels)",
        "packing_strategy": "intgen packs best-fit decreasing (TRL's bfd) after truncating rows to max_length",
        "dataset_kwargs": "intgen hands TRL a prepared dataset",
        "output_dir": "use --out",
    },
    "rl": {
        "remove_unused_columns": "the reward reads the dataset's `answer` column, so columns must be kept",
        "use_vllm": "use the intgen key vllm=auto|true|false",
        "output_dir": "use --out",
    },
}

#: LoRA defaults when LoRA is on (peft.LoraConfig fields)
LORA_DEFAULTS: dict[str, Any] = {"r": 16, "lora_alpha": 32, "lora_dropout": 0.05, "target_modules": "all-linear",
                                 "task_type": "CAUSAL_LM"}


class ConfigError(ValueError):
    """A preset name, key or value that cannot be used."""


@dataclass(frozen=True)
class Preset:
    """Values for a TRL config (``trl``) and intgen keys (``intgen``)."""

    name: str
    kind: Kind
    description: str
    trl: dict[str, Any]
    intgen: dict[str, Any]


_INTGEN_DEFAULTS: dict[str, Any] = {"effective_batch_size": None, "dtype": "auto", "lora": False,
                                    "chat_template_kwargs": None, "vllm": "false", "grader_workers": None,
                                    "grader_timeout_s": 10.0, "packing": False, "attn_implementation": "auto",
                                    "system_prompt": None}

#: settings every preset shares: log each step, no external tracker, a fixed seed
_EVERY_RUN = {"logging_steps": 1, "report_to": "none", "seed": 0}
#: what both RL objectives share (docs/paper.md, "Training settings"): no KL (kl_loss_coef 0, so
#: no reference model is loaded), no entropy term, rollouts sampled at temperature 1.0 / top_p 1.0
_GRPO_SAMPLING = {"beta": 0.0, "entropy_coef": 0.0, "temperature": 1.0, "top_p": 1.0, "top_k": 0}
#: the paper's PipelineRL objective in GRPOConfig terms (docs/training.md, "The RL objective"):
#: REINFORCE with a truncated importance weight, min(ratio, 1 + 4) detached, times the advantage and
#: the token's log-probability (TRL's ``cispo`` loss, whose cap is epsilon_high itself); advantages
#: centred on the group's mean and not divided by its standard deviation; gradients clipped at 0.3
_PAPER_OBJECTIVE = {**_GRPO_SAMPLING, "loss_type": "cispo", "epsilon_high": 5.0, "scale_rewards": "none",
                    "max_grad_norm": 0.3, "importance_sampling_level": "token", "num_iterations": 1}
#: the differences between the ``paper`` RL preset and the paper's objective, shown in its description
PAPER_RL_DIFFERENCES = (
    "differences from the paper (TRL cannot express them): the summed token losses are divided by the completion "
    "tokens of the generation batch (TRL's cispo normalization) where PipelineRL divides by the number of "
    "sequences, so each step's gradient is scaled by 1 / (mean completion length); the old log-probabilities are "
    "recomputed by the trainer, and with vLLM TRL applies its own truncated importance correction for the "
    "sampler/trainer mismatch, where PipelineRL takes them from the inference engine; the 12,000-token sequence "
    "length bounds vLLM's context (vllm_max_model_length) and nothing else; training is synchronous, where "
    "PipelineRL streams rollouts from a lagging policy"
)
_PAPER_SYSTEM_PROMPT = "Please reason step by step, and put your final answer within \\boxed{}."

PRESETS: dict[tuple[Kind, str], Preset] = {
    ("sft", "paper"): Preset(
        "paper", "sft",
        "the paper's SFT: Qwen3-4B-Instruct-2507, full fine-tune in bf16, lr 1e-6, 4 epochs, 64 rows per "
        "optimizer step (on average: rows are packed, padding-free, into sequences of up to 16384 tokens, one per "
        "device step, and the accumulation steps follow from the rows per packed sequence), cosine with min lr "
        "ratio 0.1, warmup 0.1, rows cut at 16384 tokens",
        trl={
            "learning_rate": 1e-6,
            "num_train_epochs": 4,
            "per_device_train_batch_size": 1,
            "lr_scheduler_type": "cosine_with_min_lr",
            "lr_scheduler_kwargs": {"min_lr_rate": 0.1},
            "warmup_steps": 0.1,            # a float below 1 is a ratio of the total steps (transformers 5)
            "max_length": 16384,            # LLaMA-Factory's cutoff_len
            "bf16": True,
            "gradient_checkpointing": True,
            **_EVERY_RUN,
            "save_strategy": "epoch",
            "save_total_limit": 1,
        },
        intgen={"effective_batch_size": 64, "dtype": "bfloat16", "packing": True},
    ),
    ("sft", "cpu"): Preset(
        "cpu", "sft",
        "a small CPU run for SmolLM2-135M-Instruct: float32, 1 epoch, 2 rows per optimizer step (at least one "
        "packed sequence of up to 2048 tokens, so usually more), lr 1e-5, cosine with min lr ratio 0.1, no warmup",
        trl={
            "learning_rate": 1e-5,
            "num_train_epochs": 1,
            "per_device_train_batch_size": 1,
            "lr_scheduler_type": "cosine_with_min_lr",
            "lr_scheduler_kwargs": {"min_lr_rate": 0.1},
            "warmup_steps": 0,              # a run of a few steps: a warmup would leave its first step at lr 0
            "max_length": 2048,
            "bf16": False,
            "gradient_checkpointing": False,
            **_EVERY_RUN,
            "save_strategy": "no",
            "dataloader_pin_memory": False,
        },
        intgen={"effective_batch_size": 2, "dtype": "float32", "packing": True},
    ),
    ("rl", "paper"): Preset(
        "paper", "rl",
        "the paper's RL: Qwen3-4B-Instruct-2507, binary reward from intgen's grader, lr 1e-6, 8 generations per "
        "problem, 32 problems per generation batch and 16 per optimizer step, 8192 new tokens, temperature 1.0 / "
        "top_p 1.0; PipelineRL's objective: REINFORCE with the importance weight min(ratio, 5) (loss_type cispo, "
        "epsilon_high 5.0), advantages centred on the group mean without dividing by its std (scale_rewards none), "
        "no KL, no entropy term, gradient clipping 0.3, the paper's system prompt; " + PAPER_RL_DIFFERENCES,
        trl={
            "learning_rate": 1e-6,
            "num_generations": 8,           # rollout.n
            **_PAPER_OBJECTIVE,
            "vllm_max_model_length": 12000,  # the fork's base.yaml: seq_length
            "max_completion_length": 8192,  # the fork's base.yaml: llm.parameters.max_tokens
            # effective_train_batch_size 32 problems x 8 = 256 completions per generation batch, updated in
            # mini-batches of ppo_mini_batch_size 16 problems (128 completions, intgen key effective_batch_size)
            "generation_batch_size": 256,
            "per_device_train_batch_size": 8,
            "num_train_epochs": 1,
            "bf16": True,
            "gradient_checkpointing": True,
            **_EVERY_RUN,
            "save_strategy": "steps",
            "save_steps": 50,
            "save_total_limit": 1,
        },
        intgen={"effective_batch_size": 128, "dtype": "bfloat16", "vllm": "auto",
                "system_prompt": _PAPER_SYSTEM_PROMPT},
    ),
    ("rl", "trl-default"): Preset(
        "trl-default", "rl",
        "the paper's batch sizes and sampling (as paper) with TRL's default GRPO objective: loss_type dapo, "
        "advantages divided by the group's std (scale_rewards group), ratio clip epsilon 0.2, gradient clipping "
        "1.0, no system prompt; no KL, no entropy term",
        trl={
            "learning_rate": 1e-6,
            "num_generations": 8,           # rollout.n
            **_GRPO_SAMPLING,
            "max_completion_length": 8192,  # the fork's base.yaml: llm.parameters.max_tokens
            # effective_train_batch_size 32 problems x 8 = 256 completions per generation batch, updated in
            # mini-batches of ppo_mini_batch_size 16 problems (128 completions, intgen key effective_batch_size)
            "generation_batch_size": 256,
            "per_device_train_batch_size": 8,
            "num_train_epochs": 1,
            "bf16": True,
            "gradient_checkpointing": True,
            **_EVERY_RUN,
            "save_strategy": "steps",
            "save_steps": 50,
            "save_total_limit": 1,
        },
        intgen={"effective_batch_size": 128, "dtype": "bfloat16", "vllm": "auto"},
    ),
    ("rl", "cpu"): Preset(
        "cpu", "rl",
        "a small CPU run for SmolLM2-135M-Instruct with the paper preset's objective (without its system "
        "prompt): float32, transformers generation, 4 generations per problem, 256 new tokens, lr 1e-6",
        trl={
            "learning_rate": 1e-6,
            "num_generations": 4,
            **_PAPER_OBJECTIVE,
            "max_completion_length": 256,
            "per_device_train_batch_size": 4,
            "num_train_epochs": 1,
            "bf16": False,
            "gradient_checkpointing": False,
            **_EVERY_RUN,
            "save_strategy": "no",
            "dataloader_pin_memory": False,
        },
        intgen={"effective_batch_size": 4, "dtype": "float32", "vllm": "false", "grader_workers": 1},
    ),
}


def default_preset(model: str) -> str:
    """``cpu`` for the bundled small model, ``paper`` for anything else."""
    return "cpu" if model == "smollm2-135m-instruct" else "paper"


def preset_names(kind: Kind) -> list[str]:
    """The presets of ``intgen train KIND``, in the order they are defined (the CLI's choices)."""
    return [n for k, n in PRESETS if k == kind]


def get_preset(kind: Kind, name: str) -> Preset:
    try:
        return PRESETS[(kind, name)]
    except KeyError:
        names = sorted(n for k, n in PRESETS if k == kind)
        raise ConfigError(f"unknown preset {name!r} for intgen train {kind}; presets: {', '.join(names)}") from None


def trl_config_class(kind: Kind):
    """``trl.SFTConfig`` or ``trl.GRPOConfig``."""
    if kind == "sft":
        from trl import SFTConfig
        return SFTConfig
    from trl import GRPOConfig
    return GRPOConfig


# --------------------------------------------------------------------------- values

_NULLS = {"null", "~", "none", "None", "NULL", "Null"}
_TRUE = {"true", "yes", "on", "1", "True", "TRUE", "Yes"}
_FALSE = {"false", "no", "off", "0", "False", "FALSE", "No"}


def _members(tp: Any) -> list[Any]:
    origin = typing.get_origin(tp)
    if origin is typing.Union or origin is types.UnionType:
        return list(typing.get_args(tp))
    return [tp]


def coerce(key: str, raw: str, tp: Any) -> Any:
    """Convert the string ``raw`` to the type annotation ``tp`` (of the field ``key``).

    ``null``/``~`` give None where None is allowed; ``none`` too, unless the field also takes
    a string (``report_to=none`` stays the string ``"none"``).

    Raises:
        ConfigError: the value fits none of the types, naming the key and the types.
    """
    members = _members(tp)
    allows_none = type(None) in members
    takes_str = any(m is str or (isinstance(m, type) and issubclass(m, enum.Enum)) for m in members)
    if allows_none and (raw in ("null", "~") or (raw in _NULLS and not takes_str)):
        return None
    def rank(m: Any) -> int:  # strings last: "1e-6" is a float where a float is allowed
        return 2 if m is str else 1 if m is Any or m is typing.Any else 0

    for m in sorted(members, key=rank):
        if m is type(None):
            continue
        origin = typing.get_origin(m) or m
        try:
            if m is bool:
                if raw in _TRUE:
                    return True
                if raw in _FALSE:
                    return False
            elif m is int:
                return int(raw)
            elif m is float:
                return float(raw)
            elif origin is Literal:
                if raw in typing.get_args(m):
                    return raw
            elif origin in (list, tuple):
                if takes_str and not ("," in raw or raw.strip().startswith("[")):
                    continue  # a single word stays a string where a string is allowed ("all-linear")
                (elem,) = typing.get_args(m)[:1] or (str,)
                value = yaml.safe_load(raw) if raw.strip().startswith("[") else [p.strip() for p in raw.split(",")]
                if isinstance(value, list):
                    return [coerce(key, v if isinstance(v, str) else json.dumps(v), elem) for v in value]
            elif origin is dict:
                value = yaml.safe_load(raw)
                if isinstance(value, dict):
                    return value
            elif isinstance(m, type) and issubclass(m, enum.Enum):
                return m(raw).value
            elif m is str:
                return raw
            elif m is Any or m is typing.Any:
                return yaml.safe_load(raw)
        except (ValueError, TypeError, yaml.YAMLError):
            continue
    shown = " | ".join(getattr(m, "__name__", str(m)) for m in members)
    raise ConfigError(f"{key}={raw!r}: not a valid value (expected {shown})")


def _field_types(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(cls) if f.init}


def _unknown(key: str, known: list[str], kind: Kind) -> ConfigError:
    close = difflib.get_close_matches(key, known, n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    cls = "SFTConfig" if kind == "sft" else "GRPOConfig"
    return ConfigError(f"unknown key {key!r} for intgen train {kind}: not a field of trl.{cls}, "
                       f"not lora.FIELD (a peft.LoraConfig field), and not an intgen key "
                       f"({', '.join(sorted(INTGEN_KEYS))}){hint}")


@dataclass
class ResolvedConfig:
    """A preset with the overrides applied: TRL config values, intgen keys and LoRA fields
    (None when LoRA is off)."""

    kind: Kind
    preset: str
    trl: dict[str, Any]
    intgen: dict[str, Any]
    lora: dict[str, Any] | None
    overrides: list[str] = field(default_factory=list)


def parse_overrides(kind: Kind, overrides: list[str]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Split and convert ``key=value`` strings into (TRL fields, intgen keys, LoRA fields).

    Raises:
        ConfigError: a malformed item, an unknown or reserved key, or a value of the wrong type.
    """
    trl_types = _field_types(trl_config_class(kind))
    trl_vals: dict[str, Any] = {}
    intgen_vals: dict[str, Any] = {}
    lora_vals: dict[str, Any] = {}
    lora_types: dict[str, Any] | None = None
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"{item!r}: overrides are key=value")
        if key.startswith("lora."):
            if lora_types is None:
                from peft import LoraConfig
                lora_types = _field_types(LoraConfig)
            name = key[len("lora."):]
            if name not in lora_types:
                close = difflib.get_close_matches(name, list(lora_types), n=3, cutoff=0.6)
                hint = f"; did you mean {', '.join('lora.' + c for c in close)}?" if close else ""
                raise ConfigError(f"unknown key {key!r}: {name!r} is not a field of peft.LoraConfig{hint}")
            lora_vals[name] = coerce(key, raw, lora_types[name])
        elif key in INTGEN_KEYS:
            if key in _KIND_ONLY and _KIND_ONLY[key] != kind:
                raise ConfigError(f"key {key!r} applies to intgen train {_KIND_ONLY[key]}, not {kind}")
            intgen_vals[key] = coerce(key, raw, _INTGEN_TYPES[key])
        elif key in RESERVED[kind]:
            raise ConfigError(f"key {key!r} cannot be overridden: {RESERVED[kind][key]}")
        elif key in trl_types:
            trl_vals[key] = coerce(key, raw, trl_types[key])
        else:
            raise _unknown(key, list(trl_types) + list(INTGEN_KEYS), kind)
    return trl_vals, intgen_vals, lora_vals


def resolve(kind: Kind, preset: str, overrides: list[str] | None = None, *, lora: bool = False) -> ResolvedConfig:
    """The preset ``preset`` with ``overrides`` applied (``lora`` as the ``--lora`` flag).

    Raises:
        ConfigError: unknown preset, key or value; an intgen key with an invalid value.
    """
    overrides = list(overrides or [])
    p = get_preset(kind, preset)
    trl_over, intgen_over, lora_over = parse_overrides(kind, overrides)
    trl_vals = {**p.trl, **trl_over}
    intgen_vals = {**_INTGEN_DEFAULTS, **p.intgen, **intgen_over}
    if "gradient_accumulation_steps" in trl_over and "effective_batch_size" not in intgen_over:
        intgen_vals["effective_batch_size"] = None  # an explicit accumulation wins over the preset's batch
    if lora and intgen_over.get("lora") is False:
        raise ConfigError("--lora and lora=false contradict each other")
    if lora or (lora_over and "lora" not in intgen_over):
        intgen_vals["lora"] = True  # --lora, or a lora.FIELD override, turns LoRA on
    if lora_over and not intgen_vals["lora"]:
        raise ConfigError(f"lora.* keys ({', '.join('lora.' + k for k in lora_over)}) given with lora=false")
    if intgen_vals["dtype"] not in ("float32", "bfloat16", "float16", "auto"):
        raise ConfigError(f"dtype={intgen_vals['dtype']!r}: expected float32, bfloat16, float16 or auto")
    vllm = str(intgen_vals["vllm"]).lower()
    vllm = {"1": "true", "yes": "true", "0": "false", "no": "false"}.get(vllm, vllm)
    if vllm not in ("auto", "true", "false"):
        raise ConfigError(f"vllm={intgen_vals['vllm']!r}: expected auto, true or false")
    intgen_vals["vllm"] = vllm
    if not isinstance(intgen_vals["attn_implementation"], str) or not intgen_vals["attn_implementation"]:
        raise ConfigError(f"attn_implementation={intgen_vals['attn_implementation']!r}: expected auto or a "
                          "transformers attention implementation (sdpa, eager, flex_attention, flash_attention_2)")
    lora_vals = {**LORA_DEFAULTS, **lora_over} if intgen_vals["lora"] else None
    return ResolvedConfig(kind, preset, trl_vals, intgen_vals, lora_vals, overrides)


def world_size() -> int:
    """Processes of this launch (``accelerate launch`` / ``torchrun`` set ``WORLD_SIZE``)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def apply_effective_batch(cfg: ResolvedConfig, processes: int | None = None) -> None:
    """Set ``gradient_accumulation_steps`` from ``effective_batch_size`` (when set).

    Raises:
        ConfigError: the effective batch is not a multiple of per-device batch x processes.
    """
    ebs = cfg.intgen.get("effective_batch_size")
    if ebs is None:
        return
    processes = processes or world_size()
    per_step = int(cfg.trl.get("per_device_train_batch_size", 8)) * processes
    if ebs <= 0 or ebs % per_step:
        raise ConfigError(f"effective_batch_size={ebs} is not a positive multiple of per_device_train_batch_size x "
                          f"processes = {per_step}; change one of them, or set gradient_accumulation_steps instead")
    cfg.trl["gradient_accumulation_steps"] = ebs // per_step


@dataclass(frozen=True)
class PackedBatch:
    """How a packed SFT run reaches ``effective_batch_size`` rows per optimizer step on average.

    Attributes:
        target_rows: ``effective_batch_size`` (rows per optimizer step wanted).
        rows_per_sequence: rows / packed sequences of the packed dataset (mean).
        mean_row_tokens: tokens / rows after truncation to ``max_length``.
        gradient_accumulation_steps: what was set.
        mean_rows_per_step: rows an optimizer step holds on average with that setting.
    """

    target_rows: int
    rows_per_sequence: float
    mean_row_tokens: float
    gradient_accumulation_steps: int
    mean_rows_per_step: float


def apply_packed_batch(cfg: ResolvedConfig, rows: int, sequences: int, tokens: int,
                       processes: int | None = None) -> PackedBatch | None:
    """Set ``gradient_accumulation_steps`` for packed SFT so an optimizer step holds
    ``effective_batch_size`` rows on average (docs/training.md, "Packing").

    A device step takes ``per_device_train_batch_size`` packed sequences of ``rows /
    sequences`` rows each (about ``max_length / mean row length`` when rows are short), so
    the steps are ``effective_batch_size / (rows per sequence x per-device batch x
    processes)``, rounded, at least 1. None (nothing set) when ``effective_batch_size`` is
    null.

    Raises:
        ConfigError: ``effective_batch_size`` is not positive, or there are no rows.
    """
    ebs = cfg.intgen.get("effective_batch_size")
    if ebs is None:
        return None
    if ebs <= 0:
        raise ConfigError(f"effective_batch_size={ebs}: expected a positive number of rows")
    if rows <= 0 or sequences <= 0:
        raise ConfigError("no sft rows to pack")
    processes = processes or world_size()
    per_device = int(cfg.trl.get("per_device_train_batch_size", 8))
    rows_per_sequence = rows / sequences
    rows_per_device_step = rows_per_sequence * per_device * processes
    steps = max(1, round(ebs / rows_per_device_step))
    cfg.trl["gradient_accumulation_steps"] = steps
    return PackedBatch(ebs, rows_per_sequence, tokens / rows, steps, rows_per_device_step * steps)


def build_trl_config(cfg: ResolvedConfig, output_dir: str, **extra: Any):
    """The TRL config object (``SFTConfig`` / ``GRPOConfig``) for ``cfg``; ``extra`` are
    the reserved fields intgen sets.

    Raises:
        ConfigError: TRL rejects the combination (its message is kept).
    """
    cls = trl_config_class(cfg.kind)
    try:
        return cls(output_dir=output_dir, **{**cfg.trl, **extra})
    except (ValueError, TypeError) as e:
        raise ConfigError(f"trl.{cls.__name__} refused the configuration: {e}") from e


def describe_presets(kind: Kind) -> str:
    """One paragraph per preset, for ``--help`` and docs."""
    lines = []
    for (k, name), p in PRESETS.items():
        if k == kind:
            lines.append(f"{name}: {p.description}")
    return "\n".join(lines)
