"""Start the retrieval service as a child process for a job (quickstart, training run,
benchmark) and stop it when the job ends."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from research import configtree
from research.errors import ConfigError, ResearchError
from research.retrieval.client import SearchClient

_f = configtree.option


@dataclass
class RetrievalSection:
    """How a run reaches its retrieval service: the ``retrieval:`` section of the training and
    the evaluation configs alike."""

    search_url: str | None = _f(None, "URL of a running retrieval service (null: start one on "
                                "loopback over `corpus` for the run)")
    corpus: str | None = _f(None, "embedded corpus of the service started when search_url is "
                            "null (null: the run's dataset's own, when it is an embedded set)")
    timeout: float = _f(60.0, "seconds per search request")
    retries: int | None = _f(None, "most retries of a failed search request (null: as "
                             "many as the client's 30 s retry budget allows)")
    api_key_env: str | None = _f(None, "the environment variable holding the service's access "
                                 "token (its server.api_key_env; null: none)")


class ServiceStartError(ResearchError, RuntimeError):
    """The retrieval service started for a job exited or did not answer in time; the message
    holds the end of its log."""


def free_port() -> int:
    """A TCP port free on loopback now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class RunningService:
    url: str
    process: subprocess.Popen


def start_service(config: Path, log_path: Path, port: int | None = None,
                  timeout: float = 300) -> RunningService:
    """Start ``research serve`` (this interpreter's ``research.cli``) on loopback and wait
    until ``/health`` answers."""
    port = port or free_port()
    with log_path.open("w") as log:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(
            [sys.executable, "-m", "research.cli", "serve", "--config", str(config),
             "--port", str(port)],
            stdout=log, stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    client = SearchClient(url, retries=0)
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            tail = log_path.read_text()[-2000:]
            raise ServiceStartError(f"the retrieval service exited ({proc.returncode}): {tail}")
        try:
            client.health()
            return RunningService(url, proc)
        except Exception:  # not listening yet
            time.sleep(0.2)
    proc.kill()
    raise ServiceStartError(f"the retrieval service did not start in {timeout} s; see "
                            f"{log_path}")


@contextlib.contextmanager
def running_service(config: Path, log_path: Path, timeout: float = 300
                    ) -> Iterator[RunningService]:
    """The service for the length of a ``with`` block; stopped on exit, errors included."""
    service = start_service(config, log_path, timeout=timeout)
    try:
        yield service
    finally:
        service.process.terminate()
        service.process.wait(timeout=30)


@contextlib.contextmanager
def run_searcher(retrieval: RetrievalSection, dataset: str | None, out: Path,
                 needed: bool = True) -> Iterator[SearchClient | None]:
    """The search client of a run over ``dataset``: on ``retrieval.search_url``, or on a BM25
    service started for the run (its files in ``out``) over ``retrieval.corpus``, by default
    the dataset's own embedded corpus; None when the run never searches (``needed`` false:
    the closed-book control, the retrieval-free methods). A ConfigError names the keys when
    there is neither a URL nor an embedded corpus."""
    if not needed:
        yield None
        return
    from research.data import embedded

    corpus = retrieval.corpus or dataset
    if retrieval.search_url is None and corpus not in embedded.EMBEDDED:
        raise ConfigError(
            f"no retrieval service for the corpus {corpus!r}: set retrieval.search_url to a "
            "running service (python rag_serving/serving.py), or retrieval.corpus to an "
            f"embedded corpus ({', '.join(embedded.EMBEDDED)})")
    with search_client(retrieval.search_url, corpus, out, retrieval.timeout,
                       retrieval.retries, retrieval.api_key_env) as client:
        yield client


@contextlib.contextmanager
def search_client(url: str | None, embedded: str, out: Path, timeout: float = 30.0,
                  retries: int | None = None, api_key_env: str | None = None
                  ) -> Iterator[SearchClient]:
    """A client on ``url``, or on a BM25 service over the ``embedded`` corpus started for the
    block (its config and log in ``out``); ``retries`` optionally caps the client's retries
    within its retry budget (:class:`~research.retrieval.client.SearchClient`);
    ``api_key_env`` names the variable holding the access token (the started service asks
    for it too)."""
    with contextlib.ExitStack() as stack:
        if url is None:
            serving = out / "serving_config.yaml"
            token = f"  api_key_env: {api_key_env}\n" if api_key_env else ""
            serving.write_text(f"retriever:\n  embedded: {embedded}\n  method: bm25\n"
                               f"server:\n  num_retriever: 1\n{token}")
            url = stack.enter_context(running_service(serving, out / "service.log")).url
        yield stack.enter_context(SearchClient(url, timeout=timeout, retries=retries,
                                               api_key_env=api_key_env))
