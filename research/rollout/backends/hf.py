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

Across turns, continuously (:meth:`HFGenerator.generate_continuous`, which the rollout loop
uses): a row that ends its turn leaves the batch, the rollout searches for it (with every other
row that ended at the same step) and hands back its next turn, which joins the running batch at
once: only the inserted result block is prefilled, against the row's kept KV cache, while the
other rows keep decoding. No row waits for the longest row of its turn, so a batch of
trajectories decodes about as often as its longest trajectory has tokens, not as the sum of
each turn's longest. Rows sit right-aligned in one cache with padding masked; joining pads the
narrower of the two batches on the left, and positions no row holds any more are dropped.

Turn by turn (:meth:`HFGenerator.turns`, for a caller that calls :meth:`~HFGenerator.generate`
once per turn): a sequence that stopped at a stop string (``</search>``) keeps its KV cache,
and the next call whose prompt extends it (the same tokens, then the inserted result block)
prefills only the new tokens, batched with the other continuing rows. The cache is matched on
the exact token ids, so a prompt that does not extend a kept sequence is prefilled from
scratch, and whatever the next call does not use is dropped.

Logits processors see the rows being sampled at that moment, ``input_ids [B, L]``
right-aligned: a row's own sequence, not its place in the caller's batch.
"""

from __future__ import annotations

import collections
import contextlib
import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch

from research.rollout.generation import (
    FirstTurns,
    Generation,
    NextTurn,
    SamplingParams,
    check_batch,
    model_eos_ids,
    stop_in_tail,
)
from research.rollout.sampling import sampling_logprobs


class _Row:
    """Decoding state of one sequence."""

    __slots__ = ("params", "tokens", "logprobs", "finish", "stop")

    def __init__(self, params: SamplingParams):
        self.params = params
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

    def extended_by(self, ids: Sequence[int]) -> bool:
        """Whether ``ids`` are these tokens and at least one more."""
        n = len(self.ids)
        return len(ids) > n and tuple(ids[:n]) == self.ids


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


def cache_argument(model) -> str:
    """The name of ``model.forward``'s KV cache argument: ``cache`` in recent transformers,
    ``past_key_values`` before."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else (
        "past_key_values")


