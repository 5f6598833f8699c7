#!/usr/bin/env bash
# Create .venv and install microau-sweep with its test extras.
# torch goes in first, pinned, so that torchvision==0.28.0 (which requires exactly torch 2.13.0) keeps it
# instead of pulling a multi-GB CUDA build; see docs/install.md.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade "pip>=24"
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[test]"
