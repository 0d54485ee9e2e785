"""BM25 through ``bm25s``: a streaming index build and a thread-safe retriever.

``bm25s.BM25.index`` needs every document's token ids in memory at once, which does not fit
the 21M-passage Wikipedia corpus. :func:`build_bm25` produces the same index (same
tokenizer, same Lucene BM25 scores, same saved files, loadable by ``bm25s.BM25.load``) in two
streaming passes over the corpus:

1. tokenize chunks of documents with ``bm25s``' tokenizer and spill each chunk's
   ``(doc, token, term frequency)`` triples to disk;
2. with the document frequencies and average length known, score the triples chunk by chunk
   and scatter them into column-sorted (CSC) arrays memory-mapped on disk.

Peak memory is one chunk plus vocabulary-sized arrays and the score matrix's pages the OS
chooses to keep.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from research.errors import ConfigError
from research.retrieval.base import Hit, StoreBackedRetriever
from research.retrieval.corpus import CorpusRecord, DocStore

logger = logging.getLogger(__name__)

_SPLIT_PATTERN = r"(?u)\b\w\w+\b"  # bm25s' default splitter


@dataclass(frozen=True)
class BM25Params:
    """BM25 settings; the defaults are bm25s' (Lucene variant)."""

    k1: float = 1.5
    b: float = 0.75
    stopwords: str = "en"  # a bm25s stopword list name, or "none"
    stemmer: str = "english"  # a PyStemmer language, or "none"

    def __post_init__(self):
        if self.k1 < 0 or not 0 <= self.b <= 1:
            raise ConfigError(f"BM25 needs k1 >= 0 and 0 <= b <= 1, got k1={self.k1}, b={self.b}")


def _stemmer(language: str):
    if language == "none":
        return None
    import Stemmer

    try:
        return Stemmer.Stemmer(language)
    except KeyError:
        raise ConfigError(
            f"unknown stemmer language {language!r}; choose one of "
            f"{sorted(Stemmer.algorithms())} or 'none'"
        ) from None


def _stopword_list(name: str) -> list[str]:
    from bm25s.tokenization import _infer_stopwords

    return [] if name == "none" else list(_infer_stopwords(name))


def _chunks(records: Iterable[CorpusRecord], size: int) -> Iterator[list[CorpusRecord]]:
    chunk: list[CorpusRecord] = []
    for rec in records:
        chunk.append(rec)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _chunk_triples(token_ids: list[list[int]], first_doc: int) -> dict[str, np.ndarray]:
    """Unique ``(doc, token)`` pairs of a chunk with their counts, sorted by doc then token."""
    lens = np.fromiter((len(t) for t in token_ids), dtype=np.int64, count=len(token_ids))
    flat = np.fromiter((i for t in token_ids for i in t), dtype=np.int64, count=int(lens.sum()))
    local_doc = np.repeat(np.arange(len(token_ids), dtype=np.int64), lens)
    keys, tf = np.unique((local_doc << 32) | flat, return_counts=True)
    return {
        "doc": ((keys >> 32) + first_doc).astype(np.int32),  # [nnz_chunk]
        "tok": (keys & 0xFFFFFFFF).astype(np.int32),  # [nnz_chunk]
        "tf": tf.astype(np.int32),  # [nnz_chunk]
        "len": lens.astype(np.int32),  # [docs_chunk]
    }


def _tokenize_pass(records, n_docs, params, work: Path, chunk_docs: int):
    """Pass 1: tokenize and spill triples; returns (tokenizer, doc lengths, chunk files)."""
    from bm25s.tokenization import Tokenizer

    tokenizer = Tokenizer(
        stopwords=_stopword_list(params.stopwords), stemmer=_stemmer(params.stemmer)
    )
    doc_lens = np.zeros(n_docs, dtype=np.int32)
    files = []
    done = 0
    with tqdm(total=n_docs, desc="BM25 tokenize", unit="doc", unit_scale=True) as bar:
        for chunk in _chunks(records, chunk_docs):
            ids = tokenizer.tokenize(
                [r.contents for r in chunk], update_vocab=True, show_progress=False
            )
            triples = _chunk_triples(ids, done)
            doc_lens[done : done + len(chunk)] = triples.pop("len")
            files.append(work / f"chunk-{len(files):05d}.npz")
            np.savez(files[-1], **triples)
            done += len(chunk)
            bar.update(len(chunk))
    if done != n_docs:
        raise RuntimeError(f"the corpus yielded {done} documents, expected {n_docs}")
    return tokenizer, doc_lens, files