class HFGenerator:
    """Generates with a Hugging Face causal LM. One call shares temperature and top-p;
    budgets and stop strings are per sequence."""

    def __init__(self, model, tokenizer, max_batch: int | None = None, logits_processors=(),
                 eos_token_ids: Sequence[int] | None = None, keep_cache: bool = True,
                 continuous: bool = True):
        """``logits_processors``: callables ``(input_ids [B, L], logits [B, V]) -> logits``
        applied before sampling (e.g. constrained decoding). ``eos_token_ids``: the ids that
        end a sequence, by default :func:`~research.rollout.generation.model_eos_ids` of the
        model; the EOS a sequence ends with is the sampled token, with its log-prob.
        ``keep_cache``: inside :meth:`turns`, keep the KV cache of sequences that stopped at
        a stop string for the next call (False: every call prefills its prompts whole).
        ``continuous``: offer :meth:`generate_continuous`, which the rollout loop then uses
        (False: the loop runs turn by turn through :meth:`generate`)."""
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
        self.continuous = continuous
        self._kept: list[_Kept] | None = None  # inside turns(): caches for the next call
        self.prefilled = 0  # prompt tokens run through the model (the shared prefix once)
        params = inspect.signature(model.forward).parameters
        self._cache_arg = cache_argument(model)
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
        collect = FirstTurns(len(prompts))
        entries = [_Entry(i, list(p), q, self._take(pool, p) if pool else None)
                   for i, (p, q) in enumerate(zip(prompts, params, strict=True))]
        self._decode(entries, collect)
        return collect.generations

    def generate_continuous(self, prompts: Sequence[Sequence[int]],
                            params: Sequence[SamplingParams], next_turn: NextTurn) -> None:
        """Continuous batching across turns: generate every prompt; whenever sequences end
        (EOS, a stop string, their budget), ``next_turn`` gets them, ``[(index, Generation)]``
        of all those that ended at the same step, and answers for each either None (done) or
        ``(token_ids, params)``: its next turn, usually everything it holds plus an inserted
        result block. That turn joins the running batch at once, its KV cache kept, only the
        new tokens prefilled, while the other sequences go on decoding; nothing waits for a
        batch's longest sequence. A next turn that does not extend what the sequence holds is
        prefilled whole. With ``max_batch``, at most that many sequences run at once and the
        prompts not yet started join as others finish."""
        if check_batch(prompts, params):
            self._decode([_Entry(i, list(p), q, None)
                          for i, (p, q) in enumerate(zip(prompts, params, strict=True))],
                         next_turn)

    @staticmethod
    def _take(pool: list[_Kept], prompt: Sequence[int]) -> _Kept | None:
        """Remove and return the longest kept sequence that ``prompt`` strictly extends."""
        best = None
        for j, kept in enumerate(pool):
            if (best is None or len(kept.ids) > len(pool[best].ids)) and kept.extended_by(prompt):
                best = j
        return None if best is None else pool.pop(best)

    def _check_row(self, row: _Row) -> None:
        """Set ``row.finish`` if its last token ended it."""
        p = row.params
        if row.tokens[-1] in self.eos_token_ids:
            row.finish = "eos"
            return
        if p.stop:
            hit = stop_in_tail(self.tokenizer, row.tokens, p.stop)
            if hit is not None:
                row.finish, row.stop = "stop", hit
                return
        if len(row.tokens) >= p.max_new_tokens:
            row.finish = "length"

    def _prefill(self, entries: list[_Entry], device) -> tuple[_Batch, torch.Tensor]:
        """Run the entries' ids through the model, the prefix they all share only once.

        Returns the batch (its cache, the attention mask ``[B, L]``, 0 on padding, which
        sits between the shared prefix and each suffix) and the last logits ``[B, V]``.
        """
        prompts = [e.ids for e in entries]
        cache = self._new_cache()
        kv = {self._cache_arg: cache, "use_cache": True}
        shared = _common_prefix(prompts)
        if len(prompts) < 2 or shared < 16:
            shared = 0
        if shared:  # one row for the shared prefix, then the cache is repeated for each row
            prefix = torch.tensor([prompts[0][:shared]], device=device)
            self.model(input_ids=prefix, position_ids=torch.arange(shared, device=device)[None],
                       **kv, **self._last_logits)
            cache.batch_repeat_interleave(len(prompts))
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
        return _Batch(_lives(entries), cache, mask, torch.cat([prefix_ids, ids], dim=1),
                      positions[:, -1] + 1), logits

    def _continue(self, entries: list[_Entry], device) -> tuple[_Batch, torch.Tensor]:
        """Like :meth:`_prefill` for entries some of which extend a kept sequence: the kept
        keys and values go into the cache right-aligned (``[padding, kept]`` per row) and
        only each entry's new tokens are run through the model (``[padding, new]``), every
        row at its own positions. A row with nothing kept prefills its whole ids."""
        cache = self._new_cache()
        found = [e.kept for e in entries]
        lengths = [0 if k is None else len(k.ids) for k in found]
        held = max(lengths)
        news = [e.ids[n:] for e, n in zip(entries, lengths, strict=True)]
        width = max(len(n) for n in news)
        rows = len(entries)
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
                            position_ids=positions, **{self._cache_arg: cache},
                            use_cache=True, **self._last_logits).logits[:, -1]
        self.prefilled += sum(len(n) for n in news)
        return _Batch(_lives(entries), cache, mask, ids, positions[:, -1] + 1), logits

    def _new_cache(self):
        from transformers import DynamicCache

        return DynamicCache(config=self.model.config)

    def _join(self, entries: list[_Entry], device) -> tuple[_Batch, torch.Tensor]:
        """Prefill what each entry adds to its kept cache (all of it when nothing is kept)."""
        if any(e.kept is not None for e in entries):
            return self._continue(entries, device)
        return self._prefill(entries, device)

    def _sample(self, batch: _Batch, logits, temperature: float, top_p: float, rng
                ) -> list[int]:
        """Sample each row's next token (it becomes the row's pending token, fed at the next
        step); returns the rows that ended with it."""
        for proc in self.logits_processors:
            logits = proc(batch.seqs, logits)
        logp = sampling_logprobs(logits, temperature, top_p)  # [b, V]
        if temperature == 0:
            tok = logp.argmax(-1)
        else:
            tok = torch.multinomial(logp.exp(), 1, generator=rng).squeeze(1)
        chosen = logp.gather(1, tok[:, None]).squeeze(1)
        if self.on_step is not None:
            self.on_step(len(batch.rows))
        batch.pending = tok
        ended = []
        for j, (live, t, lp) in enumerate(zip(batch.rows, tok.tolist(), chosen.tolist(),
                                              strict=True)):
            live.row.tokens.append(t)
            live.row.logprobs.append(lp)
            self._check_row(live.row)
            if live.row.finish is not None:
                ended.append(j)
        return ended

    def _step(self, batch: _Batch) -> torch.Tensor:
        """Feed every row its pending token; the next logits ``[B, V]``."""
        tok = batch.pending
        batch.mask = torch.cat([batch.mask, torch.ones_like(tok)[:, None]], dim=1)
        batch.seqs = torch.cat([batch.seqs, tok[:, None]], dim=1)
        logits = self.model(input_ids=tok[:, None], attention_mask=batch.mask,
                            position_ids=batch.pos[:, None], **{self._cache_arg: batch.cache},
                            use_cache=True).logits[:, -1]
        batch.pos = batch.pos + 1
        for live, t in zip(batch.rows, tok.tolist(), strict=True):
            live.held.append(t)
        return logits

    def _cut(self, batch: _Batch, j: int) -> _Kept | None:
        """Row ``j``'s KV cache (every position its mask holds), to continue it later."""
        held = batch.mask[j].bool()
        layers = [(layer.keys[j][:, held], layer.values[j][:, held])
                  for layer in batch.cache.layers]
        ids = tuple(batch.rows[j].held)  # the token sampled last was never fed
        return _Kept(ids, layers) if layers[0][0].shape[1] == len(ids) else None

    def _decode(self, entries: list[_Entry], next_turn: NextTurn) -> None:
        """The decode loop of every call: a running batch, entries joining it (prefilled,
        their first token sampled), rows leaving it as they end, their next turns (from
        ``next_turn``) joining again. A cache that cannot be cut per row (sliding-window or
        quantised layers) runs turn by turn: what waits joins only when the batch is empty."""
        device = next(self.model.parameters()).device
        modes = {(e.params.temperature, e.params.top_p) for e in entries}
        if len(modes) != 1:
            raise ValueError("one batch must share temperature and top_p")
        temperature, top_p = mode = modes.pop()
        seeds = [e.params.seed for e in entries if e.params.seed is not None]
        rng = torch.Generator(device).manual_seed(seeds[0]) if seeds else None
        limit = self.max_batch or len(entries)
        waiting = collections.deque(entries)
        batch: _Batch | None = None
        cuttable = True
        with torch.inference_mode():
            while waiting or batch is not None:
                if waiting and (batch is None or (cuttable and len(batch.rows) < limit)):
                    room = limit - (0 if batch is None else len(batch.rows))
                    joining = [waiting.popleft() for _ in range(min(room, len(waiting)))]
                    new, logits = self._join(joining, device)
                    cuttable = cuttable and _plain_layers(new.cache)
                    ended = self._sample(new, logits, temperature, top_p, rng)
                    new = self._leave(new, ended, waiting, next_turn, mode, cuttable)
                    batch = new if batch is None else batch.merge(new, self.pad_token_id)
                    continue
                logits = self._step(batch)
                ended = self._sample(batch, logits, temperature, top_p, rng)
                batch = self._leave(batch, ended, waiting, next_turn, mode, cuttable)

    def _leave(self, batch: _Batch, ended: list[int], waiting, next_turn: NextTurn, mode,
               cuttable: bool) -> _Batch | None:
        """Rows ``ended`` leave ``batch``; ``next_turn`` hears them, and the next turns it
        asks for go to the front of ``waiting`` (kept caches with them). Returns what is
        left of the batch (None when nothing)."""
        if not ended:
            return batch
        lives = [batch.rows[j] for j in ended]
        nexts = next_turn([(live.index, live.row.generation()) for live in lives])
        if len(nexts) != len(lives):
            raise ValueError(f"next_turn answered {len(nexts)} times for {len(lives)} "
                             "sequences")
        again = []
        for j, live, nxt in zip(ended, lives, nexts, strict=True):
            keep = cuttable and live.row.finish == "stop" and (
                nxt is not None or self._kept is not None)
            kept = self._cut(batch, j) if keep else None
            if nxt is None:
                if kept is not None:
                    self._kept.append(kept)
                continue
            ids, params = list(nxt[0]), nxt[1]
            if (params.temperature, params.top_p) != mode:
                raise ValueError("every turn of a batch must share temperature and top_p")
            if kept is not None and not kept.extended_by(ids):
                kept = None  # not an extension of what the row holds: prefilled whole
            again.append(_Entry(live.index, ids, params, kept))
        waiting.extendleft(reversed(again))
        gone = set(ended)
        return batch.select([j for j in range(len(batch.rows)) if j not in gone])


