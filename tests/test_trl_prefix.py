"""The shared-prompt loss pass against TRL's own, on the tiny model with LoRA (fp32, CPU)."""

from __future__ import annotations

import contextlib
import copy
import types

import pytest
import torch

pytest.importorskip("trl")
pytest.importorskip("peft")


def _policy(tiny):
    """The tiny model as the TRL engine holds it: LoRA, TRL's fused head, the compact head."""
    from peft import LoraConfig, get_peft_model
    from trl.trainer.utils import add_fused_lm_head

    from research.trainers.trl_head import install_compact_head

    torch.manual_seed(1)
    model = get_peft_model(copy.deepcopy(tiny[0]).float(), LoraConfig(
        r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj", "up_proj"],
        init_lora_weights=False))  # random B: the adapter changes the outputs
    add_fused_lm_head(model.get_base_model(), temperature=0.8,
                      outputs=("log_probs", "entropy"))
    assert install_compact_head(model.get_base_model(), 0.8)
    return model


def _trainer():
    accelerator = types.SimpleNamespace(unwrap_model=lambda m: m, is_main_process=True,
                                        autocast=contextlib.nullcontext)
    return types.SimpleNamespace(accelerator=accelerator, temperature=0.8)


def _batch():
    """Two prompts (of 5 and 3 real tokens, left-padded to 6) interleaved over 6 rows, with
    completions of 1 to 6 real tokens right-padded to a step width of 9 (wider than any)."""
    torch.manual_seed(0)
    prompts = [torch.randint(5, 400, (5,)), torch.randint(5, 400, (3,))]
    lengths = [4, 2, 6, 1, 3, 5]
    ids, mask = torch.zeros(6, 15, dtype=torch.long), torch.zeros(6, 15, dtype=torch.long)
    for row, n in enumerate(lengths):
        p = prompts[row % 2]
        ids[row, 6 - len(p):6], mask[row, 6 - len(p):6] = p, 1
        ids[row, 6:6 + n], mask[row, 6:6 + n] = torch.randint(5, 400, (n,)), 1
        ids[row, 6 + n:] = 2  # padding holds some token id, as TRL's does
    return ids, mask


