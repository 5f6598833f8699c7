#!/usr/bin/env bash
# Quick check of a GPU machine (bench/gpu_check.py has the details): one paper-setting fold of ViT-B-32
# (random weights) on a synthetic CASME II-size set, bf16 against fp32, four folds packed at gpu: 0.25.
# No download; under 8 minutes on one H100. One JSON object on stdout, progress on stderr.
#
#   bench/gpu_check.sh                  # on a CUDA machine
#   bench/gpu_check.sh --tiny           # on a CPU: tiny settings, same code path (the tests run this)
#   bench/gpu_check.sh --folds-per-trial K --compile   # also K folds stacked in one model
#                                       # (model.stacked.train_folds) and the fold with training.compile: true
#   K=8 COMPILE=1 bench/gpu_check.sh    # the same two from the environment
#   PYTHON=/path/to/python bench/gpu_check.sh ...   # another interpreter than the repository's .venv
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py="${PYTHON:-$repo/.venv/bin/python}"
if [ ! -x "$py" ]; then
    py="$(command -v python3)"
fi
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
cd "$repo"
extra=()
if [ -n "${K:-}" ]; then extra+=(--folds-per-trial "$K"); fi
if [ "${COMPILE:-0}" = "1" ]; then extra+=(--compile); fi
exec "$py" bench/gpu_check.py ${extra[@]+"${extra[@]}"} "$@"
