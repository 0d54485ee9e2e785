"""The verl engine on CPU (verl installs without a GPU but cannot train there): the agent loop
against a scripted server manager and the real retrieval service, the generated config
checked by verl's own config classes, verl's GRPO maths against the protocol's. Runs in the
verl environment (bash scripts/setup_verl.sh); skipped elsewhere. The pieces that need no
verl: tests/test_verl_launch.py."""

from __future__ import annotations

import asyncio
import contextlib
import re
import sys
from pathlib import Path

import pytest
from conftest import token

from research.trainers.config import load_config

# --- verl itself ---------------------------------------------------------------------------------

verl = pytest.importorskip("verl", reason="the verl engine's tests run in .venv-verl "
                           "(bash scripts/setup_verl.sh)")
torch = pytest.importorskip("torch")


class ScriptedServer:
    """verl's server manager, answering from a script of texts (token ids out, as verl's
    servers do; no stop reason). Records every request. ``texts`` is one script that every
    request takes from, or a script per question: a trajectory (one request id) whose prompt
    holds the key plays that script from its start."""

    def __init__(self, tokenizer, texts: list[str] | dict[str, list[str]], eos: bool = True,
                 stop_reason: str = "completed"):
        self.tok, self.eos, self.stop_reason = tokenizer, eos, stop_reason
        self.texts = dict(texts) if isinstance(texts, dict) else list(texts)
        self.playing: dict[str, list[str]] = {}  # request id -> what is left of its script
        self.requests: list[dict] = []

    def script(self, request_id, prompt_ids) -> list[str]:
        if isinstance(self.texts, list):
            return self.texts
        if request_id not in self.playing:
            prompt = self.tok.decode(prompt_ids)
            [key] = [k for k in self.texts if k in prompt]
            self.playing[request_id] = list(self.texts[key])
        return self.playing[request_id]

    async def generate(self, request_id, *, prompt_ids, sampling_params, **kwargs):
        from verl.workers.rollout.replica import TokenOutput

        self.requests.append({"id": request_id, "prompt_ids": list(prompt_ids),
                              "params": dict(sampling_params)})
        script = self.script(request_id, prompt_ids)
        ids = self.tok.encode(script.pop(0), add_special_tokens=False)
        if self.eos and not script:
            ids.append(self.tok.eos_token_id)
        ids = ids[: sampling_params["max_tokens"]]
        step = len(self.requests) + 6  # verl tags each generation with the trainer's step
        return TokenOutput(token_ids=ids, log_probs=[-0.5] * len(ids), stop_reason=self.stop_reason,
                           extra_fields={"global_steps": step})


def test_agent_loop_reads_the_models_end_of_turn_tokens(tiny, tiny_path, tmp_path):
    import json
    import shutil

    _, tok = tiny
    model = tmp_path / "model"
    shutil.copytree(tiny_path, model)
    chat_end = tok.convert_tokens_to_ids("<|im_end|>")
    (model / "generation_config.json").write_text(json.dumps({"eos_token_id": [chat_end]}))
    server = ScriptedServer(tok, [" <answer> \\boxed{a} </answer><|im_end|> more"], eos=False)
    out = run_loop(lambda: agent_loop(tok, server, "http://127.0.0.1:9", model_path=str(model)),
                   "Q?")
    assert out.extra_fields["complete"] and out.response_ids[-1] == chat_end


def test_agent_loop_ends_an_aborted_generation(tiny):
    _, tok = tiny
    server = ScriptedServer(tok, [f"<search> {token(1)} </search>", "x"], eos=False,
                            stop_reason="aborted")
    out = run_loop(lambda: agent_loop(tok, server, "http://127.0.0.1:9"), "Q?")
    assert len(server.requests) == 1 and out.extra_fields["aborted"]
    assert out.extra_fields["finish_reason"] == "aborted"
    assert not out.extra_fields["complete"] and out.num_turns == 2


