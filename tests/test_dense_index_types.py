"""Every faiss index type the service serves, built and loaded through its own path, and the
search-time knobs (``search_params``). Tiny corpus; no timings (see benchmarks/dense_index.py)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

pytest.importorskip("sentence_transformers")
pytest.importorskip("faiss")

from research.data.embedded import corpus_path  # noqa: E402
from research.errors import ConfigError  # noqa: E402
from research.retrieval.dense import (  # noqa: E402
    DenseConfig,
    Encoder,
    _to_gpus,
    build_faiss,
    training_sample,
)
from research.retrieval.index import build_index, load_retriever  # noqa: E402
from research.serving.config import load_config  # noqa: E402
from research.serving.loading import load_retrievers  # noqa: E402

pytestmark = pytest.mark.dense

N_DOCS, N_QUERIES = 400, 40
# 4-bit PQ codes (16 centroids per sub-quantizer) train on a 400-passage corpus (OPQ's
# rotation needs 384: one per dimension); the benchmark's IVF4096,PQ64 needs 160k
TYPES = {
    "Flat": None,
    "HNSW32": {"efSearch": 64},
    "IVF4,Flat": {"nprobe": 4},  # every list: exact
    "IVF4,PQ16x4": {"nprobe": 4},
    "OPQ16,IVF4,PQ16x4": {"nprobe": 4},
}
LOSSY = {"IVF4,PQ16x4", "OPQ16,IVF4,PQ16x4"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """The first 400 passages of factbook-facts (distinct one-sentence facts)."""
    lines = corpus_path("factbook-facts").read_text().splitlines()[:N_DOCS]
    path = tmp_path_factory.mktemp("types") / "facts.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path, [json.loads(line)["contents"] for line in lines]


@pytest.fixture(scope="module")
def encode_once():
    """Encoder.passages memoised, so five builds of one corpus encode it once."""
    memo, original = {}, Encoder.passages

    def passages(self, texts):
        key = tuple(texts)
        if key not in memo:
            memo[key] = original(self, texts)
        return memo[key]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Encoder, "passages", passages)
        yield


@pytest.fixture(scope="module")
def indexes(corpus, tmp_path_factory, encode_once):
    """``{index_type: index dir}``, each built by ``research index build``'s function."""
    root = tmp_path_factory.mktemp("indexes")
    out = {}
    for index_type in TYPES:
        config = DenseConfig(index_type=index_type, shard_docs=64, device="cpu")
        out[index_type] = root / index_type.replace(",", "_")
        build_index(corpus[0], out[index_type], "dense", dense_config=config)
    return out


