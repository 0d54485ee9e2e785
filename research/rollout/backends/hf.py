"""Hugging Face ``generate`` backend: batched, KV cache, per-sequence stop strings and budgets.

Log-probabilities are captured during generation by a logits processor that also applies
temperature and top-p itself (so what it records is the distribution actually sampled from);
only one ``[B, V]`` array is held at a time. A stopping criterion records, per sequence, the
step at which a stop string was completed or its own token budget ran out.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from research.rollout.generation import Generation, SamplingParams, check_batch


class _SamplingProcessor:
    """Applies temperature / top-p and records the log-prob of each sampled token."""

    def __init__(self, temperature: float, top_p: float):
        self.temperature = temperature if temperature > 0 else 1.0
        self.top_p = top_p
        self.prev: torch.Tensor | None = None  # [B, V] log-probs of the previous step
        self.steps: list[torch.Tensor] = []  # per step: [B] log-prob of the sampled token

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.prev is not None:
            self.record(input_ids[:, -1])
        logits = scores.float() / self.temperature
        if self.top_p < 1.0:
            logits = _top_p_filter(logits, self.top_p)
        self.prev = torch.log_softmax(logits, dim=-1)  # [B, V]
        return self.prev

    def record(self, sampled: torch.Tensor) -> None:
        self.steps.append(self.prev.gather(1, sampled[:, None]).squeeze(1))
        self.prev = None


def _top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
    probs = torch.softmax(sorted_logits, dim=-1)
    drop = probs.cumsum(dim=-1) - probs > top_p  # keep the smallest prefix reaching top_p
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.full_like(logits, float("-inf")).scatter(1, order, sorted_logits)


class _StopTracker:
    """Marks a sequence done when a stop string completes or its budget is spent."""

    def __init__(self, tokenizer, prompt_len: int, params: Sequence[SamplingParams]):
        self.tokenizer = tokenizer
        self.prompt_len = prompt_len
        self.params = params
        self.stopped_at: list[int | None] = [None] * len(params)  # new-token count at stop
        self.matched: list[str | None] = [None] * len(params)
        self.window = 2 + max((len(s) for p in params for s in p.stop), default=0)

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        n_new = input_ids.shape[1] - self.prompt_len
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        for i, p in enumerate(self.params):
            if self.stopped_at[i] is not None:
                done[i] = True
                continue
            if p.stop:
                tail = self.tokenizer.decode(input_ids[i, -min(n_new, self.window):].tolist())
                hit = next((s for s in p.stop if s in tail), None)
                if hit is not None:
                    self.stopped_at[i], self.matched[i] = n_new, hit
            if self.stopped_at[i] is None and n_new >= p.max_new_tokens:
                self.stopped_at[i] = n_new
            done[i] = self.stopped_at[i] is not None
        return done


class HFGenerator:
    """Generates with a Hugging Face causal LM. Greedy and sampled sequences may not be mixed
    in one call (one decoding mode per batch)."""

    def __init__(self, model, tokenizer, max_batch: int | None = None, logits_processors=()):
        """``logits_processors`` run before sampling (e.g. constrained decoding)."""
        self.model = model
        self.logits_processors = list(logits_processors)
        self.tokenizer = tokenizer
        eos = getattr(model.generation_config, "eos_token_id", None) or tokenizer.eos_token_id
        eos = eos if isinstance(eos, list) else [eos]
        self.eos_token_ids = frozenset(int(e) for e in eos if e is not None)
        pad = tokenizer.pad_token_id
        self.pad_token_id = int(pad if pad is not None else min(self.eos_token_ids))
        self.max_batch = max_batch

    def generate(self, prompts: Sequence[Sequence[int]], params: Sequence[SamplingParams]
                 ) -> list[Generation]:
        if not check_batch(prompts, params):
            return []
        step = self.max_batch or len(prompts)
        out: list[Generation] = []
        for i in range(0, len(prompts), step):
            out += self._generate_batch(prompts[i : i + step], params[i : i + step])
        return out

    def _generate_batch(self, prompts, params) -> list[Generation]:
        modes = {(p.temperature, p.top_p, p.greedy) for p in params}
        if len(modes) != 1:
            raise ValueError("one batch must share temperature and top_p")
        temperature, top_p, greedy = modes.pop()
        device = next(self.model.parameters()).device
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, prompt in enumerate(prompts):  # left padding
            ids[row, width - len(prompt):] = torch.tensor(prompt, dtype=torch.long)
            mask[row, width - len(prompt):] = 1
        sampler = _SamplingProcessor(temperature, top_p)
        tracker = _StopTracker(self.tokenizer, width, params)
        seeds = {p.seed for p in params if p.seed is not None}
        if seeds:
            torch.manual_seed(min(seeds))
        with torch.inference_mode():
            seqs = self.model.generate(
                input_ids=ids.to(device), attention_mask=mask.to(device),
                max_new_tokens=max(p.max_new_tokens for p in params),
                do_sample=not greedy, temperature=None, top_p=None, top_k=None,
                logits_processor=[*self.logits_processors, sampler],
                stopping_criteria=[tracker],
                pad_token_id=self.pad_token_id, eos_token_id=sorted(self.eos_token_ids),
            )
        sampler.record(seqs[:, -1])
        logprobs = torch.stack(sampler.steps, dim=1).cpu()  # [B, T]
        new = seqs[:, width:].cpu()  # [B, T]
        return [self._one(new[i].tolist(), logprobs[i].tolist(), params[i], tracker, i)
                for i in range(len(prompts))]

    def _one(self, tokens, logprobs, p: SamplingParams, tracker: _StopTracker, i: int):
        cut = tracker.stopped_at[i] if tracker.stopped_at[i] is not None else len(tokens)
        for j, t in enumerate(tokens[:cut]):
            if t in self.eos_token_ids:
                return Generation(tokens[: j + 1], logprobs[: j + 1], "eos")
        if tracker.matched[i] is not None:
            return Generation(tokens[:cut], logprobs[:cut], "stop", tracker.matched[i])
        cut = min(cut, p.max_new_tokens)
        return Generation(tokens[:cut], logprobs[:cut], "length")
