"""The retrieval service (FastAPI): config, app factory, and the `serve` entry."""
