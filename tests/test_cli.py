"""The `research` command line, run as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import token, write_corpus


def research(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "research.cli", *args],
                          capture_output=True, text=True, timeout=timeout)


def test_index_build_and_info(tmp_path):
    corpus = write_corpus(tmp_path / "c.jsonl.gz", 120, gz=True)
    out = tmp_path / "idx"
    result = research("index", "build", "--corpus", str(corpus), "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert f"bm25 index of 120 documents in {out}" in result.stdout
    assert "BM25 tokenize" in result.stderr  # progress is shown
    info = json.loads(research("index", "info", str(out)).stdout)
    assert info["doc_count"] == 120 and info["docstore_path"] == "corpus.jsonl"


def test_index_build_bad_corpus_is_one_clear_line(tmp_path):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"id": "1", "contents": "fine"}\n{"id": 2\n')
    result = research("index", "build", "--corpus", str(corpus), "--out", str(tmp_path / "i"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: {corpus}:2: not valid JSON")
    assert "Traceback" not in result.stderr
    missing = research("index", "build", "--corpus", str(tmp_path / "no.jsonl"), "--out", "x")
    assert missing.returncode == 2 and "corpus file not found" in missing.stderr


def test_search_command_against_the_service(service_url):
    result = research("search", token(21), "--url", service_url, "-k", "2")
    assert result.returncode == 0, result.stderr
    assert "1. [doc-21]" in result.stdout


def test_search_command_unreachable_service_is_clear():
    from conftest import free_port

    result = research("search", "q", "--url", f"http://127.0.0.1:{free_port()}",
                      "--retry-budget", "1")
    assert result.returncode == 2
    assert "failed after 3 attempt(s) over 1.0 s: ConnectError" in result.stderr


def test_quickstart_retrieval_stage(tmp_path):
    """The README's main job, first stage: service + retrieval over the embedded dev set."""
    import os

    env = {**os.environ, "RESEARCH_CACHE": str(tmp_path / "cache")}
    result = subprocess.run(
        [sys.executable, "-m", "research.cli", "quickstart", "--run-dir", str(tmp_path / "run"),
         "--limit", "200", "--train-steps", "0"], capture_output=True, text=True, timeout=300,
        env=env)
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["questions"] == 200
    assert summary["recall_at_k"] > 0.8  # BM25 finds most gold passages of squad-open-mini
    lines = (tmp_path / "run" / "retrieval.jsonl").read_text().splitlines()
    assert len(lines) == 200
    assert "| squad-open-mini (dev) | 200 |" in result.stdout
    assert (tmp_path / "cache" / "indexes" / "squad-open-mini-bm25" / "manifest.json").is_file()


def test_quickstart_training_stage_with_the_tiny_model(tmp_path):
    """The main job end to end (index, service, validation, GRPO, validation, table, figure),
    with the tiny model and tiny budgets so that it runs in seconds."""
    from research.models.tiny import save_tiny_model

    tiny = save_tiny_model(tmp_path / "tiny")
    run = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "research.cli", "quickstart", "--run-dir", str(run), "--limit",
         "50", "--train-steps", "1", f"model.path={tiny}", "rollout.max_response_tokens=24",
         "data.dev_limit=2", "grpo.prompts_per_step=1", "grpo.num_generations=2",
         "grpo.per_device_batch=2", "run.torch_threads=1",
         "model.lora_layers=1"],  # the tiny model has 2 layers (the config adapts 8 of 24)
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    steps, _, validation = result.stdout.partition("before and after GRPO")
    assert validation, result.stdout[-2000:]
    step_rows = [line for line in steps.splitlines() if line.startswith("| 1 |")]
    assert len(step_rows) == 1 and len(step_rows[0].split("|")) == 10  # the one GRPO step
    rows = [line for line in validation.splitlines() if line.startswith("| 0 |")
            or line.startswith("| 1 |")]
    assert len(rows) == 2  # validation at step 0 and after the last step
    train = run / "train"
    for name in ("metrics.jsonl", "rollouts.jsonl", "validation.jsonl", "validation.png",
                 "training.png", "validation_items.jsonl", "train_config.yaml"):
        assert (train / name).is_file(), name
    assert (train / "final" / "config.json").is_file()
    assert list(train.glob("checkpoint-*"))
