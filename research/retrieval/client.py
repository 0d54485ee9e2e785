"""HTTP client of the retrieval service.

Every call has a timeout. Connection errors, timeouts and 5xx answers are retried with
exponential backoff (0.5 s doubling to 8 s) for ``retry_budget`` seconds after the first
failure (30 s by default, verl's search tool's timeout), so a restart of the service shorter
than that is ridden out; ``retries`` optionally caps the count as well. A 4xx answer is the
caller's mistake and is raised at once. After the last attempt a :class:`SearchError` says
what failed, so the rollout can turn it into a visible, counted failure text.

A batch larger than the service takes in one request (``limits`` in its ``/health``) is sent
as several requests and the answers joined in order.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import httpx
import orjson

from research.http import JsonPoster, RequestFailed, RequestRejected, env_token, error_detail
from research.retrieval.base import Hit


class SearchError(RequestFailed):
    """A search that failed after the client's retries (or was rejected with a 4xx)."""


class SearchRequestError(SearchError, RequestRejected):
    """The service rejected the request (4xx): retrying cannot help."""


# What a service that does not report its limits is assumed to take (the original's).
FALLBACK_LIMITS = {"max_batch": 1024, "max_body_bytes": 1024 * 1024}


def _hits(docs: list[dict], scores: list[float]) -> list[Hit]:
    return [Hit(str(d["id"]), d["contents"], float(s)) for d, s in zip(docs, scores, strict=True)]


def split_batch(queries: Sequence[str], max_batch: int, max_bytes: int) -> Iterator[list[str]]:
    """Consecutive parts of ``queries`` of at most ``max_batch`` queries and about
    ``max_bytes`` of JSON each (a part always holds at least one query)."""
    part: list[str] = []
    size = 0
    for q in queries:
        q_bytes = len(orjson.dumps(q)) + 1
        if part and (len(part) == max_batch or size + q_bytes > max_bytes):
            yield part
            part, size = [], 0
        part.append(q)
        size += q_bytes
    if part:
        yield part


def bearer_header(api_key_env: str | None) -> dict[str, str]:
    """``{"authorization": "Bearer <token>"}`` from the variable ``api_key_env`` ({} for
    None; :func:`research.http.env_token` checks it)."""
    if api_key_env is None:
        return {}
    return {"authorization": f"Bearer {env_token(api_key_env, 'retrieval.api_key_env')}"}


class SearchClient:
    """Client of ``/search`` and ``/batch_search``.

    >>> client = SearchClient("http://127.0.0.1:8000", timeout=5.0)  # doctest: +SKIP
    >>> client.batch_search(["capital of France"], k=5)  # doctest: +SKIP
    """

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = 30.0,
        retry_budget: float = 30.0,
        retries: int | None = None,
        backoff: float = 0.5,
        max_backoff: float = 8.0,
        api_key_env: str | None = None,
    ):
        """``api_key_env``: the environment variable holding the service's access token
        (sent as ``Authorization: Bearer``; the service's ``server.api_key_env``)."""
        self._poster = JsonPoster(base_url, what="search", timeout=timeout, retries=retries,
                                  retry_budget=retry_budget, backoff=backoff,
                                  max_backoff=max_backoff, failed=SearchError,
                                  rejected=SearchRequestError,
                                  headers=bearer_header(api_key_env))
        self.base_url = self._poster.base_url
        self._limits: dict | None = None

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
        """The hits of each query, in order: one request, or one per part of a batch over
        the service's limits."""
        if not queries:
            return []
        limits = self.limits()
        max_bytes = int(limits["max_body_bytes"] * 0.9) - 100  # the JSON around the queries
        out: list[list[Hit]] = []
        for part in split_batch(queries, limits["max_batch"], max_bytes):
            found = self._results("/batch_search",
                                  {"query": part, "top_n": k, "return_score": True})
            if len(found) != len(part):
                raise SearchError(f"{self.base_url}/batch_search answered {len(found)} "
                                  f"results for {len(part)} queries")
            out.extend(found)
        return out

    def limits(self) -> dict:
        """The service's request limits (from ``/health``, asked once); the original's
        when the service does not say or cannot be reached now."""
        if self._limits is None:
            try:
                reported = self.health().get("limits")
            except SearchError:
                return dict(FALLBACK_LIMITS)
            if not isinstance(reported, dict):
                reported = {}
            self._limits = {**FALLBACK_LIMITS, **{k: reported[k] for k in FALLBACK_LIMITS
                                                  if isinstance(reported.get(k), int)}}
        return self._limits

    def health(self) -> dict:
        """The service's ``/health`` (one attempt); :class:`SearchError` when it cannot
        answer."""
        try:
            resp = self._poster.http.get("/health")
        except httpx.HTTPError as e:
            raise SearchError(f"health check at {self.base_url}/health failed: "
                              f"{type(e).__name__}: {e}") from None
        if resp.status_code != 200:
            raise SearchError(f"health check at {self.base_url}/health answered "
                              f"{resp.status_code}: {error_detail(resp)}",
                              status=resp.status_code)
        try:
            return resp.json()
        except ValueError:
            raise SearchError(f"health check at {self.base_url}/health answered a body that "
                              "is not JSON") from None

    def close(self) -> None:
        self._poster.close()

    def __enter__(self) -> SearchClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
