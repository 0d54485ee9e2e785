#!/usr/bin/env bash
# Environments holding real third-party clients of the retrieval service, installed from
# PyPI as a user would, for tests/test_client_packages.py:
#   .venv-skyrl   skyrl-gym==0.4.0 (SkyRL's SearchEnv and its search tool)
#   .venv-verl07  verl==0.7.1, the last verl release with a search tool (SearchTool under
#                 local Ray), with its own pins (numpy<2, tensordict<=0.10) and torch CPU.
#                 As resolved today its install is broken: verl pins numpy<2 while the newest
#                 pyarrow (and datasets, which needs it) require numpy 2 (ray imports pyarrow:
#                 "pyarrow requires NumPy 2.0 or newer"); pyarrow 20 and datasets 3.6 are the
#                 newest that work with numpy 1.26.
#   bash scripts/setup_clients.sh
# Environment: PYTHON (default python3).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv-skyrl/bin/python ]; then
  "${PYTHON:-python3}" -m venv .venv-skyrl
fi
.venv-skyrl/bin/python -m pip install -q --upgrade pip
.venv-skyrl/bin/python -m pip install -q "skyrl-gym==0.4.0"
if [ ! -x .venv-verl07/bin/python ]; then
  "${PYTHON:-python3}" -m venv .venv-verl07
fi
.venv-verl07/bin/python -m pip install -q --upgrade pip
if ! .venv-verl07/bin/python -c "import torch" 2>/dev/null; then
  .venv-verl07/bin/python -m pip install -q "${TORCH_SPEC:-torch==2.13.0}"
fi
.venv-verl07/bin/python -m pip install -q "verl==0.7.1" "pyarrow==20.0.0" "datasets==3.6.0"
echo "environment ready: .venv-verl07 (verl $(.venv-verl07/bin/python -c \
  'import importlib.metadata as m; print(m.version("verl"))'))"
echo "environment ready: .venv-skyrl (skyrl-gym $(.venv-skyrl/bin/python -c \
  'import importlib.metadata as m; print(m.version("skyrl-gym"))'))"
