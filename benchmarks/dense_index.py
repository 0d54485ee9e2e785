"""Dense index types against exact search (``Flat``): memory, build time, queries/s, recall@10.

    python benchmarks/dense_index.py --out benchmarks/results/dense_index.json

Vectors. Every passage of the three embedded corpora (8,638, ``research/data/sets``) is
encoded with the packaged MiniLM (384-d, the service's default settings); 1,000 questions of
their dev splits are encoded as queries. Encoding runs at about 20 passages/s on 2 CPU cores,
so 200k real passages would take hours: the 200k-vector set is the real passages plus vectors
drawn from a Gaussian mixture fitted to them (k-means centres, the pooled within-cluster
covariance scaled per cluster, each draw normalised). The same index types also run on the
real passages alone and on a mixture sample of the same size, so the run shows how far the
mixture's recall is from real vectors' (the fidelity rows).

Each index is built with the service's own build (``research.retrieval.dense.build_faiss``,
from embedding shards on disk) and searched with ``index.search`` on the query vectors at
batch 64 (the encoder's cost, the same for every index type, is measured once, apart).
Search-time knobs are set with the service's ``search_params``
(:func:`research.retrieval.dense.apply_search_params`): ``nprobe`` for IVF, ``efSearch`` for
HNSW. Reported per (index, knob): serialized bytes and bytes per vector, build wall and CPU
seconds, queries/s per wall and per CPU second, recall@10 against ``Flat``'s top 10, and
ratios to ``Flat`` from the same run.

OPQ is measured on the two small sets only by default: its training (50 rotations, each a
PQ k-means over 65,536 vectors) would take about 18 min of one core at 200k
(``--main-types`` adds it).

Memory at 21M 768-d E5 vectors: each index type is built again at 768-d on random vectors
(sizes do not depend on the values), its serialized size measured at two sizes; the bytes
each added vector costs and the fixed part (centroids, codebooks, rotation) give
``fixed + per_vector x 21M``.

Embeddings are cached in ``WORK`` (``$RESEARCH_CACHE/bench/dense``); a rerun reuses them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

EMBEDDED = ("squad-open-mini", "factbook-hop", "factbook-facts")
TYPES = ("Flat", "HNSW32", "IVF{nlist},PQ64", "OPQ64,IVF{nlist},PQ64")  # Flat first: the peer
KNOBS = {"HNSW": ("efSearch", (16, 64, 256)), "IVF": ("nprobe", (1, 8, 32, 128))}
TARGET_N, TARGET_DIM = 21_000_000, 768  # FlashRAG's wiki18_100w with e5-base-v2
K, BATCH = 10, 64


def encode_real(work: Path, n_queries: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, dict]:
    """MiniLM vectors of every embedded passage and ``n_queries`` dev questions (cached)."""
    paths = work / "passages.npy", work / "queries.npy", work / "encode.json"
    if all(p.is_file() for p in paths):
        return np.load(paths[0]), np.load(paths[1]), json.loads(paths[2].read_text())
    from research.data.embedded import corpus_path, read_split
    from research.retrieval.dense import DenseConfig, Encoder

    texts = [json.loads(line)["contents"] for name in EMBEDDED
             for line in corpus_path(name).read_text().splitlines()]
    questions = [q["question"] for name in EMBEDDED for q in read_split(name, "dev")]
    rng = np.random.default_rng(seed)
    questions = [questions[i] for i in np.sort(rng.choice(len(questions), n_queries, False))]
    config = DenseConfig(device="cpu")
    encoder = Encoder(config)
    t0 = time.perf_counter()
    passages = encoder.passages(texts)  # [N, 384]
    t1 = time.perf_counter()
    queries = encoder.queries(questions)  # [Q, 384]
    t2 = time.perf_counter()
    info = {"passages": len(texts), "queries": len(questions), "model": config.model,
            "max_length": config.max_length, "passages_per_s": round(len(texts) / (t1 - t0), 1),
            "queries_per_s": round(len(questions) / (t2 - t1), 1),
            "torch_threads": _torch_threads()}
    work.mkdir(parents=True, exist_ok=True)
    np.save(paths[0], passages)
    np.save(paths[1], queries)
    paths[2].write_text(json.dumps(info, indent=2))
    return passages, queries, info


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def fit_mixture(x: np.ndarray, k: int, seed: int = 0) -> dict:
    """A Gaussian mixture of ``x`` [N, d]: k-means centres and weights, the pooled
    within-cluster covariance (its Cholesky factor) and each cluster's spread relative to it."""
    import faiss

    km = faiss.Kmeans(x.shape[1], k, niter=20, seed=seed, spherical=True)
    km.train(x)
    assign = km.index.search(x, 1)[1][:, 0]  # [N]
    counts = np.bincount(assign, minlength=k)
    centres = np.stack([x[assign == c].mean(0) if counts[c] else km.centroids[c]
                        for c in range(k)])  # [k, d]
    resid = x - centres[assign]  # [N, d]
    cov = resid.T @ resid / len(x)  # [d, d]
    sq = np.einsum("nd,nd->n", resid, resid)
    spread = np.sqrt(np.bincount(assign, sq, minlength=k) / np.maximum(counts, 1) / sq.mean())
    chol = np.linalg.cholesky(cov + 1e-6 * np.eye(len(cov)))
    return {"centres": centres, "weights": counts / counts.sum(), "spread": spread,
            "chol": chol.astype(np.float32)}


