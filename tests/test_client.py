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
    with pytest.raises(SearchRequestError, match="rejected the request .400.: top_n must be"):
        client.search("river", k=0)
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


def test_retries_for_the_budget_when_no_count_is_set(flaky):
    url, faults = flaky
    reset(faults, fail=6, status=503)
    client = SearchClient(url, retry_budget=10.0, backoff=0.02)  # retries: no cap
    assert client.search(token(8), k=1)[0].id == "doc-8"
    assert faults.seen == 7


def test_the_budget_bounds_the_time_spent_retrying(flaky):
    url, faults = flaky
    reset(faults, fail=1000, status=502)
    client = SearchClient(url, retry_budget=0.6, backoff=0.1)
    start = time.monotonic()
    with pytest.raises(SearchError, match=r"failed after 4 attempt\(s\) over 0.6 s: HTTP 502"):
        client.batch_search(["river"], k=1)
    assert time.monotonic() - start < 1.5  # 0.1 + 0.2 + 0.3 (the rest of the budget)


def test_health_raises_search_error():
    with pytest.raises(SearchError, match="health check at .*/health failed: ConnectError"):
        SearchClient(f"http://127.0.0.1:{free_port()}").health()
