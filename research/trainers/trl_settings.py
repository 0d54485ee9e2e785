"""PROTOCOL.md section 6 as keyword arguments of TRL's ``GRPOConfig`` (TRL pinned to 1.16.0).

:func:`protocol_grpo_kwargs` gives the algorithm and optimiser settings;
:func:`step_batch_kwargs` the batch sizes for one optimiser step per prompt batch;
``UNSUPPORTED`` lists what TRL cannot express and what was chosen instead. The hardware
settings (bf16, gradient checkpointing, vLLM) are config keys, set for GPUs by the named
config ``original`` and passed on by :func:`research.trainers.trl_engine.grpo_config`.
``docs/grpo_settings.md`` has the table and ``tests/test_grpo_settings.py`` proves that TRL's
advantages and loss with these settings equal :mod:`research.trainers.grpo_math`.

TRL is imported only inside :func:`protocol_grpo_config`, so this module imports without it.
"""

from __future__ import annotations

from dataclasses import dataclass

from research.errors import MissingDependency

TRL_VERSION = "1.16.0"  # the version whose code the mapping and its test were checked against
TRL_ADVANTAGE_EPS = 1e-4  # hard-coded in GRPOTrainer: advantages / (std_rewards + 1e-4)


@dataclass(frozen=True)
class Gap:
    """A protocol setting TRL cannot express exactly, and what the TRL engine does instead."""

    setting: str
    protocol: str
    trl: str
    chosen: str


UNSUPPORTED: tuple[Gap, ...] = (
    Gap("advantage epsilon", "(r - mean) / (std + 1e-6)",
        "the epsilon is hard-coded to 1e-4 (no option)",
        "TRL's 1e-4: advantages differ by a factor (std + 1e-6) / (std + 1e-4), under 0.1% "
        "for a group std above 0.1; all-equal groups get 0 either way"),
    Gap("KL clamp", "k3 estimate clamped to [-10, 10] (verl low_var_kl)",
        "k3 is not clamped (no option)",
        "unclamped k3: identical while k3 <= 10, i.e. while -11 < ref_logp - logp < 2.6 "
        "per token; beyond that TRL's KL term and its gradient are larger"),
    Gap("AdamW weight decay", "verl's AdamW decays every parameter (weight_decay 0.01)",
        "the Trainer exempts biases and normalisation weights from decay",
        "weight_decay=0.01 with the Trainer's grouping (at lr 1e-6 the difference is "
        "negligible)"),
    Gap("validation", "greedy ReSearch-pipeline validation every 10 steps and before training",
        "TRL's evaluation reuses the training rollout and reward, not the pipeline's metrics",
        "research.trainers.trl_callbacks.ValidationCallback, not a GRPOConfig option"),
    Gap("prompt length", "prompts of at most 512 tokens",
        "GRPOConfig 1.16.0 has no prompt-length option; rollout_func owns the prompt ids",
        "enforced by the project's data rows and rollout"),
    Gap("response budget", "8192 response tokens, inserted results included",
        "max_completion_length bounds TRL's own generation, not a rollout_func",
        "max_completion_length=8192 for TRL's bookkeeping; the budget itself is "
        "RolloutSettings.max_response_tokens in the project's rollout"),
)