def test_agent_loop_skips_a_prompt_over_the_budget(tiny, caplog):
    """Not an error (on the legacy trainer one fails the step): one masked EOS, nothing
    generated, the reason in the extra fields and a warning with the length and the limit."""
    import logging

    _, tok = tiny
    server = ScriptedServer(tok, ["x"])
    with caplog.at_level(logging.WARNING, logger="research.trainers.verl_agent"):
        out = run_loop(lambda: agent_loop(tok, server, "http://127.0.0.1:9", prompt_length=16),
                       "Q?", global_steps=3)
    assert server.requests == []
    assert (out.response_ids, out.response_mask, out.response_logprobs) == (
        [tok.eos_token_id], [0], [0.0])
    assert len(out.prompt_ids) == 16 and out.num_turns == 1
    extra = out.extra_fields
    assert extra["finish_reason"] == "prompt_too_long"
    assert not extra["complete"] and extra["searches"] == 0
    assert (extra["min_global_steps"], extra["max_global_steps"]) == (3, 3)  # the v1 tags
    # the same fields as a rolled-out trajectory's (verl stacks each across the batch)
    from research.rollout.engine import Trajectory
    from research.trainers.verl_agent import extra_fields

    rolled = extra_fields(Trajectory(index=0, prompt_ids=[1]))
    assert set(extra) == {*rolled, "aborted", "min_global_steps", "max_global_steps"}
    [record] = [r for r in caplog.records if r.name == "research.trainers.verl_agent"]
    assert re.search(r"has \d+ tokens, over data.max_prompt_length=16", record.getMessage())


def agent_loop(tokenizer, server, search_url, response_length=256, model_path="/none",
               prompt_length=1024, **settings):
    from omegaconf import OmegaConf
    from verl.experimental.agent_loop.agent_loop import DictConfigWrap

    from research.trainers.verl_agent import ReSearchAgentLoop

    config = OmegaConf.create({"actor_rollout_ref": {"model": {"path": model_path}, "rollout": {
        "response_length": response_length, "prompt_length": prompt_length}}, "data": {}})
    return ReSearchAgentLoop(trainer_config=DictConfigWrap(config), server_manager=server,
                             tokenizer=tokenizer, processor=None, dataset_cls=None,
                             data_config=DictConfigWrap(config.data), search_url=search_url,
                             name="research_agent", tools=None, **settings)


def run_loop(loop_factory, question, **kwargs):
    async def go():
        loop = loop_factory()
        return await loop.run({"temperature": 1.0, "top_p": 1.0, "logprobs": True},
                              question=question, raw_prompt=question, **kwargs)
    return asyncio.run(go())


def test_agent_loop_masks_results_and_keeps_the_budget(tiny, service_url):
    _, tok = tiny
    search = f"<think> look </think> <search> {token(3)} </search> <result> made up"
    server = ScriptedServer(tok, [search, " <answer> \\boxed{alpha} </answer>"])
    out = run_loop(lambda: agent_loop(tok, server, service_url, rollout={"top_k": 1}),
                   f"What is {token(3)}?")
    text = tok.decode(out.response_ids)
    assert "made up" not in text  # the tokens after </search> are dropped
    assert out.extra_fields["searches"] == 1 and out.extra_fields["complete"]
    assert len(out.response_ids) == len(out.response_mask) == len(out.response_logprobs)
    inserted = [i for i, m in enumerate(out.response_mask) if m == 0]
    block = tok.decode([out.response_ids[i] for i in inserted])
    assert block.startswith(" <result>\n") and token(3) in block and block.endswith("</result>")
    assert all(out.response_logprobs[i] == 0.0 for i in inserted)
    assert all(out.response_logprobs[i] == -0.5 for i, m in enumerate(out.response_mask) if m)
    assert (out.extra_fields["min_global_steps"], out.extra_fields["max_global_steps"]) == (7, 8)
    assert out.num_turns == 4 and not out.extra_fields["aborted"]  # verl's count: 2k + 2
    first, second = server.requests
    assert first["params"]["stop"] == ["</search>"] and first["params"]["max_tokens"] == 256
    assert second["params"]["max_tokens"] == 256 - len(second["prompt_ids"]) + len(
        first["prompt_ids"])
    assert first["id"] == second["id"]  # one trajectory, one server
    # turn 2 generates from the prompt and every earlier response token, inserted ones included
    done = len(second["prompt_ids"]) - len(first["prompt_ids"])
    assert second["prompt_ids"] == first["prompt_ids"] + out.response_ids[:done]
    assert 0 in out.response_mask[:done] and out.response_mask[done:] == [1] * (
        len(out.response_ids) - done)
    assert out.prompt_ids == first["prompt_ids"]
    assert tok.decode(out.prompt_ids).endswith(f"User: What is {token(3)}?. Assistant:")


