#!/usr/bin/env bash
# Builds one throwaway virtual environment per trainer that reads intgen's exported views,
# so tests/test_consumers.py can load each view with the trainer's own code:
#
#   verl          verl's RLHFDataset over the `rl` config
#   llamafactory  LLaMA-Factory's get_dataset over the `llamafactory` config + dataset_info.json
#
#   tests/consumers/setup_consumers.sh                 # both: verl ~30 s, llamafactory ~70 s (warm pip cache)
#   tests/consumers/setup_consumers.sh verl            # one
#   tests/consumers/setup_consumers.sh --force         # rebuild even when READY matches
#   PYTHON=/path/to/intgen/.venv/bin/python INTGEN_CONSUMER_VENVS=/tmp/cv tests/consumers/setup_consumers.sh
#
# Neither trainer installs beside intgen's own stack (verl 0.9.1 wants transformers < 5.11,
# LLaMA-Factory 0.9.5 transformers <= 5.6 and datasets <= 4.0; intgen's set-up has newer
# ones), so each gets its own folder under ${INTGEN_CONSUMER_VENVS:-.consumers} (in the checkout,
# beside .venv, whose packages it reuses; git ignores it).
# The heavy packages are not installed again: a .pth file puts the set-up's site-packages
# (torch 2.13 CPU, numpy, pyarrow, pandas, datasets, ...) behind the environment's own, so
# the versions pinned below win where they differ. Every install is --no-deps with exact
# versions, and a constraints file pins torch to the set-up's build, so pip never pulls a
# CUDA torch. A folder is complete when it holds READY (the versions and the packages it
# reuses, as JSON); one whose READY matches is kept. A failed build leaves NAME.FAILED (its
# log) beside the folders: the tests skip a consumer that was never built and fail one
# whose build failed. Exits non-zero when a build failed.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
DEST=${INTGEN_CONSUMER_VENVS:-$ROOT/.consumers}
ONE=""
FORCE=0
CONSUMERS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --one) ONE=$2; shift 2 ;;   # internal: build this one in this process
    --force) FORCE=1; shift ;;
    *) CONSUMERS+=("$1"); shift ;;
  esac
done
[ ${#CONSUMERS[@]} -gt 0 ] || CONSUMERS=(verl llamafactory)

# what each environment installs on top of the set-up's packages (all --no-deps): the
# versions a consumer declares it needs where the set-up lacks them or has others
VERL_PINS=(
  verl==0.9.1
  transformers==5.10.4 tokenizers==0.22.2 huggingface_hub==1.33.0   # verl: transformers>=5.5.3,<5.11
  tensordict==0.10.0 pyvers==0.1.0                                    # verl.protocol imports tensordict
  ray==2.60.0 msgpack==1.2.4                                           # verl.protocol imports ray
)
VERL_CHECK="from verl.utils.dataset.rl_dataset import RLHFDataset"
LLAMAFACTORY_PINS=(
  llamafactory==0.9.5
  transformers==5.6.0 tokenizers==0.22.2 huggingface_hub==1.33.0      # LLaMA-Factory: transformers<=5.6.0
  datasets==4.0.0 dill==0.3.8 multiprocess==0.70.16 fsspec==2025.3.0  # datasets<=4.0.0 and its own pins
  trl==0.24.0 peft==0.18.1 accelerate==1.11.0                         # LLaMA-Factory's upper bounds
)
LLAMAFACTORY_CHECK="from llamafactory.data import get_dataset; from llamafactory.hparams import get_train_args"

pins() {
  case "$1" in
    verl) echo "${VERL_PINS[@]}" ;;
    llamafactory) echo "${LLAMAFACTORY_PINS[@]}" ;;
    *) echo "error: unknown consumer '$1' (known: verl, llamafactory)" >&2; return 2 ;;
  esac
}

