"""The retrieval service: a FastAPI app over one or more retrievers.

Endpoints (wire-compatible with the original ReSearch service and its FlashRAG client, and
with Search-R1's trainer and verl's search tool):

* ``GET /health`` -> ``{"status": "healthy", "retrievers": {"total", "available"},
  "num_docs", "limits": {...}, "truncated_queries"}``; answers only once every retriever
  has been warmed with one search.
* ``POST /search {"query", "top_n"=10, "return_score"=false}`` -> ``[{id, contents}, ...]``,
  or ``[[docs], [scores]]`` with ``return_score``. A blank query is a 400.
* ``POST /batch_search {"query": [...], "top_n", "return_score"}`` -> one list per query
  (``[[[docs]...], [[scores]...]]`` with ``return_score``).
* ``POST /retrieve {"queries": [...], "topk"=3 (null: 3), "return_scores"=true}`` ->
  ``{"result": [[{"document": {id, contents}, "score"}, ...], ...]}`` (Search-R1's form);
  ``{"query": "<one string>"}`` (SkyRL's form) or a string ``queries`` is a batch of one,
  answered the same way (a list holding that query's list).

The two batch endpoints answer every position: an empty list gets an empty answer and a
blank query an empty list in its place, while the other queries are searched. A query over
``limits.max_query_chars`` is searched as its first ``max_query_chars`` characters (logged,
counted in ``/health``). A batch is searched ``limits.batch_chunk`` queries at a time, each
chunk on a free worker, and a batch of more than one chunk is streamed, so memory stays flat
for any batch up to ``limits.max_batch``.

With ``server.api_key_env`` set, every endpoint but ``/health`` answers 401 unless the request
carries ``Authorization: Bearer <token>`` (the token from that environment variable). Bad input
gets a 4xx whose ``detail`` says what is wrong: 400 (values out of range, invalid UTF-8, JSON
nested too deep), 413 (body over ``limits.max_body_bytes``), 415 (a content type other than
JSON), 422 (not JSON, not an object, wrong types, missing fields). Retrievers are loaded and
warmed in the app's lifespan; ``num_retriever`` searches run at once in worker threads, each on
a replica (or on one shared, thread-safe retriever).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import asdict

import orjson
from fastapi import FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response, StreamingResponse
from pydantic import (
    BaseModel,
    ConfigDict,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
    model_validator,
)

from research.retrieval.base import Hit, Retriever
from research.serving.config import LimitsConfig, ServingConfig, access_token

logger = logging.getLogger(__name__)

RETRIEVE_DEFAULT_TOPK = 3  # Search-R1's retrieval server's default


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True)


class SearchRequest(_Strict):
    query: StrictStr
    top_n: StrictInt = 10
    return_score: StrictBool = False


class BatchSearchRequest(_Strict):
    query: list[StrictStr]
    top_n: StrictInt = 10
    return_score: StrictBool = False


class RetrieveRequest(_Strict):
    queries: list[StrictStr] | StrictStr | None = None  # a string: one query
    query: StrictStr | None = None  # SkyRL's form: one query, answered as a batch of one
    topk: StrictInt | None = None  # null or absent: 3
    return_scores: StrictBool = True

    @model_validator(mode="after")
    def _one_form(self):
        if (self.queries is None) == (self.query is None):
            raise ValueError('give "queries" (a list of strings) or "query" (one string), '
                             "not both" if self.queries is not None else
                             'field required: "queries" (a list of strings) or "query" (one '
                             "string)")
        return self

    def batch(self) -> list[str]:
        """The queries as a list: ``query`` or a string ``queries`` is a batch of one."""
        one = self.query if self.query is not None else self.queries
        return [one] if isinstance(one, str) else list(one)


class RetrieverPool:
    """``slots`` worker threads, each borrowing a replica for the length of one search."""

    def __init__(self, replicas: Sequence[Retriever], slots: int):
        if not replicas:
            raise ValueError("the pool needs at least one retriever")
        self.replicas = list(replicas)
        self.total = slots
        self._executor = ThreadPoolExecutor(max_workers=slots, thread_name_prefix="retriever")
        self._free: asyncio.Queue[Retriever] = asyncio.Queue()
        for i in range(slots):
            self._free.put_nowait(self.replicas[i % len(self.replicas)])

    @property
    def available(self) -> int:
        return self._free.qsize()

    async def batch_search(self, queries: list[str], k: int) -> list[list[Hit]]:
        retriever = await self._free.get()
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._executor, retriever.batch_search, queries, k)
        finally:
            self._free.put_nowait(retriever)

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        for r in _distinct(self.replicas):
            r.close()


def _distinct(replicas: Sequence[Retriever]) -> list[Retriever]:
    return list({id(r): r for r in replicas}.values())


def warm_up(replicas: Sequence[Retriever]) -> None:
    """One search on each retriever, so the first request does not pay for compilation
    (BM25's numba kernels: 6-7 s) or lazy initialisation."""
    for r in _distinct(replicas):
        start = time.perf_counter()
        warm = getattr(r, "warm_up", None)
        if warm is not None:
            warm()
        else:
            r.search("warm up", 1)
        logger.info("warmed %s in %.1f s", type(r).__name__, time.perf_counter() - start)


# -- reading a request ----------------------------------------------------------------------

def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/")
                                            and media.endswith("+json"))


