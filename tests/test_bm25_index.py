"""BM25 index build (streaming), reload, equivalence with bm25s, and load-time errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import token, write_corpus

from research.retrieval.corpus import CorpusFormatError
from research.retrieval.index import IndexLoadError, Manifest, build_index, load_retriever

QUERIES = ["river castle", "glacier harbor violin", "the museum of the desert", token(7),
           f"{token(3)} {token(11)} meadow", "bridge"]


def _reference(corpus, queries, k):
    """bm25s' own in-memory index over the same corpus, as the reference: every document's
    score, the top ``k`` by score then document order (the service's tie rule), zero-score
    documents left out."""
    import bm25s
    import Stemmer

    texts = [json.loads(line)["contents"] for line in corpus.read_text().splitlines()]
    stemmer = Stemmer.Stemmer("english")
    model = bm25s.BM25()
    model.index(bm25s.tokenize(texts, stopwords="en", stemmer=stemmer, show_progress=False),
                show_progress=False)
    tokenized = bm25s.tokenize(queries, stopwords="en", stemmer=stemmer, show_progress=False,
                               return_ids=False)
    docs, scores = [], []
    for tokens in tokenized:
        full = model.get_scores(tokens) if tokens else np.zeros(len(texts))  # [num_docs]
        order = [d for d in np.lexsort((np.arange(len(full)), -full))[:k] if full[d] > 0]
        docs.append(order)
        scores.append(full[order])
    return docs, scores


def test_streaming_build_matches_bm25s_in_memory(bm25_index, corpus_file):
    retriever = load_retriever(bm25_index)
    docs, scores = _reference(corpus_file, QUERIES, k=10)
    ours = retriever.batch_search(QUERIES, 10)
    for q, hits, ref_docs, ref_scores in zip(QUERIES, ours, docs, scores, strict=True):
        assert [h.id for h in hits] == [f"doc-{d}" for d in ref_docs], q
        np.testing.assert_allclose([h.score for h in hits], ref_scores, rtol=1e-5)
    retriever.close()


def test_ties_go_in_document_order_so_top_k_is_a_prefix(bm25_index, corpus_file):
    """The corpus' documents are bags of 20 common words: many scores tie, also across
    the k-th place, where bm25s alone picks differently for different k."""
    import itertools

    from conftest import WORDS

    queries = WORDS + [f"{a} {b}" for a, b in itertools.combinations(WORDS[:8], 2)]
    retriever = load_retriever(bm25_index)
    deep = retriever.batch_search(queries, 50)
    for k in (1, 2, 3, 5, 10):
        ref_docs, _ = _reference(corpus_file, queries, k)
        for q, hits, full, ref in zip(queries, retriever.batch_search(queries, k), deep,
                                      ref_docs, strict=True):
            assert hits == full[:k], (q, k)
            assert [h.id for h in hits] == [f"doc-{d}" for d in ref], (q, k)
    retriever.close()


def test_unique_token_finds_its_document(bm25_index):
    retriever = load_retriever(bm25_index)
    hits = retriever.search(token(42), 5)
    assert hits[0].id == "doc-42"
    assert hits[0].contents.startswith('"Title 42"\n')
    assert len(hits) == 1  # no other document shares a term with the query
    assert retriever.search("words absent everywhere qqqq", 5) == []
    retriever.close()


def test_chunking_does_not_change_the_index(tmp_path):
    corpus = write_corpus(tmp_path / "c.jsonl", 3000, seed=3)
    a = build_index(corpus, tmp_path / "a", "bm25", chunk_docs=97)
    b = build_index(corpus, tmp_path / "b", "bm25", chunk_docs=100_000)
    assert a.stats == b.stats
    for name in ("data", "indices", "indptr"):
        np.testing.assert_array_equal(np.load(tmp_path / "a" / "bm25" / f"{name}.csc.index.npy"),
                                      np.load(tmp_path / "b" / "bm25" / f"{name}.csc.index.npy"))


def test_large_streamed_corpus_reload_is_identical(tmp_path):
    """A corpus built in many chunks, reloaded from disk twice, answers identically."""
    corpus = write_corpus(tmp_path / "big.jsonl.gz", 40_000, seed=5, gz=True)
    build_index(corpus, tmp_path / "idx", "bm25", chunk_docs=5_000)
    queries = [token(i) for i in range(0, 40_000, 4_001)] + QUERIES
    first = load_retriever(tmp_path / "idx").batch_search(queries, 5)
    again = load_retriever(tmp_path / "idx").batch_search(queries, 5)
    assert first == again
    for i, hits in zip(range(0, 40_000, 4_001), first, strict=False):
        assert hits[0].id == f"doc-{i}"
    docs, scores = _reference_gz(corpus, QUERIES)
    for hits, ref_docs, ref_scores in zip(first[-len(QUERIES):], docs, scores, strict=True):
        assert [h.id for h in hits] == [f"doc-{d}" for d in ref_docs]
        np.testing.assert_allclose([h.score for h in hits], ref_scores, rtol=1e-5)


def _reference_gz(corpus, queries):
    import gzip

    plain = corpus.with_suffix("")
    plain.write_bytes(gzip.decompress(corpus.read_bytes()))
    return _reference(plain, queries, k=5)


def test_manifest_records_corpus_and_settings(bm25_index, corpus_file):
    m = Manifest.load(bm25_index)
    assert m.method == "bm25"
    assert m.doc_count == 500
    assert m.corpus_path == str(corpus_file.resolve())
    assert len(m.corpus_sha256) == 64
    assert m.params == {"k1": 1.5, "b": 0.75, "stopwords": "en", "stemmer": "english"}
    assert m.stats["vocab_size"] > 500


def test_up_to_date_index_is_kept_and_force_rebuilds(tmp_path):
    corpus = write_corpus(tmp_path / "c.jsonl", 50)
    first = build_index(corpus, tmp_path / "idx", "bm25")
    again = build_index(corpus, tmp_path / "idx", "bm25")
    assert again.created == first.created  # reused, not rebuilt
    write_corpus(corpus, 60)  # the corpus changed: the index is rebuilt
    changed = build_index(corpus, tmp_path / "idx", "bm25")
    assert changed.doc_count == 60


def test_interrupted_build_is_restartable(tmp_path):
    corpus = write_corpus(tmp_path / "c.jsonl", 200)
    out = tmp_path / "idx"
    (out / "bm25.partial" / "spill").mkdir(parents=True)  # leftovers of a killed build
    (out / "bm25.partial" / "spill" / "chunk-00000.npz").write_bytes(b"garbage")
    with pytest.raises(IndexLoadError, match="no manifest.json"):
        load_retriever(out)
    build_index(corpus, out, "bm25")
    assert load_retriever(out).search(token(5), 1)[0].id == "doc-5"
    assert not (out / "bm25.partial").exists()


def test_missing_and_corrupt_indexes_fail_with_the_build_command(tmp_path, bm25_index):
    with pytest.raises(IndexLoadError, match=r"does not exist; build it with `research index"):
        load_retriever(tmp_path / "nowhere")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "manifest.json").write_text("{not json")
    with pytest.raises(IndexLoadError, match="corrupt.*research index build"):
        load_retriever(broken)


def test_changed_corpus_is_detected_at_load(tmp_path):
    corpus = write_corpus(tmp_path / "c.jsonl", 30)
    build_index(corpus, tmp_path / "idx", "bm25")
    with corpus.open("a") as f:
        f.write(json.dumps({"id": "late", "contents": "added after the build"}) + "\n")
    with pytest.raises(IndexLoadError, match="corpus changed since the index was built"):
        load_retriever(tmp_path / "idx")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{broken", "c.jsonl:2: not valid JSON"),
        ('["a list"]', "c.jsonl:2: expected a JSON object"),
        ('{"contents": "no id"}', "c.jsonl:2: missing field 'id'"),
        ('{"id": "x"}', "c.jsonl:2: missing string field 'contents'"),
    ],
)
def test_malformed_corpus_lines_name_file_and_line(tmp_path, line, message):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text(json.dumps({"id": "1", "contents": "ok"}) + "\n" + line + "\n")
    with pytest.raises(CorpusFormatError, match=message):
        build_index(corpus, tmp_path / "idx", "bm25")


def test_title_text_corpora_are_read(tmp_path):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text(json.dumps({"id": "7", "title": "Paris", "text": "capital of France"}) + "\n")
    build_index(corpus, tmp_path / "idx", "bm25")
    hit = load_retriever(tmp_path / "idx").search("capital france", 3)[0]
    assert (hit.id, hit.contents) == ("7", '"Paris"\ncapital of France')
