"""One prompt forward per group in TRL's loss, and no padding columns.

TRL's ``GRPOTrainer`` shuffles a step's trajectories into micro-batches and runs every row
through the model at the step's full width: each row carries its own copy of the prompt
(about 370-450 tokens of instruction and worked example under the ReSearch templates,
the same for the whole group), left padding to the step's longest prompt and right padding to its
longest completion. On a CPU the update's forward and backward cost in proportion to those
tokens, and on 2 cores they are most of a step once the rollout is fast.

:func:`install_shared_prompts` changes how the loss is computed, not what it computes:

* **micro-batches by group.** The step's rows are ordered by prompt (groups in their order
  of arrival, each by completion length, longest first) instead of shuffled, then split as
  TRL splits them. Only where that cannot change the gradient: one optimiser step per
  generation batch (``steps_per_generation == gradient_accumulation_steps``, one iteration)
  and a loss whose normalisation does not depend on which rows share a micro-batch (``dapo``
  and ``dr_grpo``: a constant per step; ``grpo``: the mean of equal-sized micro-batches).
  ``bnpo`` (a token mean per micro-batch) keeps TRL's shuffle.
* **the prompt once.** Within a micro-batch, the rows with the same prompt run it once: the
  prompt (all but its last token) goes through the model with a key/value cache, the cache
  is repeated for the group's rows, and the rows' last prompt token and completions attend
  to it. The gradient reaches the prompt pass through the cache, summed over the rows, as
  it does through the rows' own copies.
* **no padding columns.** The prompt is run without its left padding, and each group's
  completions only up to the group's longest; the log-probs and entropies of the dropped
  positions are zero, as TRL's head gives for positions without a label.

Positions start at 0 at the first prompt token where TRL's full-width rows start them at
the first padding column: rotary attention depends on relative positions only, so the
log-probs agree up to float rounding (``tests/test_trl_prefix.py``: values and gradients
against TRL's own pass). Calls it does not cover (multimodal inputs, MoE router losses,
gradient checkpointing, a model without the compact head of
:mod:`research.trainers.trl_head`) go to TRL's pass unchanged.
"""

from __future__ import annotations

import types

import torch

ORDER_SAFE_LOSSES = ("dapo", "dr_grpo", "grpo")


def prompt_groups(prompt_ids: torch.Tensor, prompt_mask: torch.Tensor) -> dict[tuple, list[int]]:
    """The rows of each prompt (its real tokens, padding left out), by first appearance."""
    groups: dict[tuple, list[int]] = {}
    for i in range(prompt_ids.size(0)):
        groups.setdefault(tuple(prompt_ids[i][prompt_mask[i].bool()].tolist()), []).append(i)
    return groups


def group_order(prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                completion_mask: torch.Tensor) -> list[int]:
    """The rows' order: grouped by prompt (groups by first appearance), each group by
    completion length, longest first (ties in the order given).

    >>> p = torch.tensor([[0, 7], [5, 6], [0, 7], [5, 6]])
    >>> m = (p != 0).long()
    >>> c = torch.tensor([[1, 0, 0], [1, 1, 0], [1, 1, 1], [1, 1, 1]])
    >>> group_order(p, m, c)
    [2, 0, 3, 1]
    """
    lengths = completion_mask.sum(1).tolist()
    return [i for rows in prompt_groups(prompt_ids, prompt_mask).values()
            for i in sorted(rows, key=lambda r: -lengths[r])]


def _reorder(batch: dict, order: list[int]) -> dict:
    """Every per-row value of a TRL generation batch in ``order`` (scalars and None kept)."""
    index = torch.tensor(order)
    out = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor) and value.ndim >= 1:
            out[key] = value[index.to(value.device)]
        elif isinstance(value, list | tuple):
            out[key] = [value[i] for i in order]
        else:
            out[key] = value
    return out


def orders_by_group(trainer) -> bool:
    """Whether ordering the rows by group leaves ``trainer``'s gradient as TRL's shuffle
    would (see the module's docstring)."""
    args = trainer.args
    return (trainer.loss_type in ORDER_SAFE_LOSSES and trainer.num_iterations == 1
            and args.steps_per_generation == args.gradient_accumulation_steps)


def _decoder_and_head(trainer, model):
    """The policy's decoder and output head when the shared pass covers it, else None."""
    unwrapped = trainer.accelerator.unwrap_model(model)
    base = unwrapped.get_base_model() if hasattr(unwrapped, "get_base_model") else unwrapped
    name = ("is_activation_checkpointing" if hasattr(type(base), "is_activation_checkpointing")
            else "is_gradient_checkpointing")  # transformers 5 / 4
    checkpointing = getattr(base, name, False)
    if not getattr(base, "research_compact_head", False) or checkpointing:
        return None
    return base.base_model, base.get_output_embeddings()


