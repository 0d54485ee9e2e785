"""Run the retrieval service with uvicorn."""

from __future__ import annotations

import logging
from pathlib import Path

from research.retrieval.index import IndexLoadError, Manifest
from research.serving.config import ServingConfig, is_loopback

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
    if not is_loopback(config.server.host) and config.server.api_key_env is not None:
        logger.info("binding to %s: reachable from the network, every endpoint but /health "
                    "behind the access token of %s", config.server.host,
                    config.server.api_key_env)
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
