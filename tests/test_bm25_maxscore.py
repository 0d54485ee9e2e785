"""The exact MaxScore search kernel against scoring every document, and the banded build."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import write_corpus

from research.retrieval import maxscore
from research.retrieval.bm25 import BOUNDS_FILE
from research.retrieval.index import build_index, load_retriever


def _random_index(seed: int, n_docs: int = 3000, n_vocab: int = 60, tied: bool = False):
    """A CSC score matrix of Zipf-like columns; ``tied`` draws scores from 3 values, so most
    documents tie with others."""
    rng = np.random.default_rng(seed)
    cols_data, cols_docs = [], []
    for t in range(n_vocab):
        df = max(1, int(n_docs * 0.6 / (t + 1)))
        docs = np.sort(rng.choice(n_docs, size=df, replace=False)).astype(np.int32)
        if tied:
            data = rng.choice(np.array([0.25, 0.5, 1.0], np.float32), size=df)
        else:
            data = rng.uniform(0.05, 3.0, size=df).astype(np.float32) * np.log(2 + t)
        cols_docs.append(docs)
        cols_data.append(data.astype(np.float32))
    indptr = np.zeros(n_vocab + 1, np.int64)
    np.cumsum([len(d) for d in cols_docs], out=indptr[1:])
    data, indices = np.concatenate(cols_data), np.concatenate(cols_docs)
    return data, indices, indptr, maxscore.column_maxima(data, indptr), n_docs


def _brute(data, indices, indptr, n_docs, terms, k):
    """Every document scored as bm25s does (float32, postings added in query order), then the
    top k by score and document position, zero scores left out."""
    full = np.zeros(n_docs, np.float32)
    for t in terms:
        for j in range(indptr[t], indptr[t + 1]):
            full[indices[j]] += data[j]
    order = [d for d in np.lexsort((np.arange(n_docs), -full))[:k] if full[d] > 0]
    return np.array(order, np.int64), full[order]


def _queries(rng, n_vocab, n):
    out = [[int(t) for t in rng.integers(0, n_vocab, size=rng.integers(1, 7))] for _ in range(n)]
    return out + [[3, 3], [0], [0, 1, 2, 3, 4, 5, 6, 7], [n_vocab - 1, 0, n_vocab - 1]]


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("threads", [1, 2])
def test_maxscore_equals_scoring_every_document(tied, threads):
    data, indices, indptr, bounds, n_docs = _random_index(seed=1 + tied, tied=tied)
    queries = _queries(np.random.default_rng(7), len(indptr) - 1, 60)
    for k in (1, 2, 5, 10, 50, n_docs + 5):
        found = maxscore.search_many(data, indices, indptr, bounds, queries, min(k, n_docs),
                                     threads=threads)
        for terms, (docs, scores) in zip(queries, found, strict=True):
            ref_docs, ref_scores = _brute(data, indices, indptr, n_docs, terms, k)
            np.testing.assert_array_equal(docs, ref_docs, err_msg=f"{terms} k={k}")
            np.testing.assert_array_equal(scores, ref_scores, err_msg=f"{terms} k={k}")


def test_the_plain_python_kernel_gives_the_same_results():
    """The kernel numba compiles, run as plain Python (numba's JIT disabled), as it runs
    where the ``fast`` extra is not installed."""
    script = (
        "import json, sys, numpy as np\n"
        "sys.path.insert(0, 'tests')\n"
        "from test_bm25_maxscore import _random_index, _queries\n"
        "from research.retrieval import maxscore\n"
        "d, i, p, b, n = _random_index(seed=2, n_docs=400, tied=True)\n"
        "qs = _queries(np.random.default_rng(7), len(p) - 1, 10)\n"
        "out = maxscore.search_many(d, i, p, b, qs, 7)\n"
        "print(json.dumps([[x.tolist(), y.tolist()] for x, y in out]))\n"
    )
    env = {**os.environ, "NUMBA_DISABLE_JIT": "1"}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=env, cwd=os.path.dirname(os.path.dirname(__file__)), check=True)
    plain = json.loads(proc.stdout)
    data, indices, indptr, bounds, n_docs = _random_index(seed=2, n_docs=400, tied=True)
    queries = _queries(np.random.default_rng(7), len(indptr) - 1, 10)
    for terms, (docs, scores) in zip(queries, plain, strict=True):
        ref_docs, ref_scores = _brute(data, indices, indptr, n_docs, terms, 7)
        assert docs == ref_docs.tolist(), terms
        assert scores == ref_scores.tolist(), terms


def test_pruning_skips_most_documents_of_a_common_term():
    """What MaxScore is for: with a rare high-scoring term in the query, the common term's
    list is only probed, not walked. Counted by running the kernel as plain Python over an
    ``indices`` array that records which positions the walk reads."""
    data, indices, indptr, bounds, n_docs = _random_index(seed=3, n_docs=20_000)
    rare = len(indptr) - 2  # the shortest lists have the highest scores
    assert indptr[1] - indptr[0] > 20 * (indptr[rare + 1] - indptr[rare])
    visited = []
    real = maxscore._top_k.py_func if hasattr(maxscore._top_k, "py_func") else maxscore._top_k

    def counting_top_k(*args):
        indices_arr = args[1]

        class Spy(np.ndarray):
            def __getitem__(self, key):
                if isinstance(key, (int, np.integer)):
                    visited.append(int(key))
                return np.ndarray.__getitem__(self, key)

        spied = indices_arr.view(Spy)
        return real(args[0], spied, *args[2:])

    docs = np.zeros(5, np.int64)
    scores = np.zeros(5, np.float32)
    n = counting_top_k(data, indices, indptr, bounds, np.array([0, rare]), 5, docs, scores)
    assert n == 5
    ref_docs, _ = _brute(data, indices, indptr, n_docs, [0, rare], 5)
    assert sorted(docs.tolist()) == sorted(ref_docs.tolist())
    walked_common = {j for j in visited if indptr[0] <= j < indptr[1]}
    assert len(walked_common) < (indptr[1] - indptr[0]) / 4


def test_banded_build_writes_the_same_index_and_its_bounds(tmp_path):
    corpus = write_corpus(tmp_path / "c.jsonl", 3000, seed=3)
    from research.retrieval.bm25 import BM25Params, build_bm25
    from research.retrieval.corpus import iter_corpus

    stats = {}
    for name, band in (("one", 1 << 40), ("many", 257)):
        stats[name] = build_bm25(iter_corpus(corpus), 3000, tmp_path / name, BM25Params(),
                                 chunk_docs=401, band_nnz=band)
    assert stats["one"] == stats["many"]
    for name in ("data", "indices", "indptr"):
        np.testing.assert_array_equal(np.load(tmp_path / "one" / f"{name}.csc.index.npy"),
                                      np.load(tmp_path / "many" / f"{name}.csc.index.npy"))
    data = np.load(tmp_path / "many" / "data.csc.index.npy")
    indptr = np.load(tmp_path / "many" / "indptr.csc.index.npy")
    bounds = np.load(tmp_path / "many" / BOUNDS_FILE)
    expected = [data[indptr[t]:indptr[t + 1]].max(initial=0.0) for t in range(len(indptr) - 1)]
    np.testing.assert_array_equal(bounds, np.array(expected, np.float32))
    indices = np.load(tmp_path / "many" / "indices.csc.index.npy")
    for t in range(len(indptr) - 1):  # every column sorted by document, no repeats
        assert np.all(np.diff(indices[indptr[t]:indptr[t + 1]]) > 0)


def test_an_index_without_saved_bounds_still_loads_and_answers_the_same(tmp_path):
    corpus = write_corpus(tmp_path / "c.jsonl", 2000, seed=4)
    build_index(corpus, tmp_path / "idx", "bm25")
    queries = ["river castle", "glacier harbor violin", "meadow bridge museum"]
    before = load_retriever(tmp_path / "idx").batch_search(queries, 7)
    (tmp_path / "idx" / "bm25" / BOUNDS_FILE).unlink()
    assert load_retriever(tmp_path / "idx").batch_search(queries, 7) == before


def test_seek_finds_the_first_position_at_or_after_a_document():
    rng = np.random.default_rng(5)
    indices = np.unique(rng.integers(0, 5000, size=700)).astype(np.int32)
    for _ in range(2000):
        lo = int(rng.integers(0, len(indices) + 1))
        hi = int(rng.integers(lo, len(indices) + 1))
        doc = int(rng.integers(-5, 5010))
        expected = lo + int(np.searchsorted(indices[lo:hi], doc))
        assert maxscore._seek(indices, lo, hi, doc) == expected, (lo, hi, doc)


def test_warm_up_advises_the_kernel_to_read_the_mapped_score_arrays(tmp_path):
    from research.retrieval.bm25 import advise_willneed

    corpus = write_corpus(tmp_path / "c.jsonl", 500, seed=6)
    build_index(corpus, tmp_path / "idx", "bm25")
    retriever = load_retriever(tmp_path / "idx")
    files = [tmp_path / "idx" / "bm25" / f"{n}.csc.index.npy" for n in ("data", "indices")]
    assert advise_willneed([retriever._data, retriever._indices]) == sum(
        f.stat().st_size for f in files)  # both whole files (header included) are advised
    assert advise_willneed([np.zeros(3)]) == 0  # not mapped: nothing to advise
    retriever.warm_up()
    assert retriever.search("river castle", 3)


def test_prefetched_documents_read_the_same(tmp_path):
    from research.retrieval.corpus import DocStore, line_offsets

    corpus = write_corpus(tmp_path / "c.jsonl", 300, seed=8)
    store = DocStore(corpus, line_offsets(corpus))
    before = [store.get(i) for i in (0, 17, 299, 150)]
    store.prefetch([0, 17, 299, 150])
    assert [store.get(i) for i in (0, 17, 299, 150)] == before
    assert before[2][0] == "doc-299"
    store.close()