def sample_mixture(model: dict, n: int, seed: int) -> np.ndarray:
    """``n`` unit vectors drawn from :func:`fit_mixture`'s mixture."""
    rng = np.random.default_rng(seed)
    c = rng.choice(len(model["weights"]), size=n, p=model["weights"])  # [n]
    z = rng.standard_normal((n, len(model["chol"])), dtype=np.float32)  # [n, d]
    x = model["centres"][c] + model["spread"][c, None] * (z @ model["chol"].T)
    return _unit(x)


def _unit(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x / np.linalg.norm(x, axis=1, keepdims=True), dtype=np.float32)


def write_shards(x: np.ndarray, folder: Path, shard: int = 20_000) -> list[Path]:
    """``x`` as the embedding shards ``build_dense`` writes (``emb-XXXXX.npy``)."""
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("emb-*.npy"):
        old.unlink()
    paths = []
    for i, start in enumerate(range(0, len(x), shard)):
        paths.append(folder / f"emb-{i:05d}.npy")
        np.save(paths[-1], x[start : start + shard])
    return paths


def build(paths: list[Path], dim: int, index_type: str):
    """The service's build of ``index_type``, timed, and its serialized size."""
    import faiss

    from research.retrieval.dense import build_faiss

    t0, cpu0 = time.perf_counter(), time.process_time()
    index = build_faiss(paths, dim, index_type)
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    size = len(faiss.serialize_index(index))
    return index, {"build_s": round(wall, 2), "build_cpu_s": round(cpu, 2), "bytes": size,
                   "bytes_per_vector": round(size / index.ntotal, 1)}


def timed_search(index, queries: np.ndarray, budget_s: float) -> tuple[np.ndarray, dict]:
    """Top-``K`` ids of every query (batches of ``BATCH``), and queries/s: per wall second
    in the median pass over the queries (passes repeat for ``budget_s``, at least 3; the
    median resists bursts of other work on the cores) and per CPU second over all passes."""
    index.search(queries[:BATCH], K)  # warm-up
    passes, t0, cpu0 = [], time.perf_counter(), time.process_time()
    while len(passes) < 3 or time.perf_counter() - t0 < budget_s:
        start = time.perf_counter()
        ids = np.concatenate([index.search(queries[s : s + BATCH], K)[1]
                              for s in range(0, len(queries), BATCH)])  # [Q, K]
        passes.append(time.perf_counter() - start)
    cpu = time.process_time() - cpu0
    return ids, {"qps_b64": round(len(queries) / float(np.median(passes)), 1),
                 "cpu_qps_b64": round(len(queries) * len(passes) / max(cpu, 1e-9), 1),
                 "passes": len(passes)}


