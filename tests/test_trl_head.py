"""The compact log-prob head against TRL's own fused head, on the tiny model (fp32, CPU)."""

from __future__ import annotations

import copy

import pytest
import torch

pytest.importorskip("trl")


def _patched(tiny, compact: bool, temperature: float):
    from trl.trainer.utils import add_fused_lm_head

    from research.trainers.trl_head import install_compact_head

    model = copy.deepcopy(tiny[0]).float()
    add_fused_lm_head(model, temperature=temperature, outputs=("log_probs", "entropy"))
    if compact:
        assert install_compact_head(model, temperature)
    return model


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_compact_head_equals_trls_head_in_values_and_gradients(tiny, temperature, monkeypatch):
    """Same log-probs, entropies, loss and gradients as TRL's head, for a left-padded batch
    whose prompt positions carry no label; chunked smaller than the batch so the chunking
    and its recomputation in the backward pass are exercised."""
    import research.trainers.trl_head as head

    monkeypatch.setattr(head, "CHUNK_TOKENS", 5)
    torch.manual_seed(0)
    ids = torch.randint(5, 400, (3, 14))
    mask = torch.ones_like(ids)
    mask[0, :3] = 0  # left padding
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :8] = -100  # the prompt: only the last 6 positions are scored
    outs, grads = [], []
    for compact in (False, True):
        model = _patched(tiny, compact, temperature)
        out = model(input_ids=ids, attention_mask=mask, labels=labels, fused_lm_head=True)
        (out.loss - 0.01 * out.entropy.sum()).backward()
        outs.append(out)
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()
                      if p.grad is not None})
    trl, ours = outs
    assert ours.log_probs.shape == trl.log_probs.shape == (3, 13)
    torch.testing.assert_close(ours.log_probs, trl.log_probs, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.entropy, trl.entropy, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.loss, trl.loss, atol=1e-6, rtol=1e-6)
    assert torch.equal(ours.label_mask, trl.label_mask)
    assert (ours.log_probs[:, :7] == 0).all() and (ours.log_probs[:, 7:] != 0).all()
    assert set(grads[0]) == set(grads[1]) and grads[0]
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, atol=1e-5, rtol=1e-4, msg=name)


def test_calls_it_does_not_cover_go_to_trls_head(tiny):
    """Without ``fused_lm_head`` the model's own forward runs (logits); a model that
    soft-caps its logits keeps TRL's head."""
    model = _patched(tiny, True, 1.0)
    ids = torch.randint(5, 400, (1, 6))
    assert model(input_ids=ids).logits.shape == (1, 6, model.config.vocab_size)

    from trl.trainer.utils import add_fused_lm_head

    from research.trainers.trl_head import install_compact_head

    capped = copy.deepcopy(tiny[0])
    capped.config.final_logit_softcapping = 30.0
    add_fused_lm_head(capped)
    assert not install_compact_head(capped)
    assert not install_compact_head(copy.deepcopy(tiny[0]))  # TRL's head not installed