def test_agent_loop_keeps_the_weight_versions_of_resumed_generations(tiny, service_url):
    """verl's fully-async server client resumes a generation cut by a weight update and tags
    it with the oldest and newest weights it used: the trajectory spans from the oldest of
    its generations to the newest (the v1 trainer's off-policy metrics read the span)."""
    _, tok = tiny

    class Resumed(ScriptedServer):
        async def generate(self, *args, **kwargs):
            out = await super().generate(*args, **kwargs)
            step = out.extra_fields["global_steps"]  # 7, then 8
            out.extra_fields |= {"min_global_steps": step - 2, "max_global_steps": step}
            return out

    server = Resumed(tok, [f"<search> {token(3)} </search>", " <answer> \\boxed{a} </answer>"])
    out = run_loop(lambda: agent_loop(tok, server, service_url), f"What is {token(3)}?")
    assert (out.extra_fields["min_global_steps"], out.extra_fields["max_global_steps"]) == (5, 8)
    assert out.extra_fields["searches"] == 1


def test_agent_loop_budget_and_failures(tiny):
    _, tok = tiny
    long = f"<search> {token(1)} </search>"
    server = ScriptedServer(tok, [long, long, "x " * 100], eos=False)
    out = run_loop(lambda: agent_loop(tok, server, "http://127.0.0.1:9", response_length=64,
                                      search_retries=0, search_timeout=2), "Q?")
    assert out.extra_fields["search_failures"] >= 1
    assert "search failed" in tok.decode(out.response_ids)
    assert out.extra_fields["finish_reason"] == "length"
    start = len(server.requests[0]["prompt_ids"])
    for r in server.requests:  # each turn asks for exactly the budget left
        assert r["params"]["max_tokens"] == 64 - (len(r["prompt_ids"]) - start)
    assert len(out.response_ids) == 64  # the budget was spent, not overrun (no slicing needed)


def compose(hydra_overrides):
    import os

    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config

    cfg_dir = os.path.join(os.path.dirname(verl.__file__), "trainer", "config")
    with initialize_config_dir(config_dir=cfg_dir, version_base=None):
        cfg = hydra_compose(config_name="ppo_trainer", overrides=hydra_overrides)
    validate_config(cfg, use_reference_policy=need_reference_policy(cfg),
                    use_critic=need_critic(cfg))
    return cfg


def test_generated_config_passes_verls_own_checks(tmp_path):
    from verl.utils.config import omega_conf_to_dataclass

    from research.trainers.verl_launch import agent_loop_entries, overrides

    config = load_config("original", ["data.train=/data/train.parquet"], engine="verl")
    cfg = compose(overrides(config, model_path="/models/Qwen2.5-7B",
                            train_files="/data/train.parquet", val_files="/data/dev.parquet",
                            agent_loops=str(tmp_path / "agent_loops.yaml")))
    actor = omega_conf_to_dataclass(cfg.actor_rollout_ref.actor)
    rollout = omega_conf_to_dataclass(cfg.actor_rollout_ref.rollout)
    algo = omega_conf_to_dataclass(cfg.algorithm)
    # (verl 0.9.1's RewardManagerConfig does not instantiate on its own: its __post_init__
    # calls a parent's that does not exist; the reward keys are checked as values below)
    assert cfg.reward.custom_reward_function.path.endswith("research/trainers/verl_reward.py")
    assert cfg.reward.custom_reward_function.name == "compute_score"
    assert (actor.clip_ratio_low, actor.clip_ratio_high, actor.loss_agg_mode) == (
        0.2, 0.2, "token-mean")
    assert actor.use_kl_loss and actor.kl_loss_coef == 0.001
    assert actor.use_dynamic_bsz and actor.ppo_max_token_len_per_gpu == 17408
    assert actor.entropy_from_logits_with_chunking
    assert cfg.actor_rollout_ref.ref.log_prob_use_dynamic_bsz  # follows the actor
    assert cfg.actor_rollout_ref.ref.log_prob_max_token_len_per_gpu == 17408
    assert (rollout.n, rollout.tensor_model_parallel_size, rollout.response_length) == (5, 2, 8192)
    assert rollout.dtype == "bfloat16" and cfg.actor_rollout_ref.actor.fsdp_config.dtype == (
        "bfloat16")
    # the forward-only reference holds bf16 weights (verl's default loads it in fp32)
    import torch
    from verl.utils.torch_dtypes import PrecisionType

    ref = cfg.actor_rollout_ref.ref.fsdp_config
    assert ref.dtype == "bfloat16" and PrecisionType.to_dtype(ref.model_dtype) == torch.bfloat16
    assert algo.adv_estimator == "grpo" and algo.norm_adv_by_std_in_grpo
    assert cfg.reward.custom_reward_function.reward_kwargs.reward_name == "v1"
    assert cfg.ray_kwargs.ray_init.runtime_env.env_vars.WANDB_MODE == "offline"
    assert (cfg.trainer.test_freq, cfg.data.val_max_samples) == (10, 100)
    [entry] = agent_loop_entries(config, "http://127.0.0.1:8000")
    assert entry["_target_"] == "research.trainers.verl_agent.ReSearchAgentLoop"


