"""Turn a serving config into loaded retrievers (run once, in the app's lifespan)."""

from __future__ import annotations

import logging
from pathlib import Path

from research.paths import cache_root
from research.retrieval.base import Retriever
from research.retrieval.index import build_index, load_retriever
from research.serving.config import ServingConfig

logger = logging.getLogger(__name__)


def embedded_index(name: str, method: str = "bm25", dense_config=None) -> Path:
    """The index of an embedded corpus in the cache, built on first use (seconds for BM25)."""
    from research.data.embedded import corpus_path

    out = cache_root() / "indexes" / f"{name}-{method}"
    build_index(corpus_path(name), out, method, dense_config=dense_config)
    return out


def _torch_threads(n: int | None) -> None:
    if n:
        import torch

        torch.set_num_threads(n)


def load_retrievers(config: ServingConfig) -> list[Retriever]:
    """One retriever shared by all worker threads, or one replica per listed GPU (dense)."""
    spec = config.retriever
    _torch_threads(config.server.torch_threads)
    devices = [f"cuda:{g}" for g in spec.gpu_ids] or [None]
    search = spec.search_params or None
    if spec.faiss_index:
        from research.retrieval.dense import DenseConfig, DenseRetriever

        return [
            DenseRetriever.from_flashrag(
                spec.faiss_index, spec.corpus,
                DenseConfig(**{**spec.encoder, "device": d, "search_params": search}),
            )
            for d in devices
        ]
    if spec.embedded:
        dense = None
        if spec.method == "dense":
            from research.retrieval.dense import DenseConfig

            dense = DenseConfig(**spec.encoder)
        index_dir = embedded_index(spec.embedded, spec.method, dense)
    else:
        index_dir = Path(spec.index_dir)
    return [load_retriever(index_dir, threads=spec.threads_per_query, device=d,
                           search_params=search) for d in devices]
