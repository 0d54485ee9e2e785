"""Every key of the training config under the verl engine (verl 0.9.1): mapped to its verl
key, read by the launcher or the agent loop, ignored with a reason, or refused with the
alternative. :func:`check` is what ``research.trainers.config.validate(config, "verl")``
runs; ``tests/test_train_config.py`` walks the config tree so that a new key cannot be added
without a line here. Nothing here imports verl.
"""

from __future__ import annotations

import dataclasses
import logging

from research.errors import ConfigError

log = logging.getLogger(__name__)

AGENT = "the agent loop (agent_loops.yaml: rollout settings)"
DATA = "the launcher, preparing the rows parquet"

# key -> where it goes under the verl engine (verl keys, or the part of the engine reading it)
MAPPED: dict[str, str] = {
    "model.path": "actor_rollout_ref.model.path",
    "model.dtype": "actor_rollout_ref.rollout.dtype (the rollout servers' weights; the actor "
                   "keeps verl's fp32 master weights)",
    "model.gradient_checkpointing": "actor_rollout_ref.model.enable_gradient_checkpointing",
    "model.lora_rank": "actor_rollout_ref.model.lora_rank (target_modules all-linear)",
    "model.lora_alpha": "actor_rollout_ref.model.lora_alpha (null: twice the rank)",
    "data.train": "data.train_files",
    "data.train_split": DATA,
    "data.train_limit": "data.train_max_samples",
    "data.train_type": DATA,
    "data.dev": "data.val_files (null: no validation)",
    "data.dev_split": DATA,
    "data.dev_limit": "data.val_max_samples",
    "data.dev_seed": DATA,
    "data.dev_type": DATA,
    "retrieval.search_url": AGENT,
    "retrieval.timeout": AGENT,
    "retrieval.retries": AGENT,
    "retrieval.api_key_env": AGENT,
    "rollout.template": AGENT,
    "rollout.example": AGENT,
    "rollout.clean": AGENT,
    "rollout.search": AGENT,
    "rollout.max_response_tokens": "data.max_response_length",
    "rollout.max_turns": AGENT,
    "rollout.top_k": AGENT,
    "rollout.max_result_tokens": AGENT,
    "rollout.temperature": "actor_rollout_ref.rollout.temperature",
    "rollout.top_p": "actor_rollout_ref.rollout.top_p",
    "rollout.seed": "actor_rollout_ref.rollout.seed (null: verl's default)",
    "rollout.stop_at_answer": AGENT,
    "rollout.on_max_turns": AGENT,
    "rollout.mask_results": AGENT,
    "reward.name": "reward.custom_reward_function.reward_kwargs.reward_name",
    "grpo.prompts_per_step": "data.train_batch_size, actor_rollout_ref.actor.ppo_mini_batch_size",
    "grpo.num_generations": "actor_rollout_ref.rollout.n",
    "grpo.per_device_batch": "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu and the "
                             "log-prob micro-batches (used when cluster.max_tokens_per_gpu is "
                             "null)",
    "grpo.learning_rate": "actor_rollout_ref.actor.optim.lr",
    "grpo.beta": "actor_rollout_ref.actor.use_kl_loss, kl_loss_coef",
    "grpo.clip": "actor_rollout_ref.actor.clip_ratio, clip_ratio_low, clip_ratio_high",
    "grpo.entropy_coef": "actor_rollout_ref.actor.entropy_coeff",
    "grpo.loss_type": "actor_rollout_ref.actor.loss_agg_mode",
    "grpo.epochs": "trainer.total_epochs",
    "grpo.bf16": "actor_rollout_ref.actor.fsdp_config.dtype, ref.fsdp_config.dtype (bfloat16), "
                 "ref.fsdp_config.model_dtype (bf16 weights for the forward-only reference)",
    "grpo.vllm_tensor_parallel_size": "actor_rollout_ref.rollout.tensor_model_parallel_size",
    "grpo.vllm_gpu_memory_utilization": "actor_rollout_ref.rollout.gpu_memory_utilization",
    "run.output_dir": "trainer.default_local_dir, trainer.experiment_name, WANDB_DIR",
    "run.max_steps": "trainer.total_training_steps",
    "run.save_steps": "trainer.save_freq",
    "run.save_total_limit": "trainer.max_actor_ckpt_to_keep",
    "run.eval_steps": "trainer.test_freq, trainer.val_before_train",
    "run.seed": "data.seed",
    "run.wandb": "trainer.logger, WANDB_MODE (driver and every Ray worker)",
    "run.wandb_project": "trainer.project_name",
    "run.resume": "trainer.resume_mode",
    "cluster.gpus_per_node": "trainer.n_gpus_per_node",
    "cluster.nnodes": "trainer.nnodes (> 1: ray_kwargs.ray_init.runtime_env py_executable, "
                      "PYTHONPATH)",
    "cluster.rollout_engine": "actor_rollout_ref.rollout.name",
    "cluster.max_prompt_tokens": "data.max_prompt_length (longer prompts dropped by the "
                                 "launcher)",
    "cluster.max_tokens_per_gpu": "actor_rollout_ref.actor.use_dynamic_bsz, "
                                  "ppo_max_token_len_per_gpu",
    "cluster.max_concurrent_searches": AGENT,
    "cluster.verl": "any verl key, passed as is (last)",
}

