#!/usr/bin/env bash
# Install everything the tests need, lint, and run the test suite on CPU.
#   bash scripts/test.sh [PYTEST ARGS]
# RESEARCH_SLOW=1 also runs the tests marked slow (.ci/run sets it). The verl engine's tests then run in their
# own environment (.venv-verl, bash scripts/setup_verl.sh); RESEARCH_SKIP_VERL=1 skips them.
# Real client packages are installed first (bash scripts/setup_clients.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh "dense,fast,models,trl,test"
# under CI every resource a test needs is installed, and a missing one fails its test
# (tests/conftest.py: missing); RESEARCH_TEST_RESOURCES=1 installs them locally too
if [[ "${CI:-}" == true || "${RESEARCH_TEST_RESOURCES:-0}" == 1 ]]; then
  bash scripts/ci_resources.sh
fi
# real third-party clients in their own environments (tests/test_client_packages.py);
# RESEARCH_SKIP_CLIENTS=1 leaves them out (their tests then skip, or fail under CI=true)
if [[ "${RESEARCH_SKIP_CLIENTS:-0}" != 1 ]]; then
  bash scripts/setup_clients.sh
fi
venv="${VENV:-.venv}"
"$venv/bin/ruff" check .
"$venv/bin/python" -m pytest "$@"
if [[ "${RESEARCH_SKIP_VERL:-0}" != 1 ]]; then
  bash scripts/setup_verl.sh
  .venv-verl/bin/python -m pytest -p no:cacheprovider tests/test_verl_engine.py \
      tests/test_verl_launch.py "$@"
fi
