"""Truncated importance sampling for a rollout sampled from another copy of the policy.

Under ``grpo.rollout_int8`` the rollout samples from an int8 copy of the policy
(:mod:`research.trainers.generation_copy`) and records each sampled token's log-probability
under that copy (TRL passes them to the loss as ``sampling_per_token_logps``). The loss is the
policy's, whose log-probabilities differ: the samples are slightly off-policy. As verl and
slime do for their inference engines (and TRL for vLLM only), each sampled token's term is
weighed by the truncated ratio ``w = min(exp(logp_policy - logp_rollout), cap)``, detached:
the gradient becomes ``-A * w * grad(logp_policy)``, an unbiased policy gradient up to the
truncation.

TRL applies its own correction only with vLLM; :func:`install_rollout_correction` adds it to
a trainer whose rollout comes from ``rollout_func``: inside ``_compute_loss`` the policy's
log-probabilities are read as TRL computes them, and the advantages of that micro-batch
become per-token (``[B, T]``, a shape TRL's loss accepts) ``A * w``. With one optimisation
pass per rollout the PPO ratio is exactly 1, so this is the whole correction. Each step logs
``rollout_correction/weight_mean``, ``/clipped_share`` (tokens at the cap) and ``/gap``
(mean ``|logp_policy - logp_rollout|`` per sampled token).
"""

from __future__ import annotations


def tis_weights(policy_logps, rollout_logps, mask, cap: float):
    """``(w [B, T], facts)``: the truncated importance weights (1 where ``mask`` is 0) and the
    step's facts over the masked-in tokens."""
    import torch

    log_ratio = (policy_logps.detach() - rollout_logps) * mask
    weights = torch.exp(log_ratio).clamp(max=cap)
    weights = torch.where(mask.bool(), weights, torch.ones_like(weights))
    n = mask.sum().clamp(min=1)
    facts = {"weight_mean": float((weights * mask).sum() / n),
             "clipped_share": float(((weights >= cap) * mask).sum() / n),
             "gap": float((log_ratio.abs() * mask).sum() / n)}
    return weights, facts


def install_rollout_correction(trainer, cap: float) -> None:
    """Weigh ``trainer``'s loss by :func:`tis_weights` of the policy and the rollout's
    log-probabilities (``sampling_per_token_logps``); a batch without them is unchanged."""
    compute_loss = trainer._compute_loss

    def corrected(model, inputs):
        rollout_logps = inputs.get("sampling_per_token_logps")
        if rollout_logps is None:
            return compute_loss(model, inputs)
        local = dict(inputs)
        score = trainer._get_per_token_logps_and_entropies
        own = "_get_per_token_logps_and_entropies" in vars(trainer)

        def weighed(*args, **kwargs):
            out = score(*args, **kwargs)
            mask = local["completion_mask"]
            if local.get("tool_mask") is not None:
                mask = mask * local["tool_mask"]
            weights, facts = tis_weights(out[0], rollout_logps, mask, cap)
            advantages = local["advantages"]
            local["advantages"] = (advantages[:, None] if advantages.dim() == 1
                                   else advantages) * weights
            mode = "train" if model.training else "eval"
            for key, value in facts.items():
                trainer._metrics[mode][f"rollout_correction/{key}"].append(value)
            return out

        trainer._get_per_token_logps_and_entropies = weighed
        try:
            return compute_loss(model, local)
        finally:
            if own:
                trainer._get_per_token_logps_and_entropies = score
            else:
                del trainer._get_per_token_logps_and_entropies

    trainer._compute_loss = corrected