def test_lora_several_nodes_and_no_dev_set_compose(tmp_path, monkeypatch):
    import sys
    import types

    from research.trainers.verl_launch import overrides

    # verl checks a LoRA rank against vLLM's allowed ranks, importing vLLM (not on CPU): the
    # same check against verl's own fallback list
    ranks = (1, 8, 16, 32, 64, 128, 256, 320, 512)
    stub = types.ModuleType("verl.workers.rollout.vllm_rollout.utils")
    stub.get_vllm_max_lora_rank = lambda rank: min(r for r in ranks if r >= rank)
    monkeypatch.setitem(sys.modules, stub.__name__, stub)
    config = load_config("original", [
        "model.lora_rank=32", "run.save_total_limit=2", "data.train_limit=1000",
        "data.dev=null", "run.eval_steps=0", "cluster.nnodes=2", "rollout.seed=3",
        "cluster.max_tokens_per_gpu=null", "run.wandb=off"], engine="verl")
    cfg = compose(overrides(config, model_path="/models/Qwen2.5-7B",
                            train_files="/data/train.parquet", val_files=None,
                            agent_loops=str(tmp_path / "agent_loops.yaml")))
    m = cfg.actor_rollout_ref.model
    assert (m.lora_rank, m.lora_alpha, m.target_modules) == (32, 64, "all-linear")
    assert cfg.trainer.max_actor_ckpt_to_keep == 2 and cfg.data.train_max_samples == 1000
    assert (cfg.trainer.test_freq, cfg.trainer.val_before_train, cfg.data.val_max_samples) == (
        -1, False, 1)
    assert not cfg.actor_rollout_ref.actor.use_dynamic_bsz
    assert cfg.actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu == 8
    env = cfg.ray_kwargs.ray_init.runtime_env
    assert env.py_executable == sys.executable and env.env_vars.WANDB_MODE == "disabled"
    assert (Path(env.env_vars.PYTHONPATH) / "research" / "trainers").is_dir()
    assert cfg.trainer.nnodes == 2 and cfg.actor_rollout_ref.rollout.seed == 3


def test_verls_dataset_reads_the_rows_parquet(tiny, tmp_path):
    """verl's RLHFDataset and collate_fn on the launcher's rows, under the composed data
    section: the question reaches the agent loop as written, the answers the reward."""
    from verl.utils.dataset.rl_dataset import RLHFDataset, collate_fn

    from research.trainers.verl_agent import question_of
    from research.trainers.verl_launch import overrides, rows_file

    _, tok = tiny
    rows = rows_file("squad-open-mini", "train", 3, tmp_path / "train.parquet")
    config = load_config("original", ["data.dev=null", "run.eval_steps=0"], engine="verl")
    cfg = compose(overrides(config, model_path="/m", train_files=rows, val_files=None,
                            agent_loops=str(tmp_path / "agent_loops.yaml")))
    data = RLHFDataset(cfg.data.train_files, tok, cfg.data,
                       max_samples=cfg.data.train_max_samples)
    batch = collate_fn([data[i] for i in range(len(data))])
    assert len(data) == 3 and list(batch["raw_prompt"]) == list(batch["question"])
    assert question_of({"question": batch["question"][0]}) == batch["question"][0]
    assert all(len(r["ground_truth"]) >= 1 for r in batch["reward_model"])
    assert list(batch["data_source"]) == ["squad-open-mini"] * 3


class LocalRewardWorker:
    """verl's reward-loop worker, in the agent-loop worker's process (not an actor of its
    own): ``compute_score.remote(data)`` runs verl's NaiveRewardManager with the custom
    reward function the config names."""

    def __init__(self, cfg, tokenizer):
        self.cfg, self.tokenizer, self.manager = cfg, tokenizer, None
        self.compute_score = self

    def remote(self, data):
        from verl.experimental.reward_loop.reward_manager.naive import NaiveRewardManager
        from verl.trainer.ppo.reward import get_custom_reward_fn

        if self.manager is None:  # it keeps the running event loop: built inside it
            self.manager = NaiveRewardManager(self.cfg, self.tokenizer,
                                              get_custom_reward_fn(self.cfg))
        return self.manager.run_single(data)