# TRL-only keys: refused under verl unless left at their default; the value says the
# alternative
TRL_ONLY: dict[str, str] = {
    "model.lora_layers": "verl's LoRA adapts every layer: leave model.lora_layers null",
    "model.max_batch": "verl's servers batch on their own: set "
                       "actor_rollout_ref.rollout.max_num_seqs through cluster.verl",
    "grpo.trl": "pass verl keys through cluster.verl instead",
    "retrieval.corpus": "the verl engine starts no service: run rag_serving/serving.py and "
                        "give retrieval.search_url",
    "run.logging_steps": "verl logs every step",
    "run.rollout_samples": "set trainer.rollout_data_dir (every trajectory) or "
                           "trainer.log_val_generations through cluster.verl",
    "run.torch_threads": "verl sets its workers' threads itself",
    "grpo.rollout_int8": "verl rolls out on its own servers: set their precision "
                         "(actor_rollout_ref.rollout.dtype) through cluster.verl",
}

# read by the TRL engine only, harmless under verl: logged, not refused
IGNORED: dict[str, str] = {
    "grpo.use_vllm": "verl always rolls out on its own servers (cluster.rollout_engine)",
    "grpo.rollout_is_cap": "read with grpo.rollout_int8 only, which verl refuses",
    "grpo.share_prompt": "verl runs its own loss pass: to drop its padding, set "
                         "actor_rollout_ref.model.use_remove_padding through cluster.verl",
}


def every_key() -> set[str]:
    """Every ``section.key`` this module accounts for."""
    return set(MAPPED) | set(TRL_ONLY) | set(IGNORED)


def _value(config, key: str):
    section, name = key.split(".")
    return getattr(getattr(config, section), name)


def _default(config, key: str):
    section, name = key.split(".")
    f = {f.name: f for f in dataclasses.fields(getattr(config, section))}[name]
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def check(config) -> None:
    """Refuse what the verl engine cannot do with ``config`` (a TrainConfig); each message
    names the key and the alternative."""
    for key, alternative in TRL_ONLY.items():
        if _value(config, key) != _default(config, key):
            raise ConfigError(f"{key} is read by the TRL engine only; under --engine verl "
                              f"{alternative} (or leave {key} at its default)")
    if not config.grpo.bf16:
        raise ConfigError("grpo.bf16=false: verl's FSDP actor computes in bfloat16 or float16 "
                          "only (fp32 master weights either way): set grpo.bf16=true (float16: "
                          "also cluster.verl='{actor_rollout_ref.actor.fsdp_config.dtype: "
                          "float16}')")
    if not config.rollout.search:
        raise ConfigError("rollout.search=false (the closed-book control) runs on the TRL "
                          "engine only")
    for key, reason in IGNORED.items():
        log.info("%s is not used by the verl engine: %s", key, reason)
