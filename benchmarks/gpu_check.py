"""The GPU check, prepared for the day a GPU is lent: rollout tokens/s and one policy-gradient
step's time for Qwen2.5-shaped models with random weights and the real tokenizer, in one run
that fits in 8 minutes on one H100 with no network.

    # here: the tokenizer travels with the working tree (an ignored folder, carried)
    python benchmarks/gpu_check.py --save-tokenizer runs/gpu_tokenizer
    # on the GPU machine (torch, transformers, accelerate, peft; no TRL, no service, no
    # orjson: a stand-in on the json module takes its place):
    python benchmarks/gpu_check.py --tokenizer runs/gpu_tokenizer --out $OUT/gpu_check.json
    # the tests: a toy shape on CPU
    python benchmarks/gpu_check.py --toy --tokenizer TINY_MODEL_DIR --out /tmp/gpu_check.json

For each shape (``--shapes``: ``0.5b``, ``1.5b``, ``7b``, Qwen2.5's published sizes, built
from the config with random weights directly on the device in bf16):

1. rollout: the project's loop (``run_rollouts``) on ``HFGenerator`` (continuous batching,
   the KV cache kept), the base prompt with the bridge example, ``--prompts`` factbook-facts
   questions x ``--samples``, at most ``--max-tokens`` tokens and 3 searches of one passage;
   searches answered at once by a scripted searcher (one fixed passage: the retrieval
   service does not run there, and a random model's queries find nothing anyway). Sampled
   tokens/s, prefilled tokens, seconds;
2. one policy-gradient step on those trajectories, as GRPO's loss does it: the forward with
   gradient over prompt and response in micro-batches of ``--micro-batch``, the log-probs of
   the sampled tokens (inserted result tokens masked), group-normalised rewards (the project's
   f1 reward) as advantages, backward, AdamW. Full fine-tuning for shapes up to 1.5B, LoRA
   (rank 16, every linear layer) for 7B, whose full AdamW state would not fit in 80 GB.
   Seconds of the forward, the backward and the optimiser step, peak memory.

Written to ``--out`` as JSON, one entry per shape, printed as it goes. A random model writes
random tokens: lengths run to the budget and rewards are mostly 0; the figures are speeds, not
learning.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # the working tree travels; the package is not installed



def json_stand_in() -> None:
    """The GPU machine lacks orjson (the HTTP client's JSON codec, imported with the rollout
    loop; nothing here goes over HTTP): a stand-in with the names the project uses, on the
    standard json module, where orjson is missing."""
    try:
        import orjson  # noqa: F401
    except ImportError:
        import types

        stand_in = types.ModuleType("orjson")
        stand_in.dumps = lambda obj, *args, **kwargs: json.dumps(obj).encode()
        stand_in.loads = json.loads
        stand_in.JSONDecodeError = json.JSONDecodeError
        sys.modules["orjson"] = stand_in


# Qwen2.5's published shapes (config.json of each model)
SHAPES = {
    "0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                 num_attention_heads=14, num_key_value_heads=2, tie_word_embeddings=True),
    "1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                 num_attention_heads=12, num_key_value_heads=2, tie_word_embeddings=True),
    "7b": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
               num_attention_heads=28, num_key_value_heads=4, tie_word_embeddings=False),
    "toy": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True),
}
LORA_SHAPES = {"7b"}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
                   "special_tokens_map.json", "vocab.json", "merges.txt",
                   "generation_config.json")


def build(shape: str, tokenizer, device: str):
    """A Qwen2 model of ``shape`` with random weights, made on ``device`` (bf16 on a GPU)."""
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    config = Qwen2Config(vocab_size=len(tokenizer), max_position_embeddings=32768,
                         rope_theta=1_000_000.0, rms_norm_eps=1e-6,
                         bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, **SHAPES[shape])
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval()


class OnePassage:
    """Answers every query at once with one fixed passage."""

    def __init__(self):
        from research.retrieval.base import Hit

        self.hit = Hit("p0", '"Titan"\nTitan is the largest moon of Saturn.', 1.0)

    def batch_search(self, queries, k):
        return [[self.hit] for _ in queries]


def questions(n: int) -> list[dict]:
    from research.data.embedded import data_root

    lines = (data_root() / "factbook-facts" / "dev.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines[:n]]


def sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def rollout(model, tokenizer, items, samples: int, max_tokens: int, device: str):
    import torch

    from research.rollout.backends.hf import HFGenerator
    from research.rollout.engine import run_rollouts
    from research.rollout.settings import RolloutSettings

    settings = RolloutSettings(template="base", example="bridge", stop_at_answer=True,
                               on_max_turns="answer", max_response_tokens=max_tokens,
                               max_turns=3, top_k=1, max_result_tokens=80, temperature=1.0)
    prompts = [settings.encode_prompt(tokenizer, it["question"])
               for it in items for _ in range(samples)]
    generator = HFGenerator(model, tokenizer)
    sync(device)
    start = time.perf_counter()
    with torch.inference_mode():
        trajectories = run_rollouts(prompts, generator, OnePassage(), tokenizer, settings)
    sync(device)
    seconds = time.perf_counter() - start
    sampled = sum(sum(t.loss_mask) for t in trajectories)
    return trajectories, {"trajectories": len(trajectories), "seconds": round(seconds, 2),
                          "sampled_tokens": sampled,
                          "sampled_tok_per_s": round(sampled / seconds, 1),
                          "prefilled_tokens": generator.prefilled,
                          "searches_per_trajectory": round(sum(t.num_searches for t in trajectories)
                                                           / len(trajectories), 2)}


def advantages(trajectories, items, samples: int, tokenizer) -> list[float]:
    """GRPO's group-normalised rewards (the project's f1 reward), one per trajectory."""
    from research.rewards import reward_f1

    text = [tokenizer.decode(t.response_ids, skip_special_tokens=True) for t in trajectories]
    rewards = [reward_f1(x, items[i // samples]["golden_answers"], complete=t.complete).score
               for i, (x, t) in enumerate(zip(text, trajectories, strict=True))]
    out = []
    for g in range(0, len(rewards), samples):
        group = rewards[g:g + samples]
        mean = sum(group) / len(group)
        std = (sum((r - mean) ** 2 for r in group) / len(group)) ** 0.5
        out += [(r - mean) / (std + 1e-4) for r in group]
    return out


def step(model, trajectories, advs: list[float], micro: int, lora: bool, device: str) -> dict:
    """One policy-gradient step over ``trajectories``: forward with gradient, backward, AdamW."""
    import torch

    model.train()
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules=[
            "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-6)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    forward_s = backward_s = 0.0
    tokens = sum(sum(t.loss_mask) for t in trajectories)
    for b in range(0, len(trajectories), micro):
        chunk = trajectories[b:b + micro]
        width = max(len(t.prompt_ids) + len(t.response_ids) for t in chunk)
        ids = torch.zeros(len(chunk), width, dtype=torch.long, device=device)
        mask = torch.zeros_like(ids)
        loss_mask = torch.zeros(len(chunk), width, device=device)
        adv = torch.tensor(advs[b:b + micro], device=device)
        for i, t in enumerate(chunk):  # right padding; a response's mask from the rollout
            seq = t.prompt_ids + t.response_ids
            ids[i, :len(seq)] = torch.tensor(seq)
            mask[i, :len(seq)] = 1
            loss_mask[i, len(t.prompt_ids):len(seq)] = torch.tensor(t.loss_mask, dtype=torch.float)
        sync(device)
        t0 = time.perf_counter()
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
        logp = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None])[..., 0]
        loss = -(adv[:, None] * logp * loss_mask[:, 1:]).sum() / max(1, tokens)
        sync(device)
        t1 = time.perf_counter()
        loss.backward()
        sync(device)
        forward_s, backward_s = forward_s + t1 - t0, backward_s + time.perf_counter() - t1
        del logits, logp, loss
    t0 = time.perf_counter()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    sync(device)
    out = {"lora": lora, "trainable_parameters": sum(p.numel() for p in params),
           "tokens": sum(len(t.prompt_ids) + len(t.response_ids) for t in trajectories),
           "forward_s": round(forward_s, 2), "backward_s": round(backward_s, 2),
           "optimizer_s": round(time.perf_counter() - t0, 2)}
    out["step_s"] = round(out["forward_s"] + out["backward_s"] + out["optimizer_s"], 2)
    if device == "cuda":
        out["peak_memory_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 1)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", nargs="+", default=["0.5b", "7b"], choices=sorted(SHAPES))
    p.add_argument("--tokenizer", default=None,
                   help="a folder with the Qwen2.5 tokenizer (default: the prepared "
                        "qwen2.5-0.5b in the model cache)")
    p.add_argument("--save-tokenizer", default=None, metavar="DIR",
                   help="copy the tokenizer files to DIR (to carry to the GPU machine) and stop")
    p.add_argument("--prompts", type=int, default=16)
    p.add_argument("--samples", type=int, default=4)
    p.add_argument("--max-tokens", type=int, default=512)
    p.add_argument("--micro-batch", type=int, default=8)
    p.add_argument("--lora", action="store_true", help="LoRA for every shape (default: 7B)")
    p.add_argument("--toy", action="store_true",
                   help="the toy shape on CPU, 2 prompts x 2, 16 tokens (the tests)")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "gpu_check.json"))
    args = p.parse_args(argv)

    import shutil

    import torch
    from transformers import AutoTokenizer

    json_stand_in()
    source = args.tokenizer
    if source is None:
        from research.paths import cache_root

        source = str(cache_root() / "models" / "qwen2.5-0.5b")
    if not (Path(source) / "tokenizer.json").is_file():
        p.error(f"no tokenizer.json in {source}: pass --tokenizer DIR (here: research model "
                "prepare qwen2.5-0.5b, then --save-tokenizer DIR to carry it)")
    if args.save_tokenizer:
        dest = Path(args.save_tokenizer)
        dest.mkdir(parents=True, exist_ok=True)
        for name in TOKENIZER_FILES:
            if (Path(source) / name).is_file():
                shutil.copy2(Path(source) / name, dest / name)
        print(f"tokenizer files copied to {dest}")
        return 0
    if args.toy:
        args.shapes, args.prompts, args.samples, args.max_tokens = ["toy"], 2, 2, 16
    device = "cuda" if torch.cuda.is_available() and not args.toy else "cpu"
    tokenizer = AutoTokenizer.from_pretrained(source)
    items = questions(args.prompts)
    results = {"command": "python benchmarks/gpu_check.py " + " ".join(
                   sys.argv[1:] if argv is None else argv),
               "date": time.strftime("%Y-%m-%d"), "device": device,
               "gpu": torch.cuda.get_device_name() if device == "cuda" else None,
               "torch": torch.__version__, "prompts": args.prompts, "samples": args.samples,
               "max_tokens": args.max_tokens, "shapes": {}}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for shape in args.shapes:
        started = time.perf_counter()
        model = build(shape, tokenizer, device)
        entry = {"parameters": sum(x.numel() for x in model.parameters()),
                 "build_s": round(time.perf_counter() - started, 1)}
        trajectories, entry["rollout"] = rollout(model, tokenizer, items, args.samples,
                                                 args.max_tokens, device)
        advs = advantages(trajectories, items, args.samples, tokenizer)
        entry["step"] = step(model, trajectories, advs, args.micro_batch,
                             args.lora or shape in LORA_SHAPES, device)
        results["shapes"][shape] = entry
        print(json.dumps({shape: entry}), flush=True)
        out.write_text(json.dumps(results, indent=2) + "\n")  # what is done survives a timeout
        del model, trajectories
        if device == "cuda":
            torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