def _scatter_pass(files, doc_lens, n_vocab, params, out: Path):
    """Pass 2: score the triples and write them column-sorted (CSC over tokens)."""
    df = np.zeros(n_vocab, dtype=np.int64)
    for f in files:
        df += np.bincount(np.load(f)["tok"], minlength=n_vocab)
    n_docs = len(doc_lens)
    idf = np.log(1.0 + (n_docs - df + 0.5) / (df + 0.5)).astype(np.float32)  # Lucene idf
    avg_len = float(doc_lens.mean()) if n_docs else 1.0
    nnz = int(df.sum())
    indptr = np.zeros(n_vocab + 1, dtype=np.int64 if nnz >= 2**31 else np.int32)
    np.cumsum(df, out=indptr[1:])
    data = np.lib.format.open_memmap(out / "data.csc.index.npy", "w+", np.float32, (nnz,))
    indices = np.lib.format.open_memmap(out / "indices.csc.index.npy", "w+", np.int32, (nnz,))
    cursor = indptr[:-1].astype(np.int64)  # next free slot of each token's column
    for f in tqdm(files, desc="BM25 score", unit="chunk"):
        t = np.load(f)
        doc, tok, tf = t["doc"], t["tok"], t["tf"].astype(np.float64)
        norm = params.k1 * ((1 - params.b) + params.b * doc_lens[doc] / avg_len)
        score = idf[tok] * (tf / (norm + tf))  # bm25s' Lucene tf component times idf
        order = np.argsort(tok, kind="stable")  # keeps doc order inside each column
        tok_sorted = tok[order]
        counts = np.bincount(tok_sorted, minlength=n_vocab)
        group_start = np.cumsum(counts) - counts  # first position of each token in the chunk
        rank = np.arange(len(order)) - group_start[tok_sorted]
        pos = cursor[tok_sorted] + rank
        data[pos] = score[order]
        indices[pos] = doc[order]
        cursor += counts
    data.flush()
    indices.flush()
    return indptr, nnz


def build_bm25(
    records: Iterable[CorpusRecord],
    n_docs: int,
    out: Path,
    params: BM25Params,
    chunk_docs: int = 100_000,
) -> dict:
    """Build a bm25s index of ``n_docs`` streamed documents into directory ``out``.

    ``out`` is written through a ``.partial`` sibling and renamed when complete, so a killed
    build leaves no half index behind; rerunning starts it again.
    Returns a summary (vocabulary size, non-zeros) for the manifest.
    """
    import bm25s

    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    work = partial / "spill"
    work.mkdir(parents=True)
    tokenizer, doc_lens, files = _tokenize_pass(records, n_docs, params, work, chunk_docs)
    vocab = tokenizer.get_vocab_dict()
    indptr, nnz = _scatter_pass(files, doc_lens, len(vocab), params, partial)
    shutil.rmtree(work)
    np.save(partial / "indptr.csc.index.npy", indptr)
    model = bm25s.BM25(k1=params.k1, b=params.b, method="lucene")
    model.vocab_dict = vocab
    model.scores = {"num_docs": n_docs}
    # bm25s.BM25.save would rewrite the score arrays; write its small files the same way.
    (partial / "vocab.index.json").write_text(json.dumps(vocab, ensure_ascii=False))
    saved = dict(k1=model.k1, b=model.b, delta=model.delta, method=model.method,
                 idf_method=model.idf_method, dtype=model.dtype, int_dtype=model.int_dtype,
                 num_docs=n_docs, version=bm25s.__version__, backend=model.backend)
    (partial / "params.index.json").write_text(json.dumps(saved, indent=4))
    (partial / "research_bm25.json").write_text(json.dumps(asdict(params), indent=2))
    shutil.rmtree(out, ignore_errors=True)
    partial.rename(out)
    return {"vocab_size": len(vocab), "nnz": nnz, "avg_doc_len": float(doc_lens.mean())}


