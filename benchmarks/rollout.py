"""Rollout benchmark: search rollouts against their limit and against the original's loop.

    python benchmarks/rollout.py --model qwen2.5-0.5b --prompts 16

Every side uses the same Hugging Face backend, model, thread count and prompts
(``--prompts`` ``squad-open-mini`` dev questions in the base template with the worked
example, which the 0.5B model follows; the 135M one never searches, with or without it),
against the real retrieval service on loopback. With ``--samples G`` each prompt is rolled
out G times in the one call, as the GRPO trainers roll out a step (each question repeated
``grpo.num_generations`` times, every trajectory of the step in one batch); ``--sequential
N`` lets the one-at-a-time loop run only the first N of those trajectories (sample-major:
every prompt once, then again), its rate being per sampled token either way. The sides:

* ``search``: the project's rollout as the trainers run it: continuous batching across turns
  (a trajectory that closes ``</search>`` gets its result and rejoins the running batch at
  once, only the inserted block prefilled against its kept KV cache);
* ``search_turn_by_turn``: the same rollout run turn by turn
  (``HFGenerator(continuous=False)``): every turn's batch waits for its longest row before
  any row gets its result, each trajectory's KV cache still kept across turns;
* ``limit``: the work no rollout can avoid, for the very trajectories ``search`` produced:
  one batched prefill of every token a trajectory holds that the model did not sample (the
  prompt, its shared prefix once, and every inserted token), plus the batched decode of
  every sampled token (a plain generate of the same lengths, its own prefill excluded);
* ``sequential``: the original's loop, one sample at a time, each turn prefilling the whole
  trajectory again (fresh samples of the same prompts, so its tokens differ from the others').

Reported: seconds and sampled tokens per second of each side, searches per trajectory, tokens
prefilled, decode steps (forward passes of one token per row), and the ratios the project
tracks: search / limit (target <= 1.15) and the speed-up over sequential in sampled tokens per
second (target >= 5).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

from research.protocol import EXAMPLE_NAMES


def _setup(args):
    from research.data.questions import load_questions
    from research.models.loading import load_model
    from research.rollout.prompts import encode_prompt

    torch.set_num_threads(args.threads)
    model, tok = load_model(args.model, args.dtype)
    questions = [q["question"] for q in load_questions("squad-open-mini", "dev", args.prompts)]
    example = None if args.example == "none" else args.example
    return model, tok, [encode_prompt(tok, q, args.template, example=example)
                        for q in questions]


def _groups(prompts: list, samples: int) -> list:
    """Each prompt ``samples`` times in a row, as a GRPO step hands its questions over."""
    return [p for p in prompts for _ in range(samples)]


def _sample_major(prompts: list, samples: int, n: int | None) -> list:
    """The first ``n`` (all when None) of ``samples`` rounds over ``prompts``: every prompt
    once, then every prompt again, and so on."""
    order = [p for _ in range(samples) for p in prompts]
    return order if n is None else order[:n]


def _rollout(gen, client, tok, prompts, config):
    from research.rollout.engine import run_rollouts

    t0 = time.perf_counter()
    out = run_rollouts(prompts, gen, client, tok, config)
    return out, time.perf_counter() - t0


def _counting(gen):
    """``gen`` with its decode steps counted in ``gen.steps``."""
    gen.steps = 0

    def step(n):
        gen.steps += 1

    gen.on_step = step
    return gen


def _limit(model, tok, trajectories, seed):
    """Seconds of the unavoidable work for ``trajectories``: one batched prefill of each
    trajectory's prompt and inserted tokens (shared prefix once; a generate of one token),
    plus the batched decode of each one's sampled tokens (a plain generate of the same
    lengths: no stop string, no EOS, no search), its prefill excluded. Returns (prefill s,
    decode s, tokens prefilled, decode steps)."""
    from research.rollout.backends.hf import HFGenerator
    from research.rollout.generation import SamplingParams

    gen = HFGenerator(model, tok)
    held = [t.prompt_ids + [i for i, ins in zip(t.response_ids, t.inserted, strict=True) if ins]
            for t in trajectories]
    t0 = time.perf_counter()
    gen.generate(held, [SamplingParams(1, temperature=1.0, seed=seed)] * len(held))
    prefill_s = time.perf_counter() - t0
    prefilled = gen.prefilled

    gen.eos_token_ids = frozenset({model.config.vocab_size})  # an id never sampled
    marks: list[float] = []
    gen.on_step = lambda n: marks.append(time.perf_counter())
    lengths = [max(1, sum(t.loss_mask)) for t in trajectories]
    params = [SamplingParams(n, temperature=1.0, seed=seed) for n in lengths]
    gen.generate([t.prompt_ids for t in trajectories], params)
    decode_s = marks[-1] - marks[0]  # from the first token sampled (after the prefill) on
    return prefill_s, decode_s, prefilled, len(marks) - 1


def _side(trajectories, seconds, prefilled=None) -> dict:
    sampled = sum(sum(t.loss_mask) for t in trajectories)
    out = {"sampled_tokens": sampled, "seconds": round(seconds, 2),
           "sampled_tok_per_s": round(sampled / seconds, 2),
           "searches_per_trajectory": sum(t.num_searches for t in trajectories)
           / len(trajectories),
           "inserted_tokens": sum(t.inserted_tokens for t in trajectories)}
    if prefilled is not None:
        out["tokens_prefilled"] = prefilled
    return out


def _rate(side: dict) -> float:
    """Sampled tokens per second of a side, unrounded."""
    return side["sampled_tokens"] / side["seconds"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="qwen2.5-0.5b")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--samples", type=int, default=1,
                    help="trajectories per prompt, all in one rollout call, as a GRPO step "
                         "rolls out its group of grpo.num_generations per question")
    ap.add_argument("--sequential", type=int, default=None, metavar="N",
                    help="trajectories the one-at-a-time loop runs (default: all of them, "
                         "prompts x samples; its rate is per sampled token either way)")
    ap.add_argument("--template", choices=("base", "chat"), default="base")
    ap.add_argument("--example", choices=(*EXAMPLE_NAMES, "none"), default="two-search",
                    help="worked example in the base prompt, so that small models search "
                         "(none: no example)")
    ap.add_argument("--max-response-tokens", type=int, default=512)
    ap.add_argument("--max-turns", type=int, default=3)
    ap.add_argument("--top-k", type=int, default=None,
                    help="documents per search (default: the rollout's, rollout.top_k)")
    ap.add_argument("--max-result-tokens", type=int, default=None,
                    help="cap on one inserted result's document tokens (rollout.max_result_tokens)")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="benchmarks/results/rollout.json")
    args = ap.parse_args()
    if args.samples < 1 or (args.sequential is not None and args.sequential < 1):
        ap.error("--samples and --sequential take a positive count")

    from research.models.loading import cpu_description
    from research.paths import cache_root
    from research.retrieval.client import SearchClient
    from research.rollout.backends.hf import HFGenerator
    from research.rollout.settings import RolloutSettings
    from research.serving.launch import running_service

    load = os.getloadavg()[0]
    model, tok, questions = _setup(args)
    prompts = _groups(questions, args.samples)
    one_at_a_time = _sample_major(questions, args.samples, args.sequential)
    work = cache_root() / "bench"
    work.mkdir(parents=True, exist_ok=True)
    cfg = work / "rollout-serving.yaml"
    cfg.write_text("retriever:\n  embedded: squad-open-mini\n")
    extra = {"top_k": args.top_k} if args.top_k else {}
    config = RolloutSettings(max_response_tokens=args.max_response_tokens,
                             max_turns=args.max_turns, temperature=1.0, seed=args.seed,
                             max_result_tokens=args.max_result_tokens, **extra)
    with running_service(cfg, work / "rollout-service.log") as service, \
            SearchClient(service.url) as client:
        gen = HFGenerator(model, tok)
        _rollout(gen, client, tok, prompts[:2], config)  # warm-up: first-call costs
        sides = {}
        for name, continuous in (("search", True), ("search_turn_by_turn", False)):
            gen = _counting(HFGenerator(model, tok, continuous=continuous))
            torch.manual_seed(args.seed)
            out, dt = _rollout(gen, client, tok, prompts, config)
            sides[name] = {**_side(out, dt, gen.prefilled), "decode_steps": gen.steps}
            if name == "search":
                batch = out
        prefill_s, decode_s, prefilled, steps = _limit(model, tok, batch, args.seed)
        sides["limit"] = {**_side(batch, prefill_s + decode_s, prefilled),
                          "prefill_seconds": round(prefill_s, 2),
                          "decode_seconds": round(decode_s, 2), "decode_steps": steps}
        gen = _counting(HFGenerator(model, tok, keep_cache=False, continuous=False))
        torch.manual_seed(args.seed)
        seq, t_seq = [], 0.0
        for p in one_at_a_time:
            (t,), dt = _rollout(gen, client, tok, [p], config)
            seq.append(t)
            t_seq += dt
        sides["sequential"] = {**_side(seq, t_seq, gen.prefilled), "decode_steps": gen.steps,
                               "trajectories": len(seq)}
    result = {
        "meta": {"model": args.model, "prompts": args.prompts, "samples": args.samples,
                 "trajectories": len(prompts), "threads": args.threads,
                 "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
                 "template": args.template, "cpu_count": os.cpu_count(),
                 "max_response_tokens": args.max_response_tokens, "max_turns": args.max_turns,
                 "top_k": config.top_k, "max_result_tokens": config.max_result_tokens,
                 "load_average_at_start": load, "cpu": cpu_description(),
                 "date": time.strftime("%Y-%m-%d"), "command": " ".join(sys.argv)},
        **sides,
        "ratios": {
            "search / limit (seconds, same trajectories)":
                sides["search"]["seconds"] / sides["limit"]["seconds"],
            "turn by turn / search (seconds)":
                sides["search_turn_by_turn"]["seconds"] / sides["search"]["seconds"],
            "speed-up vs sequential (sampled tok/s)":
                _rate(sides["search"]) / _rate(sides["sequential"]),
        },
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
