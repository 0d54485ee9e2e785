"""Sane defaults on the machine at hand: the evaluation says before it starts when its
settings imply hours on this CPU (with the keys to change), and ships a CPU preset that does
not."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")

from research.evaluation.config import load_config  # noqa: E402
from research.evaluation.runner import cpu_warning, parameters_of  # noqa: E402


@pytest.fixture(autouse=True)
def no_gpu(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def test_the_faithful_budget_on_a_cpu_is_announced_with_the_fix():
    warning = cpu_warning(load_config(None), questions=8, model_dir=None)
    assert warning is not None and "rollout.max_response_tokens=8192" in warning
    hours = float(warning.split("up to ")[1].split(" h")[0])
    assert 1 < hours < 2  # 8,192 steps of one batch at the measured 0.54 s
    assert "--config_path cpu" in warning


def test_the_cpu_preset_and_the_baselines_start_without_a_warning():
    cpu = load_config("cpu")
    assert cpu.rollout.max_response_tokens == 1024 and cpu.rollout.example == "two-search"
    assert {"max_response_tokens", "example", "top_k"} <= cpu.given_rollout
    assert cpu_warning(cpu, questions=16, model_dir=None) is None
    assert cpu_warning(load_config(None, ["method.name=naive-rag"]), 500, None) is None
    served = load_config(None, ["generator.backend=openai", "generator.base_url=http://h:1"])
    assert cpu_warning(served, 500, None) is None


def test_a_smaller_model_is_estimated_smaller(tiny_path):
    small = parameters_of(tiny_path)
    assert small is not None and small < 494e6
    full = cpu_warning(load_config(None), questions=64, model_dir=None)
    tiny = cpu_warning(load_config(None), questions=64, model_dir=tiny_path)
    assert tiny is None or float(tiny.split("up to ")[1].split(" h")[0]) < float(
        full.split("up to ")[1].split(" h")[0])


def test_an_older_key_reads_as_its_key_now_with_a_warning(caplog):
    from research.evaluation.config import load_config

    with caplog.at_level("WARNING", logger="research.configtree"):
        config = load_config("cpu", ["retrieval.topk=2"])
    assert config.method.top_k == 2
    assert "retrieval.topk is an older key, read as method.top_k; write method.top_k" in \
        caplog.text
    # the key now wins over the older one when both are given
    assert load_config("cpu", ["retrieval.topk=2", "method.top_k=4"]).method.top_k == 4
