"""The base package works without the heavy optional dependencies."""

import subprocess
import sys

LIGHT_MODULES = [
    "research", "research.cli", "research.errors", "research.paths", "research.http",
    "research.protocol", "research.rewards", "research.metrics",
    "research.data.rows", "research.data.hotpotqa", "research.data.flashrag",
    "research.data.embedded", "research.data.questions",
    "research.retrieval.corpus", "research.retrieval.bm25",
    "research.retrieval.index", "research.retrieval.client", "research.retrieval.dense",
    "research.serving.app", "research.serving.config", "research.serving.loading",
    "research.serving.launch",
    "research.rollout.engine", "research.rollout.generation", "research.rollout.backends.vllm",
    "research.rollout.backends.openai_http", "research.rollout.server",
    "research.models.loading", "research.evaluation.inspect_rollouts",
    "research.trainers", "research.trainers.trl_settings", "research.trainers.config",
    "research.trainers.commands", "research.trainers.trl_rollout",
]
HEAVY = ["torch", "transformers", "sentence_transformers", "faiss", "vllm", "trl", "verl",
         "wandb"]


def test_light_modules_import_nothing_heavy():
    code = (f"import importlib, sys\nfor m in {LIGHT_MODULES!r}: importlib.import_module(m)\n"
            "import research.cli as c; c.build_parser()\n"
            f"print(sorted(h for h in {HEAVY!r} if h in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_dense_without_extra_names_the_install_command(monkeypatch):
    import builtins

    from research.retrieval import dense

    real_import = builtins.__import__

    def no_faiss(name, *args, **kwargs):
        if name == "faiss":
            raise ImportError("No module named 'faiss'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_faiss)
    import pytest

    with pytest.raises(ImportError, match=r"install the dense extra"):
        dense._require("faiss")
