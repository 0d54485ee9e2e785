#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment and install the project into it.
#   bash scripts/setup.sh [EXTRAS]      EXTRAS defaults to "dense,fast,models,trl,test"
# Environment: PYTHON (interpreter, default python3), VENV (default .venv),
#              TORCH_SPEC (default torch==2.13.0, installed before the extras so that pip
#              does not pull a multi-GB CUDA build; set it to your CUDA torch on GPU machines).
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-dense,fast,models,trl,test}"
venv="${VENV:-.venv}"
if [ ! -x "$venv/bin/python" ]; then
  "${PYTHON:-python3}" -m venv "$venv"
fi
"$venv/bin/python" -m pip install -q --upgrade pip
if [[ ",$extras," =~ ,(dense|models|trl|verl), ]] && ! "$venv/bin/python" -c "import torch" 2>/dev/null; then
  "$venv/bin/python" -m pip install -q "${TORCH_SPEC:-torch==2.13.0}"
fi
"$venv/bin/python" -m pip install -q -e ".[$extras]"
echo "environment ready: $venv (extras: $extras)"
