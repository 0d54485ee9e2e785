"""Exact top-``k`` BM25 search over a CSC score matrix with MaxScore pruning.

Scoring every document for every query (what ``bm25s.BM25.retrieve`` does) costs a
``num_docs``-long score array and a partial sort of it per query: at 21M passages that is
84 MB written and scanned for each query, whatever its terms. This module walks the query's
posting lists document by document instead, in increasing document order (Turtle and
Flood's MaxScore):

- each token's highest score in the index (its column maximum, ``research_bounds.npy``) is an
  upper bound of what it adds to any document;
- once ``k`` documents are held, the terms whose bounds together cannot lift a document above
  the ``k``-th score are *non-essential*: a document is only considered when an essential
  term contains it, and the non-essential lists are only probed (galloping search) for those
  documents, and not at all when the bounds already rule the document out.

The result is exact, not approximate: the same documents and the same ``float32`` scores as
summing every posting in query order (as ``bm25s`` does), ordered by score and then by
document position. Ties at the ``k``-th place go to the earlier document because documents
are visited in increasing order and a later one must score strictly higher to enter.

The kernel is plain Python over ``numpy`` arrays, compiled by ``numba`` (the ``fast``
extra) when it is installed; :func:`search_many` then runs the queries of a batch in
parallel threads when asked to.
"""

from __future__ import annotations

import threading

import numpy as np

try:
    import numba
except ImportError:  # the plain-Python kernel: correct, and fast enough for small corpora
    numba = None

# A pruning bound is a float64 sum of float32 upper bounds; the exact float32 score can round
# up past it by a few ulps. Bounds are inflated by this factor, so pruning stays exact.
_SAFETY = 1.0 + 1e-5


def _jit(fn):
    return numba.njit(cache=True, nogil=True)(fn) if numba else fn


@_jit
def _seek(indices, lo, hi, doc):
    """First position in ``indices[lo:hi]`` (sorted) holding a value >= ``doc``.

    Galloping from ``lo`` (steps 1, 2, 4, ...), then a binary search inside the last step:
    a list's cursor only moves forward, usually not far, so the positions read stay close
    to the cursor (the same memory pages) instead of jumping across the whole list."""
    if lo >= hi or indices[lo] >= doc:
        return lo
    step = 1
    while lo + step < hi and indices[lo + step] < doc:
        lo += step
        step <<= 1
    hi = min(hi, lo + step + 1)
    lo += 1  # indices[lo] < doc is known
    while lo < hi:
        mid = (lo + hi) >> 1
        if indices[mid] < doc:
            lo = mid + 1
        else:
            hi = mid
    return lo


@_jit
def _top_k(data, indices, indptr, bounds, terms, k, out_docs, out_scores):
    """Top ``k`` documents of one query (``terms``: token ids, repeats allowed, in query
    order); fills ``out_docs[:n]`` / ``out_scores[:n]`` unordered and returns ``n``."""
    m = len(terms)
    if m == 0 or k <= 0:
        return 0
    cur = np.empty(m, np.int64)
    end = np.empty(m, np.int64)
    ub = np.empty(m, np.float64)
    for i in range(m):
        cur[i] = indptr[terms[i]]
        end[i] = indptr[terms[i] + 1]
        ub[i] = bounds[terms[i]]
    order = np.argsort(ub)  # ascending bound: the first ``ne`` terms are non-essential
    cum = np.zeros(m + 1, np.float64)  # cum[j]: the bounds of order[:j], summed
    for j in range(m):
        cum[j + 1] = cum[j] + ub[order[j]]
    contrib = np.zeros(m, np.float32)
    n = 0
    worst = 0  # slot of the held document that the next one must beat
    theta = -1.0  # its score, once k are held
    ne = 0
    big = np.int64(1) << 62
    while True:
        doc = big
        for j in range(ne, m):
            i = order[j]
            if cur[i] < end[i] and indices[cur[i]] < doc:
                doc = indices[cur[i]]
        if doc == big:
            break
        partial = 0.0
        for j in range(m):
            contrib[j] = 0.0
        for j in range(ne, m):
            i = order[j]
            if cur[i] < end[i] and indices[cur[i]] == doc:
                contrib[i] = data[cur[i]]
                partial += contrib[i]
                cur[i] += 1
        if n == k:
            rest = cum[ne]
            ruled_out = (partial + rest) * _SAFETY <= theta
            j = ne - 1
            while not ruled_out and j >= 0:  # probe non-essential terms, largest bound first
                i = order[j]
                rest -= ub[i]
                p = _seek(indices, cur[i], end[i], doc)
                cur[i] = p
                if p < end[i] and indices[p] == doc:
                    contrib[i] = data[p]
                    partial += contrib[i]
                ruled_out = (partial + rest) * _SAFETY <= theta
                j -= 1
            if ruled_out:
                continue
        score = np.float32(0.0)
        for i in range(m):  # the float32 sum in query order, as bm25s computes it
            score = np.float32(score + contrib[i])
        if n < k:
            out_docs[n] = doc
            out_scores[n] = score
            n += 1
            if n < k:
                continue
        elif score > out_scores[worst]:
            out_docs[worst] = doc
            out_scores[worst] = score
        else:
            continue
        worst = 0  # the lowest score; among equal ones the latest document
        for s in range(1, k):
            if out_scores[s] < out_scores[worst] or (
                out_scores[s] == out_scores[worst] and out_docs[s] > out_docs[worst]
            ):
                worst = s
        theta = np.float64(out_scores[worst])
        while ne < m and cum[ne + 1] * _SAFETY <= theta:
            ne += 1
    return n


