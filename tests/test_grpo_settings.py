"""TRL's GRPOTrainer, with the protocol's settings, computes the protocol's advantages and loss.

A real ``GRPOTrainer`` on the tiny random Qwen2 model gets a hand-made batch through its
``rollout_func`` (3 prompts x 4 responses, uneven prompt and response lengths, inserted result
tokens marked 0 in ``env_mask``, trailing padding) and hand-made rewards. Its advantages and
loss (TRL's own ``_generate_and_score_completions`` and ``_compute_loss``) are compared with
``research.trainers.grpo_math``; the policy / old / reference log-probs and entropies enter
TRL's loss through its ``_get_per_token_logps_and_entropies`` so that they can be chosen.
"""

from __future__ import annotations

import subprocess
import sys
from collections import Counter

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
trl = pytest.importorskip("trl", reason="the TRL engine is optional: pip install trl==1.16.0")

pytestmark = pytest.mark.filterwarnings(  # TRL 1.16.0's config sets a renamed Trainer option
    "ignore:.*gradient_checkpointing` is deprecated:FutureWarning")

from research.trainers.grpo_math import (  # noqa: E402
    group_advantages,
    k3_kl,
    policy_loss,
    token_mean,
)
from research.trainers.trl_settings import (  # noqa: E402
    TRL_ADVANTAGE_EPS,
    TRL_VERSION,
    UNSUPPORTED,
    protocol_grpo_config,
    protocol_grpo_kwargs,
    step_batch_kwargs,
)

B, G, T = 3, 4, 6  # prompts, responses per prompt, longest response
N = B * G
PROMPT_IDS = [[11, 12, 13], [21, 22, 23, 24, 25], [31, 32]]
LENGTHS = [6, 4, 6, 5, 3, 6, 2, 6, 6, 5, 4, 6]
INSERTED = {0: [2, 3], 2: [1, 2, 3], 5: [3], 8: [2, 3, 4], 11: [1, 2]}  # row -> result tokens


def _rewards() -> torch.Tensor:
    """One random group, one with the ReSearch reward's values, one with a zero std."""
    random = torch.rand(G, generator=torch.Generator().manual_seed(1))
    return torch.cat([random, torch.tensor([0.1, 0.1, 1.0, 0.0]), torch.ones(G)])


REWARDS = _rewards()  # [N]


def _env_mask(row: int) -> list[int]:
    return [0 if t in INSERTED.get(row, ()) else 1 for t in range(LENGTHS[row])]


def _mask() -> torch.Tensor:
    """The loss mask the protocol wants: 1 on sampled tokens, 0 on results and padding."""
    mask = torch.zeros(N, T)
    for row in range(N):
        mask[row, : LENGTHS[row]] = torch.tensor(_env_mask(row), dtype=torch.float32)
    return mask  # [N, T]


MASK = _mask()


