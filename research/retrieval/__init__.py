"""Retrieval: corpora, BM25 and dense indexes, and the HTTP client of the service.

Import the submodules directly; this package imports nothing heavy.
"""

from research.retrieval.base import Hit, Retriever

__all__ = ["Hit", "Retriever"]