# --- verl's agent-loop workers, on both trainer paths ---------------------------------------
# The same two questions through the legacy trainer's AgentLoopWorker (trainer.use_v1: false)
# and the default v1 trainer's AgentLoopWorkerTQ (TransferQueue): one searches once and
# answers; one answers and rambles on past the response budget (no EOS: over length). A third,
# LONG, has a prompt over the prompt budget: not rolled out, and the step goes on.

BUDGET = 256  # rollout.max_response_tokens
LONG = "What is " + "long " * 600 + "?"  # over cluster.max_prompt_tokens (512)
ANSWER = "<think> t </think> <answer> \\boxed{alpha} </answer>"
SCRIPTS = {token(3): [f"<search> {token(3)} </search>", ANSWER],
           token(4): [ANSWER + " more" * BUDGET]}


def worker_config(tok, tiny_path, service_url, tmp_path, *hydra: str,
                  more: tuple[str, ...] = ()):
    """The launcher's verl config for the two questions and the questions ``more``
    (``hydra``: further verl keys) and verl's RLHFDataset over their rows parquet."""
    import yaml
    from verl.utils.dataset.rl_dataset import RLHFDataset

    from research.data.rows import make_row, write_rows
    from research.trainers.verl_launch import agent_loop_entries, overrides

    rows = tmp_path / "train.parquet"
    questions = [f"What is {key}?" for key in SCRIPTS] + list(more)
    write_rows([make_row(q, ["alpha"], id=str(i), data_source="t", index=i)
                for i, q in enumerate(questions)], rows)
    config = load_config("original", ["data.dev=null", "run.eval_steps=0", "rollout.top_k=1",
                                      f"rollout.max_response_tokens={BUDGET}",
                                      "grpo.num_generations=2"], engine="verl")
    loops = tmp_path / "agent_loops.yaml"
    loops.write_text(yaml.safe_dump(agent_loop_entries(config, service_url)))
    cfg = compose(overrides(config, model_path=str(tiny_path), train_files=str(rows),
                            val_files=None, agent_loops=str(loops)) + list(hydra))
    return cfg, RLHFDataset(cfg.data.train_files, tok, cfg.data)


def check_trajectories(tok, found: list[dict]):
    """What both trainer paths must hand the update, per trajectory: ``response``, ``mask``
    and ``scores`` (the response's token ids, loss mask and token rewards, unpadded),
    ``reward`` (the reward's extra info), ``loop`` (the agent loop's extra fields),
    ``num_turns`` and ``question``."""
    searched = [t for t in found if token(3) in t["question"]]
    rambled = [t for t in found if token(4) in t["question"]]
    assert searched and rambled and len(searched) + len(rambled) == len(found)
    for t in searched:
        inserted = [i for i, m in enumerate(t["mask"]) if m == 0]
        assert inserted and "<result>" in tok.decode([t["response"][i] for i in inserted])
        assert t["mask"][-1] == 1 and t["response"][-1] == tok.eos_token_id
        assert t["scores"][-1] == 1.0 and sum(t["scores"]) == 1.0  # on the last token only
        assert (t["reward"]["format_ok"], t["reward"]["searches"], t["reward"]["acc"]) == (
            1.0, 1.0, 1.0)
        assert t["loop"]["searches"] == 1 and t["loop"]["complete"]
        assert t["num_turns"] == 4
    for t in rambled:  # the budget spent exactly, every token the model's, no reward
        assert len(t["response"]) == BUDGET and set(t["mask"]) == {1}
        assert t["loop"]["finish_reason"] == "length" and not t["loop"]["complete"]
        assert tok.eos_token_id not in t["response"] and ANSWER in tok.decode(t["response"])
        assert set(t["scores"]) == {0.0}  # a correct answer, but over length
        assert (t["reward"]["format_ok"], t["reward"]["acc"]) == (0.0, 0.0)
        assert t["loop"]["searches"] == 0 and t["num_turns"] == 2


