"""The rollout benchmark's helpers (benchmarks/rollout.py): how ``--samples`` lays out a GRPO
step's trajectories and which of them ``--sequential`` runs one at a time. No timing is
asserted."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import REPO, load_benchmark


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("rollout")


def test_groups_repeat_each_prompt_in_a_row_as_a_grpo_step_does(bench):
    assert bench._groups(["a", "b", "c"], 2) == ["a", "a", "b", "b", "c", "c"]
    assert bench._groups(["a", "b"], 1) == ["a", "b"]


def test_sequential_runs_every_prompt_once_before_any_again(bench):
    assert bench._sample_major(["a", "b", "c"], 2, None) == ["a", "b", "c", "a", "b", "c"]
    assert bench._sample_major(["a", "b", "c"], 4, 3) == ["a", "b", "c"]
    assert bench._sample_major(["a", "b", "c"], 2, 4) == ["a", "b", "c", "a"]


@pytest.mark.parametrize("flag", [["--samples", "0"], ["--sequential", "0"]])
def test_counts_below_one_are_refused_before_anything_loads(flag):
    run = subprocess.run([sys.executable, str(REPO / "benchmarks" / "rollout.py"), *flag],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert "--samples and --sequential take a positive count" in run.stderr