def _too_large(size: str, limits: LimitsConfig) -> HTTPException:
    return HTTPException(413, f"request body is {size} bytes, over the service's "
                         f"{limits.max_body_bytes} (limits.max_body_bytes): split the batch")


async def _read_body(request: Request, limits: LimitsConfig) -> bytes:
    content_type = request.headers.get("content-type")
    if content_type is not None and not _is_json(content_type):
        raise HTTPException(415, f"content-type is {content_type!r}; expected "
                            "application/json: send the body as JSON (requests / httpx: "
                            "json=payload; curl: -H 'Content-Type: application/json')")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limits.max_body_bytes:
        raise _too_large(declared, limits)
    body = bytearray()
    async for piece in request.stream():
        body += piece
        if len(body) > limits.max_body_bytes:
            raise _too_large(f"over {limits.max_body_bytes}", limits)
    return bytes(body)


def _decode(body: bytes):
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as e:
        try:
            body.decode("utf-8")
        except UnicodeDecodeError as bad:
            raise HTTPException(400, f"request body is not valid UTF-8: byte 0x"
                                f"{body[bad.start]:02x} at offset {bad.start} ({bad.reason}); "
                                "encode the JSON as UTF-8") from None
        if str(e).startswith("depth limit exceeded"):
            raise HTTPException(400, f"request body nests arrays / objects deeper than 1024 "
                                f"levels ({e}); these endpoints take an object of strings, "
                                "numbers and lists of strings") from None
        raise HTTPException(422, f"request body is not valid JSON ({e}): send a JSON "
                            "object") from None


def _validation_message(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(x) for x in err['loc']) or 'body'}: {err['msg']}"
                     for err in exc.errors())


