"""A model and its tokenizer loaded for generation, from a packaged name or a local folder."""

from __future__ import annotations

import logging
from pathlib import Path

logger = logging.getLogger(__name__)


def cpu_runs_bf16() -> bool:
    """Whether this CPU runs bf16 matmuls at speed (oneDNN's bf16 support: AVX-512 or AMX).
    Without it (AVX2 only) a bf16 matmul ran at 0.29 GFLOPS against 144 in fp32 on 2 cores
    here: every bf16 setting then costs hours. When torch cannot tell: False (fp32 is slower
    than bf16 at worst by about 2x, bf16 on a CPU without it by hundreds), with a warning."""
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError) as exc:
        logger.warning("cannot tell whether this CPU runs bf16 at speed (%s: %s): computing "
                       "in float32", type(exc).__name__, exc)
        return False


def cpu_description() -> str:
    """The CPU's model name and its bf16 instructions, for benchmark records, e.g. "AMD EPYC
    (avx512_bf16)" or "AMD EPYC (no bf16 instructions)"."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown"
    name = next((ln.split(":", 1)[1].strip() for ln in info.splitlines()
                 if ln.startswith("model name")), "unknown")
    flags = set(next((ln.split(":", 1)[1].split() for ln in info.splitlines()
                      if ln.startswith("flags")), []))
    bf16 = sorted(flags & {"avx512_bf16", "amx_bf16"}) or ["no bf16 instructions"]
    return f"{name} ({', '.join(bf16)})"


def cpu_bf16_or_fp32(bf16: bool, setting: str, silence: str) -> bool:
    """``bf16`` for a computation on this CPU: False, with a warning naming ``setting`` and
    the change that silences it (``silence``), when bf16 was asked for and the CPU has no
    bf16 support."""
    if bf16 and not cpu_runs_bf16():
        logger.warning("%s asks for bf16, but this CPU has no bf16 instructions (AVX-512 or "
                       "AMX), where bf16 matmuls run hundreds of times slower than fp32: "
                       "computing in float32 instead (%s to silence this)", setting, silence)
        return False
    return bf16


def load_model(model: str, dtype: str = "float32"):
    """``(model, tokenizer)`` of ``model`` (prepared with
    :func:`research.models.prepare.prepare_model`), in eval mode, weights in ``dtype``
    (``bfloat16`` becomes ``float32`` on a CPU without bf16 support, with a warning)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from research.models.prepare import prepare_model

    if dtype == "bfloat16" and not cpu_bf16_or_fp32(True, "the model dtype", "load it as float32"):
        dtype = "float32"
    path = prepare_model(model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    loaded = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype))
    return loaded.eval(), tokenizer