def test_legacy_trainers_agent_loop_worker_takes_the_loops_output(
        tiny, tiny_path, service_url, tmp_path):
    """verl's AgentLoopWorker (the legacy trainer's, ``trainer.use_v1: false``; scripted
    server) and NaiveRewardManager (the custom reward path) on a rows parquet: the batch
    padded to verl's widths, the masks, rewards and counts of check_trajectories."""
    from verl import DataProto
    from verl.experimental.agent_loop.agent_loop import AgentLoopWorker
    from verl.utils.dataset.rl_dataset import collate_fn

    _, tok = tiny
    cfg, data = worker_config(tok, tiny_path, service_url, tmp_path, "trainer.use_v1=false",
                              more=(LONG,))
    worker = AgentLoopWorker(cfg, ScriptedServer(tok, SCRIPTS), reward_loop_worker_handles=[
        LocalRewardWorker(cfg, tok)])
    batch = DataProto.from_single_dict(collate_fn([data[i] for i in range(len(data))]))
    batch.meta_info["global_steps"] = 1
    out = asyncio.run(worker.generate_sequences(batch))
    assert out.batch["responses"].shape == (3, BUDGET)
    width, extra = out.batch["prompts"].shape[1], out.non_tensor_batch
    [long] = [i for i in range(len(out)) if extra["raw_prompt"][i] == LONG]
    # the over-long prompt: one masked token, reward 0 and the reason, the step goes on
    assert int(out.batch["attention_mask"][long, width:].sum()) == 1
    assert out.batch["response_mask"][long].sum() == 0 and out.batch["rm_scores"][long].sum() == 0
    assert extra["finish_reason"][long] == "prompt_too_long"
    assert list(extra["prompt_too_long"]) == [float(i == long) for i in range(len(out))]
    assert "prompt_too_long" in out.meta_info["reward_extra_keys"]
    found = []
    for i in sorted(set(range(len(out))) - {long}):
        n = int(out.batch["attention_mask"][i, width:].sum())  # the response, unpadded
        assert out.batch["response_mask"][i, n:].sum() == 0  # padding is masked
        found.append({
            "question": extra["raw_prompt"][i], "response": out.batch["responses"][i, :n].tolist(),
            "mask": out.batch["response_mask"][i, :n].tolist(),
            "scores": out.batch["rm_scores"][i, :n].tolist(),
            "reward": {k: extra[k][i] for k in out.meta_info["reward_extra_keys"]},
            "loop": {k: extra[k][i] for k in ("searches", "finish_reason", "complete")},
            "num_turns": int(extra["__num_turns__"][i])})
    check_trajectories(tok, found)
    assert {"format_ok", "searches", "acc"} <= set(out.meta_info["reward_extra_keys"])


