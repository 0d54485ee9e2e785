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
#   .venv-flashrag flashrag-dev==0.1.2 (FlashRAG's pipeline, config, dataset, BM25 retriever and
#                 evaluator) running this project's ReSearchPipeline, with torch CPU and the
#                 project itself (models and fast extras). Installed --no-deps: as shipped its
#                 dependencies do not install offline (bm25s[full] pulls pytrec_eval, whose build
#                 downloads trec_eval) and are mostly unused here (spacy, streamlit, fschat,
#                 openai, peft, nltk, rouge, ...). Its imports need tiktoken
#                 (flashrag.prompt), datasets and faiss-cpu (flashrag.retriever imports both at
#                 the top; faiss is not even declared). numba (the fast extra) is what
#                 its bm25s retriever searches with. The wheel also lacks
#                 flashrag/config/basic_config.yaml, so flashrag.config.Config fails as shipped:
#                 research.evaluation.flashrag_adapter.FlashRAGConfig stands in for it. (Where a
#                 rerun upgrades a package, pip lists flashrag-dev's uninstalled requirements
#                 as conflicts: expected.)
#   bash scripts/setup_clients.sh
# Environment: PYTHON (default python3), TORCH_SPEC (default torch==2.13.0, installed first
# so that pip does not pull a multi-GB CUDA build).
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
if [ ! -x .venv-flashrag/bin/python ]; then
  "${PYTHON:-python3}" -m venv .venv-flashrag
fi
.venv-flashrag/bin/python -m pip install -q --upgrade pip
if ! .venv-flashrag/bin/python -c "import torch" 2>/dev/null; then
  .venv-flashrag/bin/python -m pip install -q "${TORCH_SPEC:-torch==2.13.0}"
fi
.venv-flashrag/bin/python -m pip install -q -e ".[models,fast]" tiktoken datasets faiss-cpu
.venv-flashrag/bin/python -m pip install -q --no-deps "flashrag-dev==0.1.2"
echo "environment ready: .venv-flashrag (flashrag-dev $(.venv-flashrag/bin/python -c \
  'import importlib.metadata as m; print(m.version("flashrag-dev"))'))"
echo "environment ready: .venv-verl07 (verl $(.venv-verl07/bin/python -c \
  'import importlib.metadata as m; print(m.version("verl"))'))"
echo "environment ready: .venv-skyrl (skyrl-gym $(.venv-skyrl/bin/python -c \
  'import importlib.metadata as m; print(m.version("skyrl-gym"))'))"
