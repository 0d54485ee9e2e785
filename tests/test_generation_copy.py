"""The bf16 generation copy of the policy: equal to the policy's current weights, LoRA
adapters merged, the policy untouched (tiny model, float32 copy so equality is exact)."""

from __future__ import annotations

import copy

import pytest
import torch

from research.trainers.generation_copy import GenerationCopy


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_copy_of_a_lora_policy_follows_its_adapters_and_leaves_it_unchanged(tiny):
    peft = pytest.importorskip("peft")
    from trl.trainer.utils import add_fused_lm_head

    base = copy.deepcopy(tiny[0]).float()
    add_fused_lm_head(base)  # as TRL patches the policy: the copy must not run the policy
    policy = peft.get_peft_model(base, peft.LoraConfig(
        r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM"))
    ids = torch.randint(5, 400, (2, 9))
    gen = GenerationCopy(dtype="float32")
    first = gen.refresh(policy)
    assert not any(isinstance(m, peft.tuners.lora.LoraLayer) for m in first.modules())
    torch.testing.assert_close(_logits(first, ids), _logits(policy, ids))
    before = {n: p.clone() for n, p in policy.named_parameters()}
    with torch.no_grad():  # a training step moves the adapters (lora_B starts at zero)
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    moved = _logits(policy, ids)
    assert not torch.allclose(_logits(first, ids), moved, atol=1e-3)
    again = gen.refresh(policy)
    assert again is first  # one copy, refreshed in place
    torch.testing.assert_close(_logits(again, ids), moved, atol=1e-5, rtol=1e-5)
    for name, p in policy.named_parameters():  # merged into the copy only
        if "lora_B" not in name:
            assert torch.equal(p, before[name]), name
    assert all(not p.requires_grad for p in again.parameters())


def test_copy_of_a_fully_trained_policy_in_bf16(tiny):
    policy = copy.deepcopy(tiny[0]).float()
    gen = GenerationCopy()
    held = gen.refresh(policy)
    assert {p.dtype for p in held.parameters()} == {torch.bfloat16}
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.01)
    held = gen.refresh(policy)
    for (name, mine), theirs in zip(held.named_parameters(), policy.parameters(), strict=True):
        assert torch.equal(mine, theirs.to(torch.bfloat16)), name
