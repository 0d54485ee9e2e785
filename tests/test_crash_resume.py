"""A crashed training run loses nothing: a real run of the tiny model is killed (SIGKILL)
after it logged a step its last checkpoint does not hold, resumed, and compared with an
uninterrupted run of the same seed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("trl", reason="the TRL engine is optional: pip install trl==1.16.0")

from conftest import REPO, write_alpha_questions  # noqa: E402


@pytest.fixture(scope="module")
def questions(tmp_path_factory) -> Path:
    return write_alpha_questions(tmp_path_factory.mktemp("data") / "train.jsonl", 8)


def overrides(tiny_path, questions, service_url, out) -> list[str]:
    """2 questions x 2 responses per step, 4 steps, a checkpoint every 2, one thread (so that
    sampling and the update are deterministic)."""
    return [f"model.path={tiny_path}", f"data.train={questions}", "data.dev=null",
            f"retrieval.search_url={service_url}", "rollout.max_response_tokens=24",
            "rollout.max_turns=1", "rollout.top_k=1", "rollout.max_result_tokens=12",
            "reward.name=f1", "grpo.prompts_per_step=2", "grpo.num_generations=2",
            "grpo.per_device_batch=2", "grpo.learning_rate=1e-3", "run.eval_steps=0",
            "run.max_steps=4", "run.save_steps=2", "run.rollout_samples=2", "run.seed=7",
            "run.torch_threads=1", f"run.output_dir={out}"]


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def logged_steps(out: Path) -> list[int]:
    path = out / "metrics.jsonl"
    return [m["step"] for m in jsonl(path) if "loss" in m] if path.exists() else []


def weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def start(*items: str) -> subprocess.Popen:
    """``research train`` in its own process (one thread: two runs share the two cores)."""
    return subprocess.Popen([sys.executable, "-m", "research.cli", "train", *items], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


def finish(proc: subprocess.Popen) -> None:
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]


def test_a_killed_run_resumes_to_the_uninterrupted_result(tiny_path, questions, service_url,
                                                           tmp_path):
    straight, crashed = tmp_path / "straight", tmp_path / "crashed"
    uninterrupted = start(*overrides(tiny_path, questions, service_url, straight))
    proc = start(*overrides(tiny_path, questions, service_url, crashed))
    deadline = time.time() + 300
    try:  # kill it once step 3 is logged: checkpoint-2 holds steps 1-2 only
        while 3 not in logged_steps(crashed):
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.time() < deadline, "step 3 never came"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(30)
    finish(uninterrupted)
    assert not (crashed / "checkpoint-4").exists() and not (crashed / "final").exists()
    assert 3 in {r["step"] for r in jsonl(crashed / "rollouts.jsonl")}  # lines to drop

    finish(start(*overrides(tiny_path, questions, service_url, crashed), "--resume"))
    assert logged_steps(crashed) == [1, 2, 3, 4] == logged_steps(straight)
    rollouts = [r["step"] for r in jsonl(crashed / "rollouts.jsonl")]
    assert rollouts == [1, 1, 2, 2, 3, 3, 4, 4]  # each step's samples once, the lost ones gone
    a, b = weights(straight / "final"), weights(crashed / "final")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "the resumed run diverged"
    kept = [m for m in jsonl(crashed / "metrics.jsonl") if "loss" in m]
    again = [m for m in jsonl(straight / "metrics.jsonl") if "loss" in m]
    assert [m["reward"] for m in kept] == [m["reward"] for m in again]
