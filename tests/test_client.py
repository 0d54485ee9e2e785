"""The retrieval client against the real app on loopback, with injected failures."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
import uvicorn
from conftest import free_port, token, wait_healthy
from starlette.responses import JSONResponse

from research.retrieval.client import SearchClient, SearchError, SearchRequestError
from research.retrieval.index import load_retriever
from research.serving.app import create_app
from research.serving.config import ServingConfig


class Faults:
    """Middleware state: fail the next ``fail`` searches with ``status`` (or a slow answer)."""

    def __init__(self):
        self.fail = 0
        self.status = 503
        self.delay = 0.0
        self.seen = 0


@pytest.fixture(scope="module")
def flaky(bm25_index):
    faults = Faults()
    app = create_app(ServingConfig(), retrievers=[load_retriever(bm25_index)])

    @app.middleware("http")
    async def inject(request, call_next):
        if request.url.path != "/health":
            faults.seen += 1
            if faults.fail > 0:
                faults.fail -= 1
                if faults.delay:
                    await asyncio.sleep(faults.delay)
                else:
                    return JSONResponse({"detail": "injected failure"}, status_code=faults.status)
        return await call_next(request)

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    wait_healthy(url)
    yield url, faults
    server.should_exit = True
    thread.join(timeout=10)


def reset(faults, fail=0, status=503, delay=0.0):
    faults.fail, faults.status, faults.delay, faults.seen = fail, status, delay, 0


def test_search_and_batch_search(flaky):
    url, faults = flaky
    reset(faults)
    with SearchClient(url) as client:
        hits = client.search(token(4), k=3)
        assert hits[0].id == "doc-4" and hits[0].score > 0
        batch = client.batch_search([token(1), token(2)], k=1)
        assert [h[0].id for h in batch] == ["doc-1", "doc-2"]
        assert client.batch_search([], k=1) == []
        assert client.health()["status"] == "healthy"
    assert faults.seen == 2  # one request per batch


def test_recovers_after_a_few_5xx(flaky):
    url, faults = flaky
    reset(faults, fail=2, status=503)
    client = SearchClient(url, retries=3, backoff=0.01)
    assert client.search(token(9), k=1)[0].id == "doc-9"
    assert faults.seen == 3


def test_never_recovering_server_raises_typed_error_after_bounded_attempts(flaky):
    url, faults = flaky
    reset(faults, fail=100, status=500)
    client = SearchClient(url, retries=2, backoff=0.01)
    with pytest.raises(SearchError, match="failed after 3 attempt") as info:
        client.batch_search(["river"], k=1)
    assert info.value.attempts == 3
    assert faults.seen == 3


def test_4xx_is_not_retried(flaky):
    url, faults = flaky
    reset(faults)
    client = SearchClient(url, retries=5, backoff=0.01)
    with pytest.raises(SearchRequestError, match="rejected the request .400.: query is empty"):
        client.search("  ", k=1)
    assert faults.seen == 1


def test_timeouts_are_retried(flaky):
    url, faults = flaky
    reset(faults, fail=1, delay=1.0)
    client = SearchClient(url, timeout=0.3, retries=1, backoff=0.01)
    assert client.search(token(6), k=1)[0].id == "doc-6"
    assert faults.seen == 2


def test_connection_refused_is_retried_then_raised():
    client = SearchClient(f"http://127.0.0.1:{free_port()}", retries=2, backoff=0.01)
    start = time.time()
    with pytest.raises(SearchError, match="ConnectError") as info:
        client.search("anything", k=1)
    assert info.value.attempts == 3
    assert time.time() - start < 5
