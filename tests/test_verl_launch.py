"""The verl engine's pieces that need no verl: the reward entry verl calls and the launcher
(config -> verl overrides, agent-loop file, rows parquet). The rest runs in the verl
environment: tests/test_verl_engine.py."""

from __future__ import annotations

import subprocess
import sys

from conftest import REPO

from research.trainers.verl_reward import compute_score

ANSWER = "<think> t </think> <answer> \\boxed{Paris} </answer>"


def test_reward_entry_scores_with_the_projects_reward():
    import numpy as np

    keys = {"score", "acc", "format_ok", "searches", "prompt_too_long"}
    ok = compute_score("hotpotqa", ANSWER, np.array(["Paris", "paris city"]),
                       {"ended_with_eos": True, "num_searches": 2})
    assert ok == {"score": 1.0, "acc": 1.0, "format_ok": 1.0, "searches": 2.0,
                  "prompt_too_long": 0.0}
    skipped = compute_score("hotpotqa", "", "Paris", {"finish_reason": "prompt_too_long"})
    assert set(skipped) == keys and skipped["score"] == 0.0 and skipped["prompt_too_long"] == 1.0
    cut = compute_score("hotpotqa", ANSWER, "Paris", {"ended_with_eos": False})
    assert set(cut) == keys and cut["score"] == 0.0 and cut["format_ok"] == 0.0
    wrong = compute_score("hotpotqa", ANSWER, ["Lyon"], {"ended_with_eos": True},
                          reward_name="f1")
    assert wrong["score"] == 0.1 and wrong["acc"] == 0.0 and wrong["format_ok"] == 1.0


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
    assert "prompts over cluster.max_prompt_tokens=512 dropped" in done.stderr
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
    from transformers import AutoTokenizer

    from research.data.rows import make_row, write_rows
    from research.models.prepare import prepare_model
    from research.trainers.verl_launch import drop_long_prompts

    tok = AutoTokenizer.from_pretrained(prepare_model("smollm2-135m"))
    src = tmp_path / "in.parquet"
    write_rows([make_row("short?", ["a"], id="0", data_source="t", index=0),
                make_row("long " * 600 + "?", ["b"], id="1", data_source="t", index=1)], src)
    config = _config(tmp_path)
    with caplog.at_level(logging.INFO):
        path = drop_long_prompts(str(src), tmp_path / "out.parquet", config, tok)
    assert pq.read_table(path).column("question").to_pylist() == ["short?"]
    assert "1 of 2 prompts over cluster.max_prompt_tokens=512 dropped" in caplog.text
    assert drop_long_prompts(path, tmp_path / "again.parquet", config, tok) == path
    first = drop_long_prompts(str(src), tmp_path / "first.parquet", config, tok, limit=1)
    assert pq.read_table(first).column("question").to_pylist() == ["short?"]  # the first N


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