def test_v1_trainers_agent_loop_worker_puts_the_loops_output_in_transfer_queue(
        tiny, tiny_path, service_url, tmp_path):
    """The default v1 trainer's path, as its sync trainer drives it: TransferQueue started
    from verl's ``transfer_queue`` config on a local Ray, verl's AgentLoopManagerTQ with one
    AgentLoopWorkerTQ actor (scripted server, NaiveRewardManager in it), the prompts
    registered and submitted, verl's ReplayBuffer sampling the finished groups; then the
    fields the update and the validation metrics read from TransferQueue."""
    import uuid

    import numpy as np
    import ray
    from ray import cloudpickle

    tq = pytest.importorskip("transfer_queue", reason="the v1 trainer's path needs "
                             "TransferQueue: the verl extra installs it (bash "
                             "scripts/setup_verl.sh)")
    from verl.trainer.ppo.metric_utils import process_validation_metrics
    from verl.trainer.ppo.v1 import AgentLoopManagerTQ
    from verl.trainer.ppo.v1.replay_buffer import ReplayBuffer
    from verl.utils import tensordict_utils as tu
    from verl.utils.dataset.rl_dataset import collate_fn

    _, tok = tiny
    cfg, data = worker_config(tok, tiny_path, service_url, tmp_path,
                              "actor_rollout_ref.rollout.agent.num_workers=1",
                              # verl's default is 8 storage actors of one CPU each
                              "transfer_queue.backend.SimpleStorage.num_data_storage_units=1",
                              more=(LONG,))
    assert cfg.trainer.use_v1 and cfg.trainer.v1.trainer_mode == "sync"
    this = sys.modules[__name__]  # the scripted server and reward worker go to the actor
    cloudpickle.register_pickle_by_value(this)
    ray.init(num_cpus=3, include_dashboard=False)  # TQ controller, storage unit, worker
    try:
        tq.init(cfg.transfer_queue)  # as verl's TaskRunnerV1
        manager = AgentLoopManagerTQ.create(
            config=cfg, llm_client=ScriptedServer(tok, SCRIPTS),
            reward_loop_worker_handles=[LocalRewardWorker(cfg, tok)])
        batch_dict = collate_fn([data[i] for i in range(len(data))])  # the trainer's batch
        batch_dict["uid"] = np.array([str(uuid.uuid4()) for _ in range(len(data))],
                                     dtype=object)
        batch = tu.get_tensordict(batch_dict)
        tu.assign_non_tensor_data(batch, "global_steps", 1)
        uids = list(batch["uid"])
        tq.kv_batch_put(keys=uids, partition_id="train", tags=[
            {"is_prompt": True, "status": "pending", "global_steps": 1} for _ in uids])
        manager.generate_sequences(batch)  # returns at once; the worker puts its outputs
        status = wait_for_groups(tq, uids, timeout=180)
        assert set(status.values()) == {"finished"}, status
        buffer = ReplayBuffer(
            trainer_mode="sync", trainer_config=cfg.trainer.v1.sync,
            max_off_policy_threshold=cfg.trainer.v1.sampler.max_off_policy_threshold,
            max_off_policy_strategy=cfg.trainer.v1.sampler.max_off_policy_strategy,
            sampler_kwargs=cfg.trainer.v1.sampler.sampler_kwargs, poll_interval=0.2,
            refill_fn=lambda k: pytest.fail(f"{k} prompt group(s) failed"))
        meta, _ = buffer.sample(global_steps=1, partition_id="train", batch_size=len(uids))
        fields = ["question", "prompts", "responses", "response_mask", "loss_mask",
                  "rm_scores", "rollout_log_probs", "num_turns", "extra_fields", "input_ids",
                  "data_source"]
        got = tq.kv_batch_get(keys=meta.keys, partition_id="train", select_fields=fields)
    finally:
        with contextlib.suppress(Exception):
            tq.close()
        ray.shutdown()
        cloudpickle.unregister_pickle_by_value(this)
    assert sorted(k.rsplit("_", 2)[0] for k in meta.keys) == sorted(uids * 2)  # n = 2 each
    extra, questions, turns = (list(got[k]) for k in ("extra_fields", "question", "num_turns"))
    long = [i for i, q in enumerate(questions) if q == LONG]
    for i in long:  # over-long: one masked token, reward 0, the v1 trainer's step tags
        assert got["responses"][i].tolist() == [tok.eos_token_id]
        assert got["loss_mask"][i].tolist() == [0] and got["rm_scores"][i].tolist() == [0.0]
        assert extra[i]["reward_extra_info"]["prompt_too_long"] == 1.0
        assert meta.tags[i]["min_global_steps"] == meta.tags[i]["max_global_steps"] == 1
    keep = [i for i in range(len(meta.keys)) if i not in long]
    assert len(long) == 2 and len(keep) == 4
    found = [{"question": questions[i], "response": got["responses"][i].tolist(),
              "mask": got["response_mask"][i].tolist(), "scores": got["rm_scores"][i].tolist(),
              "reward": extra[i]["reward_extra_info"], "loop": extra[i],
              "num_turns": turns[i]} for i in keep]
    check_trajectories(tok, found)
    for i, t in zip(keep, found, strict=True):  # what verl's update reads beside the mask
        assert got["loss_mask"][i].tolist() == t["mask"]
        assert len(got["rollout_log_probs"][i]) == len(t["response"])
        assert got["input_ids"][i].tolist() == got["prompts"][i].tolist() + t["response"]
        assert meta.tags[i]["response_len"] == len(t["response"])
        assert meta.tags[i]["min_global_steps"] is not None  # the v1 metrics need them
    # the validation metrics verl's v1 trainer logs from the reward's extra info
    infos = {k: [e["reward_extra_info"][k] for e in extra]
             for k in ("format_ok", "searches", "prompt_too_long")}
    metrics = process_validation_metrics(list(got["data_source"]),
                                         [k.rsplit("_", 2)[0] for k in meta.keys], infos)
    assert metrics["t"]["format_ok"]["mean@2"] == pytest.approx(1 / 3)  # of three prompts
    assert metrics["t"]["searches"]["mean@2"] == pytest.approx(1 / 3)
    assert metrics["t"]["prompt_too_long"]["mean@2"] == pytest.approx(1 / 3)


