"""The verl engine's pieces that need no verl: the reward entry verl calls and the launcher
(config -> verl overrides, agent-loop file, rows parquet). The rest runs in the verl
environment: tests/test_verl_engine.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import REPO

from research.trainers.verl_reward import compute_score

ANSWER = "<think> t </think> <answer> \\boxed{Paris} </answer>"


def test_reward_entry_scores_with_the_projects_reward():
    import numpy as np

    keys = {"score", "acc", "format_ok", "searches", "prompt_too_long"}
    ok = compute_score("hotpotqa", ANSWER, np.array(["Paris", "paris city"]),
                       {"complete": True, "searches": 2})
    assert ok == {"score": 1.0, "acc": 1.0, "format_ok": 1.0, "searches": 2.0,
                  "prompt_too_long": 0.0}
    skipped = compute_score("hotpotqa", "", "Paris", {"finish_reason": "prompt_too_long"})
    assert set(skipped) == keys and skipped["score"] == 0.0 and skipped["prompt_too_long"] == 1.0
    cut = compute_score("hotpotqa", ANSWER, "Paris", {"complete": False})
    assert set(cut) == keys and cut["score"] == 0.0 and cut["format_ok"] == 0.0
    wrong = compute_score("hotpotqa", ANSWER, ["Lyon"], {"complete": True},
                          reward_name="f1")
    assert wrong["score"] == 0.1 and wrong["acc"] == 0.0 and wrong["format_ok"] == 1.0
    # graded: a correct answer in a broken format scores 0.8 but is neither ok nor accurate
    # (its reason starts with "correct", which a reason-string check counted as ok)
    broken = compute_score("hotpotqa", "<answer> \\boxed{Paris} </answer>", ["paris"],
                           {"complete": True}, reward_name="graded")
    assert (broken["score"], broken["acc"], broken["format_ok"]) == (0.8, 0.0, 0.0)


def test_launcher_writes_the_run_files_and_refuses_without_a_service(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "research.trainers.verl_launch", "--config", "original",
           "model.path=smollm2-135m", "data.train=squad-open-mini", "data.train_limit=8",
           "data.dev=squad-open-mini", "data.dev_limit=4", f"run.output_dir={out}",
           "retrieval.search_url=http://127.0.0.1:8000", "--dry-run"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith(f"{sys.executable} -m verl.trainer.main_ppo ")
    lines = (out / "verl_overrides.txt").read_text().splitlines()
    assert "algorithm.adv_estimator=grpo" in lines and "actor_rollout_ref.rollout.n=5" in lines
    assert "data.train_batch_size=256" in lines
    assert "actor_rollout_ref.actor.optim.lr=1e-06" in lines
    assert "actor_rollout_ref.actor.kl_loss_type=low_var_kl" in lines
    assert "actor_rollout_ref.rollout.tensor_model_parallel_size=2" in lines
    assert (out / "train.parquet").exists() and (out / "agent_loops.yaml").exists()
    no_url = subprocess.run(cmd[:-2] + ["retrieval.search_url=null", "--dry-run"],
                            capture_output=True, text=True, timeout=300, cwd=REPO)
    assert no_url.returncode == 2 and "needs retrieval.search_url" in no_url.stderr
    assert "prompts over the prompt budget (cluster.max_prompt_tokens) dropped" in done.stderr
    assert "+ray_kwargs.ray_init.runtime_env.env_vars.WANDB_MODE=offline" in lines
    assert "data.train_max_samples=8" in lines and "data.val_max_samples=4" in lines
    no_model = subprocess.run(cmd[:-1] + [f"model.path={tmp_path}/missing", "--dry-run"],
                              capture_output=True, text=True, timeout=300, cwd=REPO)
    assert no_model.returncode == 2 and "Traceback" not in no_model.stderr
    assert no_model.stderr.strip().splitlines()[-1].startswith("error: model folder ")


def test_online_wandb_needs_a_key_before_launch_and_never_logs_it(tmp_path, monkeypatch):
    import pytest

    from research.configtree import ConfigError
    from research.trainers.verl_launch import prepare

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    config = _config(tmp_path, "run.wandb=online")
    with pytest.raises(ConfigError, match="run.wandb=online needs WANDB_API_KEY"):
        prepare(config)
    assert not (tmp_path / "run").exists()  # refused before anything was written
    monkeypatch.setenv("WANDB_API_KEY", "secret-key-123")
    lines = _overrides(config)
    assert "+ray_kwargs.ray_init.runtime_env.env_vars.WANDB_MODE=online" in lines
    assert not any("secret-key-123" in line or "WANDB_API_KEY" in line for line in lines)


def _config(tmp_path, *extra):
    from research.trainers.config import load_config

    return load_config("original", ["data.dev=null", "run.eval_steps=0",
                                    f"run.output_dir={tmp_path}/run", *extra], engine="verl")


def _overrides(config, val_files=None) -> list[str]:
    from research.trainers.verl_launch import overrides

    return overrides(config, model_path="/m", train_files="/d/train.parquet",
                     val_files=val_files, agent_loops="/r/agent_loops.yaml")


def test_every_mapped_verl_key_is_in_the_overrides(tmp_path):
    from research.trainers import verl_mapping

    config = _config(tmp_path, "model.lora_rank=16", "run.save_total_limit=3",
                     "rollout.seed=7", "data.train_limit=100")
    keys = {line.split("=")[0].lstrip("+") for line in _overrides(config, "/d/dev.parquet")}
    for key, target in verl_mapping.MAPPED.items():
        first = target.split(",")[0].split(" ")[0]
        if first.startswith(("actor_rollout_ref.", "data.", "trainer.", "reward.")):
            assert first in keys, f"{key} -> {first} is not in the overrides"


def test_verl_values_of_the_mapped_keys(tmp_path):
    config = _config(tmp_path, "model.lora_rank=16", "run.save_total_limit=3",
                     "data.train_limit=100", "cluster.nnodes=2")
    lines = set(_overrides(config))
    assert {"actor_rollout_ref.model.lora_rank=16", "actor_rollout_ref.model.lora_alpha=32",
            "actor_rollout_ref.model.target_modules=all-linear",
            "trainer.max_actor_ckpt_to_keep=3", "data.train_max_samples=100",
            "actor_rollout_ref.rollout.dtype=bfloat16",
            "actor_rollout_ref.actor.fsdp_config.dtype=bfloat16",
            "actor_rollout_ref.ref.fsdp_config.model_dtype=bf16",
            "actor_rollout_ref.actor.use_dynamic_bsz=true",
            "actor_rollout_ref.actor.ppo_max_token_len_per_gpu=17408",
            "actor_rollout_ref.actor.entropy_from_logits_with_chunking=true",
            f"ray_kwargs.ray_init.runtime_env.py_executable={sys.executable}",
            f"+ray_kwargs.ray_init.runtime_env.env_vars.PYTHONPATH={REPO}"} <= lines
    # no dev set: no validation, and verl's placeholder validation set is one training row
    assert {"trainer.test_freq=-1", "trainer.val_before_train=false",
            "data.val_files=/d/train.parquet", "data.val_max_samples=1"} <= lines
    single = set(_overrides(_config(tmp_path)))
    assert not any("py_executable" in line or "PYTHONPATH" in line for line in single)


def test_long_prompts_are_dropped_and_counted(tmp_path, caplog):
    import logging

    import pyarrow.parquet as pq
    import pytest
    from transformers import AutoTokenizer

    from research.configtree import ConfigError
    from research.data.rows import make_row, write_rows
    from research.models.prepare import prepare_model
    from research.trainers.verl_launch import prompt_fits, rows_file

    tok = AutoTokenizer.from_pretrained(prepare_model("smollm2-135m"))
    src = tmp_path / "in.parquet"
    write_rows([make_row("short?", ["a"], id="0", data_source="t", index=0),
                make_row("long " * 600 + "?", ["b"], id="1", data_source="t", index=1)], src)
    config = _config(tmp_path)
    fits = prompt_fits(config, tok)
    with caplog.at_level(logging.INFO):
        path = rows_file(str(src), "train", None, tmp_path / "out.parquet", fits=fits)
    assert pq.read_table(path).column("question").to_pylist() == ["short?"]
    assert "1 of 2 prompts over the prompt budget (cluster.max_prompt_tokens) dropped" in \
        caplog.text
    assert rows_file(path, "train", None, tmp_path / "again.parquet", fits=fits) == path
    first = rows_file(str(src), "train", 1, tmp_path / "first.parquet", fits=fits)
    assert pq.read_table(first).column("question").to_pylist() == ["short?"]  # the first N
    with pytest.raises(ConfigError, match="every prompt of .* is over"):
        rows_file(str(src), "train", None, tmp_path / "none.parquet", fits=lambda q: False)


def test_rows_keep_only_the_asked_question_type(tmp_path):
    import pyarrow.parquet as pq
    import pytest

    from research.configtree import ConfigError
    from research.trainers.verl_launch import rows_file

    path = rows_file("factbook-facts", "train", None, tmp_path / "t.parquet", "one-hop")
    every = rows_file("factbook-facts", "train", None, tmp_path / "all.parquet")
    kept, total = pq.read_table(path).num_rows, pq.read_table(every).num_rows
    assert 0 < kept < total  # the bridge questions are left out
    with pytest.raises(ConfigError, match="metadata.type"):
        rows_file(path, "train", None, tmp_path / "x.parquet", "one-hop")


# Every MAPPED key set to a value other than the `original` config's: the verl override
# lines it must produce (with the dev set /d/dev.parquet)
VERL_VALUES: dict[str, tuple[tuple[str, ...], set[str]]] = {
    "model.dtype": (("model.dtype=float32",), {"actor_rollout_ref.rollout.dtype=float32"}),
    "model.gradient_checkpointing": (("model.gradient_checkpointing=false",), {
        "actor_rollout_ref.model.enable_gradient_checkpointing=false"}),
    "model.lora_rank": (("model.lora_rank=16",), {
        "actor_rollout_ref.model.lora_rank=16", "actor_rollout_ref.model.lora_alpha=32",
        "actor_rollout_ref.model.target_modules=all-linear"}),
    "model.lora_alpha": (("model.lora_rank=16", "model.lora_alpha=8"), {
        "actor_rollout_ref.model.lora_alpha=8"}),
    "data.train_limit": (("data.train_limit=100",), {"data.train_max_samples=100"}),
    "data.dev_limit": (("data.dev_limit=7",), {"data.val_max_samples=7"}),
    "rollout.max_response_tokens": (("rollout.max_response_tokens=1024",), {
        "data.max_response_length=1024"}),
    "rollout.temperature": (("rollout.temperature=0.7",), {
        "actor_rollout_ref.rollout.temperature=0.7"}),
    "rollout.top_p": (("rollout.top_p=0.9",), {"actor_rollout_ref.rollout.top_p=0.9"}),
    "rollout.seed": (("rollout.seed=7",), {"actor_rollout_ref.rollout.seed=7"}),
    "reward.name": (("reward.name=f1",), {
        "+reward.custom_reward_function.reward_kwargs.reward_name=f1"}),
    "grpo.prompts_per_step": (("grpo.prompts_per_step=64",), {
        "data.train_batch_size=64", "actor_rollout_ref.actor.ppo_mini_batch_size=64"}),
    "grpo.num_generations": (("grpo.num_generations=8",), {"actor_rollout_ref.rollout.n=8"}),
    "grpo.per_device_batch": (("grpo.per_device_batch=4",), {
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=4",
        "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=4",
        "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=4"}),
    "grpo.learning_rate": (("grpo.learning_rate=3e-6",), {
        "actor_rollout_ref.actor.optim.lr=3e-06"}),
    "grpo.beta": (("grpo.beta=0.0",), {"actor_rollout_ref.actor.use_kl_loss=false",
                                       "actor_rollout_ref.actor.kl_loss_coef=0.0"}),
    "grpo.clip": (("grpo.clip=0.3",), {"actor_rollout_ref.actor.clip_ratio=0.3",
                                       "actor_rollout_ref.actor.clip_ratio_low=0.3",
                                       "actor_rollout_ref.actor.clip_ratio_high=0.3"}),
    "grpo.entropy_coef": (("grpo.entropy_coef=0.0",), {
        "actor_rollout_ref.actor.entropy_coeff=0.0"}),
    "grpo.loss_type": (("grpo.loss_type=grpo",), {
        "actor_rollout_ref.actor.loss_agg_mode=seq-mean-token-mean"}),
    "grpo.epochs": (("grpo.epochs=2",), {"trainer.total_epochs=2"}),
    "grpo.vllm_tensor_parallel_size": (("grpo.vllm_tensor_parallel_size=4",), {
        "actor_rollout_ref.rollout.tensor_model_parallel_size=4"}),
    "grpo.vllm_gpu_memory_utilization": (("grpo.vllm_gpu_memory_utilization=0.4",), {
        "actor_rollout_ref.rollout.gpu_memory_utilization=0.4"}),
    "run.output_dir": (("run.output_dir=/o/elsewhere",), {
        "trainer.default_local_dir=/o/elsewhere", "trainer.experiment_name=elsewhere",
        "+ray_kwargs.ray_init.runtime_env.env_vars.WANDB_DIR=/o/elsewhere"}),
    "run.max_steps": (("run.max_steps=20",), {"trainer.total_training_steps=20"}),
    "run.save_steps": (("run.save_steps=5",), {"trainer.save_freq=5"}),
    "run.save_total_limit": (("run.save_total_limit=3",), {"trainer.max_actor_ckpt_to_keep=3"}),
    "run.eval_steps": (("run.eval_steps=5", "data.dev=/d/dev.parquet"), {
        "trainer.test_freq=5", "trainer.val_before_train=true"}),
    "run.seed": (("run.seed=1",), {"data.seed=1"}),
    "run.wandb": (("run.wandb=off",), {
        "trainer.logger=[console]",
        "+ray_kwargs.ray_init.runtime_env.env_vars.WANDB_MODE=disabled"}),
    "run.wandb_project": (("run.wandb_project=p",), {"trainer.project_name=p"}),
    "run.resume": (("run.resume=true",), {"trainer.resume_mode=auto"}),
    "cluster.gpus_per_node": (("cluster.gpus_per_node=4",), {"trainer.n_gpus_per_node=4"}),
    "cluster.nnodes": (("cluster.nnodes=2",), {
        "trainer.nnodes=2", f"ray_kwargs.ray_init.runtime_env.py_executable={sys.executable}",
        f"+ray_kwargs.ray_init.runtime_env.env_vars.PYTHONPATH={REPO}"}),
    "cluster.rollout_engine": (("cluster.rollout_engine=sglang",), {
        "actor_rollout_ref.rollout.name=sglang"}),
    "cluster.max_prompt_tokens": (("cluster.max_prompt_tokens=256",), {
        "data.max_prompt_length=256"}),
    "cluster.max_tokens_per_gpu": (("cluster.max_tokens_per_gpu=8704",), {
        "actor_rollout_ref.actor.use_dynamic_bsz=true",
        "actor_rollout_ref.actor.ppo_max_token_len_per_gpu=8704"}),
    "cluster.verl": (("cluster.verl={trainer.use_v1: false}",), {"trainer.use_v1=false"}),
}

# keys the agent loop reads from agent_loops.yaml: the entry's field (rollout.*: the
# rollout section) and the value set
AGENT_VALUES: dict[str, tuple[str, object]] = {
    "retrieval.search_url": ("search_url", "http://10.0.0.2:8000"),
    "retrieval.timeout": ("search_timeout", 5.0),
    "retrieval.retries": ("search_retries", 2),
    "retrieval.api_key_env": ("search_api_key_env", "search_token"),
    "cluster.max_concurrent_searches": ("max_concurrent_searches", 8),
    "rollout.template": ("template", "chat"),
    "rollout.example": ("example", "one-search"),
    "rollout.clean": ("clean", True),
    "rollout.max_turns": ("max_turns", 3),
    "rollout.top_k": ("top_k", 3),
    "rollout.max_result_tokens": ("max_result_tokens", 200),
    "rollout.stop_at_answer": ("stop_at_answer", True),
    "rollout.on_max_turns": ("on_max_turns", "end"),
    "rollout.mask_results": ("mask_results", False),
}

REFUSED_VALUES = {"grpo.bf16": "grpo.bf16=false", "rollout.search": "rollout.search=false"}
# read while the run directory is prepared: test_prepare_reads_the_model_and_data_keys
PREPARED = {"model.path", "data.train", "data.train_split", "data.train_type", "data.dev",
            "data.dev_split", "data.dev_type", "data.dev_seed"}


def test_the_value_of_every_mapped_key_reaches_verl(tmp_path):
    import pytest

    from research.configtree import ConfigError
    from research.trainers import verl_mapping
    from research.trainers.verl_launch import agent_loop_entries

    covered = set(VERL_VALUES) | set(AGENT_VALUES) | set(REFUSED_VALUES) | PREPARED
    assert covered == set(verl_mapping.MAPPED)
    default = set(_overrides(_config(tmp_path), "/d/dev.parquet"))
    for key, (settings, expected) in VERL_VALUES.items():
        lines = set(_overrides(_config(tmp_path, *settings), "/d/dev.parquet"))
        assert expected <= lines, f"{key}: {sorted(expected - lines)}"
        assert expected - default, f"{key}: {settings} changes nothing"
    for key, (field, value) in AGENT_VALUES.items():
        setting = f"{key}={'null' if value is None else str(value).lower()}"
        config = _config(tmp_path, setting, *(("rollout.max_turns=2",)
                                              if key == "rollout.on_max_turns" else ()))
        [entry] = agent_loop_entries(config, config.retrieval.search_url)
        got = entry["rollout"][field] if key.startswith("rollout.") else entry[field]
        assert got == value, f"{key}: {got!r}"
    for key, setting in REFUSED_VALUES.items():
        with pytest.raises(ConfigError, match=key.split(".")[1]):
            _config(tmp_path, setting)
    # cluster.max_tokens_per_gpu=null: fixed micro-batches, no dynamic batching
    fixed = set(_overrides(_config(tmp_path, "cluster.max_tokens_per_gpu=null")))
    assert not any("use_dynamic_bsz" in line for line in fixed)


def test_prepare_reads_the_model_and_data_keys(tmp_path, monkeypatch):
    import transformers

    import research.models.prepare
    from research.trainers import verl_launch

    read = []

    def rows_file(source, split, limit, out, kind=None, seed=None, fits=None):
        read.append((source, split, limit, kind, seed, callable(fits)))
        return f"/rows/{Path(source).stem}-{split}.parquet"

    monkeypatch.setattr(verl_launch, "rows_file", rows_file)
    monkeypatch.setattr(verl_launch, "prompt_fits", lambda config, tokenizer: lambda q: True)
    monkeypatch.setattr(research.models.prepare, "prepare_model",
                        lambda name: Path("/models") / Path(name).name)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda *a, **k: None)
    config = _config(tmp_path, "model.path=/m/qwen", "data.train=/q/a.jsonl",
                     "data.train_split=extra", "data.train_type=one-hop", "data.dev=/q/b.jsonl",
                     "data.dev_split=test", "data.dev_type=bridge", "data.dev_limit=7",
                     "run.eval_steps=5")
    lines = set(verl_launch.prepare(config))
    assert read == [("/q/a.jsonl", "extra", None, "one-hop", None, True),
                    ("/q/b.jsonl", "test", 7, "bridge", 13, True)]
    assert {"actor_rollout_ref.model.path=/models/qwen", "data.train_files=/rows/a-extra.parquet",
            "data.val_files=/rows/b-test.parquet"} <= lines


def test_ignored_keys_are_logged(tmp_path, caplog):
    import logging

    with caplog.at_level(logging.INFO, logger="research.trainers.verl_mapping"):
        _config(tmp_path)
    assert ("grpo.use_vllm is not used by the verl engine: verl always rolls out on its own "
            "servers (cluster.rollout_engine)") in caplog.text


def test_online_on_several_nodes_says_every_node_needs_the_key(tmp_path, monkeypatch, caplog):
    import logging

    from research.trainers.verl_launch import warn_wandb_key_on_every_node

    monkeypatch.setenv("WANDB_API_KEY", "secret-key-123")
    with caplog.at_level(logging.WARNING, logger="research.trainers.verl_launch"):
        for settings in (("run.wandb=online",), ("cluster.nnodes=2",)):
            warn_wandb_key_on_every_node(_config(tmp_path, *settings))
        assert not caplog.records
        warn_wandb_key_on_every_node(_config(tmp_path, "run.wandb=online", "cluster.nnodes=2"))
    assert "WANDB_API_KEY must be exported on every node before its `ray start`" in caplog.text
    assert "secret-key-123" not in caplog.text


def test_a_search_token_missing_on_the_launching_node_stops_the_launch(tmp_path, monkeypatch,
                                                                        caplog):
    import logging

    import pytest

    from research.configtree import ConfigError
    from research.trainers.verl_launch import check_search_token

    monkeypatch.delenv("SEARCH_TOKEN", raising=False)
    config = _config(tmp_path, "retrieval.api_key_env=SEARCH_TOKEN", "cluster.nnodes=2")
    with pytest.raises(ConfigError, match="retrieval.api_key_env names SEARCH_TOKEN"):
        check_search_token(config)
    monkeypatch.setenv("SEARCH_TOKEN", "tok3n")
    with caplog.at_level(logging.WARNING, logger="research.trainers.verl_launch"):
        check_search_token(config)
    assert "SEARCH_TOKEN must be exported on every node" in caplog.text
    assert "tok3n" not in caplog.text
