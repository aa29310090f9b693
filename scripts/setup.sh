#!/usr/bin/env bash
# Create .venv with alkit and its pinned dependencies. Safe to rerun.
# torch and torchvision are installed together, pinned as a pair, in one command: see the
# README ("Why these torch pins"); installing them separately lets pip swap torch.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
TORCH_PIN="${ALKIT_TORCH_PIN:-torch==2.14.1 torchvision==0.29.1}"

if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
# shellcheck disable=SC2086
.venv/bin/python -m pip install --quiet $TORCH_PIN
.venv/bin/python -m pip install --quiet -e ".[test]"
.venv/bin/python -c "import torch, torchvision, open_clip, faiss; print('alkit env ready: torch', torch.__version__, 'torchvision', torchvision.__version__, 'open_clip', open_clip.__version__, 'faiss', faiss.__version__)"