async def _parse(request: Request, model: type[_Strict], limits: LimitsConfig):
    data = _decode(await _read_body(request, limits))
    if not isinstance(data, dict):
        fields = ", ".join(f'"{name}"' for name in model.model_fields)
        raise HTTPException(422, f"request body must be a JSON object with {fields}, got a "
                            f"JSON {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise HTTPException(422, _validation_message(e)) from None


def _schema(model: type[_Strict]) -> dict:
    """The request body's schema for ``/docs`` (bodies are read by :func:`_parse`)."""
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": model.model_json_schema()}}}}


# -- checking and searching -----------------------------------------------------------------

class Queries:
    """Checks a request's queries against the limits and truncates long ones (counted)."""

    def __init__(self, limits: LimitsConfig):
        self.limits = limits
        self.truncated = 0

    def check_k(self, k: int, name: str) -> None:
        if not 1 <= k <= self.limits.max_top_n:
            raise HTTPException(400, f"{name} must be between 1 and {self.limits.max_top_n} "
                                f"(limits.max_top_n), got {k}")

    def batch(self, queries: list[str], name: str) -> list[str]:
        if len(queries) > self.limits.max_batch:
            raise HTTPException(400, f"too many queries in one request: {len(queries)} > "
                                f"{self.limits.max_batch} (limits.max_batch); split the batch")
        return self._truncate(queries, name)

    def single(self, query: str, name: str) -> str:
        if not query.strip():
            raise HTTPException(400, f"{name} is empty or whitespace: send a non-empty query")
        return self._truncate([query], name, single=True)[0]

    def _truncate(self, queries: list[str], name: str, single: bool = False) -> list[str]:
        limit = self.limits.max_query_chars
        long = [i for i, q in enumerate(queries) if len(q) > limit]
        if not long:
            return queries
        self.truncated += len(long)
        first = name if single else f"{name}[{long[0]}]"
        logger.warning("searching %d query(ies) as their first %d characters "
                       "(limits.max_query_chars); first: %s, %d characters", len(long), limit,
                       first, len(queries[long[0]]))
        return [q[:limit] if len(q) > limit else q for q in queries]


async def _chunks(pool: RetrieverPool, queries: list[str], k: int, size: int
                  ) -> AsyncIterator[list[list[Hit]]]:
    """The hits of each query, ``size`` queries per retriever call; blank queries get no
    hits without being searched."""
    for start in range(0, len(queries), size):
        part = queries[start:start + size]
        real = [i for i, q in enumerate(part) if q.strip()]
        hits: list[list[Hit]] = [[] for _ in part]
        if real:
            found = await pool.batch_search([part[i] for i in real], k)
            for i, h in zip(real, found, strict=True):
                hits[i] = h
        yield hits


async def _items(chunks: AsyncIterator[list[list[Hit]]], item: Callable[[list[Hit]], object]
                 ) -> AsyncIterator[bytes]:
    """The comma-separated JSON items (no brackets) of a list with one item per query."""
    sep = b""
    async for hits in chunks:
        yield sep + orjson.dumps([item(h) for h in hits])[1:-1]
        sep = b","


async def _respond(parts: AsyncIterator[bytes], streamed: bool) -> Response:
    """One chunk: the whole body with its length. More: streamed as it is searched."""
    if streamed:
        return StreamingResponse(parts, media_type="application/json")
    return Response(b"".join([p async for p in parts]), media_type="application/json")


def _docs(hits: list[Hit]) -> list[dict]:
    return [h.to_document() for h in hits]


def _scores(hits: list[Hit]) -> list[float]:
    return [h.score for h in hits]


def _scored_docs(hits: list[Hit]) -> list[dict]:
    """Search-R1's form of one query's hits."""
    return [{"document": h.to_document(), "score": h.score} for h in hits]


# -- the app --------------------------------------------------------------------------------

def _token_check(token: str, variable: str):
    """A middleware: every path but ``/health`` needs ``Authorization: Bearer <token>``
    (compared in constant time); otherwise a 401 naming the header. The token is never
    logged or echoed."""
    expected = f"Bearer {token}".encode()

    async def check(request: Request, call_next):
        if request.url.path != "/health":
            given = request.headers.get("authorization", "").encode()
            if not hmac.compare_digest(given, expected):
                detail = ("missing or wrong access token: send the header 'Authorization: "
                          f"Bearer <token>' with the token the service holds in {variable} "
                          "(the project's clients: retrieval.api_key_env)")
                return Response(orjson.dumps({"detail": detail}), status_code=401,
                                media_type="application/json",
                                headers={"WWW-Authenticate": "Bearer"})
        return await call_next(request)

    return check


def create_app(config: ServingConfig, retrievers: Sequence[Retriever] | None = None) -> FastAPI:
    """The service. ``retrievers`` given: used as they are; else loaded from ``config``."""
    limits = config.limits
    queries = Queries(limits)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        from research.serving.loading import load_retrievers

        replicas = retrievers if retrievers is not None else await run_in_threadpool(
            load_retrievers, config
        )
        await run_in_threadpool(warm_up, replicas)
        app.state.pool = RetrieverPool(replicas, config.server.num_retriever)
        logger.info("retrieval service ready: %d documents, %d worker(s)",
                    replicas[0].num_docs, config.server.num_retriever)
        try:
            yield
        finally:
            app.state.pool.close()

    app = FastAPI(title="ReSearch retrieval service", lifespan=lifespan)
    token = access_token(config.server)
    if token is not None:
        app.middleware("http")(_token_check(token, config.server.api_key_env))

    def searched(request: Request, batch: list[str], k: int):
        return _chunks(request.app.state.pool, batch, k, limits.batch_chunk)

    @app.get("/health")
    async def health(request: Request):
        pool: RetrieverPool = request.app.state.pool
        return {
            "status": "healthy",
            "retrievers": {"total": pool.total, "available": pool.available},
            "num_docs": pool.replicas[0].num_docs,
            "limits": asdict(limits),
            "truncated_queries": queries.truncated,
        }

    @app.post("/search", openapi_extra=_schema(SearchRequest))
    async def search(request: Request):
        body = await _parse(request, SearchRequest, limits)
        query = queries.single(body.query, "query")
        queries.check_k(body.top_n, "top_n")
        hits = (await request.app.state.pool.batch_search([query], body.top_n))[0]
        return Response(orjson.dumps([_docs(hits), _scores(hits)] if body.return_score
                                     else _docs(hits)), media_type="application/json")

    @app.post("/batch_search", openapi_extra=_schema(BatchSearchRequest))
    async def batch_search(request: Request):
        body = await _parse(request, BatchSearchRequest, limits)
        batch = queries.batch(body.query, "query")
        queries.check_k(body.top_n, "top_n")
        chunks = searched(request, batch, body.top_n)
        if body.return_score:
            parts = _docs_then_scores(chunks)
        else:
            parts = _wrapped(b"[", _items(chunks, _docs), b"]")
        return await _respond(parts, len(batch) > limits.batch_chunk)

    @app.post("/retrieve", openapi_extra=_schema(RetrieveRequest))
    async def retrieve(request: Request):
        body = await _parse(request, RetrieveRequest, limits)
        batch = queries.batch(body.batch(), "queries")
        k = RETRIEVE_DEFAULT_TOPK if body.topk is None else body.topk
        queries.check_k(k, "topk")
        item = _scored_docs if body.return_scores else _docs
        parts = _wrapped(b'{"result":[', _items(searched(request, batch, k), item), b"]}")
        return await _respond(parts, len(batch) > limits.batch_chunk)

    return app


async def _wrapped(head: bytes, items: AsyncIterator[bytes], tail: bytes
                   ) -> AsyncIterator[bytes]:
    yield head
    async for piece in items:
        yield piece
    yield tail


async def _docs_then_scores(chunks: AsyncIterator[list[list[Hit]]]) -> AsyncIterator[bytes]:
    """``[[docs of each query], [scores of each query]]``: the documents streamed, the
    (small) scores kept until the end."""
    scores: list[list[float]] = []

    def docs(hits: list[Hit]) -> list[dict]:
        scores.append(_scores(hits))
        return _docs(hits)

    yield b"[["
    async for piece in _items(chunks, docs):
        yield piece
    yield b"],"
    yield orjson.dumps(scores)
    yield b"]"