[ -x "$PYTHON" ] || { echo "error: $PYTHON not found: run ./setup.sh first, or set PYTHON to intgen's environment" >&2; exit 1; }
SITE=$("$PYTHON" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
TORCH=$("$PYTHON" -c "import torch; print(torch.__version__.split('+')[0])")
mkdir -p "$DEST"

build() {
  local name=$1 check=$2; shift 2
  local final="$DEST/$name" tmp="$DEST/.$name.building"
  local start=$SECONDS
  rm -rf "$tmp"
  "$PYTHON" -m venv "$tmp"
  local py="$tmp/bin/python"
  local site
  site=$("$py" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
  # the set-up's packages, after this environment's own (a .pth entry is appended to sys.path;
  # the .pth files inside it, such as intgen's editable install, are not processed)
  echo "$SITE" > "$site/intgen-setup-packages.pth"
  echo "torch==$TORCH" > "$tmp/constraints.txt"
  "$py" -m pip --disable-pip-version-check -q install --no-deps -c "$tmp/constraints.txt" "$@"
  if [ "$name" = llamafactory ]; then
    # LLaMA-Factory's mm_plugin imports torchaudio at module level (for audio inputs only);
    # PyPI's torchaudio builds are CUDA builds for torch <= 2.11 and fail to load next to the
    # CPU torch 2.13 (libc10_cuda.so). A stand-in that raises on use keeps text datasets,
    # which never touch it, loadable.
    mkdir -p "$site/torchaudio"
    cat > "$site/torchaudio/__init__.py" <<'PYEOF'
"""Stand-in written by intgen's tests/consumers/setup_consumers.sh: no torchaudio build on
PyPI loads next to the CPU torch 2.13. Any use raises ImportError."""


def __getattr__(name):
    raise ImportError(f"torchaudio.{name}: torchaudio is a stand-in in this environment (no build for this torch)")
PYEOF
  fi
  "$py" -c "$check"
  "$py" - "$name" "$SITE" "$@" > "$tmp/READY" <<'PYEOF'
import json, sys
from importlib.metadata import version
name, site, pins = sys.argv[1], sys.argv[2], sys.argv[3:]
import torch
print(json.dumps({"consumer": name, "python": sys.version.split()[0], "torch": torch.__version__, "reuses": site,
                  "installed": {p.split("==")[0]: version(p.split("==")[0]) for p in pins}}, indent=1))
PYEOF
  rm -rf "$final"
  mv "$tmp" "$final"   # the tests call bin/python, which works from the new place
  echo "$name: $final ready in $((SECONDS - start)) s ($(echo "$@"))"
}

if [ -n "$ONE" ]; then
  case "$ONE" in
    verl) build verl "$VERL_CHECK" "${VERL_PINS[@]}" ;;
    llamafactory) build llamafactory "$LLAMAFACTORY_CHECK" "${LLAMAFACTORY_PINS[@]}" ;;
  esac
  exit 0
fi

# true when DEST/NAME/READY records these pins, this torch and these reused packages
up_to_date() {
  [ -f "$DEST/$1/READY" ] && [ -x "$DEST/$1/bin/python" ] || return 1
  # shellcheck disable=SC2046
  "$PYTHON" - "$DEST/$1/READY" "$SITE" "$TORCH" $(pins "$1") <<'PYEOF'
import json, sys
ready, site, torch, pins = json.load(open(sys.argv[1])), sys.argv[2], sys.argv[3], sys.argv[4:]
same = (ready.get("reuses") == site and ready.get("torch", "").split("+")[0] == torch
        and ready.get("installed") == dict(p.split("==") for p in pins))
sys.exit(0 if same else 1)
PYEOF
}

status=0
for c in "${CONSUMERS[@]}"; do
  pins "$c" >/dev/null
  if [ "$FORCE" = 0 ] && up_to_date "$c"; then
    echo "$c: $DEST/$c is up to date"
    continue
  fi
  rm -f "$DEST/$c.FAILED"
  log="$DEST/.$c.log"
  # a child bash, so that set -e stops the build at its first failing step
  if "$BASH" "$0" --one "$c" > "$log" 2>&1; then
    tail -n 1 "$log"
    rm -f "$log"
  else
    mv "$log" "$DEST/$c.FAILED"
    rm -rf "$DEST/.$c.building"
    echo "error: building the $c environment failed; its log: $DEST/$c.FAILED" >&2
    tail -n 20 "$DEST/$c.FAILED" >&2
    status=1
  fi
done
exit $status
