"""The training config: one YAML tree of dataclasses, ``key=value`` overrides, checked early.

::

    model:     path, dtype, gradient_checkpointing, lora_rank, lora_alpha, max_batch
    data:      train, train_split, train_limit, train_type, dev, dev_split, dev_limit, dev_type
    retrieval: search_url (or a service started on `corpus`), corpus, timeout, retries
    rollout:   template, example, clean, search, max_response_tokens, max_turns, top_k, ...
               (research.rollout.settings.RolloutSettings: the evaluation's section too)
    reward:    name (v1 | f1 | graded)
    grpo:      prompts_per_step, num_generations, per_device_batch, learning_rate, beta, ...
    run:       output_dir, max_steps, save_steps, eval_steps, seed, torch_threads, wandb, ...
    cluster:   gpus_per_node, nnodes, rollout_engine, ... (the verl engine's)

:func:`load_config` reads a YAML file (any subset of the tree; the rest keeps the defaults
below), applies overrides such as ``grpo.num_generations=4`` (values parsed as YAML scalars:
``null``, ``true``, ``1e-6``) and validates the result; every problem raises
:class:`ConfigError` with the fix. :func:`describe` lists every key with its default and help.
Nothing here imports torch or TRL.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

from research import configtree
from research.errors import ConfigError
from research.paths import package_path
from research.rollout.settings import RolloutSettings
from research.serving.launch import RetrievalSection

_f = configtree.option


@dataclass
class ModelConfig:
    path: str = _f("smollm2-135m", "packaged model name (smollm2-135m, qwen2.5-0.5b) or a "
                   "local Hugging Face folder")
    dtype: str = _f("float32", "weights' dtype when loaded", ("float32", "bfloat16", "auto"))
    gradient_checkpointing: bool = _f(False, "recompute activations in the backward pass "
                                      "(less memory, slower)")
    lora_rank: int = _f(0, "0: train every weight; N > 0: train LoRA adapters of rank N on "
                        "every linear layer instead (peft; the final model is merged)")
    lora_alpha: int | None = _f(None, "LoRA scaling alpha (null: twice the rank)")
    lora_layers: int | None = _f(None, "LoRA adapters on the top N transformer layers only "
                                 "(null: every layer); the backward pass then stops at the "
                                 "lowest adapted layer")
    max_batch: int | None = _f(None, "most sequences the Hugging Face backend decodes at once "
                               "in a rollout (null: all)")


@dataclass
class DataConfig:
    train: str = _f("squad-open-mini", "training questions: an embedded set's name, a rows "
                    ".parquet file or a FlashRAG .jsonl file")
    train_split: str = _f("train", "split of an embedded set")
    train_limit: int | None = _f(None, "use only the first N training questions (null: all)")
    train_type: str | None = _f(None, "keep only training questions whose metadata.type is "
                                "this (factbook sets: one-hop, bridge, comparison; null: all)")
    dev: str | None = _f("squad-open-mini", "validation questions (same forms as `train`; "
                         "null: no validation)")
    dev_split: str = _f("dev", "split of an embedded set")
    dev_limit: int = _f(32, "validation questions: N drawn at random by dev_seed (the same "
                        "N at every validation), or the first N when dev_seed is null")
    dev_seed: int | None = _f(13, "seed of the validation questions' draw (null: the first "
                              "dev_limit of the file, which for a file ordered by country "
                              "covers a few countries only)")
    dev_type: str | None = _f(None, "keep only validation questions whose metadata.type is "
                              "this (null: all)")


@dataclass
class RewardConfig:
    name: str = _f("v1", "v1: the original's exact match; f1: the paper's token F1; "
                   "graded: partial credit for format and answer (Search-R1's later reward, "
                   "not the protocol's)", ("v1", "em", "f1", "graded"))


@dataclass
class GRPOSection:
    prompts_per_step: int = _f(256, "questions per optimiser step")
    num_generations: int = _f(5, "responses per question (the group size n)")
    per_device_batch: int = _f(10, "trajectories per forward/backward micro-batch on each "
                               "process")
    learning_rate: float = _f(1e-6, "AdamW learning rate (constant)")
    beta: float = _f(0.001, "KL coefficient (k3 to the frozen reference; 0: no reference)")
    clip: float = _f(0.2, "PPO ratio clip")
    entropy_coef: float = _f(0.001, "entropy bonus coefficient")
    loss_type: str = _f("dapo", "dapo: one token mean per step (the protocol); bnpo: per "
                        "micro-batch (the original's verl)", ("dapo", "bnpo", "grpo"))
    epochs: int = _f(10, "passes over the training questions (when run.max_steps is -1)")
    bf16: bool = _f(False, "bf16 mixed precision: fp32 weights, bf16 matmuls in the update and "
                    "the rollout (GPUs, and CPUs with bf16 support: about 2x faster there; a "
                    "CPU without it computes in fp32, with a warning)")
    rollout_int8: bool = _f(False, "CPU: sample the rollouts from an int8 copy of the policy "
                            "(every linear layer quantised per channel, refreshed from the "
                            "current weights before each rollout): 2.7-3.9x the fp32 decode "
                            "rate at batch 8-16 on AVX2 CPUs without bf16; the loss weighs "
                            "each sampled token by min(p_policy / p_rollout, "
                            "grpo.rollout_is_cap); validation during training samples from "
                            "the copy too")
    rollout_is_cap: float = _f(2.0, "grpo.rollout_int8: the cap of the truncated importance "
                               "ratio between the policy and the int8 rollout")
    share_prompt: bool = _f(True, "TRL engine: the loss's micro-batches hold whole groups "
                            "(where that leaves the gradient unchanged) and run each group's "
                            "prompt once, without padding columns (on CPU, where the compact "
                            "log-prob head runs; false: TRL's own pass)")
    use_vllm: bool = _f(False, "roll out with TRL's colocated vLLM engine (GPU only)")
    vllm_tensor_parallel_size: int = _f(1, "vLLM tensor parallelism")
    vllm_gpu_memory_utilization: float = _f(0.6, "share of GPU memory vLLM may take")
    trl: dict = field(default_factory=dict, metadata={
        "help": "any other trl.GRPOConfig option, passed as is (e.g. {logging_nan_inf_filter: "
                "false})", "choices": None})


@dataclass
class RunConfig:
    output_dir: str = _f("runs/train", "run directory: checkpoints, metrics.jsonl, "
                         "rollouts.jsonl, validation.jsonl")
    max_steps: int = _f(-1, "optimiser steps (-1: grpo.epochs over the data)")
    save_steps: int = _f(10, "checkpoint every N steps")
    save_total_limit: int | None = _f(None, "keep only the last N checkpoints (null: all)")
    eval_steps: int = _f(10, "greedy validation every N steps and before training (0: off)")
    logging_steps: int = _f(1, "metrics every N steps")
    rollout_samples: int = _f(4, "trajectories per step written to rollouts.jsonl")
    seed: int = _f(42, "random seed")
    torch_threads: int | None = _f(None, "torch CPU threads (null: every core)")
    wandb: str = _f("off", "wandb logging; the key only from WANDB_API_KEY",
                    ("off", "offline", "online"))
    wandb_project: str = _f("research", "wandb project")
    resume: bool = _f(False, "continue from the last checkpoint in output_dir")


@dataclass
class ClusterConfig:
    """Settings of the verl engine (training/run.sh --engine verl); TRL ignores them."""

    gpus_per_node: int = _f(8, "verl: GPUs per node")
    nnodes: int = _f(1, "verl: nodes in the Ray cluster")
    rollout_engine: str = _f("vllm", "verl: the rollout servers", ("vllm", "sglang"))
    max_prompt_tokens: int = _f(512, "verl: prompt budget (data.max_prompt_length); the "
                                "launcher drops longer prompts and logs how many")
    max_tokens_per_gpu: int | None = _f(None, "verl: dynamic batching with this many tokens "
                                        "per GPU in each forward/backward (use_dynamic_bsz; at "
                                        "least max_prompt_tokens + rollout.max_response_tokens;"
                                        " null: micro-batches of grpo.per_device_batch)")
    max_concurrent_searches: int = _f(32, "verl: search requests in flight per agent-loop "
                                      "worker")
    verl: dict = field(default_factory=dict, metadata={
        "help": "any other verl (Hydra) key, passed as is (e.g. {trainer.use_v1: false})",
        "choices": None})


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    retrieval: RetrievalSection = field(default_factory=RetrievalSection)
    rollout: RolloutSettings = field(default_factory=RolloutSettings)
    reward: RewardConfig = field(default_factory=RewardConfig)
    grpo: GRPOSection = field(default_factory=GRPOSection)
    run: RunConfig = field(default_factory=RunConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# --- building from a tree -----------------------------------------------------------------------


ENGINES = ("trl", "verl")


def from_dict(tree: dict | None, engine: str = "trl") -> TrainConfig:
    """A validated :class:`TrainConfig` from a (partial) nested mapping, for ``engine``."""
    config = configtree.from_dict(TrainConfig, tree, "a training config")
    validate(config, engine)
    return config


def config_dir() -> Path:
    """The named configs, shipped with the package (``research/configs/training``)."""
    return package_path("configs", "training")


def named_paths() -> dict[str, Path]:
    """``{name: file}`` of the named configs ``--config`` accepts besides a file
    (``cpu-small``, ``original``, ...)."""
    return {p.stem: p for p in sorted(config_dir().glob("*.yaml"))}


DEFAULT_CONFIGS = {"trl": "cpu-small", "verl": "original"}  # each engine's --config default


def load_run_config(path: str | os.PathLike | None, overrides: list[str] | tuple[str, ...],
                    resume: bool, engine: str) -> TrainConfig:
    """What both training entry points run: ``--config`` (default: the engine's
    :data:`DEFAULT_CONFIGS`), the overrides, and ``--resume`` as ``run.resume=true``."""
    return load_config(path or DEFAULT_CONFIGS[engine],
                       [*overrides, *(["run.resume=true"] if resume else [])], engine)


def load_config(path: str | os.PathLike | None = None,
                overrides: list[str] | tuple[str, ...] = (), engine: str = "trl"
                ) -> TrainConfig:
    """The config of ``path`` (a YAML file or a named config; ``None``: every default) with
    ``overrides`` applied, validated for ``engine`` (trl or verl)."""
    tree = configtree.load_tree(TrainConfig, path, overrides, "a training config",
                                named=named_paths())
    return from_dict(tree, engine)


# --- cross-field checks -------------------------------------------------------------------------


def world_size() -> int:
    """Processes of this launch (``WORLD_SIZE`` from accelerate / torchrun; 1 otherwise)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def _positive(config: TrainConfig) -> None:
    for key in ("cluster.gpus_per_node", "cluster.nnodes", "cluster.max_prompt_tokens",
                "cluster.max_concurrent_searches",
                "grpo.prompts_per_step", "grpo.num_generations", "grpo.per_device_batch",
                "grpo.epochs", "run.save_steps", "run.logging_steps", "data.dev_limit"):
        section, name = key.split(".")
        if getattr(getattr(config, section), name) < 1:
            raise ConfigError(f"{key} must be >= 1")
    if config.model.lora_rank < 0:
        raise ConfigError("model.lora_rank must be >= 0 (0: full fine-tuning)")
    if config.model.lora_layers is not None and not config.model.lora_rank:
        raise ConfigError("model.lora_layers needs LoRA adapters: set model.lora_rank > 0, or "
                          "model.lora_layers=null")
    for key in ("data.train_limit", "model.lora_alpha", "model.lora_layers", "model.max_batch",
                "run.torch_threads", "run.save_total_limit", "cluster.max_tokens_per_gpu"):
        section, name = key.split(".")
        value = getattr(getattr(config, section), name)
        if value is not None and value < 1:
            raise ConfigError(f"{key} must be >= 1 or null")