def shared_prompt_scores(decoder, head, temperature: float, prompt: torch.Tensor,
                         completions: torch.Tensor, completion_mask: torch.Tensor):
    """``(log_probs, entropy)``, each ``[R, W]``: the completions' (``[R, W]``, after the one
    ``prompt`` ``[P]`` of real tokens) per-token log-probs and entropies, the prompt run once."""
    from transformers import DynamicCache

    from research.rollout.backends.hf import cache_argument
    from research.trainers.trl_head import labelled_scores

    rows = completions.size(0)
    name = cache_argument(decoder)
    cache, offset = DynamicCache(config=decoder.config), prompt.numel() - 1
    if offset > 0:  # the prompt but its last token, once, cached for every row
        decoder(input_ids=prompt[None, :-1], use_cache=True, **{name: cache})
        cache.batch_repeat_interleave(rows)
    tail = torch.cat([prompt[-1:].expand(rows, 1), completions], dim=1)
    mask = torch.cat([completion_mask.new_ones(rows, offset + 1), completion_mask], dim=1)
    positions = torch.arange(offset, offset + tail.size(1), device=tail.device)
    hidden = decoder(input_ids=tail, attention_mask=mask, position_ids=positions.expand(rows, -1),
                     use_cache=True, **{name: cache}).last_hidden_state[:, :-1]
    labels = completions.masked_fill(completion_mask == 0, -100)
    log_probs, entropy, _ = labelled_scores(hidden, labels, head, temperature)
    return log_probs, entropy


def _chunk_scores(decoder, head, temperature, ids, mask, keep):
    """TRL's per-token log-probs and entropies ``[B, keep]`` of one chunk of rows, each group
    of rows with the same prompt scored by :func:`shared_prompt_scores`."""
    prompt_width = ids.size(1) - keep
    log_probs = torch.zeros(ids.size(0), keep, dtype=torch.float32, device=ids.device)
    entropy = torch.zeros_like(log_probs)
    for key, rows in prompt_groups(ids[:, :prompt_width], mask[:, :prompt_width]).items():
        index = torch.tensor(rows, device=ids.device)
        completion_mask = mask[index, prompt_width:]
        used = completion_mask.any(0).nonzero()
        width = int(used.max()) + 1 if used.numel() else 1
        lp, en = shared_prompt_scores(
            decoder, head, temperature, torch.tensor(key, dtype=ids.dtype, device=ids.device),
            ids[index, prompt_width:prompt_width + width], completion_mask[:, :width])
        # index_put keeps the rows' scores in the graph (a zero where nothing was scored)
        log_probs = log_probs.index_put((index,), torch.nn.functional.pad(lp, (0, keep - width)))
        entropy = entropy.index_put((index,), torch.nn.functional.pad(en, (0, keep - width)))
    return log_probs, entropy


def shared_prompt_logps(trainer, score):
    """A replacement for ``trainer._get_per_token_logps_and_entropies`` (TRL's, ``score``)
    that scores each group's prompt once, handing the calls it does not cover to ``score``."""

    def per_token_logps(model, input_ids, attention_mask, logits_to_keep, batch_size=None,
                        compute_entropy=False, compute_aux_loss=False, **extra):
        parts = _decoder_and_head(trainer, model)
        prompt_width = input_ids.size(1) - logits_to_keep
        if (parts is None or compute_aux_loss or prompt_width < 1
                or any(v is not None for v in extra.values())):
            return score(model, input_ids, attention_mask, logits_to_keep, batch_size,
                         compute_entropy, compute_aux_loss, **extra)
        decoder, head = parts
        batch_size = batch_size or input_ids.size(0)
        log_probs, entropies = [], []
        with trainer.accelerator.autocast():
            for start in range(0, input_ids.size(0), batch_size):
                lp, en = _chunk_scores(decoder, head, trainer.temperature,
                                       input_ids[start:start + batch_size],
                                       attention_mask[start:start + batch_size], logits_to_keep)
                log_probs.append(lp)
                entropies.append(en)
        return (torch.cat(log_probs), torch.cat(entropies) if compute_entropy else None, None)

    return per_token_logps


def grouped_prepare_inputs(prepare):
    """A replacement for a ``GRPOTrainer``'s ``_prepare_inputs`` (TRL's bound method,
    ``prepare``) that splits each generation batch into micro-batches in
    :func:`group_order` instead of shuffled, where :func:`orders_by_group` allows."""

    def prepare_inputs(self, generation_batch):
        if not self.model.training or not orders_by_group(self):
            return prepare(generation_batch)
        from trl.trainer.utils import split_tensor_dict

        every = self.args.steps_per_generation * self.num_iterations
        if self._step % every == 0 or self._buffered_inputs is None:
            batch = self._generate_and_score_completions(generation_batch)
            batch = _reorder(batch, group_order(batch["prompt_ids"], batch["prompt_mask"],
                                                batch["completion_mask"]))
            self._buffered_inputs = split_tensor_dict(batch, self.args.steps_per_generation)
        return self._buffered_inputs[self._step % self.args.steps_per_generation]

    return prepare_inputs


def install_shared_prompts(trainer) -> None:
    """Make ``trainer`` (a TRL ``GRPOTrainer``) order its micro-batches by group where that
    is safe (:func:`orders_by_group`) and score each group's prompt once (module docstring)."""
    trainer._get_per_token_logps_and_entropies = shared_prompt_logps(
        trainer, trainer._get_per_token_logps_and_entropies)
    trainer._prepare_inputs = types.MethodType(grouped_prepare_inputs(trainer._prepare_inputs),
                                               trainer)