@_jit
def _search_serial(data, indices, indptr, bounds, flat_terms, starts, k, out_docs, out_scores,
                   counts):
    for q in range(len(starts) - 1):
        counts[q] = _top_k(data, indices, indptr, bounds, flat_terms[starts[q]:starts[q + 1]], k,
                           out_docs[q], out_scores[q])


if numba:
    @numba.njit(cache=True, nogil=True, parallel=True)
    def _search_parallel(data, indices, indptr, bounds, flat_terms, starts, k, out_docs,
                         out_scores, counts):
        for q in numba.prange(len(starts) - 1):
            counts[q] = _top_k(data, indices, indptr, bounds,
                               flat_terms[starts[q]:starts[q + 1]], k, out_docs[q],
                               out_scores[q])

# numba's default thread pool (workqueue) must not be entered by two threads at once
_PARALLEL_LOCK = threading.Lock()


def search_many(data, indices, indptr, bounds, queries: list[list[int]], k: int,
                threads: int = 1) -> list[tuple[np.ndarray, np.ndarray]]:
    """Exact top ``k`` of each query, as ``(docs, scores)`` ordered by score descending, then
    document position. ``threads`` > 1 runs queries in parallel (with numba)."""
    flat = np.fromiter((t for q in queries for t in q), np.int64,
                       count=sum(len(q) for q in queries))
    starts = np.zeros(len(queries) + 1, np.int64)
    np.cumsum([len(q) for q in queries], out=starts[1:])
    docs = np.zeros((len(queries), k), np.int64)  # [Q, k]
    scores = np.zeros((len(queries), k), np.float32)  # [Q, k]
    counts = np.zeros(len(queries), np.int64)
    if numba and threads > 1 and len(queries) > 1:
        with _PARALLEL_LOCK:
            previous = numba.get_num_threads()
            numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))
            try:
                _search_parallel(data, indices, indptr, bounds, flat, starts, k, docs, scores,
                                 counts)
            finally:
                numba.set_num_threads(previous)
    else:
        _search_serial(data, indices, indptr, bounds, flat, starts, k, docs, scores, counts)
    results = []
    for q in range(len(queries)):
        d, s = docs[q, : counts[q]], scores[q, : counts[q]]
        order = np.lexsort((d, -s))
        results.append((d[order], s[order]))
    return results


def column_maxima(data: np.ndarray, indptr: np.ndarray) -> np.ndarray:
    """Each column's largest entry (0 for an empty one): the bounds of an index built before
    the build saved them."""
    bounds = np.zeros(len(indptr) - 1, np.float32)
    filled = np.flatnonzero(np.diff(indptr))
    if len(filled):
        bounds[filled] = np.maximum.reduceat(np.asarray(data), np.asarray(indptr)[filled])
    return bounds