def validate(config: TrainConfig, engine: str = "trl") -> None:
    """Checks across fields for ``engine``; each message says the fix. Under ``verl`` every
    key is mapped to verl's or refused (:mod:`research.trainers.verl_mapping`)."""
    if engine not in ENGINES:
        raise ConfigError(f"unknown engine {engine!r}; valid: {', '.join(ENGINES)}")
    _positive(config)
    g, r, run = config.grpo, config.rollout, config.run
    if g.num_generations < 2:
        raise ConfigError("grpo.num_generations must be >= 2: GRPO compares the responses of "
                          "one question (the protocol uses 5)")
    trajectories = g.prompts_per_step * g.num_generations
    per_micro = g.per_device_batch * world_size()
    if trajectories % per_micro:
        divisors = [d for d in range(1, trajectories + 1) if trajectories % d == 0]
        raise ConfigError(
            f"grpo.prompts_per_step x grpo.num_generations = {g.prompts_per_step} x "
            f"{g.num_generations} = {trajectories} trajectories per step is not divisible by "
            f"grpo.per_device_batch x processes = {g.per_device_batch} x {world_size()}: set "
            f"grpo.per_device_batch to a divisor of {trajectories // world_size()} (e.g. "
            f"{', '.join(map(str, divisors[:8]))})")
    if g.rollout_int8 and (g.bf16 or g.use_vllm):
        raise ConfigError("grpo.rollout_int8 picks the rollout's precision, as grpo.bf16 and "
                          "grpo.use_vllm do: set only one of them")
    if g.rollout_is_cap <= 1:
        raise ConfigError("grpo.rollout_is_cap must be > 1 (a ratio cap; 2 is usual)")
    if r.temperature <= 0:
        raise ConfigError("rollout.temperature must be > 0 for training (GRPO needs samples "
                          "that differ; greedy is used for validation only)")
    if g.learning_rate <= 0 or g.beta < 0 or g.clip <= 0 or g.entropy_coef < 0:
        raise ConfigError("grpo.learning_rate and grpo.clip must be > 0, grpo.beta and "
                          "grpo.entropy_coef >= 0")
    if run.max_steps == 0 or run.max_steps < -1:
        raise ConfigError("run.max_steps must be >= 1, or -1 to train grpo.epochs epochs")
    if run.eval_steps < 0 or run.rollout_samples < 0:
        raise ConfigError("run.eval_steps and run.rollout_samples must be >= 0 (0: off)")
    if run.eval_steps and config.data.dev is None:
        raise ConfigError("run.eval_steps > 0 needs validation questions: set data.dev, or "
                          "run.eval_steps=0 to train without validation")
    _check_trl_keys(g.trl)
    if engine == "verl":
        from research.trainers import verl_mapping

        verl_mapping.check(config)
        _check_token_budget(config)


