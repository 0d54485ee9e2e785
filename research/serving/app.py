"""The retrieval service: a FastAPI app over one or more retrievers.

Endpoints (wire-compatible with the original ReSearch service and with Search-R1 / verl's
search tool):

* ``GET /health`` -> ``{"status": "healthy", "retrievers": {"total": N, "available": k}, ...}``
* ``POST /search {"query", "top_n"=10, "return_score"=false}`` -> ``[{id, contents}, ...]``,
  or ``[[docs], [scores]]`` with ``return_score``.
* ``POST /batch_search {"query": [...], "top_n", "return_score"}`` -> one list per query
  (``[[[docs]...], [[scores]...]]`` with ``return_score``), searched as one batch.
* ``POST /retrieve {"queries": [...], "topk"=3, "return_scores"=true}`` ->
  ``{"result": [[{"document": {id, contents}, "score"}, ...], ...]}``.

Bad input gets a 400 (or 422 for wrong types and malformed JSON) whose ``detail`` says what
is wrong. Retrievers are loaded in the app's lifespan; ``num_retriever`` searches run at
once in worker threads, each on a replica (or on one shared, thread-safe retriever).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

import orjson
from fastapi import FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, StrictBool, StrictInt, StrictStr

from research.retrieval.base import Hit, Retriever
from research.serving.config import LimitsConfig, ServingConfig

logger = logging.getLogger(__name__)


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
    queries: list[StrictStr]
    topk: StrictInt = 3
    return_scores: StrictBool = True


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
        for r in {id(r): r for r in self.replicas}.values():
            r.close()


def _check_queries(queries: list[str], limits: LimitsConfig, name: str) -> None:
    if not queries:
        raise HTTPException(400, f"'{name}' is an empty list: send at least one query")
    if len(queries) > limits.max_batch:
        raise HTTPException(
            400, f"too many queries in one request: {len(queries)} > {limits.max_batch} "
            "(limits.max_batch); split the batch"
        )
    for i, q in enumerate(queries):
        where = f"{name}[{i}]" if len(queries) > 1 or name.endswith("s") else name
        if not q.strip():
            raise HTTPException(400, f"{where} is empty or whitespace: send a non-empty query")
        if len(q) > limits.max_query_chars:
            raise HTTPException(
                400, f"{where} is too long: {len(q)} characters > {limits.max_query_chars} "
                "(limits.max_query_chars)"
            )


def _check_k(k: int, limits: LimitsConfig, name: str) -> None:
    if not 1 <= k <= limits.max_top_n:
        raise HTTPException(
            400, f"{name} must be between 1 and {limits.max_top_n} (limits.max_top_n), got {k}"
        )


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err.get("loc", ()) if x != "body")
        if err.get("type") == "json_invalid":
            ctx = err.get("ctx", {}).get("error", "")
            return f"request body is not valid JSON ({ctx}): send a JSON object"
        parts.append(f"{loc or 'body'}: {err.get('msg')}")
    return "; ".join(parts)


def _json(content) -> Response:
    return Response(orjson.dumps(content), media_type="application/json")


def _docs(hits: list[Hit]) -> list[dict]:
    return [h.to_document() for h in hits]


def create_app(config: ServingConfig, retrievers: Sequence[Retriever] | None = None) -> FastAPI:
    """The service. ``retrievers`` given: used as they are; else loaded from ``config``."""
    limits = config.limits

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        from research.serving.loading import load_retrievers

        replicas = retrievers if retrievers is not None else await run_in_threadpool(
            load_retrievers, config
        )
        app.state.pool = RetrieverPool(replicas, config.server.num_retriever)
        logger.info("retrieval service ready: %d documents, %d worker(s)",
                    replicas[0].num_docs, config.server.num_retriever)
        try:
            yield
        finally:
            app.state.pool.close()

    app = FastAPI(title="ReSearch retrieval service", lifespan=lifespan)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        return JSONResponse(status_code=422, content={"detail": _validation_message(exc)})

    @app.get("/health")
    async def health(request: Request):
        pool: RetrieverPool = request.app.state.pool
        return {
            "status": "healthy",
            "retrievers": {"total": pool.total, "available": pool.available},
            "num_docs": pool.replicas[0].num_docs,
        }

    @app.post("/search")
    async def search(body: SearchRequest, request: Request):
        _check_queries([body.query], limits, "query")
        _check_k(body.top_n, limits, "top_n")
        hits = (await request.app.state.pool.batch_search([body.query], body.top_n))[0]
        if body.return_score:
            return _json([_docs(hits), [h.score for h in hits]])
        return _json(_docs(hits))

    @app.post("/batch_search")
    async def batch_search(body: BatchSearchRequest, request: Request):
        _check_queries(body.query, limits, "query")
        _check_k(body.top_n, limits, "top_n")
        results = await request.app.state.pool.batch_search(body.query, body.top_n)
        docs = [_docs(hits) for hits in results]
        if body.return_score:
            return _json([docs, [[h.score for h in hits] for hits in results]])
        return _json(docs)

    @app.post("/retrieve")
    async def retrieve(body: RetrieveRequest, request: Request):
        _check_queries(body.queries, limits, "queries")
        _check_k(body.topk, limits, "topk")
        results = await request.app.state.pool.batch_search(body.queries, body.topk)
        if body.return_scores:
            out = [[{"document": h.to_document(), "score": h.score} for h in hits]
                   for hits in results]
        else:
            out = [_docs(hits) for hits in results]
        return _json({"result": out})

    return app
