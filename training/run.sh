#!/usr/bin/env bash
# Launch ReSearch GRPO training.
#
#   bash training/run.sh [--engine trl|verl] [--config FILE|NAME] [section.key=value ...] [--resume]
#
# trl (default): one machine, TRL. verl: GPU clusters, verl + Ray (default config `original`:
# 8 GPUs, vLLM TP 2); it runs in .venv-verl when present (bash scripts/setup_verl.sh).
# The original's flags are accepted and mapped onto config keys:
#   --actor_model_path P -> model.path=P        --search_url U   -> retrieval.search_url=U
#   --train_data_path P  -> data.train=P        --dev_data_path P -> data.dev=P
#   --save_path P        -> run.output_dir=P
# The wandb key comes only from the environment (WANDB_API_KEY), never from a flag.
# Set PYTHON to choose the interpreter; --dry-run prints the command instead of running it.
# Several GPUs: ACCELERATE="accelerate launch --config_file FILE" bash training/run.sh ...
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-python}"
if [[ -z "${PYTHON:-}" && -x "$here/.venv/bin/python" ]]; then python="$here/.venv/bin/python"; fi

engine=trl
dry_run=0
args=()
need() { [[ $# -ge 2 && -n "$2" ]] || { echo "error: $1 needs a value" >&2; exit 2; }; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    --engine) need "$@"; engine="$2"; shift 2 ;;
    --config) need "$@"; args+=(--config "$2"); shift 2 ;;
    --resume) args+=(--resume); shift ;;
    --dry-run) dry_run=1; shift ;;
    --actor_model_path) need "$@"; args+=("model.path=$2"); shift 2 ;;
    --search_url) need "$@"; args+=("retrieval.search_url=$2"); shift 2 ;;
    --train_data_path) need "$@"; args+=("data.train=$2"); shift 2 ;;
    --dev_data_path) need "$@"; args+=("data.dev=$2"); shift 2 ;;
    --save_path) need "$@"; args+=("run.output_dir=$2"); shift 2 ;;
    --wandb_api_key)
      echo "error: the wandb key is read only from the environment: export WANDB_API_KEY" \
           "and set run.wandb=online" >&2
      exit 2 ;;
    -h|--help) sed -n '2,17p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *=*) args+=("$1"); shift ;;
    *) echo "error: unknown argument $1 (see bash training/run.sh --help)" >&2; exit 2 ;;
  esac
done

case "$engine" in
  trl) ;;
  verl)
    # verl pins transformers below TRL's range: its own environment (scripts/setup_verl.sh)
    if [[ -z "${PYTHON:-}" && -x "$here/.venv-verl/bin/python" ]]; then
      python="$here/.venv-verl/bin/python"
    fi
    cmd=("$python" -m research.trainers.verl_launch "${args[@]}")
    [[ $dry_run == 1 ]] && cmd+=(--dry-run)
    export PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}"
    exec "${cmd[@]}" ;;
  *) echo "error: unknown engine $engine; valid: trl, verl" >&2; exit 2 ;;
esac

if [[ -n "${ACCELERATE:-}" ]]; then
  # shellcheck disable=SC2206
  cmd=(${ACCELERATE} -m research.cli train "${args[@]}")
else
  cmd=("$python" -m research.cli train "${args[@]}")
fi
if [[ $dry_run == 1 ]]; then
  printf '%q ' "${cmd[@]}"; echo
  exit 0
fi
export PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}"  # relative paths stay the caller's
exec "${cmd[@]}"
