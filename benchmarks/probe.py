"""Measure the training signal before training: what the untrained model samples under
several rollout settings, and how the reward scores it.

    python benchmarks/probe.py --config cpu-evidence --questions 6 --samples 4 \\
        --setting "two-search: rollout.example=two-search" \\
        --setting "one-search: rollout.example=one-search rollout.stop_at_answer=true" \\
        data.train=factbook-facts data.train_type=one-hop retrieval.corpus=factbook-facts

Each ``--setting "NAME: key=value ..."`` is a list of training-config overrides applied on top
of the config and the shared overrides (the last arguments); the rollout, prompt, reward and
data keys are the training config's own, so a setting found here is the setting trained with.
Every setting samples ``--samples`` responses (GRPO's group) for the same ``--questions``
training questions (evenly spaced over the training set; never dev questions) at the
config's temperature, against one retrieval service on loopback.

Reported per setting: the share of samples the reward passes (format, end, box: the
"valid" share, the reward's own ``valid``), the reward reasons, the share of groups whose
rewards are not all equal (GRPO has a gradient only there), exact answers (the reward's
``correct_and_valid``), searches per
sample, empty and repeated queries, turn-cap notices, finish reasons, response and inserted
tokens, and seconds. Written to ``benchmarks/results/probe.json`` (``--results``), the
samples to ``runs/probe/samples.jsonl`` (``--out``), and printed as a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path


def parse_setting(text: str) -> tuple[str, list[str]]:
    """``"NAME: k=v k=v"`` -> ``("NAME", ["k=v", "k=v"])``.

    >>> parse_setting("short: rollout.top_k=1 rollout.max_turns=2")
    ('short', ['rollout.top_k=1', 'rollout.max_turns=2'])
    """
    name, sep, rest = text.partition(":")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"a setting is 'NAME: key=value ...', got {text!r}")
    return name.strip(), rest.split()


def group_stats(rewards: list[list[float]]) -> float:
    """The share of groups whose rewards are not all equal.

    >>> group_stats([[0.1, 0.1], [0.0, 1.0]])
    0.5
    """
    return sum(len(set(g)) > 1 for g in rewards) / max(1, len(rewards))


def sample_facts(t) -> dict:
    """Per-trajectory facts the table sums: queries, empty and repeated ones, tokens."""
    queries = [turn.query for turn in t.turns]
    return {"searches": len(queries), "empty_queries": sum(not q.strip() for q in queries),
            "repeated_queries": len(queries) - len(set(queries)),
            "turn_limit_notices": t.turn_limit_notices, "response_tokens": len(t.response_ids),
            "inserted_tokens": t.inserted_tokens, "finish_reason": t.finish_reason}


def summarise(records: list[dict], samples: int, seconds: float) -> dict:
    """One setting's row from its sample records (``samples`` per question, in order)."""
    n = len(records)
    groups = [records[i:i + samples] for i in range(0, n, samples)]
    mean = lambda key: round(sum(r[key] for r in records) / max(1, n), 3)  # noqa: E731
    return {
        "samples": n, "questions": len(groups),
        "valid": round(sum(r["valid"] for r in records) / max(1, n), 3),
        "groups_with_spread": round(group_stats([[r["reward"] for r in g] for g in groups]), 3),
        # groups holding a right and a wrong answer: a correctness signal, not F1 noise
        "groups_right_and_wrong": round(group_stats(
            [[r["correct"] for r in g] for g in groups]), 3),
        "exact": sum(r["correct"] for r in records),
        "mean_reward": mean("reward"), "searches": mean("searches"),
        "never_search": round(sum(r["searches"] == 0 for r in records) / max(1, n), 3),
        "empty_queries": sum(r["empty_queries"] for r in records),
        "repeated_queries": sum(r["repeated_queries"] for r in records),
        "turn_limit_notices": sum(r["turn_limit_notices"] for r in records),
        "response_tokens": mean("response_tokens"), "inserted_tokens": mean("inserted_tokens"),
        "finish": dict(Counter(r["finish_reason"] for r in records).most_common()),
        "reasons": dict(Counter(r["reason"] for r in records).most_common()),
        "seconds": round(seconds, 1),
    }


COLUMNS = (("valid", "valid"), ("groups_with_spread", "groups with spread"),
           ("groups_right_and_wrong", "right and wrong"),
           ("exact", "exact"), ("mean_reward", "mean reward"), ("searches", "searches"),
           ("never_search", "never search"), ("empty_queries", "empty q"),
           ("repeated_queries", "repeated q"), ("turn_limit_notices", "cap notices"),
           ("response_tokens", "tokens"), ("seconds", "s"))