def protocol_grpo_kwargs(**overrides) -> dict:
    """``GRPOConfig`` keyword arguments implementing PROTOCOL.md section 6; ``overrides`` win.

    Leaves out what depends on the run (``output_dir``; the hardware settings, which are
    config keys); the batch is the protocol's for one process (pass
    :func:`step_batch_kwargs` for others). ``GRPOConfig``
    defaults ``bf16`` and ``gradient_checkpointing`` to True: pass ``bf16=False`` on CPU.
    """
    kwargs = dict(
        # -- advantage: per group of n, (r - mean) / (std + eps), unbiased std, on every token
        scale_rewards="group",  # divide by the std of the prompt's group (TRL's std is unbiased)
        multi_objective_aggregation="sum_then_normalize",  # the one reward, normalised per group
        num_generations=5,  # §4: n = 5 responses per prompt form one group
        # -- one optimiser step per 256-prompt batch (1,280 trajectories), here on one process;
        # step_batch_kwargs() gives other splits. steps_per_generation defaults to the
        # accumulation steps: each step generates its own batch.
        per_device_train_batch_size=10,  # §6: 10 trajectories per micro-batch ...
        gradient_accumulation_steps=128,  # §6: ... x 128 = 1,280 trajectories per step
        # -- sampling (§4); TRL also divides logits by `temperature` when scoring tokens
        temperature=1.0,  # §4: temperature 1.0 (and log-probs scored at 1.0)
        top_p=1.0,  # §4: top_p 1
        top_k=0,  # §4: no top-k filtering
        max_completion_length=8192,  # §4: response budget (enforced by the project's rollout)
        # -- policy loss: PPO clipped ratio, clip 0.2, one epoch, token mean over masked tokens
        loss_type="dapo",  # token mean over all loss-masked tokens of the optimiser batch
        epsilon=0.2,  # §6: clip 0.2 (lower side)
        epsilon_high=0.2,  # §6: clip 0.2 (upper side, symmetric)
        delta=None,  # §6: plain PPO clip, no two-sided upper bound on the ratio
        importance_sampling_level="token",  # §6: per-token ratio (not GSPO's sequence ratio)
        num_iterations=1,  # §6: one epoch over each batch
        mask_truncated_completions=False,  # §5: over-length responses stay in the loss (reward 0)
        top_entropy_quantile=1.0,  # §6: every masked-in token in the loss
        off_policy_mask_threshold=None,  # §6: no off-policy sequence masking
        vllm_importance_sampling_correction=False,  # §6: ratio to the recomputed old policy only
        # -- KL to the frozen reference: k3, coefficient 0.001, added to the loss
        beta=0.001,  # §6: KL coefficient 0.001 (TRL's KL is k3: exp(r - p) - (r - p) - 1)
        use_bias_correction_kl=False,  # §6: plain k3 (TRL's default multiplies it by the ratio)
        sync_ref_model=False,  # §6: the reference stays frozen
        # -- entropy bonus
        entropy_coef=0.001,  # §6: entropy bonus coefficient 0.001 (loss -= coef * mean entropy)
        use_adaptive_entropy=False,  # §6: a fixed coefficient
        # -- optimiser: AdamW, lr 1e-6 constant, gradient clip 1.0
        optim="adamw_torch",  # §6: AdamW
        learning_rate=1e-6,  # §6: lr 1e-6
        lr_scheduler_type="constant",  # §6: constant lr
        warmup_steps=0,  # §6: constant lr, no warm-up
        weight_decay=0.01,  # §6: AdamW as verl builds it (weight_decay 0.01; see UNSUPPORTED)
        adam_beta1=0.9,  # §6: verl's AdamW betas (0.9, 0.999)
        adam_beta2=0.999,  # §6: verl's AdamW betas (0.9, 0.999)
        adam_epsilon=1e-8,  # §6: torch AdamW's eps, as verl
        max_grad_norm=1.0,  # §6: gradient clip 1.0
        # -- schedule: 10 epochs, save every 10 steps
        num_train_epochs=10,  # §6: 10 epochs
        save_strategy="steps",  # §6: save every 10 steps
        save_steps=10,  # §6: save every 10 steps
    )
    kwargs.update(overrides)
    return kwargs


def step_batch_kwargs(
    prompts_per_step: int = 256,
    num_generations: int = 5,
    per_device_train_batch_size: int = 8,
    num_processes: int = 1,
) -> dict:
    """Batch sizes for one optimiser step per ``prompts_per_step`` prompts (§6: 256 x 5).

    Returns ``per_device_train_batch_size`` and ``gradient_accumulation_steps``; TRL's
    ``steps_per_generation`` then defaults to the accumulation steps, so each step generates
    exactly its own batch (on-policy: the old log-probs equal the current ones).
    """
    if min(prompts_per_step, num_generations, per_device_train_batch_size, num_processes) < 1:
        raise ValueError("prompts_per_step, num_generations, per_device_train_batch_size and "
                         "num_processes must all be >= 1")
    trajectories = prompts_per_step * num_generations
    per_micro_step = per_device_train_batch_size * num_processes
    if trajectories % per_micro_step:
        raise ValueError(
            f"{prompts_per_step} prompts x {num_generations} responses = {trajectories} "
            f"trajectories per step are not divisible by per_device_train_batch_size x "
            f"num_processes = {per_device_train_batch_size} x {num_processes}: pick a "
            f"per-device batch size so that the product divides {trajectories}"
        )
    return {
        "per_device_train_batch_size": per_device_train_batch_size,
        "gradient_accumulation_steps": trajectories // per_micro_step,
    }


def protocol_grpo_config(**overrides):
    """A ``trl.GRPOConfig`` built from :func:`protocol_grpo_kwargs` (needs TRL installed)."""
    try:
        from trl import GRPOConfig
    except ImportError as exc:
        raise MissingDependency(
            f"the TRL engine needs trl: pip install trl=={TRL_VERSION}"
        ) from exc
    return GRPOConfig(**protocol_grpo_kwargs(**overrides))