def recall(found: np.ndarray, exact: np.ndarray) -> float:
    """Mean share of each query's exact top ``K`` ids found in its approximate top ``K``.

    >>> recall(np.array([[1, 2], [3, 4]]), np.array([[2, 1], [3, 9]]))
    0.75
    """
    return float(np.mean([len(set(f) & set(e)) / len(e) for f, e in zip(found, exact,
                                                                          strict=True)]))


def knob_grid(index_type: str, nprobes: tuple[int, ...]) -> list[dict | None]:
    """The search-time settings to measure an index type at (``None``: faiss' defaults)."""
    if "HNSW" in index_type:
        name, values = KNOBS["HNSW"]
    elif "IVF" in index_type:
        name, values = "nprobe", nprobes
    else:
        return [None]
    return [{name: v} for v in values]


def run_set(x: np.ndarray, queries: np.ndarray, work: Path, types: list[str], nlist: int,
            nprobes: tuple[int, ...], budget: float) -> list[dict]:
    """Each index type over ``x`` [N, d], at every knob setting, against ``Flat``."""
    from research.retrieval.dense import apply_search_params

    paths = write_shards(x, work / "shards")
    rows, exact = [], None
    for template in ["Flat"] + [t for t in types if t != "Flat"]:
        index_type = template.format(nlist=nlist)
        index, built = build(paths, x.shape[1], index_type)
        for params in knob_grid(index_type, nprobes):
            apply_search_params(index, params)
            ids, speed = timed_search(index, queries, budget)
            exact = ids if exact is None else exact  # Flat comes first
            rows.append({"index": index_type, "search_params": params, **built, **speed,
                         "recall_at_10": round(recall(ids, exact), 4)})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
        del index
    return _with_ratios(rows)


def _with_ratios(rows: list[dict]) -> list[dict]:
    """Each figure over ``Flat``'s (build: None where Flat's build, a copy, took < 0.1 s)."""
    flat = rows[0]
    for r in rows:
        r["vs_flat"] = {key: round(r[key] / flat[key], 4) if flat[key] >= 0.1 else None
                        for key in ("bytes", "build_s", "build_cpu_s", "qps_b64", "cpu_qps_b64")}
    return rows


def _one_training_pass(faiss, index) -> None:
    """One k-means / OPQ iteration each: sizes do not depend on how well an index is trained."""
    if isinstance(index, faiss.IndexPreTransform):
        for i in range(index.chain.size()):
            opq = faiss.downcast_VectorTransform(index.chain.at(i))
            if isinstance(opq, faiss.OPQMatrix):
                opq.niter, opq.niter_pq_0, opq.niter_pq = 1, 1, 1
        index = index.index
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexIVF):
        index.cp.niter = 1
    if hasattr(index, "pq"):
        index.pq.cp.niter = 1
    if hasattr(index, "do_polysemous_training"):
        index.do_polysemous_training = False


def extrapolate(types: list[str], nlist: int, n_train: int, n_add: int,
                seed: int = 0) -> list[dict]:
    """Serialized bytes of each index type at ``TARGET_DIM``, measured on random unit vectors
    at two sizes: ``fixed + per_vector x TARGET_N`` (sizes do not depend on the values)."""
    import faiss

    rng = np.random.default_rng(seed)
    rows = []
    for template in types:
        index_type = template.format(nlist=nlist)
        index = faiss.index_factory(TARGET_DIM, index_type, faiss.METRIC_INNER_PRODUCT)
        _one_training_pass(faiss, index)
        if not index.is_trained:
            index.train(_unit(rng.standard_normal((n_train, TARGET_DIM), dtype=np.float32)))
        sizes = []
        for _ in range(2):
            index.add(_unit(rng.standard_normal((n_add, TARGET_DIM), dtype=np.float32)))
            sizes.append(len(faiss.serialize_index(index)))
        per_vector = (sizes[1] - sizes[0]) / n_add
        fixed = max(0.0, sizes[0] - per_vector * n_add)  # < 0: noise of HNSW's random levels
        total = fixed + per_vector * TARGET_N
        rows.append({"index": index_type, "dim": TARGET_DIM, "n": TARGET_N,
                     "bytes_per_vector": round(per_vector, 1), "fixed_bytes": int(fixed),
                     "total_bytes": int(total), "total_gib": round(total / 2**30, 2),
                     "total_gb": round(total / 1e9, 2)})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    for r in rows:
        r["vs_flat"] = round(r["total_bytes"] / rows[0]["total_bytes"], 4)
    return rows