def table(rows: dict[str, dict]) -> str:
    lines = ["| setting | " + " | ".join(label for _, label in COLUMNS) + " | top reasons |",
             "|---" * (len(COLUMNS) + 2) + "|"]
    for name, row in rows.items():
        reasons = ", ".join(f"{k} {v}" for k, v in list(row["reasons"].items())[:3])
        lines.append(f"| {name} | " + " | ".join(str(row[key]) for key, _ in COLUMNS)
                     + f" | {reasons} |")
    return "\n".join(lines)


def run_setting(name, config, model, tokenizer, client, items, samples, out_file) -> dict:
    import contextlib

    import torch

    from research.rewards import get_reward_fn
    from research.rollout.backends.hf import HFGenerator
    from research.rollout.engine import run_rollouts
    from research.trainers.trl_engine import cpu_bf16

    r = config.rollout
    prompts = [r.encode_prompt(tokenizer, it["question"]) for it in items for _ in range(samples)]
    reward = get_reward_fn(config.reward.name)
    bf16 = cpu_bf16(config)  # the trainer's precision for its rollouts on this CPU
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    start = time.perf_counter()
    with autocast:
        trajectories = run_rollouts(prompts, HFGenerator(model, tokenizer,
                                                         max_batch=config.model.max_batch),
                                    client, tokenizer, r)
    seconds = time.perf_counter() - start
    records = []
    for t in trajectories:
        item = items[t.index // samples]
        result = reward(t.text, item["golden_answers"], complete=t.complete)
        record = {"setting": name, "id": item.get("id"), "question": item["question"],
                  "golden_answers": item["golden_answers"], "reward": result.score,
                  "reason": result.reason, "valid": result.valid,
                  "correct": result.correct_and_valid, "queries": t.summary()["queries"],
                  "text": t.text, **sample_facts(t)}
        records.append(record)
        out_file.write(json.dumps(record) + "\n")
    out_file.flush()
    return {**summarise(records, samples, seconds), "bf16": bf16}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("overrides", nargs="*", help="training key=value overrides (every setting)")
    p.add_argument("--config", default="cpu-evidence", help="training config (name or path)")
    p.add_argument("--setting", action="append", type=parse_setting, default=[],
                   help="'NAME: key=value ...' (repeatable; none: the config as it is)")
    p.add_argument("--questions", type=int, default=6, help="training questions per setting")
    p.add_argument("--samples", type=int, default=4, help="samples per question (the group)")
    p.add_argument("--seed", type=int, default=0, help="torch seed of the sampling")
    p.add_argument("--out", default="runs/probe", help="folder of samples.jsonl")
    p.add_argument("--results", default=str(Path(__file__).parent / "results" / "probe.json"))
    args = p.parse_args(argv)

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from research.models.prepare import prepare_model
    from research.serving.launch import run_searcher
    from research.trainers.config import load_config
    from research.trainers.run_setup import training_questions
    from research.trainers.trl_engine import set_threads

    settings = args.setting or [("config", [])]
    configs = {name: load_config(args.config, [*args.overrides, *extra])
               for name, extra in settings}
    base = next(iter(configs.values()))
    set_threads(base)
    torch.manual_seed(args.seed)
    path = prepare_model(base.model.path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    d = base.data
    pool = training_questions(d.train, d.train_split, d.train_limit, d.train_type)
    step = max(1, len(pool) // args.questions)  # spread over the set, not its first rows
    items = pool[::step][: args.questions]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows: dict[str, dict] = {}
    results = {"command": "python benchmarks/probe.py " + " ".join(
                   sys.argv[1:] if argv is None else argv),
               "config": args.config, "model": base.model.path, "data": d.train,
               "data_type": d.train_type, "cores": os.cpu_count(),
               "date": time.strftime("%Y-%m-%d"), "settings": {}}
    rc = base.retrieval
    with run_searcher(rc, d.train, out) as client, \
            open(out / "samples.jsonl", "w") as samples_file:
        for name, config in configs.items():
            print(f"== {name}: {len(items)} questions x {args.samples} samples", flush=True)
            rows[name] = run_setting(name, config, model, tokenizer, client, items,
                                     args.samples, samples_file)
            results["settings"][name] = {"overrides": dict(settings)[name], **rows[name]}
            Path(args.results).parent.mkdir(parents=True, exist_ok=True)
            Path(args.results).write_text(json.dumps(results, indent=2) + "\n")
            print(table({name: rows[name]}).splitlines()[-1], flush=True)
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
