"""Index directories: build, describe (manifest) and load.

Layout of an index directory built by ``research index build``::

    OUT/
      manifest.json     method, corpus path + sha256 + size, doc count, method settings
      offsets.npy       byte offset of every document line in the doc-store corpus
      corpus.jsonl      an uncompressed copy, only when the source corpus is gzipped
      bm25/             bm25s files (method bm25)
      dense/            faiss index + encoder settings (method dense)

``manifest.json`` is written last: a directory without it is an unfinished build, which
``load_retriever`` refuses with the command that finishes it.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from research import __version__
from research.errors import ConfigError, ResearchError
from research.retrieval.corpus import (
    CorpusFormatError,
    DocStore,
    file_sha256,
    is_gzip,
    iter_corpus,
    line_offsets,
)

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
METHODS = ("bm25", "dense")


class IndexLoadError(ResearchError, RuntimeError):
    """An index directory is missing, unfinished or does not match its corpus."""


@dataclass
class Manifest:
    method: str
    doc_count: int
    corpus_path: str  # the corpus the index was built from (absolute)
    corpus_sha256: str
    corpus_bytes: int
    docstore_path: str  # uncompressed corpus the doc store reads; relative = inside the index
    params: dict = field(default_factory=dict)
    stats: dict = field(default_factory=dict)
    build_seconds: float = 0.0
    created: str = ""
    research_version: str = __version__
    format_version: int = FORMAT_VERSION

    def save(self, out: Path) -> None:
        tmp = out / "manifest.json.tmp"
        tmp.write_text(json.dumps(asdict(self), indent=2))
        os.replace(tmp, out / "manifest.json")

    @classmethod
    def load(cls, out: Path) -> Manifest:
        path = Path(out) / "manifest.json"
        if not path.is_file():
            raise IndexLoadError(_missing_message(Path(out)))
        try:
            data = json.loads(path.read_text())
            manifest = cls(**data)
        except (json.JSONDecodeError, TypeError) as e:
            raise IndexLoadError(f"{path} is corrupt ({e}); {_rebuild_hint(Path(out))}") from None
        if manifest.format_version != FORMAT_VERSION:
            raise IndexLoadError(
                f"{path} has format version {manifest.format_version}, this release reads "
                f"{FORMAT_VERSION}; {_rebuild_hint(Path(out))}"
            )
        return manifest

    def docstore_file(self, out: Path) -> Path:
        p = Path(self.docstore_path)
        return p if p.is_absolute() else Path(out) / p


def _rebuild_hint(out: Path) -> str:
    return f"build it with `research index build --corpus CORPUS.jsonl --method bm25 --out {out}`"


def _missing_message(out: Path) -> str:
    if not out.exists():
        return f"index directory {out} does not exist; {_rebuild_hint(out)}"
    return f"{out} has no manifest.json (an unfinished or foreign build); {_rebuild_hint(out)}"


def _prepare_docstore(corpus: Path, out: Path) -> tuple[Path, np.ndarray]:
    """The uncompressed corpus the doc store will read, and its line offsets."""
    if not is_gzip(corpus):
        return corpus.resolve(), line_offsets(corpus)
    target = out / "corpus.jsonl"
    tmp = out / "corpus.jsonl.partial"
    size = os.path.getsize(corpus)
    with gzip.open(corpus, "rb") as src, open(tmp, "wb") as dst, tqdm(
        total=size, desc="decompress corpus", unit="B", unit_scale=True
    ) as bar:
        raw = src.fileobj  # type: ignore[attr-defined]
        last = 0
        while block := src.read(1 << 22):
            dst.write(block)
            pos = raw.tell()
            bar.update(pos - last)
            last = pos
    os.replace(tmp, target)
    return target, line_offsets(target)


def build_index(
    corpus: str | Path,
    out: str | Path,
    method: str = "bm25",
    *,
    force: bool = False,
    bm25_params=None,
    dense_config=None,
    chunk_docs: int = 100_000,
) -> Manifest:
    """Build a ``method`` index of ``corpus`` into ``out`` and return its manifest.

    A complete index of the same corpus (same sha256) and settings is kept as it is unless
    ``force``; an unfinished one is rebuilt (dense encoding resumes from its saved shards).
    """
    if method not in METHODS:
        raise ConfigError(f"unknown index method {method!r}; choose one of {METHODS}")
    corpus, out = Path(corpus), Path(out)
    if not corpus.is_file():
        raise FileNotFoundError(f"corpus file not found: {corpus}")
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    logger.info("hashing %s", corpus)
    sha = file_sha256(corpus)
    params = _method_params(method, bm25_params, dense_config)
    if not force and (existing := _reusable(out, method, sha, params)):
        logger.info("index in %s is up to date (%d documents)", out, existing.doc_count)
        return existing
    (out / "manifest.json").unlink(missing_ok=True)
    store_path, offsets = _prepare_docstore(corpus, out)
    np.save(out / "offsets.npy", offsets)
    n_docs = len(offsets) - 1
    if n_docs == 0:
        raise CorpusFormatError(f"corpus {corpus} has no documents")
    records = iter_corpus(store_path)
    if method == "bm25":
        from research.retrieval.bm25 import BM25Params, build_bm25

        stats = build_bm25(
            records, n_docs, out / "bm25", bm25_params or BM25Params(), chunk_docs=chunk_docs
        )
    else:
        from research.retrieval.dense import build_dense

        stats = build_dense(records, n_docs, out / "dense", dense_config)
    manifest = Manifest(
        method=method,
        doc_count=n_docs,
        corpus_path=str(corpus.resolve()),
        corpus_sha256=sha,
        corpus_bytes=os.path.getsize(corpus),
        docstore_path="corpus.jsonl" if store_path.parent == out else str(store_path),
        params=params,
        stats=stats,
        build_seconds=round(time.time() - start, 2),
        created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    )
    manifest.save(out)
    return manifest


def _method_params(method, bm25_params, dense_config) -> dict:
    if method == "bm25":
        from research.retrieval.bm25 import BM25Params

        return asdict(bm25_params or BM25Params())
    if dense_config is None:
        raise ConfigError("a dense index needs an encoder config (model path, pooling, prefixes)")
    return dense_config.manifest_params()


def _reusable(out: Path, method: str, sha: str, params: dict) -> Manifest | None:
    try:
        m = Manifest.load(out)
    except IndexLoadError:
        return None
    same = m.method == method and m.corpus_sha256 == sha and m.params == params
    return m if same and m.docstore_file(out).is_file() else None


def open_docstore(out: Path, manifest: Manifest) -> DocStore:
    """The doc store of a built index, checked against the manifest."""
    path = manifest.docstore_file(out)
    if not path.is_file():
        raise IndexLoadError(
            f"the corpus {path} that index {out} reads documents from is missing; restore it "
            f"or {_rebuild_hint(out)}"
        )
    try:
        offsets = np.load(out / "offsets.npy", mmap_mode="r")  # [n_docs + 1] int64
        store = DocStore(path, offsets)
    except (OSError, ValueError) as e:
        raise IndexLoadError(f"index {out}: {e}") from None
    if len(store) != manifest.doc_count:
        raise IndexLoadError(
            f"index {out} records {manifest.doc_count} documents but its offsets list "
            f"{len(store)}; {_rebuild_hint(out)}"
        )
    return store


def load_retriever(out: str | Path, threads: int = 1, device: str | None = None,
                   search_params: dict | None = None):
    """Load the retriever of an index directory built by :func:`build_index`
    (``search_params``: a dense index's faiss knobs, e.g. ``{"nprobe": 32}``).

    Every check (manifest, files, document counts) runs here, so a bad index fails at
    service start-up with a message naming the path and the build command.
    """
    out = Path(out)
    manifest = Manifest.load(out)
    store = open_docstore(out, manifest)
    try:
        if manifest.method == "bm25":
            from research.retrieval.bm25 import BM25Retriever

            if search_params:
                raise ConfigError(f"search_params apply to dense indexes; {out} is a bm25 index")
            if not (out / "bm25" / "params.index.json").is_file():
                raise IndexLoadError(
                    f"{out / 'bm25'} is missing or incomplete; {_rebuild_hint(out)}"
                )
            return BM25Retriever(out / "bm25", store, threads=threads)
        from research.retrieval.dense import DenseConfig, DenseRetriever

        config = DenseConfig.from_manifest(manifest.params, device=device,
                                           search_params=search_params)
        return DenseRetriever(out / "dense" / "index.faiss", store, config)
    except (IndexLoadError, ConfigError):
        store.close()
        raise
    except (OSError, ValueError, KeyError) as e:
        store.close()
        raise IndexLoadError(
            f"index {out} could not be loaded ({e}); {_rebuild_hint(out)}"
        ) from None