@pytest.mark.parametrize("batch_size", [6, 4])
def test_shared_prompt_pass_equals_trls_in_values_and_gradients(tiny, batch_size):
    """Same per-token log-probs and entropies as TRL's full-width pass, and the same LoRA
    gradients of a loss over both; chunks of 4 rows split a group across chunks."""
    from trl import GRPOTrainer

    from research.trainers.trl_prefix import shared_prompt_logps

    ids, mask = _batch()
    trl_pass = types.MethodType(GRPOTrainer._get_per_token_logps_and_entropies, _trainer())
    outs, grads = [], []
    for shared in (False, True):
        model = _policy(tiny)
        score = shared_prompt_logps(_trainer(), trl_pass) if shared else trl_pass
        logps, entropy, _ = score(model, ids, mask, 9, batch_size=batch_size,
                                  compute_entropy=True)
        completion_mask = mask[:, 6:]
        (-(logps * completion_mask).sum() - 0.01 * (entropy * completion_mask).sum()).backward()
        outs.append((logps.detach(), entropy.detach()))
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()
                      if p.grad is not None})
    (trl_logps, trl_entropy), (logps, entropy) = outs
    assert logps.shape == trl_logps.shape == (6, 9)
    scored = mask[:, 6:].bool()
    torch.testing.assert_close(logps[scored], trl_logps[scored], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(entropy[scored], trl_entropy[scored], atol=1e-5, rtol=1e-5)
    assert (logps[~scored] == 0).all() and (entropy[~scored] == 0).all()
    assert (logps[scored] != 0).all()
    assert set(grads[0]) == set(grads[1]) and any("lora" in n for n in grads[0])
    for name, g in grads[0].items():
        assert g.abs().sum() > 0, name
        torch.testing.assert_close(grads[1][name], g, atol=1e-5, rtol=1e-4, msg=name)


def test_calls_it_does_not_cover_go_to_trls_pass(tiny):
    """Without the compact head, or under gradient checkpointing, TRL's pass runs."""
    from research.trainers.trl_prefix import shared_prompt_logps

    calls = []

    def trl_pass(*args, **kwargs):
        calls.append(args)
        return "trl"

    model = _policy(tiny)
    score = shared_prompt_logps(_trainer(), trl_pass)
    ids, mask = _batch()
    base = model.get_base_model()
    (getattr(base, "activation_checkpointing_enable", None)
     or base.gradient_checkpointing_enable)()
    assert score(model, ids, mask, 9) == "trl"
    plain = copy.deepcopy(tiny[0])  # no compact head
    assert score(plain, ids, mask, 9) == "trl" and len(calls) == 2
    (getattr(base, "activation_checkpointing_disable", None)
     or base.gradient_checkpointing_disable)()
    assert score(model, ids, mask, 9, pixel_values=torch.zeros(1)) == "trl"
    assert len(calls) == 3


def _fake_trainer(loss_type: str, batch: dict, accumulation: int = 2):
    generated = []

    def generate(generation_batch):
        generated.append(generation_batch)
        return batch

    trainer = types.SimpleNamespace(
        loss_type=loss_type, num_iterations=1, _step=0, _buffered_inputs=None,
        model=types.SimpleNamespace(training=True), _generate_and_score_completions=generate,
        args=types.SimpleNamespace(steps_per_generation=2,
                                   gradient_accumulation_steps=accumulation))
    return trainer, generated


def _generation_batch():
    """Two groups of 4 rows, interleaved as a shuffle would leave them."""
    prompts = torch.tensor([[0, 7, 8], [5, 6, 9]])[torch.tensor([0, 1] * 4)]
    lengths = torch.tensor([3, 1, 2, 4, 1, 2, 4, 3])
    completion_mask = (torch.arange(4)[None, :] < lengths[:, None]).long()
    return {"prompt_ids": prompts, "prompt_mask": (prompts != 0).long(),
            "completion_ids": torch.arange(32).reshape(8, 4), "completion_mask": completion_mask,
            "advantages": torch.arange(8.0), "num_items_in_batch": torch.tensor(20.0),
            "sampling_per_token_logps": None, "names": list("abcdefgh")}


def test_micro_batches_hold_whole_groups_longest_first():
    """Under dapo the two micro-batches are the two groups, each longest completion first,
    every per-row value moved with its row; the step's scalars and Nones kept."""
    from research.trainers.trl_prefix import grouped_prepare_inputs

    trainer, generated = _fake_trainer("dapo", _generation_batch())
    prepare = types.MethodType(grouped_prepare_inputs(lambda b: "trl"), trainer)
    first = prepare(["questions"])
    trainer._step = 1
    second = prepare(["not used"])
    assert generated == [["questions"]]  # one generation for both micro-batches
    assert first["names"] == ["g", "a", "c", "e"] and second["names"] == ["d", "h", "f", "b"]
    assert (first["prompt_ids"] == torch.tensor([0, 7, 8])).all()
    assert (second["prompt_ids"] == torch.tensor([5, 6, 9])).all()
    assert first["completion_mask"].sum(1).tolist() == [4, 3, 2, 1]
    assert first["advantages"].tolist() == [6.0, 0.0, 2.0, 4.0]
    assert first["completion_ids"][0].tolist() == list(range(24, 28))
    assert first["num_items_in_batch"] == 20 and first["sampling_per_token_logps"] is None


@pytest.mark.parametrize("loss_type,accumulation", [("bnpo", 2), ("dapo", 1)])
def test_trls_shuffle_kept_where_grouping_would_change_the_gradient(loss_type, accumulation):
    """bnpo normalises per micro-batch; two optimiser steps per generation batch would take
    different rows: TRL's own _prepare_inputs runs."""
    from research.trainers.trl_prefix import grouped_prepare_inputs, orders_by_group

    trainer, generated = _fake_trainer(loss_type, _generation_batch(), accumulation)
    assert not orders_by_group(trainer)
    prepare = types.MethodType(grouped_prepare_inputs(lambda b: ("trl", b)), trainer)
    assert prepare(["q"]) == ("trl", ["q"]) and generated == []