class _QueryTokenizer:
    """Maps query text to the index's token ids without touching the vocabulary.

    Uses the same splitter, stop words and stemmer as the build. PyStemmer objects are not
    thread-safe, so each thread gets its own.
    """

    def __init__(self, vocab: dict[str, int], params: BM25Params):
        import re

        self._split = re.compile(_SPLIT_PATTERN).findall
        self._vocab = vocab
        self._stop = frozenset(_stopword_list(params.stopwords))
        self._language = params.stemmer
        self._local = threading.local()

    def _stem(self):
        if not hasattr(self._local, "stemmer"):
            self._local.stemmer = _stemmer(self._language)
        return self._local.stemmer

    def __call__(self, text: str) -> list[int]:
        stemmer = self._stem()
        ids = []
        for word in self._split(text.lower()):
            if word in self._stop:
                continue
            sid = self._vocab.get(stemmer.stemWord(word) if stemmer else word)
            if sid is not None:
                ids.append(sid)
        return ids


class BM25Retriever(StoreBackedRetriever):
    """A loaded bm25s index plus the doc store that turns positions into documents."""

    def __init__(self, index_dir: Path, store: DocStore, threads: int = 1):
        import bm25s

        index_dir = Path(index_dir)
        params = BM25Params(**json.loads((index_dir / "research_bm25.json").read_text()))
        backend = "numba" if _numba_available() else "numpy"
        self._bm25 = bm25s.BM25.load(index_dir, mmap=True, backend=backend)
        self._tokenize = _QueryTokenizer(self._bm25.vocab_dict, params)
        self._store = store
        self._threads = threads
        if self._bm25.scores["num_docs"] != len(store):
            raise ValueError(
                f"BM25 index in {index_dir} has {self._bm25.scores['num_docs']} documents but "
                f"the corpus {store.path} has {len(store)}: rebuild with `research index build`"
            )

    def batch_search(self, queries: Sequence[str], k: int) -> list[list[Hit]]:
        """Best first; equal scores in document order, so the top ``k`` of a query is always
        the start of its top ``k + n``. A query with no known term gets no hits."""
        token_ids = [self._tokenize(q) for q in queries]
        todo = [i for i, ids in enumerate(token_ids) if ids]  # no known term: no hit
        results: list[list[Hit]] = [[] for _ in queries]
        k = min(k, self.num_docs)
        if not todo or k < 1:
            return results
        # one extra: a tie across the k-th place is seen and resolved in _ordered
        docs, scores = self._bm25.retrieve(
            [token_ids[i] for i in todo], k=min(k + 1, self.num_docs), show_progress=False,
            n_threads=self._threads,
        )  # [Q, k + 1] each, best first, ties in no fixed order
        for row, i in enumerate(todo):
            order, top = self._ordered(token_ids[i], docs[row], scores[row], k)
            results[i] = [Hit(*self._store.get(int(d)), float(s))
                          for d, s in zip(order, top, strict=True) if s > 0]
        return results

    def _ordered(self, ids: list[int], docs: np.ndarray, scores: np.ndarray, k: int):
        """The top ``k`` (doc positions, scores) by score, then document order.

        bm25s' top ``k + 1`` holds the right scores but picks arbitrarily among documents
        tied at the k-th score. When the (k+1)-th score is lower, the first k are exactly
        the documents scoring at least the k-th: only their order needs fixing. Otherwise
        every document's score is computed (bm25s' own sum, so equal to the bit) and the
        tied ones are taken in document order.
        """
        if len(scores) > k and scores[k] == scores[k - 1] and scores[k - 1] > 0:
            full = self._bm25.get_scores_from_ids(ids)  # [num_docs]
            threshold = np.partition(full, len(full) - k)[len(full) - k]  # the k-th best
            docs = np.flatnonzero(full >= threshold)  # ascending document order
            scores = full[docs]
        else:
            docs, scores = docs[:k], scores[:k]
        order = np.lexsort((docs, -scores))[:k]  # score descending, then document order
        return docs[order], scores[order]

    def warm_up(self) -> None:
        """One search, so that numba compiles bm25s' kernels now rather than on the first
        request (6-7 s)."""
        self._bm25.retrieve([[0]], k=1, show_progress=False, n_threads=self._threads)


def _numba_available() -> bool:
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    return True
