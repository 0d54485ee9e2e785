"""Dense retrieval with the packaged MiniLM encoder and faiss (needs the dense extra)."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("sentence_transformers")
pytest.importorskip("faiss")

from research.retrieval.dense import DenseConfig, DenseRetriever, Encoder  # noqa: E402
from research.retrieval.index import Manifest, build_index, load_retriever  # noqa: E402

pytestmark = pytest.mark.dense

FACTS = [
    ("Paris", "Paris is the capital and largest city of France."),
    ("Violin", "The violin is a wooden string instrument played with a bow."),
    ("Photosynthesis", "Plants convert sunlight, water and carbon dioxide into sugar."),
    ("Mount Everest", "Everest is Earth's highest mountain above sea level, in the Himalayas."),
    ("Python", "Python is a high-level programming language created by Guido van Rossum."),
    ("Nile", "The Nile is a major north-flowing river in northeastern Africa."),
]
QUESTIONS = {
    "What is the tallest mountain in the world?": "3",
    "Which language did Guido van Rossum design?": "4",
    "How do plants make food from light?": "2",
}


@pytest.fixture(scope="module")
def facts_corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("dense") / "facts.jsonl"
    with path.open("w") as f:
        for i, (title, text) in enumerate(FACTS * 20):  # 120 docs, 6 distinct
            f.write(json.dumps({"id": str(i), "contents": f'"{title}"\n{text}'}) + "\n")
    return path


CONFIG = DenseConfig(shard_docs=50, batch_size=32, device="cpu")


def test_dense_index_answers_by_meaning(facts_corpus, tmp_path):
    manifest = build_index(facts_corpus, tmp_path / "idx", "dense", dense_config=CONFIG)
    assert manifest.stats == {"dim": 384, "ntotal": 120}
    assert manifest.params["model"] == "minilm" and "device" not in manifest.params
    retriever = load_retriever(tmp_path / "idx", device="cpu")
    results = retriever.batch_search(list(QUESTIONS), 3)
    for hits, fact in zip(results, QUESTIONS.values(), strict=True):
        assert all(int(h.id) % 6 == int(fact) for h in hits)  # the 20 copies of the right fact
        assert hits[0].score == pytest.approx(hits[2].score, abs=1e-5)
    retriever.close()


def test_encoding_resumes_from_saved_shards(facts_corpus, tmp_path, monkeypatch):
    calls = []
    original = Encoder.passages

    def counting(self, texts):
        calls.append(len(texts))
        if len(calls) == 2 and fail["on"]:
            raise KeyboardInterrupt  # the build is killed while encoding the second shard
        return original(self, texts)

    fail = {"on": True}
    monkeypatch.setattr(Encoder, "passages", counting)
    with pytest.raises(KeyboardInterrupt):
        build_index(facts_corpus, tmp_path / "idx", "dense", dense_config=CONFIG)
    assert (tmp_path / "idx" / "dense.partial" / "emb-00000.npy").is_file()
    fail["on"] = False
    calls.clear()
    build_index(facts_corpus, tmp_path / "idx", "dense", dense_config=CONFIG)
    assert calls == [50, 20]  # shard 0 was kept; shards 1 and 2 encoded
    assert Manifest.load(tmp_path / "idx").stats["ntotal"] == 120


def test_e5_style_prefixes_are_config(facts_corpus):
    e5 = DenseConfig.e5("minilm", device="cpu")
    assert (e5.query_prefix, e5.passage_prefix, e5.pooling) == ("query: ", "passage: ", "mean")
    enc = Encoder(e5)
    plain = Encoder(DenseConfig(device="cpu", pooling="mean"))
    a, b = enc.queries(["capital of France"]), plain.queries(["query: capital of France"])
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_flashrag_prebuilt_index_is_served_as_is(facts_corpus, tmp_path):
    """A faiss file built elsewhere over a jsonl corpus loads with no rebuild."""
    import faiss

    enc = Encoder(CONFIG)
    texts = [json.loads(line)["contents"] for line in facts_corpus.read_text().splitlines()]
    index = faiss.IndexFlatIP(enc.dim)
    index.add(enc.passages(texts))
    faiss.write_index(index, str(tmp_path / "e5_Flat.index"))
    retriever = DenseRetriever.from_flashrag(tmp_path / "e5_Flat.index", facts_corpus, CONFIG,
                                             cache_dir=tmp_path / "cache")
    hit = retriever.search("Which river flows north through Africa?", 1)[0]
    assert hit.contents.startswith('"Nile"')
    assert list((tmp_path / "cache").glob("*.offsets.npy"))  # offsets computed once, cached


def test_unknown_encoder_path_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="never downloaded, give a local path"):
        Encoder(DenseConfig(model="intfloat/e5-base-v2", device="cpu"))
