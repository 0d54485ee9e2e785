"""Rollout benchmark: search rollouts vs plain batched generation vs one sample at a time.

    python benchmarks/rollout.py --model qwen2.5-0.5b --prompts 16

All three sides use the same Hugging Face backend, model, thread count and prompts
(``squad-open-mini`` dev questions in the base template with the worked example, which the
0.5B model follows; the 135M one never searches, with or without it), against the real
retrieval service on loopback:

* ``search``: the project's rollout, all sequences of the batch generating together per turn;
* ``plain``: one batched ``generate`` call producing the same number of model tokens per
  sequence (the same lengths, no stop strings, no searches): the cost floor;
* ``sequential``: the original's loop, one sample at a time through the same state machine.

Reported: model-generated tokens per second of each, searches per trajectory, and the ratios
the project tracks: search overhead vs plain (target <= 15%) and speed-up over sequential
(target >= 5x).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch


def _setup(args):
    from research.data.questions import load_questions
    from research.models.loading import load_model
    from research.rollout.prompts import encode_prompt

    torch.set_num_threads(args.threads)
    model, tok = load_model(args.model, args.dtype)
    questions = [q["question"] for q in load_questions("squad-open-mini", "dev", args.prompts)]
    return model, tok, [encode_prompt(tok, q, args.template, example=args.example)
                        for q in questions]


def _rollout(gen, client, tok, prompts, config):
    from research.rollout.engine import run_rollouts

    t0 = time.perf_counter()
    out = run_rollouts(prompts, gen, client, tok, config)
    return out, time.perf_counter() - t0


def _plain(model, tok, prompts, lengths, seed):
    """One batched generate giving each sequence exactly ``lengths[i]`` new tokens: the same
    backend, the same per-sequence budgets, no stop string, no search, no early EOS."""
    from research.rollout.backends.hf import HFGenerator
    from research.rollout.generation import SamplingParams

    gen = HFGenerator(model, tok)
    gen.eos_token_ids = frozenset({model.config.vocab_size})  # an id never sampled
    params = [SamplingParams(max(1, n), temperature=1.0, seed=seed) for n in lengths]
    t0 = time.perf_counter()
    out = gen.generate(prompts, params)
    return sum(len(g.token_ids) for g in out), time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="qwen2.5-0.5b")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--template", choices=("base", "chat"), default="base")
    ap.add_argument("--example", action=argparse.BooleanOptionalAction, default=True,
                    help="worked example in the base prompt, so that small models search")
    ap.add_argument("--max-response-tokens", type=int, default=512)
    ap.add_argument("--max-turns", type=int, default=3)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="benchmarks/results/rollout.json")
    args = ap.parse_args()

    from research.paths import cache_root
    from research.retrieval.client import SearchClient
    from research.rollout.backends.hf import HFGenerator
    from research.rollout.settings import RolloutSettings
    from research.serving.launch import running_service

    model, tok, prompts = _setup(args)
    work = cache_root() / "bench"
    work.mkdir(parents=True, exist_ok=True)
    cfg = work / "rollout-serving.yaml"
    cfg.write_text("retriever:\n  embedded: squad-open-mini\n")
    config = RolloutSettings(max_response_tokens=args.max_response_tokens,
                             max_turns=args.max_turns, temperature=1.0, seed=args.seed)
    with running_service(cfg, work / "rollout-service.log") as service, \
            SearchClient(service.url) as client:
        gen = HFGenerator(model, tok)
        torch.manual_seed(args.seed)
        batch, t_batch = _rollout(gen, client, tok, prompts, config)
        lengths = [sum(t.loss_mask) for t in batch]
        n_plain, t_plain = _plain(model, tok, prompts, lengths, args.seed)
        torch.manual_seed(args.seed)
        seq_tokens, t_seq = 0, 0.0
        for p in prompts:
            (t,), dt = _rollout(gen, client, tok, [p], config)
            seq_tokens += sum(t.loss_mask)
            t_seq += dt
    model_tokens = sum(lengths)
    result = {
        "meta": {"model": args.model, "prompts": args.prompts, "threads": args.threads,
                 "dtype": args.dtype, "template": args.template, "cpu_count": os.cpu_count(),
                 "date": time.strftime("%Y-%m-%d"), "command": " ".join(sys.argv)},
        "search": {"model_tokens": model_tokens, "seconds": t_batch,
                   "tok_per_s": model_tokens / t_batch,
                   "searches_per_trajectory": sum(t.num_searches for t in batch) / len(batch),
                   "inserted_tokens": sum(len(t.loss_mask) - sum(t.loss_mask) for t in batch)},
        "plain": {"model_tokens": n_plain, "seconds": t_plain, "tok_per_s": n_plain / t_plain},
        "sequential": {"model_tokens": seq_tokens, "seconds": t_seq,
                       "tok_per_s": seq_tokens / t_seq},
    }
    result["ratios"] = {
        "search overhead vs plain": result["plain"]["tok_per_s"] / result["search"]["tok_per_s"]
        - 1,
        "speed-up vs sequential": result["search"]["tok_per_s"]
        / result["sequential"]["tok_per_s"],
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
