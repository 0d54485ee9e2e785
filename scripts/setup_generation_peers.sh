#!/usr/bin/env bash
# The CPU generation peers of benchmarks/generation.py, built once (outside the repository):
#   - llama.cpp: the source vendored in llama-cpp-python's sdist (pinned below), its
#     llama-batched-bench tool built with cmake for this CPU (GGML_NATIVE); the build's
#     seconds go to PEERS/llama.cpp/build_seconds;
#   - .venv-peers: CTranslate2 (and its Hugging Face converter), torch CPU and transformers,
#     which also run llama.cpp's convert_hf_to_gguf.py.
#   bash scripts/setup_generation_peers.sh
# PEERS defaults to ${RESEARCH_CACHE:-~/.cache/research}/peers. Needs a C++ compiler and cmake.
set -euo pipefail
cd "$(dirname "$0")/.."
peers="${PEERS:-${RESEARCH_CACHE:-$HOME/.cache/research}/peers}"
llama_version=0.3.36       # llama-cpp-python; its vendor/llama.cpp is the llama.cpp built
ct2_version=4.8.5
venv=.venv-peers
mkdir -p "$peers"

if [ ! -x "$peers/llama.cpp/build/bin/llama-batched-bench" ]; then
  for tool in cmake c++; do
    command -v "$tool" >/dev/null || { echo "llama.cpp needs $tool (apt-get install -y cmake g++)" >&2; exit 1; }
  done
  echo "building llama.cpp from llama-cpp-python==$llama_version's sources (minutes)"
  rm -rf "$peers/src" "$peers/llama.cpp"
  mkdir -p "$peers/src"
  python3 -m pip download -q --no-deps --no-binary :all: "llama-cpp-python==$llama_version" \
    -d "$peers/src"
  tar -xzf "$peers/src/llama_cpp_python-$llama_version.tar.gz" -C "$peers/src"
  mv "$peers/src/llama_cpp_python-$llama_version/vendor/llama.cpp" "$peers/llama.cpp"
  start=$(date +%s)
  cmake -S "$peers/llama.cpp" -B "$peers/llama.cpp/build" -DCMAKE_BUILD_TYPE=Release \
    -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DBUILD_SHARED_LIBS=OFF -DLLAMA_BUILD_TESTS=OFF \
    > "$peers/llama.cpp/cmake.log" 2>&1
  cmake --build "$peers/llama.cpp/build" -j "$(nproc)" --target llama-batched-bench \
    >> "$peers/llama.cpp/cmake.log" 2>&1 || { tail -30 "$peers/llama.cpp/cmake.log" >&2; exit 1; }
  echo $(( $(date +%s) - start )) > "$peers/llama.cpp/build_seconds"
  rm -rf "$peers/src"
fi

if [ ! -x "$venv/bin/ct2-transformers-converter" ]; then
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip
  "$venv/bin/python" -m pip install -q "torch==2.13.0"
  "$venv/bin/python" -m pip install -q "ctranslate2==$ct2_version" "transformers==5.25.0" \
    numpy sentencepiece pyyaml safetensors
fi
echo "generation peers ready: $peers/llama.cpp (built in $(cat "$peers/llama.cpp/build_seconds") s), $venv"