def run(args) -> dict:
    """Every stage of the benchmark; the results JSON's content."""
    import faiss

    work = Path(args.work)
    passages, queries, encoded = encode_real(work, args.queries)
    model = fit_mixture(passages, args.clusters)
    main = np.concatenate([passages, sample_mixture(model, args.n - len(passages), seed=1)])
    small = sample_mixture(model, len(passages), seed=2)
    sets = {}
    for name, x, types, nlist, nprobes in (
        ("main", main, args.main_types, args.nlist, KNOBS["IVF"][1]),
        ("real", passages, args.small_types, args.small_nlist, args.small_nprobe),
        ("mixture_small", small, args.small_types, args.small_nlist, args.small_nprobe),
    ):
        print(f"set {name}: {len(x)} vectors, IVF{nlist}", file=sys.stderr, flush=True)
        rows = run_set(x, queries, work / name, types, nlist, nprobes, args.budget)
        sets[name] = {"n": len(x), "dim": x.shape[1], "nlist": nlist, "rows": rows}
    sets["main"]["real_vectors"] = len(passages)
    sizes = extrapolate(TYPES, args.nlist, args.extrapolate_train, args.extrapolate_add)
    return {"meta": _meta(args, faiss), "encoding": encoded,
            "mixture": {"clusters": args.clusters, "fitted_on": len(passages)},
            "sets": sets, "extrapolation": sizes}


def _meta(args, faiss) -> dict:
    import torch

    return {"command": " ".join(["python"] + sys.argv), "date": time.strftime("%Y-%m-%d"),
            "cpu_count": os.cpu_count(), "faiss_threads": faiss.omp_get_max_threads(),
            "k": K, "batch": BATCH, "budget_s": args.budget,
            "versions": {"python": sys.version.split()[0], "faiss": faiss.__version__,
                         "numpy": np.__version__, "torch": torch.__version__}}


def parse_args(argv=None):
    from research.paths import cache_root

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200_000, help="vectors in the main set")
    ap.add_argument("--queries", type=int, default=1000, help="dev questions encoded as queries")
    ap.add_argument("--nlist", type=int, default=4096, help="IVF lists in the main set")
    ap.add_argument("--main-types", nargs="+", default=list(TYPES[:3]),
                    help="index types (faiss factory strings, {nlist} filled in) of the main "
                         "set; OPQ is left out by default (its training alone takes about "
                         "18 min on one core)")
    ap.add_argument("--small-types", nargs="+", default=list(TYPES),
                    help="index types of the real-only and same-size mixture sets")
    ap.add_argument("--small-nlist", type=int, default=64,
                    help="IVF lists for the real-only and same-size mixture sets")
    ap.add_argument("--small-nprobe", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--clusters", type=int, default=2048,
                    help="mixture components (2048 came closest to the real vectors' recall "
                         "among 128, 512, 2048)")
    ap.add_argument("--budget", type=float, default=2.0, help="seconds per queries/s figure")
    ap.add_argument("--extrapolate-train", type=int, default=8192,
                    help="random vectors the 768-d size measurement trains on")
    ap.add_argument("--extrapolate-add", type=int, default=5000,
                    help="random vectors per step of the 768-d size measurement")
    ap.add_argument("--work", default=str(cache_root() / "bench" / "dense"))
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "dense_index.json"))
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    result = run(args)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