def _rows(eos: int) -> list[dict]:
    g = torch.Generator().manual_seed(2)
    rows = []
    for row in range(N):
        ids = torch.randint(100, 1000, (LENGTHS[row],), generator=g).tolist()
        if row % 2 == 0:  # even rows end with EOS, odd rows are truncated (over length)
            ids[-1] = eos
        env = _env_mask(row)
        logprobs = [-(torch.rand(1, generator=g).item() + 0.1) * e for e in env]
        rows.append({"prompt_ids": PROMPT_IDS[row // G], "completion_ids": ids,
                     "env_mask": env, "logprobs": logprobs})
    return rows


def _make_rollout(rows: list[dict], seen: dict):
    def rollout(prompts, trainer):
        seen["prompts"] = list(prompts)
        counts = Counter()
        out = {"prompt_ids": [], "completion_ids": [], "logprobs": [], "env_mask": [], "row": []}
        for prompt in prompts:
            row = int(prompt[1:]) * G + counts[prompt]
            counts[prompt] += 1
            for key in ("prompt_ids", "completion_ids", "logprobs", "env_mask"):
                out[key].append(rows[row][key])
            out["row"].append(row)  # an extra field: TRL passes it on to the reward functions
        return out

    return rollout


def _reward(prompts, completions, row, **kwargs):
    return [float(REWARDS[i]) for i in row]


@pytest.fixture(scope="module")
def make_trainer(tiny_path, tmp_path_factory):
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import GRPOTrainer

    tokenizer = AutoTokenizer.from_pretrained(tiny_path)
    rows = _rows(tokenizer.eos_token_id)
    dataset = Dataset.from_list([{"prompt": f"q{k}"} for k in range(B)])

    def make(**overrides):
        seen = {}
        config = protocol_grpo_config(**{
            "output_dir": str(tmp_path_factory.mktemp("out")), "num_generations": G,
            "per_device_train_batch_size": N, "gradient_accumulation_steps": 1,
            "max_completion_length": T,
            "use_cpu": True, "bf16": False, "gradient_checkpointing": False,
            "report_to": [], "save_strategy": "no", "shuffle_dataset": False, **overrides})
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("TRL_EXPERIMENTAL_SILENCE", "1")  # rollout_func is experimental in TRL
            trainer = GRPOTrainer(model=str(tiny_path), reward_funcs=_reward, args=config,
                                  train_dataset=dataset, processing_class=tokenizer,
                                  rollout_func=_make_rollout(rows, seen))
        trainer.model.train()
        trainer.current_gradient_accumulation_steps = config.gradient_accumulation_steps
        return trainer, seen

    return make


@pytest.fixture(scope="module")
def built(make_trainer):
    return make_trainer()  # (trainer, what its rollout_func saw)


@pytest.fixture(scope="module")
def trainer(built):
    return built[0]


@pytest.fixture(scope="module")
def generated(built):
    """TRL's scored generation batch, from the real dataloader and the rollout_func."""
    trainer, seen = built
    batch = next(iter(trainer.get_train_dataloader()))
    return trainer._generate_and_score_completions(batch), seen


def _log_probs(seed: int = 3):
    """Policy / old / reference log-probs and entropies ``[N, T]``; wild where the mask is 0."""
    g = torch.Generator().manual_seed(seed)
    logp = -(torch.rand(N, T, generator=g) * 3 + 0.05)
    old = logp + 0.3 * torch.randn(N, T, generator=g)  # ratios well outside [0.8, 1.2]
    ref = logp + (torch.rand(N, T, generator=g) * 4 - 2)  # k3 stays under the clamp (10)
    entropy = torch.rand(N, T, generator=g) * 3
    off = MASK == 0
    old[off], ref[off], entropy[off] = logp[off] + 15, logp[off] + 20, 1e4
    return logp, old, ref, entropy


def _trl_loss(trainer, monkeypatch, inputs, logp, entropy):
    """TRL's loss on ``inputs`` with the policy log-probs and entropies given (leaves)."""
    logp = logp.clone().requires_grad_(True)
    entropy = entropy.clone().requires_grad_(True)

    def chosen(model, input_ids, attention_mask, logits_to_keep, **kwargs):
        assert logits_to_keep == T and input_ids.shape[0] == logp.shape[0]
        return logp, entropy, None

    monkeypatch.setattr(trainer, "_get_per_token_logps_and_entropies", chosen)
    loss = trainer._compute_loss(trainer.model, inputs)
    loss.backward()
    return loss.detach(), logp.grad, entropy.grad


def _our_loss(logp, old, advantages, ref, entropy, clamp=10.0):
    logp = logp.clone().requires_grad_(True)
    entropy = entropy.clone().requires_grad_(True)
    loss = policy_loss(logp, old, advantages, MASK, clip=0.2, kl=k3_kl(logp, ref, clamp=clamp),
                       beta=0.001, entropy=entropy, entropy_coef=0.001)
    loss.backward()
    return loss.detach(), logp.grad, entropy.grad


# --- the settings ----------------------------------------------------------------------------


def test_pinned_trl_builds_the_protocol_config(tmp_path):
    assert trl.__version__ == TRL_VERSION, "TRL changed: re-read its GRPO code, then the pin"
    c = protocol_grpo_config(output_dir=str(tmp_path), use_cpu=True, bf16=False)
    assert c.per_device_train_batch_size * c.gradient_accumulation_steps == 256 * 5
    assert c.generation_batch_size == 256 * 5  # one generation per optimiser step
    assert (c.loss_type, c.scale_rewards, c.num_generations) == ("dapo", "group", 5)
    assert (c.beta, c.use_bias_correction_kl, c.entropy_coef) == (0.001, False, 0.001)
    assert (c.epsilon, c.epsilon_high, c.num_iterations, c.mask_truncated_completions) == (
        0.2, 0.2, 1, False)
    assert (c.learning_rate, c.lr_scheduler_type, c.max_grad_norm) == (1e-6, "constant", 1.0)
    assert protocol_grpo_kwargs(beta=0.0)["beta"] == 0.0
    assert {gap.setting for gap in UNSUPPORTED} >= {"advantage epsilon", "KL clamp"}


def test_one_step_per_prompt_batch():
    assert step_batch_kwargs(256, 5, per_device_train_batch_size=8, num_processes=8) == {
        "per_device_train_batch_size": 8, "gradient_accumulation_steps": 20}
    with pytest.raises(ValueError, match="not divisible"):
        step_batch_kwargs(256, 5, per_device_train_batch_size=3)


def test_settings_import_without_trl():
    code = ("import sys; sys.modules['trl'] = None\n"
            "import research.trainers, research.trainers.trl_settings as s\n"
            "assert s.protocol_grpo_kwargs()['loss_type'] == 'dapo'\n"
            "try:\n    s.protocol_grpo_config(output_dir='x')\n"
            "except ImportError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert f"pip install trl=={TRL_VERSION}" in out.stdout


# --- the rollout_func contract ----------------------------------------------------------------


def test_rollout_func_gets_each_prompt_repeated_and_its_env_mask_reaches_the_loss(generated):
    out, seen = generated
    assert seen["prompts"] == [f"q{k}" for k in range(B) for _ in range(G)]
    assert torch.equal((out["completion_mask"] * out["tool_mask"]).float(), MASK)
    assert out["num_items_in_batch"].item() == MASK.sum().item()
    assert out["prompt_mask"].sum(1).tolist() == [len(PROMPT_IDS[r // G]) for r in range(N)]
    # the returned log-probs are kept as sampling log-probs; no old log-probs are stored, so
    # the ratio's denominator is the current policy's detached log-probs (on-policy)
    assert out["sampling_per_token_logps"].shape == (N, T)
    assert "old_per_token_logps" not in out


# --- advantages -------------------------------------------------------------------------------


def test_advantages_are_the_protocols_group_advantages(generated):
    out, _ = generated
    trl_adv = out["advantages"]
    assert torch.allclose(trl_adv, group_advantages(REWARDS, G, eps=TRL_ADVANTAGE_EPS),
                          atol=1e-6, rtol=0)
    # the protocol's eps (1e-6) differs by well under 0.1% on these groups (see UNSUPPORTED)
    assert torch.allclose(trl_adv, group_advantages(REWARDS, G), rtol=1e-3, atol=1e-6)
    assert trl_adv[2 * G:].abs().max() == 0  # a zero-std group has no signal
    # the comparison can fail: the biased std gives other numbers
    assert not torch.allclose(trl_adv, group_advantages(REWARDS, G, unbiased=False), atol=1e-3)


def test_group_advantages_by_hand():
    adv = group_advantages(torch.tensor([0.0, 1.0, 2.0, 5.0, 5.0, 5.0]), 3)
    assert torch.allclose(adv, torch.tensor([-1.0, 0.0, 1.0, 0.0, 0.0, 0.0]))  # std 1 (unbiased)
    with pytest.raises(ValueError, match="divisible"):
        group_advantages(torch.zeros(5), 2)


# --- the loss ---------------------------------------------------------------------------------


def test_loss_and_its_gradient_are_the_protocols(trainer, generated, monkeypatch):
    out, _ = generated
    logp, old, ref, entropy = _log_probs()
    inputs = {**out, "old_per_token_logps": old, "ref_per_token_logps": ref}
    ours, our_dlogp, our_dentropy = _our_loss(logp, old, out["advantages"], ref, entropy)
    theirs, dlogp, dentropy = _trl_loss(trainer, monkeypatch, inputs, logp, entropy)

    assert abs(theirs.item() - ours.item()) < 1e-5
    assert torch.allclose(dlogp, our_dlogp, atol=1e-7, rtol=1e-5)
    assert torch.allclose(dentropy, our_dentropy, atol=1e-9, rtol=1e-5)
    masked = MASK == 0
    assert (dlogp[masked] == 0).all() and (dentropy[masked] == 0).all()  # inserted and padding
    assert (dlogp[~masked & (out["advantages"][:, None] != 0).expand(N, T)] != 0).any()
    # the batch exercises the clip on both sides
    ratio, adv = torch.exp(logp - old)[~masked], out["advantages"][:, None].expand(N, T)[~masked]
    assert ((ratio > 1.2) & (adv > 0)).any() and ((ratio < 0.8) & (adv < 0)).any()

    monkeypatch.setattr(trainer.args, "use_bias_correction_kl", True)  # TRL's default
    biased, _, _ = _trl_loss(trainer, monkeypatch, inputs, logp, entropy)
    assert abs(biased.item() - ours.item()) > 1e-5, "use_bias_correction_kl must stay False"


def test_returned_logprobs_do_not_enter_the_loss(trainer, generated, monkeypatch):
    out, _ = generated
    logp, _, ref, entropy = _log_probs()
    inputs = {**out, "ref_per_token_logps": ref}
    theirs, _, _ = _trl_loss(trainer, monkeypatch, inputs, logp, entropy)
    shifted = {**inputs, "sampling_per_token_logps": out["sampling_per_token_logps"] - 5}
    assert _trl_loss(trainer, monkeypatch, shifted, logp, entropy)[0] == theirs
    ours, _, _ = _our_loss(logp, logp, out["advantages"], ref, entropy)  # old = current
    assert abs(theirs.item() - ours.item()) < 1e-5


def test_trl_does_not_clamp_the_kl(trainer, generated, monkeypatch):
    """A documented gap: verl clamps k3 at 10, TRL does not."""
    out, _ = generated
    logp, old, ref, entropy = _log_probs()
    ref[1, 0] = logp[1, 0] + 4.0  # k3 = e^4 - 5 = 49.6 on a masked-in token
    inputs = {**out, "old_per_token_logps": old, "ref_per_token_logps": ref}
    theirs, _, _ = _trl_loss(trainer, monkeypatch, inputs, logp, entropy)
    unclamped, _, _ = _our_loss(logp, old, out["advantages"], ref, entropy, clamp=None)
    clamped, _, _ = _our_loss(logp, old, out["advantages"], ref, entropy)
    assert abs(theirs.item() - unclamped.item()) < 1e-5
    assert abs(theirs.item() - clamped.item()) > 1e-4


def test_token_mean_spans_the_micro_batches_of_a_step(make_trainer, generated, monkeypatch):
    """With gradient accumulation, "dapo" still divides by the tokens of the whole step."""
    from trl.trainer.utils import split_tensor_dict

    trainer, _ = make_trainer(per_device_train_batch_size=N // 2, gradient_accumulation_steps=2)
    out, _ = generated
    logp, old, ref, entropy = _log_probs()
    inputs = {**out, "old_per_token_logps": old, "ref_per_token_logps": ref}
    halves = split_tensor_dict(inputs, 2)
    total = sum(_trl_loss(trainer, monkeypatch, half, logp[i * 6:(i + 1) * 6],
                          entropy[i * 6:(i + 1) * 6])[0] for i, half in enumerate(halves))
    policy, _, _ = _our_loss(logp, old, out["advantages"], ref, torch.zeros(N, T))
    # TRL's entropy bonus is a mean per micro-batch, averaged over the micro-batches (as the
    # original's verl did); the policy and KL terms are one token mean over the step
    bonus = sum(token_mean(entropy[s], MASK[s]) for s in (slice(0, 6), slice(6, 12))) / 2
    assert abs(total.item() - (policy.item() - 0.001 * bonus.item())) < 1e-5


def test_real_forward_loss_matches(trainer, generated):
    """No substitution: TRL's own forward, old = current, reference = the frozen copy."""
    out, _ = generated
    model = trainer.model
    loss = trainer._compute_loss(model, dict(out))

    input_ids = torch.cat([out["prompt_ids"], out["completion_ids"]], dim=1)
    attention = torch.cat([out["prompt_mask"], out["completion_mask"]], dim=1)
    logits = model(input_ids=input_ids, attention_mask=attention).logits[:, -T - 1:-1]
    logps = torch.log_softmax(logits.float(), dim=-1)  # [N, T, V]
    logp = logps.gather(-1, out["completion_ids"].unsqueeze(-1)).squeeze(-1)  # [N, T]
    entropy = -(logps.exp() * logps).sum(-1)  # [N, T]
    ref = out["ref_per_token_logps"]
    assert torch.allclose(ref[MASK == 1], logp.detach()[MASK == 1], atol=1e-5)  # same weights
    ours = policy_loss(logp, logp.detach(), out["advantages"], MASK, kl=k3_kl(logp, ref),
                       entropy=entropy)
    assert abs(loss.item() - ours.item()) < 1e-5

    weight = model.get_input_embeddings().weight
    (g_trl,) = torch.autograd.grad(loss, weight)
    (g_ours,) = torch.autograd.grad(ours, weight)
    assert torch.allclose(g_trl, g_ours, atol=1e-7, rtol=1e-3)


def test_rollout_correction_weighs_each_token_by_the_truncated_ratio(make_trainer, generated,
                                                                     monkeypatch):
    """grpo.rollout_int8: the loss of a rollout sampled from another copy of the policy is the
    protocol's with each token's advantage times min(exp(logp - logp_rollout), cap)
    (truncated importance sampling); without the correction the rollout's log-probs do not
    enter the loss."""
    from research.trainers.trl_correction import install_rollout_correction

    trainer, _ = make_trainer()
    out, _ = generated
    logp, _, ref, entropy = _log_probs()
    g = torch.Generator().manual_seed(5)
    rollout = logp + 0.5 * torch.randn(N, T, generator=g)  # ratios on both sides of the cap
    inputs = {**out, "ref_per_token_logps": ref, "sampling_per_token_logps": rollout}
    plain, plain_dlogp, _ = _trl_loss(trainer, monkeypatch, inputs, logp, entropy)
    install_rollout_correction(trainer, cap=2.0)
    loss, dlogp, dentropy = _trl_loss(trainer, monkeypatch, inputs, logp, entropy)

    weights = torch.where(MASK.bool(), torch.exp(logp - rollout).clamp(max=2.0), 1.0)
    on = MASK.bool()
    assert (weights[on] == 2.0).any() and (weights[on] < 1).any()  # capped and below one
    ours, our_dlogp, our_dentropy = _our_loss(logp, logp, out["advantages"][:, None] * weights,
                                              ref, entropy)
    assert abs(loss.item() - ours.item()) < 1e-5
    assert torch.allclose(dlogp, our_dlogp, atol=1e-7, rtol=1e-5)
    assert torch.allclose(dentropy, our_dentropy, atol=1e-9, rtol=1e-5)
    assert not torch.allclose(dlogp, plain_dlogp)  # the correction changed the gradient
    facts = trainer._metrics["train"]
    assert facts["rollout_correction/clipped_share"][-1] == pytest.approx(
        float((weights[on] == 2.0).float().mean()))
    assert facts["rollout_correction/gap"][-1] == pytest.approx(
        float((logp - rollout)[on].abs().mean()), rel=1e-5)
    # a batch without the rollout's log-probs is left as it was
    bare = {k: v for k, v in inputs.items() if k != "sampling_per_token_logps"}
    assert _trl_loss(trainer, monkeypatch, bare, logp, entropy)[0] == plain
