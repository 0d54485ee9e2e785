#!/usr/bin/env bash
# The verl engine's environment (.venv-verl): verl 0.9.1 pins transformers below the TRL
# engine's range, so the two engines live in separate environments.
#   bash scripts/setup_verl.sh          then: PYTHON=.venv-verl/bin/python ... or
#                                       bash training/run.sh --engine verl (uses it)
# Environment: PYTHON (default python3), TORCH_SPEC (default torch==2.13.0, the CPU build:
# it matters for this CPU environment only).
# GPU machines: inside .venv-verl, pip install "verl[vllm,fsdp]==0.9.1". Those extras pin
# torch==2.11.0, vllm==0.24.0, transformers==5.9.0 and flash-attn built for CUDA 13 (verl
# 0.9.1's wheel metadata): they replace whatever TORCH_SPEC installed, so TORCH_SPEC cannot
# choose the CUDA build there; the driver must run CUDA 13 builds.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv-verl bash scripts/setup.sh "verl,test" >/dev/null
echo "environment ready: .venv-verl (verl $(.venv-verl/bin/python -c 'import verl; print(verl.__version__)'))"
