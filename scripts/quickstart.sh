#!/usr/bin/env bash
# Set up the environment and run the main job on the embedded default (CPU, no GPU, no hub).
#   bash scripts/quickstart.sh [research quickstart ARGS]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh "fast,models,trl"
"${VENV:-.venv}/bin/research" quickstart "$@"
