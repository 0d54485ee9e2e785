"""Where one GRPO step of the TRL engine spends its time.

    python benchmarks/step_profile.py                       # the cpu-evidence config
    python benchmarks/step_profile.py grpo.prompts_per_step=2 --steps 2

Runs ``--steps`` real optimiser steps of a training config (the service on loopback, the
real model, TRL's ``GRPOTrainer``) with timers around each part: the rollout's generation
(prefill and decode of the model's tokens and of the inserted results), its searches, every
log-prob pass TRL makes (``_get_per_token_logps_and_entropies``, counted: one per micro-batch
with the gradient is the minimum; a reference pass at ``beta > 0`` and an old-log-prob pass
with several updates per batch come on top), the backward and the optimiser step. Printed as
a table and written to ``benchmarks/results/step_profile.json``. The peer of each part is
the step it belongs to: the shares show what a faster step has to cut.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

GENERATION = "rollout: generation (prefill + decode)"
SEARCH = "rollout: search requests"


class Timers:
    """Seconds and calls per named part."""

    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)

    @contextlib.contextmanager
    def time(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - start
            self.calls[name] += 1

    def wrap(self, owner, attr: str, name: str) -> None:
        """Time every call of ``owner.attr`` under ``name``."""
        original = getattr(owner, attr)

        def timed(*args, **kwargs):
            with self.time(name):
                return original(*args, **kwargs)

        setattr(owner, attr, timed)


def optimizer_timer(timers: Timers):
    """A ``TrainerCallback`` timing the optimiser step (between its two hooks)."""
    from transformers import TrainerCallback

    class OptimizerTimer(TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, **kwargs):
            self.start = time.perf_counter()

        def on_optimizer_step(self, args, state, control, **kwargs):
            timers.seconds["optimizer step"] += time.perf_counter() - self.start
            timers.calls["optimizer step"] += 1

    return OptimizerTimer()


STEP_FACTS = ("completions/mean_length", "reward", "rollout_correction/weight_mean",
              "rollout_correction/clipped_share", "rollout_correction/gap")


def step_facts(metrics: Path) -> list[dict]:
    """Per optimiser step of the run's ``metrics.jsonl``: its step and :data:`STEP_FACTS`."""
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    return [{"step": m["step"], **{k: round(m[k], 4) for k in STEP_FACTS if k in m}}
            for m in rows if "loss" in m]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("overrides", nargs="*", help="training key=value overrides")
    p.add_argument("--config", default="cpu-evidence", help="training config (name or path)")
    p.add_argument("--steps", type=int, default=1, help="optimiser steps to time")
    p.add_argument("--out", default="runs/step-profile", help="run directory (replaced)")
    p.add_argument("--results",
                   default=str(Path(__file__).parent / "results" / "step_profile.json"))
    args = p.parse_args(argv)

    import shutil

    import torch

    from research.trainers.config import load_config
    from research.trainers.trl_engine import _quiet_trl_internals, prepared_run

    shutil.rmtree(args.out, ignore_errors=True)
    config = load_config(args.config, [*args.overrides, f"run.output_dir={args.out}",
                                       f"run.max_steps={args.steps}", "run.eval_steps=0",
                                       f"run.save_steps={args.steps + 1}"])
    timers, nested = Timers(), set()
    with _quiet_trl_internals(), prepared_run(config) as run:
        trainer = run.trainer
        searcher = run.rollout.searcher
        if searcher is not None:
            timers.wrap(searcher, "batch_search", SEARCH)
        make = run.rollout.generator

        @contextlib.contextmanager
        def timed_generator(trl_trainer):
            with make(trl_trainer) as generator:
                # a continuously batching backend (the Hugging Face one) takes every turn in
                # one call, and the turns' searches run inside it: their seconds are taken
                # out of the generation's below
                for attr in ("generate", "generate_continuous"):
                    if hasattr(generator, attr):
                        timers.wrap(generator, attr, GENERATION)
                if getattr(generator, "continuous", False):
                    nested.add(SEARCH)
                yield generator

        run.rollout.generator = timed_generator
        # nested parts: the first holds generation and search; the loss holds one log-prob
        # pass; "TRL log-prob passes" counts every pass, inside and outside the loss
        timers.wrap(trainer, "_generate_and_score_completions",
                    "rollout + rewards + TRL's scoring passes")
        timers.wrap(trainer, "_get_per_token_logps_and_entropies", "TRL log-prob passes")
        timers.wrap(trainer, "_compute_loss", "loss (forward with gradient)")
        timers.wrap(trainer.accelerator, "backward", "backward")
        trainer.add_callback(optimizer_timer(timers))
        start = time.perf_counter()
        trainer.train()
        total = time.perf_counter() - start
    if nested and GENERATION in timers.seconds:
        timers.seconds[GENERATION] -= sum(timers.seconds.get(name, 0.0) for name in nested)
    parts = {name: {"seconds": round(s, 2), "calls": timers.calls[name],
                    "share_of_steps": round(s / total, 3)}
             for name, s in sorted(timers.seconds.items(), key=lambda kv: -kv[1])}
    g, r = config.grpo, config.rollout
    results = {
        "command": "python benchmarks/step_profile.py " + " ".join(
            sys.argv[1:] if argv is None else argv),
        "config": args.config, "overrides": args.overrides, "steps": args.steps,
        "trajectories_per_step": g.prompts_per_step * g.num_generations,
        "micro_batches_per_step": g.prompts_per_step * g.num_generations // g.per_device_batch,
        "beta": g.beta, "model": config.model.path, "lora_rank": config.model.lora_rank,
        "bf16": bool(trainer.args.bf16),  # grpo.bf16 as run (fp32 on a CPU without bf16)
        "max_response_tokens": r.max_response_tokens, "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d"),
        "total_seconds": round(total, 1), "parts": parts,
        # what each step sampled (a step's cost follows its tokens) and, under
        # grpo.rollout_int8, the correction's facts
        "per_step": step_facts(Path(args.out) / "metrics.jsonl"),
    }
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text(json.dumps(results, indent=2) + "\n")
    print(f"{args.steps} step(s) of {results['trajectories_per_step']} trajectories: "
          f"{total:.1f} s")
    print("| part | seconds | calls | share of the steps |\n|---|---|---|---|")
    for name, part in parts.items():
        print(f"| {name} | {part['seconds']} | {part['calls']} | {part['share_of_steps']:.0%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
