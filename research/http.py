"""JSON over HTTP with a timeout and bounded retry, shared by the project's clients.

Connection errors, timeouts, 5xx answers and bodies that are not JSON are retried with
exponential backoff, up to ``retries`` times and / or for ``retry_budget`` seconds after the
first failure (the last try lands on the budget's end, so an outage shorter than the budget
is ridden out); a 4xx is the caller's mistake and raises at once. After the last attempt the
caller's error type is raised with the reason, the status and the attempt count.
"""

from __future__ import annotations

import logging
import time

import httpx
import orjson

from research.errors import ConfigError, ResearchError

logger = logging.getLogger(__name__)


def env_token(variable: str, key: str) -> str:
    """The access token held in the environment variable ``variable`` (named by the config
    key ``key``), stripped; a ConfigError naming only the variable (never the value) when it
    is unset, empty, or holds anything but visible ASCII (which no HTTP header can carry).

    >>> import os; os.environ["DOC_TOKEN"] = " abc\\n"
    >>> env_token("DOC_TOKEN", "server.api_key_env")
    'abc'
    """
    import os

    token = os.environ.get(variable, "").strip()
    if not token:
        raise ConfigError(f"{key} names {variable}, which is not set (or empty) in the "
                          "environment: export the access token there")
    if not all(33 <= ord(c) <= 126 for c in token):
        raise ConfigError(f"{key} names {variable}, whose value holds spaces, control or "
                          "non-ASCII characters, which an Authorization header cannot carry: "
                          "use a token of visible ASCII characters")
    return token


class RequestFailed(ResearchError, RuntimeError):
    """A request that failed after its retries (or was rejected with a 4xx)."""

    def __init__(self, message: str, *, status: int | None = None, attempts: int = 1):
        super().__init__(message)
        self.status = status
        self.attempts = attempts


class RequestRejected(RequestFailed):
    """The server rejected the request (4xx): retrying cannot help."""


class JsonPoster:
    """POSTs JSON to ``base_url`` and returns the decoded answer, retrying what can pass."""

    def __init__(self, base_url: str, *, what: str, timeout: float, retries: int | None,
                 backoff: float, max_backoff: float, failed: type[RequestFailed] = RequestFailed,
                 rejected: type[RequestFailed] = RequestRejected, headers: dict | None = None,
                 max_connections: int | None = None, retry_budget: float | None = None):
        if retries is None and retry_budget is None:
            raise ConfigError("set retries, retry_budget or both: a retry needs a bound")
        if retries is not None and retries < 0:
            raise ConfigError(f"retries must be >= 0, got {retries}")
        if retry_budget is not None and retry_budget < 0:
            raise ConfigError(f"retry_budget must be >= 0 seconds, got {retry_budget}")
        self.base_url = base_url.rstrip("/")
        self.what, self.retries, self.retry_budget = what, retries, retry_budget
        self.backoff, self.max_backoff = backoff, max_backoff
        self.failed, self.rejected = failed, rejected
        self.http = httpx.Client(
            base_url=self.base_url, timeout=timeout,
            headers={"content-type": "application/json", **(headers or {})},
            limits=httpx.Limits(max_connections=max_connections),
        )

    def _attempt(self, path: str, payload: dict):
        """One request: ``(body, None)`` on success, ``(None, reason)`` when retryable."""
        try:
            resp = self.http.post(path, content=orjson.dumps(payload))
        except (httpx.TransportError, httpx.TimeoutException) as e:
            return None, f"{type(e).__name__}: {e}"
        if resp.status_code >= 500:
            return None, f"HTTP {resp.status_code}: {error_detail(resp)}"
        if resp.status_code >= 400:
            raise self.rejected(
                f"{self.base_url}{path} rejected the request ({resp.status_code}): "
                f"{error_detail(resp)}", status=resp.status_code)
        try:
            return orjson.loads(resp.content), None
        except orjson.JSONDecodeError:
            return None, f"HTTP {resp.status_code} with a body that is not JSON"

    def _delay(self, attempt: int, failing_for: float) -> float | None:
        """Seconds to wait before attempt ``attempt + 1``, or None when out of retries."""
        if self.retries is not None and attempt > self.retries:
            return None
        delay = min(self.max_backoff, self.backoff * 2 ** (attempt - 1))
        if self.retry_budget is None:
            return delay
        left = self.retry_budget - failing_for
        return min(delay, left) if left > 0 else None

    def post(self, path: str, payload: dict):
        attempt, first_failure = 0, None
        while True:
            attempt += 1
            body, reason = self._attempt(path, payload)
            if reason is None:
                return body
            first_failure = first_failure or time.monotonic()
            delay = self._delay(attempt, time.monotonic() - first_failure)
            if delay is None:
                break
            logger.warning("%s %s failed (%s); retry %d in %.2f s",
                           self.what, path, reason, attempt, delay)
            time.sleep(delay)
        took = time.monotonic() - first_failure
        raise self.failed(f"{self.what} at {self.base_url}{path} failed after {attempt} "
                          f"attempt(s) over {took:.1f} s: {reason}", attempts=attempt)

    def close(self) -> None:
        self.http.close()


def error_detail(resp: httpx.Response) -> str:
    """The server's error message: FastAPI ``{"detail"}``, vLLM ``{"error": {"message"}}``,
    SGLang ``{"message"}``, else the start of the body."""
    try:
        body = resp.json()
    except ValueError:
        return resp.text[:300]
    if not isinstance(body, dict):
        return str(body)[:300]
    error = body.get("error")
    if isinstance(error, dict) and "message" in error:
        return str(error["message"])
    return str(body.get("detail") or body.get("message") or body)[:300]
