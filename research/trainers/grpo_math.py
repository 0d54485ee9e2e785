"""The GRPO maths of PROTOCOL.md section 6, as pure torch functions (no engine imported).

These are the definitions that both engines must reproduce; ``tests/test_grpo_settings.py``
proves that TRL's ``GRPOTrainer`` with :func:`research.trainers.trl_settings.protocol_grpo_kwargs`
computes them. Shapes: ``B`` prompts, ``G`` responses per prompt (``n`` in the protocol), ``T``
response tokens (right-padded); ``mask[i, t]`` is 1 on tokens the model sampled and 0 on
inserted result tokens and padding.

The protocol's update, token by token (``A`` the advantage of the token's response)::

    ratio = exp(logp - old_logp)
    pg    = max(-A * ratio, -A * clamp(ratio, 1 - clip, 1 + clip))
    loss  = token_mean(pg + beta * k3(logp, ref_logp)) - entropy_coef * token_mean(entropy)

where ``token_mean`` averages over every masked-in token of the batch (verl's "token-mean").
"""

from __future__ import annotations

import torch

ADVANTAGE_EPS = 1e-6  # (r - mean) / (std + eps)
CLIP = 0.2  # PPO ratio clip
KL_COEF = 0.001  # beta
KL_CLAMP = 10.0  # verl's low_var_kl clamps the k3 estimate to [-10, 10]
ENTROPY_COEF = 0.001


def group_advantages(
    rewards: torch.Tensor, group_size: int, eps: float = ADVANTAGE_EPS, unbiased: bool = True
) -> torch.Tensor:
    """``(r - mean) / (std + eps)`` within each group of ``group_size`` consecutive rewards.

    ``rewards``: ``[B * G]``, the ``G`` responses of a prompt next to each other (the order
    of TRL's sampler and of verl's ``uid`` groups). Returns ``[B * G]``. ``unbiased`` picks
    Bessel's correction (``torch.std``'s default, the protocol's). A group whose rewards are
    all equal gets advantage 0.
    """
    if group_size < 2:
        raise ValueError(f"group_size must be >= 2 for a group std, got {group_size}")
    if rewards.dim() != 1 or rewards.numel() % group_size:
        raise ValueError(
            f"rewards must be 1-D with a length divisible by group_size={group_size}, "
            f"got shape {tuple(rewards.shape)}"
        )
    grouped = rewards.view(-1, group_size)  # [B, G]
    mean = grouped.mean(dim=1, keepdim=True)  # [B, 1]
    std = grouped.std(dim=1, keepdim=True, correction=1 if unbiased else 0)  # [B, 1]
    return ((grouped - mean) / (std + eps)).reshape(-1)  # [B * G]


def k3_kl(
    logp: torch.Tensor, ref_logp: torch.Tensor, clamp: float | None = KL_CLAMP
) -> torch.Tensor:
    """The low-variance ("k3") estimate of KL(policy || reference), per token.

    ``exp(ref - logp) - (ref - logp) - 1`` (always >= 0), clamped to ``[-clamp, clamp]`` as
    verl's ``low_var_kl`` does; ``clamp=None`` gives the unclamped estimate (TRL's). Shapes:
    ``[..., T]`` in, ``[..., T]`` out.
    """
    log_ratio = ref_logp - logp  # [.., T]
    kl = torch.exp(log_ratio) - log_ratio - 1  # [.., T]
    return kl if clamp is None else torch.clamp(kl, min=-clamp, max=clamp)


def token_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` over the tokens where ``mask`` is 1, all rows together.

    ``[B, T]`` and ``[B, T]`` in, a scalar out; an all-zero mask gives 0.
    """
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1.0)


def policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip: float = CLIP,
    kl: torch.Tensor | None = None,
    beta: float = KL_COEF,
    entropy: torch.Tensor | None = None,
    entropy_coef: float = ENTROPY_COEF,
) -> torch.Tensor:
    """The protocol's loss for one optimiser step (a scalar to minimise).

    ``logp``, ``old_logp``: ``[B*G, T]`` log-probs of the response tokens under the policy
    being trained and the policy that sampled them; ``advantages``: ``[B*G]`` (broadcast to
    every token) or ``[B*G, T]``; ``mask``: ``[B*G, T]``; ``kl``: ``[B*G, T]`` per-token KL
    (:func:`k3_kl`), added with weight ``beta``; ``entropy``: ``[B*G, T]`` per-token entropy
    of the policy, subtracted (a bonus) with weight ``entropy_coef``. Every term is a token
    mean over the masked-in tokens of the whole batch, so a token with mask 0 has gradient 0.
    """
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(1)  # [B*G, 1], broadcast over T
    ratio = torch.exp(logp - old_logp)  # [B*G, T]
    clipped = torch.clamp(ratio, 1 - clip, 1 + clip)  # [B*G, T]
    per_token = torch.maximum(-advantages * ratio, -advantages * clipped)  # [B*G, T]
    if kl is not None:
        per_token = per_token + beta * kl
    loss = token_mean(per_token, mask)
    if entropy is not None:
        loss = loss - entropy_coef * token_mean(entropy, mask)
    return loss
