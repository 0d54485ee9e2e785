"""The package as a user installs it: a wheel built from this checkout, installed (not
editable) into a fresh virtual environment and run from an empty directory, far from the
checkout. The dependencies come from the test interpreter's site-packages through a ``.pth``
line (no download); the editable install there is not picked up, because ``.pth`` files in a
folder added that way are not processed."""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from conftest import REPO, free_port, stop, wait_healthy

SHIPPED = ("research/configs", "research/data/sets")  # package data the commands read


def _run(args, cwd, env, timeout=300, **kw):
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout, **kw)


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """``(bin folder, site-packages, empty working dir, environment)`` of the installed copy."""
    root = tmp_path_factory.mktemp("install")
    src = root / "src"  # what the wheel is built from: the checkout's project files
    shutil.copytree(REPO / "research", src / "research",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(REPO / name, src / name)
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    purelib = Path(_run([str(venv / "bin" / "python"), "-c",
                         "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                        root, None).stdout.strip())
    (purelib / "deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    empty = root / "empty"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(RESEARCH_CACHE=str(root / "cache"), PYTHONNOUSERSITE="1")
    pip = _run([str(venv / "bin" / "python"), "-m", "pip", "install", "--no-deps",
                "--no-build-isolation", "--no-index", "--ignore-installed", "-q", str(src)],
               root, env)
    assert pip.returncode == 0, pip.stdout + pip.stderr
    return venv / "bin", purelib, empty, env


def test_the_wheel_holds_every_shipped_file_and_runs_from_an_empty_directory(installed):
    bin_dir, purelib, empty, env = installed
    where = _run([str(bin_dir / "python"), "-c", "import research; print(research.__file__)"],
                 empty, env)
    assert where.stdout.strip() == str(purelib / "research" / "__init__.py"), where.stderr
    for folder in SHIPPED:
        source = {p.relative_to(REPO) for p in (REPO / folder).rglob("*") if p.is_file()}
        copy = {p.relative_to(purelib) for p in (purelib / folder).rglob("*") if p.is_file()}
        assert source - copy == set(), f"missing from the wheel: {sorted(source - copy)}"
    keys = _run([str(bin_dir / "research"), "train", "--config", "original", "--keys"],
                empty, env)
    assert keys.returncode == 0 and "num_generations: 5" in keys.stdout, keys.stderr


def test_installed_research_serve_answers_health_and_a_search(installed):
    bin_dir, _, empty, env = installed
    port = free_port()
    proc = subprocess.Popen([str(bin_dir / "research"), "serve", "--port", str(port)],
                            cwd=empty, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc, timeout=180)  # the default config: squad-open-mini, BM25
        assert httpx.get(f"{url}/health").json()["num_docs"] == 3648
        with (REPO / "research/data/sets/squad-open-mini/corpus.jsonl").open() as corpus:
            doc = json.loads(corpus.readline())
        query = " ".join(doc["contents"].split()[:30])  # the passage's own opening words
        hits = httpx.post(f"{url}/search", json={"query": query, "top_n": 3}, timeout=30).json()
        assert hits[0]["id"] == doc["id"]
    finally:
        log = stop(proc)
    assert "Uvicorn running" in log or "Application startup complete" in log, log[-2000:]


def test_installed_train_one_step_and_eval_two_questions(installed, tiny_path):
    bin_dir, _, empty, env = installed
    train = _run([str(bin_dir / "research"), "train", "--config", "cpu-small",
                  f"model.path={tiny_path}", "data.train_limit=2", "run.eval_steps=0",
                  "rollout.max_response_tokens=16", "rollout.max_turns=1", "rollout.top_k=1",
                  "rollout.max_result_tokens=12", "grpo.prompts_per_step=1",
                  "grpo.num_generations=2", "grpo.per_device_batch=2", "run.max_steps=1",
                  "run.save_steps=100", "run.torch_threads=1", "run.output_dir=train"],
                 empty, env, timeout=600)
    assert train.returncode == 0, train.stderr[-3000:]
    metrics = [json.loads(line) for line in (empty / "train" / "metrics.jsonl").read_text()
               .splitlines()]
    assert [m["step"] for m in metrics if "loss" in m] == [1]
    assert (empty / "train" / "service.log").is_file()  # the service it started for the run
    assert (empty / "train" / "final" / "config.json").is_file()
    evaluation = _run([str(bin_dir / "research"), "eval", "--dataset_name", "squad-open-mini",
                       "--quiet", "data.sample_num=2", f"generator.model={tiny_path}",
                       "generator.dtype=float32", "generator.threads=1",
                       "rollout.max_response_tokens=16", "run.save_dir=eval"],
                      empty, env, timeout=600)
    assert evaluation.returncode == 0, evaluation.stderr[-3000:]
    metrics = json.loads(next((empty / "eval").glob("*/metrics.json")).read_text())
    assert metrics["dataset"] == "squad-open-mini" and "em" in metrics["metrics"]
    assert "| ReSearch |" in evaluation.stdout


@pytest.mark.parametrize(("seed_path", "packaged"), [
    ("rag_serving/serving_config.yaml", "research/configs/serving_config.yaml"),
    ("evaluation/eval_config.yaml", "research/configs/eval_config.yaml"),
    ("training/configs", "research/configs/training"),
])
def test_the_seeds_config_paths_lead_to_the_packaged_files(seed_path, packaged):
    """The original README's commands name these paths; they are links to the one copy the
    package ships, so the two never drift."""
    assert (REPO / seed_path).is_symlink()
    assert (REPO / seed_path).resolve() == (REPO / packaged).resolve()
