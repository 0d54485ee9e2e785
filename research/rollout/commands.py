"""The ``research rollout`` command: sample trajectories with the real service and show them
readably (tags coloured by :func:`colourise`), one JSON line each in ``--out``.

``register(subparsers)`` adds::

    research rollout [--model NAME|DIR] [--data NAME|FILE] [--n 5] [--limit 2] [--out FILE]
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from pathlib import Path

from research import protocol

logger = logging.getLogger(__name__)

_COLOURS = {"think": "34", "search": "33", "result": "2", "answer": "32"}  # ANSI codes
_TAG = re.compile(r"(</?(?:think|search|result|answer)>)")


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


def run_inspection(args) -> int:
    import torch

    from research.data.questions import load_questions
    from research.models.loading import load_model
    from research.retrieval.client import SearchClient
    from research.rewards import get_reward_fn
    from research.rollout.backends.hf import HFGenerator
    from research.rollout.engine import run_rollouts
    from research.rollout.progress import RolloutProgress
    from research.rollout.settings import RolloutSettings

    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    settings = RolloutSettings(template=args.template, example=args.example,
                               max_response_tokens=args.max_response_tokens,
                               max_turns=args.max_turns, top_k=args.top_k,
                               temperature=args.temperature, stop_at_answer=args.stop_at_answer,
                               on_max_turns=args.on_max_turns)
    items = load_questions(args.data, limit=args.limit)
    model, tokenizer = load_model(args.model, args.dtype)
    prompts = [settings.encode_prompt(tokenizer, it["question"])
               for it in items for _ in range(args.n)]
    reward = get_reward_fn(args.reward)
    start = time.time()
    with SearchClient(args.search_url) as client, RolloutProgress(len(prompts)) as progress:
        trajectories = run_rollouts(prompts, HFGenerator(model, tokenizer), client, tokenizer,
                                    settings, progress=progress)
    seconds = time.time() - start
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
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
    p = sub.add_parser("rollout", help="sample search trajectories and show them")
    p.add_argument("--model", default="smollm2-135m", help="packaged model name or local folder")
    p.add_argument("--data", default="squad-open-mini",
                   help="embedded dataset name, rows .parquet, or FlashRAG .jsonl")
    p.add_argument("--search-url", default="http://127.0.0.1:8000")
    p.add_argument("--n", type=int, default=5, help="samples per question")
    p.add_argument("--limit", type=int, default=2, help="questions")
    p.add_argument("--out", default="runs/rollout.jsonl")
    p.add_argument("--template", choices=("base", "chat"), default="base")
    p.add_argument("--example", nargs="?", const="two-search", default=None,
                   choices=protocol.EXAMPLE_NAMES,
                   help="a worked example in the prompt (small models need it): two-search "
                        "(the default when given alone), one-search or bridge")
    p.add_argument("--stop-at-answer", action="store_true",
                   help="end each response at its first </answer>")
    p.add_argument("--on-max-turns", choices=("answer", "end"), default="answer",
                   help="a search beyond --max-turns: a 'no more searches' notice, or the end")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--max-response-tokens", type=int, default=1024)
    p.add_argument("--max-turns", type=int, default=4)
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--reward", default="v1", help="v1 (EM) or f1")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    p.add_argument("--color", choices=("auto", "always", "never"), default="auto")
    p.set_defaults(func=run_inspection)
