"""HTTP client of the retrieval service.

Every call has a timeout. Connection errors, timeouts and 5xx answers are retried a bounded
number of times with exponential backoff; a 4xx answer is the caller's mistake and is raised
at once. After the last attempt a :class:`SearchError` says what failed, so the rollout can
turn it into a visible, counted failure text.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import httpx
import orjson

from research.retrieval.base import Hit

logger = logging.getLogger(__name__)


class SearchError(RuntimeError):
    """A search that failed after the client's retries (or was rejected with a 4xx)."""

    def __init__(self, message: str, *, status: int | None = None, attempts: int = 1):
        super().__init__(message)
        self.status = status
        self.attempts = attempts


class SearchRequestError(SearchError):
    """The service rejected the request (4xx): retrying cannot help."""


def _hits(docs: list[dict], scores: list[float]) -> list[Hit]:
    return [Hit(str(d["id"]), d["contents"], float(s)) for d, s in zip(docs, scores, strict=True)]


class SearchClient:
    """Client of ``/search`` and ``/batch_search``.

    >>> client = SearchClient("http://127.0.0.1:8000", timeout=5.0, retries=2)  # doctest: +SKIP
    >>> client.batch_search(["capital of France"], k=5)  # doctest: +SKIP
    """

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = 30.0,
        retries: int = 3,
        backoff: float = 0.5,
        max_backoff: float = 8.0,
    ):
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries}")
        self.base_url = base_url.rstrip("/")
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout)

    def _attempt(self, path: str, payload: dict):
        """One request: ``(json, None)`` on success, ``(None, reason)`` when retryable."""
        try:
            resp = self._http.post(
                path, content=orjson.dumps(payload), headers={"content-type": "application/json"}
            )
        except (httpx.TransportError, httpx.TimeoutException) as e:
            return None, f"{type(e).__name__}: {e}"
        if resp.status_code >= 500:
            return None, f"HTTP {resp.status_code}: {_detail(resp)}"
        if resp.status_code >= 400:
            raise SearchRequestError(
                f"{self.base_url}{path} rejected the request ({resp.status_code}): "
                f"{_detail(resp)}",
                status=resp.status_code,
            )
        try:
            return orjson.loads(resp.content), None
        except orjson.JSONDecodeError:
            return None, f"HTTP {resp.status_code} with a body that is not JSON"

    def _post(self, path: str, payload: dict):
        attempts = self.retries + 1
        for attempt in range(1, attempts + 1):
            body, reason = self._attempt(path, payload)
            if reason is None:
                return body
            if attempt < attempts:
                delay = min(self.max_backoff, self.backoff * 2 ** (attempt - 1))
                logger.warning("search %s failed (%s); retry %d/%d in %.2f s",
                               path, reason, attempt, self.retries, delay)
                time.sleep(delay)
        raise SearchError(
            f"search at {self.base_url}{path} failed after {attempts} attempt(s): {reason}",
            attempts=attempts,
        )

    def _shaped(self, path: str, payload: dict):
        body = self._post(path, payload)
        try:
            docs, scores = body
            return docs, scores
        except (TypeError, ValueError):
            raise SearchError(f"{self.base_url}{path} answered in an unexpected shape: "
                              f"{str(body)[:200]}") from None

    def search(self, query: str, k: int = 5) -> list[Hit]:
        docs, scores = self._shaped("/search", {"query": query, "top_n": k, "return_score": True})
        return _hits(docs, scores)

    def batch_search(self, queries: Sequence[str], k: int = 5) -> list[list[Hit]]:
        """One request for all queries; the service searches them as one batch."""
        if not queries:
            return []
        docs, scores = self._shaped(
            "/batch_search", {"query": list(queries), "top_n": k, "return_score": True}
        )
        return [_hits(d, s) for d, s in zip(docs, scores, strict=True)]

    def health(self) -> dict:
        resp = self._http.get("/health")
        resp.raise_for_status()
        return resp.json()

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> SearchClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _detail(resp: httpx.Response) -> str:
    try:
        body = resp.json()
    except ValueError:
        return resp.text[:300]
    return str(body.get("detail", body)) if isinstance(body, dict) else str(body)[:300]
