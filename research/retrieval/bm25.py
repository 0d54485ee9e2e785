"""BM25 through ``bm25s``: a streaming index build and a thread-safe retriever.

``bm25s.BM25.index`` needs every document's token ids in memory at once, which does not fit
the 21M-passage Wikipedia corpus. :func:`build_bm25` produces the same index (same
tokenizer, same Lucene BM25 scores, same saved files, loadable by ``bm25s.BM25.load``) in two
streaming passes over the corpus:

1. tokenize chunks of documents with ``bm25s``' tokenizer and spill each chunk's
   ``(token, doc, term frequency)`` triples to disk, sorted by token;
2. with the document frequencies and average length known, assemble the column-sorted
   (CSC) score arrays one band of tokens at a time, from every chunk's slice for that band,
   and write each band once, in order.

Peak memory is one chunk while tokenizing and one band (``band_nnz`` entries, 1 GB by
default) while scoring, plus vocabulary-sized arrays; nothing the size of the index stays
mapped. The build also saves each token's highest score (``research_bounds.npy``), which
:class:`BM25Retriever` uses to skip documents that cannot reach a query's top ``k``.
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
from research.retrieval.maxscore import column_maxima, search_many

logger = logging.getLogger(__name__)

_SPLIT_PATTERN = r"(?u)\b\w\w+\b"  # bm25s' default splitter
BOUNDS_FILE = "research_bounds.npy"  # each token's highest score, for pruning at search


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
    """Unique ``(doc, token)`` pairs of a chunk with their counts, sorted by token then doc."""
    lens = np.fromiter((len(t) for t in token_ids), dtype=np.int64, count=len(token_ids))
    flat = np.fromiter((i for t in token_ids for i in t), dtype=np.int64, count=int(lens.sum()))
    local_doc = np.repeat(np.arange(len(token_ids), dtype=np.int64), lens)
    keys, tf = np.unique((flat << 32) | local_doc, return_counts=True)
    return {
        "tok": (keys >> 32).astype(np.int32),  # [nnz_chunk]
        "doc": ((keys & 0xFFFFFFFF) + first_doc).astype(np.int32),  # [nnz_chunk]
        "tf": tf.astype(np.int32),  # [nnz_chunk]
        "len": lens.astype(np.int32),  # [docs_chunk]
    }


_SPILLED = ("tok", "doc", "tf")


def _tokenize_pass(records, n_docs, params, work: Path, chunk_docs: int):
    """Pass 1: tokenize and spill each chunk's triples, sorted by token, as ``.npy`` files.

    Returns (tokenizer, doc lengths, document frequencies, chunk file stems)."""
    from bm25s.tokenization import Tokenizer

    tokenizer = Tokenizer(
        stopwords=_stopword_list(params.stopwords), stemmer=_stemmer(params.stemmer)
    )
    doc_lens = np.zeros(n_docs, dtype=np.int32)
    df = np.zeros(0, dtype=np.int64)
    stems = []
    done = 0
    with tqdm(total=n_docs, desc="BM25 tokenize", unit="doc", unit_scale=True) as bar:
        for chunk in _chunks(records, chunk_docs):
            ids = tokenizer.tokenize(
                [r.contents for r in chunk], update_vocab=True, show_progress=False
            )
            triples = _chunk_triples(ids, done)
            doc_lens[done : done + len(chunk)] = triples.pop("len")
            counts = np.bincount(triples["tok"], minlength=len(df))
            df = np.concatenate([df, np.zeros(len(counts) - len(df), np.int64)]) + counts
            stems.append(work / f"chunk-{len(stems):05d}")
            for name in _SPILLED:
                np.save(f"{stems[-1]}.{name}.npy", triples[name])
            done += len(chunk)
            bar.update(len(chunk))
    if done != n_docs:
        raise RuntimeError(f"the corpus yielded {done} documents, expected {n_docs}")
    return tokenizer, doc_lens, df, stems


def _bands(indptr: np.ndarray, band_nnz: int) -> list[tuple[int, int]]:
    """Consecutive token ranges ``[t0, t1)`` holding about ``band_nnz`` entries each."""
    indptr = np.asarray(indptr, dtype=np.int64)
    n_vocab = len(indptr) - 1
    bands, t0 = [], 0
    while t0 < n_vocab:
        t1 = int(np.searchsorted(indptr, indptr[t0] + band_nnz, side="right")) - 1
        t1 = min(max(t1, t0 + 1), n_vocab)  # at least one token, even a longer one
        bands.append((t0, t1))
        t0 = t1
    return bands


def _scatter_pass(stems, doc_lens, df, params, out: Path, band_nnz: int):
    """Pass 2: score the triples and write them column-sorted (CSC over tokens), one band
    of tokens at a time: each band is assembled in memory from every chunk's slice and
    written once, in order. Also returns each token's highest score (its column maximum),
    the upper bound the retriever prunes with."""
    n_vocab, n_docs = len(df), len(doc_lens)
    idf = np.log(1.0 + (n_docs - df + 0.5) / (df + 0.5)).astype(np.float32)  # Lucene idf
    avg_len = float(doc_lens.mean()) if n_docs else 1.0
    nnz = int(df.sum())
    indptr = np.zeros(n_vocab + 1, dtype=np.int64 if nnz >= 2**31 else np.int32)
    np.cumsum(df, out=indptr[1:])
    header = {}
    for name, dtype in (("data", np.float32), ("indices", np.int32)):
        path = out / f"{name}.csc.index.npy"
        header[name] = (path, np.lib.format.open_memmap(path, "w+", dtype, (nnz,)).offset)
    bounds = np.zeros(n_vocab, dtype=np.float32)
    bands = _bands(indptr, band_nnz)
    for t0, t1 in tqdm(bands, desc="BM25 score", unit="band"):
        lo_out, hi_out = int(indptr[t0]), int(indptr[t1])
        band_data = np.empty(hi_out - lo_out, dtype=np.float32)
        band_docs = np.empty(hi_out - lo_out, dtype=np.int32)
        cursor = indptr[t0:t1].astype(np.int64) - lo_out  # next free slot of each column
        for stem in stems:  # chunks in document order: each column stays sorted by doc
            lo, hi = np.searchsorted(np.load(f"{stem}.tok.npy", mmap_mode="r"), [t0, t1])
            tok = _read(f"{stem}.tok.npy", lo, hi) - t0
            doc = _read(f"{stem}.doc.npy", lo, hi)
            tf = _read(f"{stem}.tf.npy", lo, hi).astype(np.float64)
            norm = params.k1 * ((1 - params.b) + params.b * doc_lens[doc] / avg_len)
            counts = np.bincount(tok, minlength=t1 - t0)
            pos = cursor[tok] + (np.arange(len(tok)) - (np.cumsum(counts) - counts)[tok])
            band_data[pos] = idf[tok + t0] * (tf / (norm + tf))  # Lucene tf part times idf
            band_docs[pos] = doc
            cursor += counts
        starts = indptr[t0:t1] - lo_out
        filled = np.flatnonzero(df[t0:t1])
        if len(filled):
            bounds[t0 + filled] = np.maximum.reduceat(band_data, starts[filled])
        for name, band in (("data", band_data), ("indices", band_docs)):
            path, offset = header[name]
            with open(path, "r+b") as f:
                f.seek(offset + lo_out * band.itemsize)
                band.tofile(f)
    return indptr, nnz, bounds


def _read(path: str, lo: int, hi: int) -> np.ndarray:
    """A copy of ``[lo, hi)`` of a saved array; the mapping is dropped at once, so pages read
    once do not stay in this process' resident memory."""
    return np.array(np.load(path, mmap_mode="r")[lo:hi])


