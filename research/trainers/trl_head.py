"""The log-prob head of TRL's loss on CPU: score only the completion tokens.

TRL's ``GRPOTrainer`` patches the policy so that ``model(..., labels=labels,
fused_lm_head=True)`` returns per-token log-probs and entropies without materialising the
full logits (``trl.trainer.utils.add_fused_lm_head``). Where Triton runs (CUDA, XPU) it
projects only the positions with a label; elsewhere it projects every position of the
batch, prompt and padding included, through the vocabulary in fp32 tiles. With the ReSearch
prompt (about 370 tokens of instruction and worked example before 100-300 response tokens)
that is most of the vocabulary projection thrown away, and on 2 CPU cores it was a fifth of a
GRPO step.

:func:`install_compact_head` puts a head in front of TRL's that, on CPU, projects only the
labelled positions, in chunks of tokens (each chunk recomputed in the backward pass, so
memory holds one chunk's logits), the matmul under the caller's autocast (bf16 with
``grpo.bf16``) and the log-softmax in fp32. It returns TRL's own output type with the same
fields TRL reads (``log_probs``, ``entropy``, ``loss``, ``label_mask``), zero where the
label is -100, and hands every call it does not cover (logit soft-capping or scaling,
pre-shifted labels, MoE router losses, accelerators) to TRL's head unchanged.
"""

from __future__ import annotations

import types

import torch
from torch.utils.checkpoint import checkpoint

CHUNK_TOKENS = 512  # labelled positions projected through the vocabulary at once


def _chunk_scores(hidden: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor,
                  bias: torch.Tensor | None, temperature: float):
    """Log-prob of each target and entropy of each position's distribution, ``[n]`` each."""
    logits = torch.nn.functional.linear(hidden, weight, bias).float() / temperature
    logp = torch.log_softmax(logits, dim=-1)
    chosen = logp.gather(1, targets[:, None]).squeeze(1)
    entropy = -(logp.exp() * logp).sum(-1)
    return chosen, entropy


def labelled_scores(hidden: torch.Tensor, labels: torch.Tensor, head, temperature: float):
    """``(log_probs, entropy, mask)``, each ``[B, T]``: the log-prob of each label under the
    distribution of the hidden state at the same position (``hidden`` ``[B, T, H]``, already
    aligned with ``labels``) and that distribution's entropy, zero where the label is -100.
    Only the labelled positions go through ``head``, ``CHUNK_TOKENS`` at a time (each chunk
    recomputed in the backward pass)."""
    labels = labels.to(hidden.device)
    mask = labels != -100
    picked, targets = hidden[mask], labels[mask]
    chosen, entropy = [], []
    for start in range(0, picked.shape[0], CHUNK_TOKENS):
        part = (picked[start:start + CHUNK_TOKENS], targets[start:start + CHUNK_TOKENS],
                head.weight, head.bias, temperature)
        if torch.is_grad_enabled():
            c, e = checkpoint(_chunk_scores, *part, use_reentrant=False)
        else:
            c, e = _chunk_scores(*part)
        chosen.append(c)
        entropy.append(e)
    zeros = hidden.new_zeros(mask.shape, dtype=torch.float32)
    # masked_scatter keeps an all-masked micro-batch connected to the graph (a zero loss)
    log_probs = zeros.masked_scatter(mask, torch.cat(chosen) if chosen else zeros[mask])
    entropies = zeros.masked_scatter(mask, torch.cat(entropy) if entropy else zeros[mask])
    return log_probs, entropies, mask


def _scaled(config) -> bool:
    """Whether the model scales or soft-caps its logits (left to TRL's head)."""
    text = config.get_text_config()
    return any(getattr(text, key, None) not in (None, 1.0) for key in (
        "final_logit_softcapping", "logit_scale", "output_multiplier", "lm_head_multiplier",
        "logits_scaling"))


def install_compact_head(model, temperature: float = 1.0) -> bool:
    """Wrap ``model.forward`` (already patched by TRL's ``add_fused_lm_head``) so that
    ``fused_lm_head=True`` calls on CPU project only the labelled positions. Returns False
    (and changes nothing) when the model scales its logits or TRL's head is not installed."""
    from trl.trainer.utils import FusedCausalLMOutput

    code = getattr(getattr(model.forward, "__func__", None), "__code__", None)
    if _scaled(model.config) or code is None or "fused_lm_head" not in code.co_varnames:
        return False
    trl_forward = model.forward

    def forward(self, *args, fused_lm_head=False, labels=None, shift_labels=None,
                num_items_in_batch=None, **kwargs):
        head = self.get_output_embeddings()
        if (not fused_lm_head or shift_labels is not None or labels is None
                or kwargs.get("output_router_logits") or head.weight.device.type != "cpu"
                or getattr(self.config.get_text_config(), "output_router_logits", False)):
            return trl_forward(*args, fused_lm_head=fused_lm_head, labels=labels,
                               shift_labels=shift_labels, num_items_in_batch=num_items_in_batch,
                               **kwargs)
        kwargs["use_cache"] = False
        hidden = self.base_model(*args, **kwargs).last_hidden_state[:, :-1]
        log_probs, entropies, mask = labelled_scores(hidden, labels[:, 1:], head, temperature)
        count = mask.sum().clamp(min=1) if num_items_in_batch is None else num_items_in_batch
        return FusedCausalLMOutput(loss=-log_probs.sum() / count, log_probs=log_probs,
                                   entropy=entropies, label_mask=mask)

    model.forward = types.MethodType(forward, model)
    model.research_compact_head = True
    return True
