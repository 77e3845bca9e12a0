"""Thin trainers on TRL for a run's exported views (docs/training.md).

- :mod:`intgen.train.sft`: ``intgen train sft``, TRL's SFTTrainer on the ``sft`` view. The
  target is a partial trace (prefix + intervention) that must not end the assistant turn,
  so intgen tokenizes each row itself and hands TRL labelled rows with no end-of-turn or
  EOS token (:mod:`intgen.train.data` explains the masking), packed by default.
- :mod:`intgen.train.packing`: packed, padding-free rows and the check that packed rows do
  not attend to each other.
- :mod:`intgen.train.rl`: ``intgen train rl``, TRL's GRPOTrainer on the ``rl`` view with a
  binary reward from intgen's grading pool.
- :mod:`intgen.train.configs`: the presets (``paper``: the paper's settings for
  Qwen3-4B-Instruct-2507; ``trl-default`` (rl): TRL's objective; ``cpu``: a small run for
  SmolLM2) and ``key=value`` overrides.
- :mod:`intgen.train.common`: model loading (GGUF marker), LoRA, the run record.

Needs the ``train`` extra (``trl``, ``peft``, ``accelerate``); nothing here is imported by
the rest of intgen.
"""

import warnings

# TRL checks the vLLM version at import and warns once per module (five times) when the installed
# vLLM is outside its tested range, even when vLLM is not used; intgen.train.rl says so once instead.
warnings.filterwarnings("ignore", message=r"TRL currently supports vLLM versions", category=UserWarning)