@pytest.mark.parametrize("index_type", list(TYPES))
def test_each_index_type_is_served(corpus, indexes, index_type):
    """The service's loading (config -> index dir -> retriever) finds a passage from its own
    text: first for the exact and graph indexes, among the top 10 for the PQ ones, whose
    top 10 also overlaps Flat's."""
    _, texts = corpus
    search = TYPES[index_type]
    overrides = [f"retriever.index_dir={indexes[index_type]}", "retriever.embedded=null"]
    if search:
        overrides.append(f"retriever.search_params={json.dumps(search)}")
    (retriever,) = load_retrievers(load_config(None, overrides, num_retriever=1))
    ids = [json.loads(line)["id"] for line in corpus[0].read_text().splitlines()]
    queries = texts[:: N_DOCS // N_QUERIES]
    wanted = ids[:: N_DOCS // N_QUERIES]
    found = [[h.id for h in hits] for hits in retriever.batch_search(queries, 10)]
    if index_type in LOSSY:
        assert np.mean([w in f for w, f in zip(wanted, found, strict=True)]) >= 0.9
        flat = load_retriever(indexes["Flat"], device="cpu")
        exact = [[h.id for h in hits] for hits in flat.batch_search(queries, 10)]
        shared = np.mean([len(set(f) & set(e)) / 10 for f, e in zip(found, exact, strict=True)])
        assert shared >= 0.4  # 0.56 (PQ) and 0.64 (OPQ) when written
        flat.close()
    else:
        assert [f[0] for f in found] == wanted
    retriever.close()


def test_more_probes_find_more_of_flats_top_10(corpus, indexes):
    queries = corpus[1][1::7]

    def overlap(index_type, search_params):
        r = load_retriever(indexes[index_type], device="cpu", search_params=search_params)
        got = [{h.id for h in hits} for hits in r.batch_search(queries, 10)]
        r.close()
        return got

    exact = overlap("Flat", None)
    one = overlap("IVF4,Flat", {"nprobe": 1})
    every = overlap("IVF4,Flat", {"nprobe": 4})
    assert every == exact  # all lists probed: exact
    assert np.mean([len(a & e) for a, e in zip(one, exact, strict=True)]) < 10


@pytest.mark.parametrize(("index_type", "params", "message"), [
    ("HNSW32", {"nprobe": 8}, "nprobe does not apply to this index (a faiss IndexHNSWFlat)"),
    ("IVF4,Flat", {"efSearch": 8}, "efSearch does not apply to this index (a faiss IndexIVFFlat)"),
    ("Flat", {"nprobe": 8}, "it is for IVF indexes"),
])
def test_a_knob_the_index_lacks_is_a_clear_error(indexes, index_type, params, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_retriever(indexes[index_type], device="cpu", search_params=params)


@pytest.mark.parametrize(("overrides", "message"), [
    (["retriever.search_params={nprobe: 0}"], "retriever.search_params.nprobe must be a "
                                              "positive integer, got 0"),
    (["retriever.search_params={nprobe: 2.5}"], "must be a positive integer, got 2.5"),
    (["retriever.search_params={probes: 4}"], "unknown search parameter 'probes'; known: "
                                              "nprobe for IVF"),
    (["retriever.search_params=[4]"], "retriever.search_params must be a dict"),
    (["retriever.search_params={nprobe: 4}"], "apply to dense indexes: set "
                                              "retriever.method=dense"),
    (["retriever.method=dense", "retriever.encoder={search_params: {nprobe: 4}}"],
     "set search_params as retriever.search_params"),
])
def test_bad_search_params_fail_at_config_load(overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(None, overrides)


def test_search_params_on_a_bm25_index_are_refused(tmp_path):
    build_index(corpus_path("factbook-facts"), tmp_path / "bm25", "bm25")
    with pytest.raises(ConfigError, match="search_params apply to dense indexes"):
        load_retriever(tmp_path / "bm25", search_params={"nprobe": 4})


def test_training_sample_reads_only_the_drawn_rows(tmp_path):
    x = np.arange(50 * 3, dtype=np.float32).reshape(50, 3)
    paths = []
    for i, start in enumerate(range(0, 50, 16)):  # shards of 16, 16, 16, 2
        paths.append(tmp_path / f"emb-{i:05d}.npy")
        np.save(paths[-1], x[start : start + 16])
    rng = np.random.default_rng(0)
    expected = x[np.sort(rng.choice(50, size=20, replace=False))]  # the former whole-corpus draw
    np.testing.assert_array_equal(training_sample(paths, limit=20), expected)
    np.testing.assert_array_equal(training_sample(paths), x)  # fewer rows than the limit: all


@pytest.mark.parametrize(("index_type", "message"), [
    ("OPQ16,IVF4,PQ16x4", "needs at least 384 vectors to train its rotation, the corpus has 100"),
    ("IVF256,Flat", "faiss cannot train IVF256,Flat on 100 vectors"),
])
def test_too_few_vectors_to_train_is_a_clear_error(tmp_path, index_type, message):
    path = tmp_path / "emb-00000.npy"
    np.save(path, np.random.default_rng(0).standard_normal((100, 384), dtype=np.float32))
    with pytest.raises(ConfigError, match=re.escape(message)):
        build_faiss([path], 384, index_type)


class _FakeGpuFaiss:
    """faiss with GPUs whose cloner refuses the index, as faiss-gpu does for HNSW."""

    def __init__(self, error: str):
        self.error = error

    def index_cpu_to_all_gpus(self, index):
        raise RuntimeError(self.error)

    def downcast_index(self, index):
        return index


def test_an_index_faiss_cannot_put_on_gpu_stays_on_cpu(caplog):
    index = object()
    fake = _FakeGpuFaiss("Error in ...: This index type is not implemented on GPU.")
    assert _to_gpus(fake, index) is index
    assert "searching it on CPU" in caplog.text
    with pytest.raises(RuntimeError, match="out of memory"):
        _to_gpus(_FakeGpuFaiss("cudaMalloc error out of memory"), index)


def test_search_params_are_not_part_of_the_index():
    config = DenseConfig(index_type="HNSW32", search_params={"efSearch": 32})
    assert "search_params" not in config.manifest_params()
    with pytest.raises(ConfigError, match="efSearch must be a positive integer"):
        DenseConfig(search_params={"efSearch": -1})
