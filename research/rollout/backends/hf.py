"""Hugging Face backend: batched decoding with a KV cache that drops finished sequences.

``model.generate`` keeps every row of a batch until the longest one ends, so a batch whose
lengths differ (search turns always do) spends most steps on padding. This backend runs its
own decode loop over the model's forward with a ``DynamicCache``: one prefill of the
left-padded batch, then one token per step for the rows still active; a row that reaches
EOS, completes a stop string or spends its own budget leaves the batch (and the cache) at
once. Temperature and top-p are applied here, so the recorded log-probs are those of the
distribution actually sampled from. A row ends at the first id of the model's EOS set
(:func:`~research.rollout.generation.model_eos_ids`); that EOS is the sampled token, kept with
its log-prob.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch

from research.rollout.generation import Generation, SamplingParams, check_batch, model_eos_ids


def _top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose probability reaches ``top_p``."""
    sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
    probs = torch.softmax(sorted_logits, dim=-1)
    drop = probs.cumsum(dim=-1) - probs > top_p
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.full_like(logits, float("-inf")).scatter(1, order, sorted_logits)


def sampling_logprobs(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """Log-probs of the distribution sampled from (greedy: the model's own). ``[B, V]``."""
    logits = logits.float() / (temperature if temperature > 0 else 1.0)
    if top_p < 1.0:
        logits = _top_p_filter(logits, top_p)
    return torch.log_softmax(logits, dim=-1)


class _Row:
    """Decoding state of one sequence."""

    __slots__ = ("index", "params", "tokens", "logprobs", "finish", "stop")

    def __init__(self, index: int, params: SamplingParams):
        self.index, self.params = index, params
        self.tokens: list[int] = []
        self.logprobs: list[float] = []
        self.finish: str | None = None
        self.stop: str | None = None

    def generation(self) -> Generation:
        return Generation(self.tokens, self.logprobs, self.finish, self.stop)


def _common_prefix(prompts: Sequence[Sequence[int]]) -> int:
    """Length of the prefix all prompts share, leaving each at least one token of its own."""
    first = prompts[0]
    n = min(len(p) for p in prompts) - 1
    for other in prompts[1:]:
        n = next((i for i in range(n) if other[i] != first[i]), n)
    return max(n, 0)


class HFGenerator:
    """Generates with a Hugging Face causal LM. One call shares temperature and top-p;
    budgets and stop strings are per sequence."""

    def __init__(self, model, tokenizer, max_batch: int | None = None, logits_processors=(),
                 eos_token_ids: Sequence[int] | None = None):
        """``logits_processors``: callables ``(input_ids [B, L], logits [B, V]) -> logits``
        applied before sampling (e.g. constrained decoding). ``eos_token_ids``: the ids that
        end a sequence, by default :func:`~research.rollout.generation.model_eos_ids` of the
        model; the EOS a sequence ends with is the sampled token, with its log-prob."""
        self.model = model
        self.tokenizer = tokenizer
        self.logits_processors = list(logits_processors)
        if eos_token_ids is None:
            eos_token_ids = model_eos_ids(model, tokenizer)
        self.eos_token_ids = frozenset(int(e) for e in eos_token_ids)
        if not self.eos_token_ids:
            raise ValueError("no EOS id: the tokenizer has no eos_token_id and the model's "
                             "generation config none; pass eos_token_ids")
        pad = tokenizer.pad_token_id
        self.pad_token_id = int(pad if pad is not None else min(self.eos_token_ids))
        self.max_batch = max_batch
        self.on_step = None  # a callable told how many tokens each decode step sampled
        # the KV cache argument is `cache` in recent transformers, `past_key_values` before
        params = inspect.signature(model.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"

    def generate(self, prompts: Sequence[Sequence[int]], params: Sequence[SamplingParams]
                 ) -> list[Generation]:
        if not check_batch(prompts, params):
            return []
        step = self.max_batch or len(prompts)
        out: list[Generation] = []
        for i in range(0, len(prompts), step):
            out += self._generate_batch(prompts[i : i + step], params[i : i + step])
        return out

    def _check_row(self, row: _Row) -> None:
        """Set ``row.finish`` if its last token ended it."""
        p = row.params
        if row.tokens[-1] in self.eos_token_ids:
            row.finish = "eos"
            return
        if p.stop:
            window = 2 + max(len(s) for s in p.stop)
            tail = self.tokenizer.decode(row.tokens[-window:])
            hit = next((s for s in p.stop if s in tail), None)
            if hit is not None:
                row.finish, row.stop = "stop", hit
                return
        if len(row.tokens) >= p.max_new_tokens:
            row.finish = "length"

    def _prefill(self, prompts, kv, device):
        """Run the prompts through the model, the prefix they all share only once.

        Returns the last logits ``[B, V]``, the full ids ``[B, L]``, the attention mask
        ``[B, L]`` (0 on padding, which sits between the shared prefix and each suffix) and
        the next position of each row ``[B]``.
        """
        shared = _common_prefix(prompts)
        if len(prompts) < 2 or shared < 16:
            shared = 0
        if shared:  # one row for the shared prefix, then the cache is repeated for each row
            prefix = torch.tensor([prompts[0][:shared]], device=device)
            self.model(input_ids=prefix, position_ids=torch.arange(shared, device=device)[None],
                       **kv)
            kv[self._cache_arg].batch_repeat_interleave(len(prompts))
        width = max(len(p) for p in prompts) - shared
        ids = torch.full((len(prompts), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), shared + width), dtype=torch.long)
        mask[:, :shared] = 1
        for i, prompt in enumerate(prompts):  # each suffix left-padded after the prefix
            suffix = prompt[shared:]
            ids[i, width - len(suffix):] = torch.tensor(suffix, dtype=torch.long)
            mask[i, shared + width - len(suffix):] = 1
        ids, mask = ids.to(device), mask.to(device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, shared:]  # [B, width]
        logits = self.model(input_ids=ids, attention_mask=mask, position_ids=positions,
                            **kv).logits[:, -1]
        prefix_ids = torch.tensor([prompts[0][:shared]] * len(prompts), dtype=torch.long,
                                  device=device).reshape(len(prompts), shared)
        return logits, torch.cat([prefix_ids, ids], dim=1), mask, positions[:, -1] + 1

    def _generate_batch(self, prompts, params) -> list[Generation]:
        modes = {(p.temperature, p.top_p) for p in params}
        if len(modes) != 1:
            raise ValueError("one batch must share temperature and top_p")
        temperature, top_p = modes.pop()
        from transformers import DynamicCache

        device = next(self.model.parameters()).device
        seeds = [p.seed for p in params if p.seed is not None]
        rng = torch.Generator(device).manual_seed(seeds[0]) if seeds else None
        rows = [_Row(i, p) for i, p in enumerate(params)]
        cache = DynamicCache(config=self.model.config)
        kv = {self._cache_arg: cache, "use_cache": True}
        with torch.inference_mode():
            logits, seqs, mask, next_pos = self._prefill(prompts, kv, device)
            active = rows
            while True:
                for proc in self.logits_processors:
                    logits = proc(seqs, logits)
                logp = sampling_logprobs(logits, temperature, top_p)  # [b, V]
                if temperature == 0:
                    tok = logp.argmax(-1)
                else:
                    tok = torch.multinomial(logp.exp(), 1, generator=rng).squeeze(1)
                chosen = logp.gather(1, tok[:, None]).squeeze(1)
                if self.on_step is not None:
                    self.on_step(len(active))
                for row, t, lp in zip(active, tok.tolist(), chosen.tolist(), strict=True):
                    row.tokens.append(t)
                    row.logprobs.append(lp)
                    self._check_row(row)
                keep = [j for j, row in enumerate(active) if row.finish is None]
                if not keep:
                    break
                seqs = torch.cat([seqs, tok[:, None]], dim=1)
                mask = torch.cat([mask, torch.ones_like(tok)[:, None]], dim=1)
                if len(keep) < len(active):  # finished rows leave the batch and the cache
                    index = torch.tensor(keep, device=device)
                    cache.batch_select_indices(index)
                    seqs, mask, tok = seqs[index], mask[index], tok[index]
                    next_pos = next_pos[index]
                    active = [active[j] for j in keep]
                logits = self.model(input_ids=tok[:, None], attention_mask=mask,
                                    position_ids=next_pos[:, None], **kv).logits[:, -1]
                next_pos = next_pos + 1
        return [row.generation() for row in rows]
