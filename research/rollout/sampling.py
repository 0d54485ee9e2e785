"""The sampling distribution, in one place: the one the Hugging Face backend samples from and
scores its tokens under, and the one the OpenAI-compatible model server reports top log-probs
of. (Torch here; the generation contract, :mod:`research.rollout.generation`, has none.)"""

from __future__ import annotations

import torch


def top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose probability reaches ``top_p`` (the
    rest at ``-inf``); ``logits`` is ``[B, V]``."""
    sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
    probs = torch.softmax(sorted_logits, dim=-1)
    drop = probs.cumsum(dim=-1) - probs > top_p
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.full_like(logits, float("-inf")).scatter(1, order, sorted_logits)


def sampling_logprobs(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """Log-probs of the distribution sampled from: ``logits / temperature`` (greedy, 0: the
    model's own), nucleus-filtered at ``top_p``. ``[B, V]`` in, ``[B, V]`` float32 out."""
    logits = logits.float() / (temperature if temperature > 0 else 1.0)
    if top_p < 1.0:
        logits = top_p_filter(logits, top_p)
    return torch.log_softmax(logits, dim=-1)