def build_bm25(
    records: Iterable[CorpusRecord],
    n_docs: int,
    out: Path,
    params: BM25Params,
    chunk_docs: int = 100_000,
    band_nnz: int = 1 << 27,
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
    tokenizer, doc_lens, df, stems = _tokenize_pass(records, n_docs, params, work, chunk_docs)
    vocab = tokenizer.get_vocab_dict()
    df = np.concatenate([df, np.zeros(max(0, len(vocab) - len(df)), np.int64)])
    indptr, nnz, bounds = _scatter_pass(stems, doc_lens, df, params, partial, band_nnz)
    shutil.rmtree(work)
    np.save(partial / "indptr.csc.index.npy", indptr)
    np.save(partial / BOUNDS_FILE, bounds)
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
    """A loaded bm25s index plus the doc store that turns positions into documents.

    The score arrays stay memory-mapped; searches run the exact MaxScore kernel of
    :mod:`research.retrieval.maxscore` over them (compiled by numba when the ``fast`` extra is
    installed), which reads only the postings a query's top ``k`` needs.
    """

    def __init__(self, index_dir: Path, store: DocStore, threads: int = 1):
        import bm25s

        index_dir = Path(index_dir)
        params = BM25Params(**json.loads((index_dir / "research_bm25.json").read_text()))
        self._bm25 = bm25s.BM25.load(index_dir, mmap=True)
        self._tokenize = _QueryTokenizer(self._bm25.vocab_dict, params)
        self._store = store
        self._threads = threads
        if self._bm25.scores["num_docs"] != len(store):
            raise ValueError(
                f"BM25 index in {index_dir} has {self._bm25.scores['num_docs']} documents but "
                f"the corpus {store.path} has {len(store)}: rebuild with `research index build`"
            )
        self._data = self._bm25.scores["data"]  # [nnz] float32, memory-mapped
        self._indices = self._bm25.scores["indices"]  # [nnz] int32 doc positions, mapped
        self._indptr = np.array(self._bm25.scores["indptr"], dtype=np.int64)  # [vocab + 1]
        bounds_file = index_dir / BOUNDS_FILE
        if bounds_file.is_file():
            self._bounds = np.load(bounds_file)  # [vocab] float32
        else:  # an index built before the bounds were saved: one pass over its scores
            logger.info("computing the token score bounds of %s (once per start)", index_dir)
            self._bounds = column_maxima(self._data, self._indptr)

    def batch_search(self, queries: Sequence[str], k: int) -> list[list[Hit]]:
        """Best first; equal scores in document order, so the top ``k`` of a query is always
        the start of its top ``k + n``. A query with no known term gets no hits."""
        token_ids = [self._tokenize(q) for q in queries]
        k = min(k, self.num_docs)
        if k < 1:
            return [[] for _ in queries]
        found = search_many(self._data, self._indices, self._indptr, self._bounds, token_ids, k,
                            threads=self._threads)
        self._store.prefetch([int(d) for docs, _ in found for d in docs])
        return [[Hit(*self._store.get(int(d)), float(s)) for d, s in zip(docs, scores, strict=True)]
                for docs, scores in found]

    def warm_up(self) -> None:
        """Ask the OS to read the score arrays into its page cache in the background (see
        :func:`advise_willneed`), and run one search, so that numba loads or compiles the
        kernels now rather than on the first request."""
        advise_willneed([self._data, self._indices])
        search_many(self._data, self._indices, self._indptr, self._bounds, [[0], [0]], 1,
                    threads=self._threads)


def advise_willneed(arrays) -> int:
    """``madvise(MADV_WILLNEED)`` on memory-mapped arrays; returns the bytes advised.

    The kernel then reads the files ahead in the background, sequentially, instead of one
    page per search when a query first touches it (a 4 KB random read costs milliseconds on a
    network disk; a 21M-passage index is 13 GB). The pages go to the shared page cache: they
    count in this process' resident memory only once a search reads them, and stay clean and
    reclaimable under memory pressure. A no-op where ``madvise`` is unavailable.
    """
    import mmap

    advised = 0
    for a in arrays:
        m = getattr(a, "_mmap", None)
        if m is not None and hasattr(m, "madvise") and hasattr(mmap, "MADV_WILLNEED"):
            m.madvise(mmap.MADV_WILLNEED)
            advised += len(m)
    return advised
