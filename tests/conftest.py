"""Shared fixtures: small real corpora, real indexes, the real service on loopback."""

from __future__ import annotations

import contextlib
import gzip
import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parent.parent

# Property tests run without hypothesis' per-example deadline: a deadline is a timed assertion,
# and on a loaded 2-core machine (a training run beside the suite) it fails correct code.
with contextlib.suppress(ImportError):
    from hypothesis import settings as _hypothesis_settings

    _hypothesis_settings.register_profile("research", deadline=None)
    _hypothesis_settings.load_profile("research")

WORDS = [
    "river", "mountain", "castle", "museum", "violin", "harbor", "glacier", "desert", "orchard",
    "library", "volcano", "lighthouse", "meadow", "canyon", "cathedral", "bridge", "island",
    "forest", "tower", "market",
]


def token(i: int) -> str:
    """A word that occurs in document ``i`` only (letters only, survives stemming)."""
    letters = "abcdefghij"
    return "zq" + "".join(letters[int(c)] for c in str(i)) + "x"


def missing(reason: str):
    """A test's resource is absent: a skip naming how to get it, or under CI (``CI=true``),
    where every resource is installed, a failure."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"missing in CI: {reason}")
    pytest.skip(reason)


def write_alpha_questions(path: Path, n: int, typed: bool = False) -> Path:
    """``n`` FlashRAG questions "What is token(i)?", each answered "alpha"; ``typed`` gives
    them the factbook sets' ``metadata.type``, one-hop and bridge in turn (a bridge question's
    ``bridge_entity`` is "beta")."""
    import json

    def meta(i: int) -> dict:
        if not typed:
            return {}
        return {"metadata": {"type": "one-hop"} if i % 2 == 0 else
                {"type": "bridge", "bridge_entity": "beta"}}

    path.write_text("".join(json.dumps({"id": f"q{i}", "question": f"What is {token(i)}?",
                                        "golden_answers": ["alpha"], **meta(i)}) + "\n"
                            for i in range(n)))
    return path


def write_corpus(path: Path, n: int, *, seed: int = 0, gz: bool = False) -> Path:
    """A FlashRAG corpus: document i has a title, common words and its unique token."""
    import random

    rng = random.Random(seed)
    lines = []
    for i in range(n):
        body = " ".join(rng.choices(WORDS, k=rng.randint(8, 40)))
        lines.append(json.dumps({"id": f"doc-{i}", "contents": f'"Title {i}"\n{body} {token(i)}'}))
    data = ("\n".join(lines) + "\n").encode()
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def load_benchmark(name: str):
    """The script ``benchmarks/<name>.py`` as a module (the folder is not a package)."""
    spec = importlib.util.spec_from_file_location(f"{name}_bench",
                                                  REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, proc: subprocess.Popen | None = None, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"service exited early with code {proc.returncode}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not become healthy in {timeout} s")


def start_service(config: Path, *extra: str, env: dict | None = None, port: int | None = None):
    """Start ``rag_serving/serving.py`` on loopback (a free port unless ``port``); returns
    (process, url)."""
    port = port or free_port()
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "rag_serving" / "serving.py"), "--config", str(config),
         "--port", str(port), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, **(env or {})},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc)
    except Exception:
        proc.kill()
        out = proc.communicate()[0]
        raise RuntimeError(f"service failed to start:\n{out}") from None
    return proc, url


def stop(proc: subprocess.Popen) -> str:
    proc.terminate()
    try:
        return proc.communicate(timeout=20)[0]
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.communicate()[0]


def listening_addresses(pid: int) -> list[str]:
    """``ip:port`` of each TCP socket process ``pid`` listens on (IPv4, from /proc)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    out = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
            ip, port = fields[1].split(":")
            out.append(f"{socket.inet_ntoa(bytes.fromhex(ip)[::-1])}:{int(port, 16)}")
    return out


def pytest_collection_modifyitems(config, items):
    """Tests marked slow run with ``-m slow`` or ``RESEARCH_SLOW=1``; GPU tests need CUDA."""
    run_slow = os.environ.get("RESEARCH_SLOW") == "1" or "slow" in (config.option.markexpr or "")
    for item in items:
        if "slow" in item.keywords and not run_slow:
            item.add_marker(pytest.mark.skip(reason="slow: run with RESEARCH_SLOW=1 or -m slow"))
        if "gpu" in item.keywords and not _cuda():
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU"))


def _cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


@pytest.fixture(scope="session")
def tiny():
    """A tiny random Qwen2 model with the real SmolLM2 tokenizer (prepared on first use)."""
    import torch

    from research.models.tiny import tiny_model

    torch.set_num_threads(1)
    model, tokenizer = tiny_model(seed=0)
    model.eval()
    return model, tokenizer


@pytest.fixture(scope="session")
def tiny_path(tmp_path_factory):
    """The tiny model saved as a Hugging Face folder (for code that loads models by path)."""
    from research.models.prepare import ModelError
    from research.models.tiny import save_tiny_model

    try:
        return save_tiny_model(tmp_path_factory.mktemp("tiny"))
    except ModelError as exc:  # a broken preparation fails every test that needs it, loudly
        pytest.fail(f"cannot prepare the tiny model's tokenizer: {exc}")


@pytest.fixture(scope="session")
def corpus_file(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus") / "corpus.jsonl", 500)


@pytest.fixture(scope="session")
def bm25_index(corpus_file, tmp_path_factory) -> Path:
    from research.retrieval.index import build_index

    out = tmp_path_factory.mktemp("index") / "bm25"
    build_index(corpus_file, out, "bm25", chunk_docs=128)
    return out


@pytest.fixture(scope="session")
def service_url(bm25_index, tmp_path_factory):
    """The real service on loopback over the session's BM25 index (2 worker threads), with
    small limits so that tests reach them."""
    cfg = tmp_path_factory.mktemp("cfg") / "serving.yaml"
    cfg.write_text(
        f"retriever:\n  index_dir: {bm25_index}\nserver:\n  num_retriever: 2\n"
        "limits:\n  max_top_n: 50\n  max_batch: 64\n  max_query_chars: 200\n"
        "  batch_chunk: 16\n  max_body_bytes: 65536\n"
    )
    proc, url = start_service(cfg)
    yield url
    stop(proc)


@pytest.fixture(scope="session")
def default_service(bm25_index, tmp_path_factory):
    """The service with the default limits, 3 workers set by the ``--num_retriever`` flag;
    yields ``(process, url)``."""
    cfg = tmp_path_factory.mktemp("default") / "serving.yaml"
    cfg.write_text(f"retriever:\n  index_dir: {bm25_index}\n")
    proc, url = start_service(cfg, "--num_retriever", "3")
    yield proc, url
    stop(proc)
