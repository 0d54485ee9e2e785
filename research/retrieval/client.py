"""HTTP client of the retrieval service.

Every call has a timeout. Connection errors, timeouts and 5xx answers are retried a bounded
number of times with exponential backoff; a 4xx answer is the caller's mistake and is raised
at once. After the last attempt a :class:`SearchError` says what failed, so the rollout can
turn it into a visible, counted failure text.
"""

from __future__ import annotations

from collections.abc import Sequence

from research.http import JsonPoster, RequestFailed, RequestRejected
from research.retrieval.base import Hit


class SearchError(RequestFailed):
    """A search that failed after the client's retries (or was rejected with a 4xx)."""


class SearchRequestError(SearchError, RequestRejected):
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
        self._poster = JsonPoster(base_url, what="search", timeout=timeout, retries=retries,
                                  backoff=backoff, max_backoff=max_backoff, failed=SearchError,
                                  rejected=SearchRequestError)
        self.base_url = self._poster.base_url

    def _results(self, path: str, payload: dict) -> list[list[Hit]]:
        """``[[docs per query], [scores per query]]`` from the service, as hits."""
        body = self._poster.post(path, payload)
        try:
            docs, scores = body
            return [_hits(d, s) for d, s in zip(docs, scores, strict=True)]
        except (TypeError, ValueError, KeyError):
            raise SearchError(f"{self.base_url}{path} answered in an unexpected shape: "
                              f"{str(body)[:200]}") from None

    def search(self, query: str, k: int = 5) -> list[Hit]:
        return self._results("/batch_search", {"query": [query], "top_n": k,
                                               "return_score": True})[0]

    def batch_search(self, queries: Sequence[str], k: int = 5) -> list[list[Hit]]:
        """One request for all queries; the service searches them as one batch."""
        if not queries:
            return []
        return self._results("/batch_search",
                             {"query": list(queries), "top_n": k, "return_score": True})

    def health(self) -> dict:
        resp = self._poster.http.get("/health")
        resp.raise_for_status()
        return resp.json()

    def close(self) -> None:
        self._poster.close()

    def __enter__(self) -> SearchClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

