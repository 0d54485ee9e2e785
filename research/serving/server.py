"""Run the retrieval service with uvicorn."""

from __future__ import annotations

import logging
from pathlib import Path

from research.retrieval.index import IndexLoadError, Manifest
from research.serving.config import ServingConfig

logger = logging.getLogger(__name__)


def preflight(config: ServingConfig) -> None:
    """Cheap checks before the server starts, so a bad path fails with a clear message."""
    spec = config.retriever
    if spec.index_dir:
        Manifest.load(spec.index_dir)
    for name in ("faiss_index", "corpus"):
        path = getattr(spec, name)
        if path and not Path(path).is_file():
            raise IndexLoadError(f"retriever.{name}: file not found: {path}")


def serve(config: ServingConfig) -> int:
    """Load the retrievers and serve until interrupted; returns an exit code."""
    import uvicorn

    from research.serving.app import create_app

    preflight(config)
    if config.server.host not in ("127.0.0.1", "localhost", "::1"):
        logger.warning("binding to %s: the service is reachable from the network",
                       config.server.host)
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(config),
            host=config.server.host,
            port=config.server.port,
            log_level=config.server.log_level,
            access_log=config.server.access_log,
        )
    )
    server.run()
    return 0 if server.started else 1
