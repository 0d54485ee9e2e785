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

    keys = {"score", "acc", "format_ok", "searches"}
    ok = compute_score("hotpotqa", ANSWER, np.array(["Paris", "paris city"]),
                       {"ended_with_eos": True, "num_searches": 2})
    assert ok == {"score": 1.0, "acc": 1.0, "format_ok": 1.0, "searches": 2.0}
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
