#!/usr/bin/env bash
# Install everything the tests need, lint, and run the test suite on CPU.
#   bash scripts/test.sh [PYTEST ARGS]
# RESEARCH_SLOW=1 also runs the tests marked slow.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh "dense,fast,models,trl,test"
venv="${VENV:-.venv}"
"$venv/bin/ruff" check .
"$venv/bin/python" -m pytest "$@"
