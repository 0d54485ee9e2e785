"""The one retriever interface: every backend returns hits of the same shape."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from research.retrieval.corpus import DocStore


@dataclass(frozen=True, slots=True)
class Hit:
    """One retrieved document: its corpus id, its ``"Title"\\ntext`` contents and its score."""

    id: str
    contents: str
    score: float

    def to_document(self) -> dict[str, str]:
        """The FlashRAG document form ``{"id", "contents"}``."""
        return {"id": self.id, "contents": self.contents}


@runtime_checkable
class Retriever(Protocol):
    """Search a corpus. Results are best first; a query may get fewer than ``k`` hits."""

    def search(self, query: str, k: int) -> list[Hit]:
        """The top ``k`` hits of one query."""
        ...

    def batch_search(self, queries: Sequence[str], k: int) -> list[list[Hit]]:
        """The top ``k`` hits of each query, computed as one batch."""
        ...

    @property
    def num_docs(self) -> int:
        """Number of documents in the index."""
        ...

    def close(self) -> None:
        """Release files and memory maps."""
        ...


class StoreBackedRetriever:
    """The parts every retriever over a :class:`~research.retrieval.corpus.DocStore` shares;
    subclasses set ``self._store`` and implement ``batch_search``."""

    _store: DocStore

    @property
    def num_docs(self) -> int:
        return len(self._store)

    def search(self, query: str, k: int) -> list[Hit]:
        return self.batch_search([query], k)[0]

    def batch_search(self, queries: Sequence[str], k: int) -> list[list[Hit]]:
        raise NotImplementedError

    def warm_up(self) -> None:
        """One search, so that lazy set-up (encoders, kernels) is done before the first
        request."""
        if self.num_docs:
            self.batch_search(["warm up"], 1)

    def close(self) -> None:
        self._store.close()
