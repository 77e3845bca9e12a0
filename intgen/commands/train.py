"""``intgen train sft`` and ``intgen train rl``: thin TRL trainers on a run's exported
views (docs/training.md; :mod:`intgen.train`)."""

from __future__ import annotations

import argparse
import logging
import sys

_EPILOG = """\
DATA is an intgen run directory (its export/ is used, written first if missing or stale),
an export folder, or a Hugging Face dataset repo id. MODEL is an intgen short name
(smollm2-135m-instruct, qwen3-4b-instruct-2507), a Hugging Face id or a local path.
key=value items override the preset: any field of trl.{cls}, lora.FIELD (peft.LoraConfig),
or an intgen key ({keys}). Presets:
{presets}
"""


def run(args: argparse.Namespace) -> int:
    """Train; 0 when done, 2 for a bad argument, data or model."""
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("intgen").setLevel(logging.INFO)  # intgen's own progress lines; libraries stay quiet
    from intgen.models import UnknownModelError
    from intgen.train.configs import ConfigError
    from intgen.train.data import DataError
    from intgen.train.packing import PackingError

    if args.kind == "sft":
        from intgen.train.sft import train_sft as train
    else:
        from intgen.train.rl import train_rl as train
    try:
        result = train(args.data, args.model, args.out, preset=args.preset, overrides=list(args.overrides),
                       lora=args.lora, limit=args.limit)
    except (ConfigError, DataError, UnknownModelError, PackingError) as e:
        print(f"intgen train {args.kind}: {e}", file=sys.stderr)
        return 2
    print(f"trained ({result.config.preset} preset, {result.trainer.state.global_step} steps): {result.out}")
    return 0


def register(sub) -> None:
    from intgen.train.configs import INTGEN_KEYS, describe_presets, preset_names

    p = sub.add_parser("train", help="train a model on a run's exported views with TRL: `train sft` (prefix + "
                                     "intervention, no end-of-turn token) or `train rl` (GRPO, reward from intgen's "
                                     "grader)")
    kinds = p.add_subparsers(dest="kind", required=True)
    helps = {"sft": ("SFTTrainer on the sft view: loss on prefix + intervention only, no end-of-turn token",
                     "SFTConfig"),
             "rl": ("GRPOTrainer on the rl view: reward 1.0 for a correct final \\boxed{} answer, else 0.0",
                    "GRPOConfig")}
    for kind, (text, cls) in helps.items():
        keys = ", ".join(k for k in INTGEN_KEYS)
        presets = "\n".join("  " + line for line in describe_presets(kind).splitlines())
        q = kinds.add_parser(kind, help=text, description=text,
                             epilog=_EPILOG.format(cls=cls, keys=keys, presets=presets),
                             formatter_class=argparse.RawDescriptionHelpFormatter)
        q.add_argument("--data", required=True, metavar="DIR_OR_REPO",
                       help="run directory, export folder, or Hugging Face dataset repo id")
        q.add_argument("--model", required=True, help="short name, Hugging Face id, or local path")
        q.add_argument("--out", default=None, metavar="DIR",
                       help=f"output folder (default: checkpoints/<model>-{kind})")
        q.add_argument("--preset", choices=preset_names(kind), default=None,
                       help="settings to start from (default: cpu for smollm2-135m-instruct, paper otherwise)")
        q.add_argument("--lora", action="store_true", help="train a LoRA adapter (peft) instead of all weights")
        q.add_argument("--limit", type=int, default=None, metavar="N", help="use only the first N rows")
        q.add_argument("overrides", nargs="*", metavar="key=value", help="preset overrides (see below)")
        q.set_defaults(func=run)
