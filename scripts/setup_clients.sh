#!/usr/bin/env bash
# Environments holding real third-party clients of the retrieval service, installed from
# PyPI as a user would, for tests/test_client_packages.py:
#   .venv-skyrl   skyrl-gym==0.4.0 (SkyRL's SearchEnv and its search tool)
#   bash scripts/setup_clients.sh
# Environment: PYTHON (default python3).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv-skyrl/bin/python ]; then
  "${PYTHON:-python3}" -m venv .venv-skyrl
fi
.venv-skyrl/bin/python -m pip install -q --upgrade pip
.venv-skyrl/bin/python -m pip install -q "skyrl-gym==0.4.0"
echo "environment ready: .venv-skyrl (skyrl-gym $(.venv-skyrl/bin/python -c \
  'import importlib.metadata as m; print(m.version("skyrl-gym"))'))"