def wait_for_groups(tq, uids: list[str], timeout: float) -> dict[str, str]:
    """The prompt groups' statuses in TransferQueue once each is finished or failed."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        tags = tq.kv_list("train").get("train", {})
        status = {u: tags.get(u, {}).get("status") for u in uids}
        if set(status.values()) <= {"finished", "failure"}:
            return status
        if time.monotonic() > deadline:
            pytest.fail(f"the agent loop worker did not finish in {timeout} s: {status}")
        time.sleep(0.2)


def test_several_nodes_need_every_path_on_every_node(tmp_path):
    """The launch check with nnodes > 1, on a one-node Ray cluster started here."""
    from research.configtree import ConfigError
    from research.trainers.verl_launch import check_shared_paths, shared_paths

    lines = [f"data.train_files={tmp_path}", f"data.val_files={tmp_path}/gone.parquet",
             "trainer.nnodes=2"]
    paths = shared_paths(lines)
    assert paths[2:] == [str(tmp_path), f"{tmp_path}/gone.parquet"]
    with pytest.raises(ConfigError, match=r"not on every node .*: .*gone\.parquet$"):
        check_shared_paths(paths, 1, address="local", num_cpus=1, include_dashboard=False)
    with pytest.raises(ConfigError, match="cluster.nnodes=2 but the Ray cluster has 1 node"):
        check_shared_paths(paths[:3], 2, address="local", num_cpus=1, include_dashboard=False)


def test_verls_wandb_tracking_starts_offline_without_a_key(tmp_path):
    """What stopped the first run: verl's Tracking with wandb, no key, no terminal."""
    import os
    import subprocess
    import sys

    from research.trainers.run_setup import wandb_env

    config = load_config("original", [f"run.output_dir={tmp_path}"], engine="verl")
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env |= wandb_env(config, environ=env) | {"HOME": str(tmp_path)}
    code = ("from verl.utils.tracking import Tracking\n"
            "t = Tracking('research', 'smoke', ['console', 'wandb'], config={})\n"
            "t.log({'x': 1.0}, step=1)\n")
    done = subprocess.run([sys.executable, "-c", code], env=env, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert list(tmp_path.glob("wandb/offline-run-*")), "the offline run is in run.output_dir"


def test_verls_grpo_maths_equal_the_protocols():
    """Under the project's settings verl's advantage, policy loss and KL equal
    research.trainers.grpo_math, which tests/test_grpo_settings.py proves TRL computes."""
    import numpy as np
    from verl.trainer.ppo import core_algos
    from verl.workers.config import ActorConfig

    from research.trainers import grpo_math

    g = torch.Generator().manual_seed(0)
    B, G, T = 3, 5, 7
    rewards = torch.randint(0, 3, (B * G,), generator=g).float() / 2
    mask = (torch.rand(B * G, T, generator=g) > 0.3).float()
    mask[:, 0] = 1
    old = -torch.rand(B * G, T, generator=g) * 3
    new = old + (torch.rand(B * G, T, generator=g) - 0.5) * 0.8  # ratios within e^(+-0.4)
    ref = old + (torch.rand(B * G, T, generator=g) - 0.5)

    token_rewards = torch.zeros(B * G, T)
    last = mask.cumsum(1).argmax(1)
    token_rewards[torch.arange(B * G), last] = rewards
    index = np.repeat(np.arange(B), G)
    adv, _ = core_algos.compute_grpo_outcome_advantage(token_rewards, mask, index)
    ours = grpo_math.group_advantages(rewards, G)
    torch.testing.assert_close(adv, ours.unsqueeze(1) * mask)

    actor = ActorConfig(strategy="fsdp", rollout_n=G, ppo_micro_batch_size_per_gpu=1,
                        clip_ratio=0.2, clip_ratio_low=0.2, clip_ratio_high=0.2,
                        loss_agg_mode="token-mean")
    pg, _ = core_algos.compute_policy_loss_vanilla(old, new, adv, mask, "token-mean", actor)
    kl = core_algos.kl_penalty(new, ref, "low_var_kl")
    verl_loss = pg + 0.001 * core_algos.agg_loss(kl, mask, "token-mean")
    protocol = grpo_math.policy_loss(new, old, ours, mask, kl=grpo_math.k3_kl(new, ref))
    torch.testing.assert_close(verl_loss, protocol)
