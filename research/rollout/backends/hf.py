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

Across turns (:meth:`HFGenerator.turns`, which the rollout loop opens): a sequence that
stopped at a stop string (``</search>``) keeps its KV cache, and the next call whose prompt
extends it (the same tokens, then the inserted result block) prefills only the new tokens,
batched with the other continuing rows. Without it every turn would prefill the whole
trajectory again. The cache is matched on the exact token ids, so a prompt that does not
extend a kept sequence is prefilled from scratch, and whatever the next call does not use is
dropped.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Sequence
from dataclasses import dataclass

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


@dataclass
class _Kept:
    """The KV cache of one sequence between turns: ``layers[i] = (keys, values)`` of layer
    ``i``, each ``[heads, len(ids), head_dim]``, for exactly the tokens ``ids``."""

    ids: tuple[int, ...]
    layers: list[tuple[torch.Tensor, torch.Tensor]]


def _plain_layers(cache) -> bool:
    """Whether every layer of ``cache`` is a plain growing key/value layer (not sliding, not
    quantised, not recurrent): only those can be cut per row and stitched back together."""
    from transformers.cache_utils import DynamicLayer

    layers = getattr(cache, "layers", None)
    return bool(layers) and all(type(layer) is DynamicLayer and layer.is_initialized
                                for layer in layers)


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
                 eos_token_ids: Sequence[int] | None = None, keep_cache: bool = True):
        """``logits_processors``: callables ``(input_ids [B, L], logits [B, V]) -> logits``
        applied before sampling (e.g. constrained decoding). ``eos_token_ids``: the ids that
        end a sequence, by default :func:`~research.rollout.generation.model_eos_ids` of the
        model; the EOS a sequence ends with is the sampled token, with its log-prob.
        ``keep_cache``: inside :meth:`turns`, keep the KV cache of sequences that stopped at
        a stop string for the next call (False: every call prefills its prompts whole)."""
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
        self.keep_cache = keep_cache
        self._kept: list[_Kept] | None = None  # inside turns(): caches for the next call
        self.prefilled = 0  # prompt tokens run through the model (the shared prefix once)
        # the KV cache argument is `cache` in recent transformers, `past_key_values` before
        params = inspect.signature(model.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"
        # a prefill needs the logits of its last position only: the vocabulary projection of
        # every other position is a quarter of a small model's prefill work, thrown away
        keep = next((a for a in ("logits_to_keep", "num_logits_to_keep") if a in params), None)
        self._last_logits = {keep: 1} if keep else {}

    @contextlib.contextmanager
    def turns(self):
        """The calls inside are the turns of one set of trajectories (the model's weights do
        not change meanwhile): a sequence that stopped at a stop string keeps its KV cache
        for the next call, which prefills only the tokens its prompt adds. Everything kept
        is dropped on exit."""
        outer = self._kept
        self._kept = [] if self.keep_cache else None
        try:
            yield self
        finally:
            self._kept = outer

    def generate(self, prompts: Sequence[Sequence[int]], params: Sequence[SamplingParams]
                 ) -> list[Generation]:
        if not check_batch(prompts, params):
            return []
        pool, keeping = self._kept or [], self._kept is not None
        if keeping:
            self._kept = []  # this call's stops; what it does not take from ``pool`` is dropped
        step = self.max_batch or len(prompts)
        out: list[Generation] = []
        for i in range(0, len(prompts), step):
            chunk = prompts[i : i + step]
            found = [self._take(pool, p) for p in chunk] if pool else [None] * len(chunk)
            out += self._generate_batch(chunk, params[i : i + step], found)
        return out

    @staticmethod
    def _take(pool: list[_Kept], prompt: Sequence[int]) -> _Kept | None:
        """Remove and return the longest kept sequence that ``prompt`` strictly extends."""
        best = None
        for j, kept in enumerate(pool):
            n = len(kept.ids)
            if n < len(prompt) and (best is None or n > len(pool[best].ids)) \
                    and tuple(prompt[:n]) == kept.ids:
                best = j
        return None if best is None else pool.pop(best)

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
                       **kv, **self._last_logits)
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
                            **kv, **self._last_logits).logits[:, -1]
        self.prefilled += shared + sum(len(p) - shared for p in prompts)
        prefix_ids = torch.tensor([prompts[0][:shared]] * len(prompts), dtype=torch.long,
                                  device=device).reshape(len(prompts), shared)
        return logits, torch.cat([prefix_ids, ids], dim=1), mask, positions[:, -1] + 1

    def _continue(self, prompts, found: list[_Kept | None], kv, device):
        """Like :meth:`_prefill` for prompts some of which extend a kept sequence: the kept
        keys and values go into the cache right-aligned (``[padding, kept]`` per row) and
        only each prompt's new tokens are run through the model (``[padding, new]``), every
        row at its own positions. A row with nothing kept prefills its whole prompt."""
        cache = kv[self._cache_arg]
        lengths = [0 if k is None else len(k.ids) for k in found]
        held = max(lengths)
        news = [p[n:] for p, n in zip(prompts, lengths, strict=True)]
        width = max(len(n) for n in news)
        rows = len(prompts)
        ids = torch.full((rows, held + width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((rows, held + width), dtype=torch.long)
        for i, (kept, new) in enumerate(zip(found, news, strict=True)):
            if kept is not None:
                ids[i, held - len(kept.ids):held] = torch.tensor(kept.ids, dtype=torch.long)
                mask[i, held - len(kept.ids):held] = 1
            ids[i, held + width - len(new):] = torch.tensor(new, dtype=torch.long)
            mask[i, held + width - len(new):] = 1
        ids, mask = ids.to(device), mask.to(device)
        some = next(k for k in found if k is not None)
        for layer, (k0, v0) in enumerate(some.layers):
            keys = k0.new_zeros((rows, *k0.shape[:1], held, k0.shape[-1]))
            values = v0.new_zeros((rows, *v0.shape[:1], held, v0.shape[-1]))
            for i, kept in enumerate(found):
                if kept is not None:
                    k, v = kept.layers[layer]
                    keys[i, :, held - k.shape[1]:] = k
                    values[i, :, held - v.shape[1]:] = v
            cache.update(keys, values, layer)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, held:]
        logits = self.model(input_ids=ids[:, held:], attention_mask=mask,
                            position_ids=positions, **kv, **self._last_logits).logits[:, -1]
        self.prefilled += sum(len(n) for n in news)
        return logits, ids, mask, positions[:, -1] + 1

    def _keep(self, cache, mask, row: _Row, j: int, prompt) -> None:
        """Keep row ``j``'s KV cache (every position its mask holds) for the next call."""
        if self._kept is None or row.finish != "stop" or not _plain_layers(cache):
            return
        held = mask[j].bool()
        layers = [(layer.keys[j][:, held], layer.values[j][:, held]) for layer in cache.layers]
        ids = tuple(prompt) + tuple(row.tokens[:-1])  # the last token was never fed
        if layers[0][0].shape[1] == len(ids):
            self._kept.append(_Kept(ids, layers))

    def _generate_batch(self, prompts, params, found=None) -> list[Generation]:
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
            if found and any(k is not None for k in found):
                logits, seqs, mask, next_pos = self._continue(prompts, found, kv, device)
            else:
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
                for j, (row, t, lp) in enumerate(zip(active, tok.tolist(), chosen.tolist(),
                                                     strict=True)):
                    row.tokens.append(t)
                    row.logprobs.append(lp)
                    self._check_row(row)
                    if row.finish is not None:
                        self._keep(cache, mask, row, j, prompts[row.index])
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