class _Entry(NamedTuple):
    """A sequence waiting to join the running batch: everything it holds (``ids``), how to
    sample it, and the KV cache kept for a prefix of ``ids`` (None: prefill all of them)."""

    index: int  # the caller's index of the sequence
    ids: list[int]
    params: SamplingParams
    kept: _Kept | None


@dataclass
class _Live:
    """A row of the running batch: the caller's index, the generation it is in, and every
    token its KV cache holds (the pending token not yet)."""

    index: int
    row: _Row
    held: list[int]


def _lives(entries: list[_Entry]) -> list[_Live]:
    """The rows of entries just prefilled: a new generation each, holding all their ids."""
    return [_Live(e.index, _Row(e.params), list(e.ids)) for e in entries]


class _Batch:
    """The running batch of the decode loop. Rows are right-aligned in the KV cache with
    padding (mask 0) where a row holds nothing; ``pos`` is each row's next position and
    ``pending`` the token each row sampled last, fed at the next step."""

    def __init__(self, rows: list[_Live], cache, mask: torch.Tensor, seqs: torch.Tensor,
                 pos: torch.Tensor):
        self.rows, self.cache, self.mask, self.seqs, self.pos = rows, cache, mask, seqs, pos
        self.pending: torch.Tensor | None = None

    def select(self, keep: list[int]) -> _Batch | None:
        """The rows ``keep`` only (None when empty); positions no row holds any more are
        dropped once they are a quarter of the cache."""
        if not keep:
            return None
        if len(keep) < len(self.rows):
            index = torch.tensor(keep, device=self.mask.device)
            self.cache.batch_select_indices(index)
            self.mask, self.seqs = self.mask[index], self.seqs[index]
            self.pos, self.pending = self.pos[index], self.pending[index]
            self.rows = [self.rows[j] for j in keep]
        used = self.mask.any(0)
        if int(used.sum()) * 4 < 3 * used.numel() and _plain_layers(self.cache):
            cols = used.nonzero().squeeze(1)
            for layer in self.cache.layers:
                layer.keys, layer.values = layer.keys[:, :, cols], layer.values[:, :, cols]
            self.mask, self.seqs = self.mask[:, cols], self.seqs[:, cols]
        return self

    def merge(self, other: _Batch | None, pad_id: int) -> _Batch:
        """This batch with ``other``'s rows after its own, both left-padded to one width."""
        if other is None:
            return self
        width = max(self.mask.shape[1], other.mask.shape[1])

        def cat(a, b, value=0):  # along the batch, each padded on the left of its positions
            pad = lambda t: torch.nn.functional.pad(  # noqa: E731
                t, (width - t.shape[1], 0) if t.dim() == 2 else
                (0, 0, width - t.shape[2], 0), value=value)
            return torch.cat([pad(a), pad(b)], dim=0)

        for mine, theirs in zip(self.cache.layers, other.cache.layers, strict=True):
            mine.keys, mine.values = cat(mine.keys, theirs.keys), cat(mine.values, theirs.values)
        self.mask = cat(self.mask, other.mask)
        self.seqs = cat(self.seqs, other.seqs, value=pad_id)
        self.pos = torch.cat([self.pos, other.pos])
        self.pending = torch.cat([self.pending, other.pending])
        self.rows = self.rows + other.rows
        return self
