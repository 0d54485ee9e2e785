"""The ``research rollout`` command (beside the evaluation, whose config it reads): sample
trajectories with the real service and show them readably (tags coloured by
:func:`colourise`), one JSON line each in ``--out``.

It reads the evaluation's config (``--config``: ``default``, ``cpu`` or a file, with
``section.key=value`` overrides): the model and its backend (``generator.*``), the questions
(``data.*``), the retrieval service (``retrieval.*``, one started on the embedded corpus when
no URL is given) and the rollout settings (``rollout.*``, a trained model folder's recorded
ones first). ``register(subparsers)`` adds::

    research rollout [--config NAME|FILE] [section.key=value ...] [--n 5] [--limit 2]
                     [--out FILE] [--reward v1|f1]
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from pathlib import Path

logger = logging.getLogger(__name__)

_COLOURS = {"think": "34", "search": "33", "result": "2", "answer": "32"}  # ANSI codes
_TAG = re.compile(r"(</?(?:think|search|result|answer)>)")

# Flags of the first form of this command, still read: each becomes the config key it names.
OLDER_FLAGS = {"--model": "generator.model", "--data": "data.dataset_name",
               "--search-url": "retrieval.search_url", "--dtype": "generator.dtype",
               "--threads": "generator.threads", "--template": "rollout.template",
               "--example": "rollout.example", "--on-max-turns": "rollout.on_max_turns",
               "--temperature": "rollout.temperature", "--top-k": "rollout.top_k",
               "--max-response-tokens": "rollout.max_response_tokens",
               "--max-turns": "rollout.max_turns", "--stop-at-answer": "rollout.stop_at_answer"}


def colourise(text: str, enabled: bool = True) -> str:
    """Colour each tag's span (think blue, search yellow, result dim, answer green)."""
    if not enabled:
        return text
    out, current = [], None
    for piece in _TAG.split(text):
        m = re.fullmatch(r"<(/?)(\w+)>", piece)
        if m and m.group(2) in _COLOURS:
            current = None if m.group(1) else m.group(2)
            out.append(f"\x1b[1;{_COLOURS[m.group(2)]}m{piece}\x1b[0m")
        elif current:
            out.append(f"\x1b[{_COLOURS[current]}m{piece}\x1b[0m")
        else:
            out.append(piece)
    return "".join(out)


def overrides_of(args) -> list[str]:
    """The config overrides: the older flags' (each with a warning naming its key), then the
    ``section.key=value`` ones, which win."""
    older = []
    for flag, key in OLDER_FLAGS.items():
        value = getattr(args, flag[2:].replace("-", "_"))
        if value is None:
            continue
        value = "true" if value is True else value
        logger.warning("%s is an older flag of research rollout, read as %s=%s; write that "
                       "instead", flag, key, value)
        older.append(f"{key}={value}")
    return [*older, *args.overrides]


def run_inspection(args) -> int:
    from research.evaluation.config import describe, load_config
    from research.evaluation.runner import load_items, open_generator
    from research.rewards import get_reward_fn
    from research.rollout.engine import run_rollouts
    from research.rollout.progress import RolloutProgress
    from research.serving.launch import run_searcher

    if args.keys:
        print(describe())
        return 0
    config = load_config(args.config, overrides_of(args)).resolved()
    settings = config.rollout
    items = load_items(config)[: args.limit]
    reward = get_reward_fn(args.reward)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    start = time.time()
    with open_generator(config) as (generator, tokenizer), \
            run_searcher(config.retrieval, config.data.dataset_name,
                         out.parent / f"{out.stem}.service", settings.search) as searcher:
        prompts = [settings.encode_prompt(tokenizer, it["question"])
                   for it in items for _ in range(args.n)]
        with RolloutProgress(len(prompts)) as progress:
            trajectories = run_rollouts(prompts, generator, searcher, tokenizer, settings,
                                        progress=progress)
    seconds = time.time() - start

    colour = args.color == "always" or (args.color == "auto" and os.isatty(1))
    with out.open("w") as f:
        for t in trajectories:
            item = items[t.index // args.n]
            r = reward(t.text, item["golden_answers"], complete=t.complete)
            f.write(json.dumps({"question": item["question"], "golden_answers":
                                item["golden_answers"], "reward": r.score, "reason": r.reason,
                                **t.to_dict()}) + "\n")
            print(f"\n=== {item['question']}  (gold: {item['golden_answers'][0]!r}; reward "
                  f"{r.score} {r.reason}; {t.num_searches} searches, {t.finish_reason})")
            print(colourise(t.text, colour))
    tokens = sum(sum(t.loss_mask) for t in trajectories)
    print(f"\n{len(trajectories)} trajectories, {tokens} model tokens in {seconds:.1f} s "
          f"({tokens / max(seconds, 1e-9):.1f} tok/s); written to {out}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("rollout", help="sample search trajectories and show them",
                       description="Sample search trajectories with the evaluation's config "
                       "and show them; `research rollout --keys` lists every key.")
    p.add_argument("overrides", nargs="*", metavar="section.key=value",
                   help="config overrides, e.g. generator.model=qwen2.5-0.5b rollout.max_turns=2")
    p.add_argument("--config", default=None,
                   help="evaluation config: a YAML file or a named one (default, cpu); "
                        "default: the packaged eval_config.yaml")
    p.add_argument("--n", type=int, default=5, help="samples per question")
    p.add_argument("--limit", type=int, default=2, help="questions")
    p.add_argument("--out", default="runs/rollout.jsonl")
    p.add_argument("--reward", default="v1", help="v1 (EM) or f1")
    p.add_argument("--color", choices=("auto", "always", "never"), default="auto")
    p.add_argument("--keys", action="store_true", help="list every config key and exit")
    older = p.add_argument_group("older flags (each read as the config key it names)")
    for flag, key in OLDER_FLAGS.items():
        if flag == "--stop-at-answer":
            older.add_argument(flag, action="store_true", default=None, help=f"{key}=true")
        elif flag == "--example":
            older.add_argument(flag, nargs="?", const="two-search", default=None,
                               help=f"{key}=... (alone: two-search)")
        else:
            older.add_argument(flag, default=None, help=f"{key}=...")
    p.set_defaults(func=run_inspection)