def _check_token_budget(config: TrainConfig) -> None:
    budget, c = config.cluster.max_tokens_per_gpu, config.cluster
    longest = c.max_prompt_tokens + config.rollout.max_response_tokens
    if budget is not None and budget < longest:
        raise ConfigError(f"cluster.max_tokens_per_gpu={budget} is under one trajectory's "
                          f"{longest} tokens (cluster.max_prompt_tokens + "
                          f"rollout.max_response_tokens): raise it to at least {longest}, or "
                          "null for fixed micro-batches")


_OWNED = {
    "output_dir": "run.output_dir", "num_generations": "grpo.num_generations",
    "learning_rate": "grpo.learning_rate", "beta": "grpo.beta", "epsilon": "grpo.clip",
    "epsilon_high": "grpo.clip", "entropy_coef": "grpo.entropy_coef",
    "loss_type": "grpo.loss_type", "per_device_train_batch_size": "grpo.per_device_batch",
    "gradient_accumulation_steps": "grpo.prompts_per_step", "max_steps": "run.max_steps",
    "save_steps": "run.save_steps", "seed": "run.seed", "temperature": "rollout.temperature",
    "top_p": "rollout.top_p", "max_completion_length": "rollout.max_response_tokens",
    "bf16": "grpo.bf16", "use_vllm": "grpo.use_vllm", "report_to": "run.wandb",
    "num_train_epochs": "grpo.epochs", "gradient_checkpointing": "model.gradient_checkpointing",
    "activation_checkpointing": "model.gradient_checkpointing",
}


def _check_trl_keys(extra: dict) -> None:
    for key in extra:
        if key in _OWNED:
            raise ConfigError(f"grpo.trl.{key} is set by {_OWNED[key]}: set that key instead")


# --- help ---------------------------------------------------------------------------------------


def describe() -> str:
    """Every key with its default and help, one per line (``research train --keys``)."""
    return configtree.describe(TrainConfig)
