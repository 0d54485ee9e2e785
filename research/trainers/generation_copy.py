"""A copy of the policy in another precision for the rollout's generation on CPU: bf16, or
int8.

Under ``grpo.bf16`` the policy keeps fp32 weights and computes in bf16 by autocast. Every
decode step then casts every weight matrix from fp32 to bf16 again (and runs each LoRA
adapter beside its base layer): on 2 CPU cores that made the rollout about 1.5x slower than
the same model held in bf16 (``benchmarks/step_profile.py``). :class:`GenerationCopy` keeps one
bf16 copy of the policy and, before each rollout, writes the policy's current weights into
it: LoRA adapters merged into their base layers (the policy itself is never changed), every
other weight copied. The rollout samples from the copy; the loss is computed by the policy as
before, so what is trained is exactly what it was. The matmuls are the same bf16 products as
under autocast; the copy also keeps its activations (the residual stream) in bf16, which
autocast keeps in fp32 (the same trade every bf16 serving engine makes).

``"int8"`` (``grpo.rollout_int8``, for CPUs without bf16): the copy holds fp32 weights and,
at each refresh, every linear layer (the vocabulary projection included) is quantised to int8
with one scale per output channel and run by torch's dynamic int8 kernels (the activations
quantised per call): on 2 AVX2 cores 2.7x the fp32 decode rate at batch 16 and 3.9x at
batch 8 (``benchmarks/results/generation.json``). Its log-probs are not the policy's (a mean
gap of 0.14 nats per sampled token, measured there); :mod:`research.trainers.trl_correction`
weighs the loss by the truncated ratio of the two.

Importing this module needs neither torch nor peft.
"""

from __future__ import annotations

import copy
import gc


def _lora_layers(model) -> dict[str, object]:
    """peft's LoRA layers of ``model`` by module name (none for a plain model)."""
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:
        return {}
    return {name: m for name, m in model.named_modules() if isinstance(m, LoraLayer)}


class GenerationCopy:
    """A copy of a policy in ``dtype`` that :meth:`refresh` keeps equal to its weights."""

    def __init__(self, dtype="bfloat16"):
        if dtype not in ("bfloat16", "float32", "int8"):
            raise ValueError(f"a generation copy is bfloat16, float32 or int8, not {dtype!r}")
        self.dtype = dtype
        self.model = None
        self._params: list[tuple[object, object]] = []  # (copy's parameter, policy's) pairs
        self._merged: list[tuple[object, object]] = []  # (copy's Linear, policy's LoRA layer)

    def _build(self, policy) -> None:
        import torch

        base = policy.get_base_model() if hasattr(policy, "get_base_model") else policy
        lora = _lora_layers(base)
        model = copy.deepcopy(base)
        # a forward patched onto the instance (TRL's fused head, the compact head) is a
        # closure over the policy's own forward: the copy runs its class's forward
        for attr in ("forward", "research_compact_head"):
            model.__dict__.pop(attr, None)
        if lora:  # the copy's own LoRA layers become plain layers (merged at each refresh)
            for name in lora:
                parent_name, _, child = name.rpartition(".")
                parent = model.get_submodule(parent_name) if parent_name else model
                setattr(parent, child, getattr(parent, child).get_base_layer())
        master = torch.float32 if self.dtype == "int8" else getattr(torch, self.dtype)
        model.to(master).eval().requires_grad_(False)
        copies = dict(model.named_parameters())
        adapted = {f"{name}.weight" for name in lora}
        self._merged = [(model.get_submodule(name), layer) for name, layer in lora.items()]
        self._params = []
        for name, param in base.named_parameters():
            key = name.replace(".base_layer.", ".")
            if key in copies and key not in adapted and "lora_" not in name:
                self._params.append((copies[key], param))
        self.model = model

    def refresh(self, policy):
        """The copy, holding ``policy``'s current weights (built on first use)."""
        import torch

        if self.model is None:
            self._build(policy)
        with torch.no_grad():
            for mine, theirs in self._params:
                mine.copy_(theirs)
            for linear, layer in self._merged:
                weight = layer.get_base_layer().weight
                delta = sum(layer.get_delta_weight(a) for a in layer.active_adapters
                            if a in layer.lora_A)
                linear.weight.copy_(weight + delta)
        if self.dtype != "int8":
            return self.model
        # the previous rollout's int8 copy is garbage in reference cycles by now, which
        # Python's collector frees late: without this, each step kept another ~1 GB (an
        # 11-step run of the 0.5B model grew to 20 GB and was killed)
        gc.collect()
        return quantised(self.model)


def quantised(model):
    """An int8 copy of ``model`` for generation: every ``nn.Linear`` quantised per output
    channel (symmetric int8 weights) with dynamically quantised activations; the rest (the
    embeddings, the norms) as they are. ``model`` itself is left unchanged."""
    import warnings

    import torch
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    with warnings.catch_warnings():  # torch.ao's eager quantisation warns of its successor
        warnings.simplefilter("ignore")
        return quantize_dynamic(model, {torch.nn.Linear: per_channel_dynamic_qconfig},
                                dtype=torch.qint8, inplace=False)
