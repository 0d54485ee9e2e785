"""Retrieval benchmark: this service vs bm25s in process vs rank_bm25, on generated corpora.

    python benchmarks/retrieval.py --sizes 100000 1000000 --out benchmarks/results/retrieval.json

For each corpus size it measures, each system in its own process (so peak memory is its own):

* ``bm25s``: ``bm25s.tokenize`` + ``BM25.index`` in memory, ``retrieve`` in process, the
  documents taken from the corpus held in memory (so both sides return documents);
* ``service``: ``research index build`` (streaming) and the real service over HTTP
  (``/batch_search`` through :class:`research.retrieval.client.SearchClient`, one worker);
* ``rank_bm25``: ``BM25Okapi`` (what FlashRAG's BM25 fallback uses), ``get_scores`` + top-k.

Reported: build seconds, build peak RSS, queries per second at batch 1 and batch 64 (top 5),
and the ratios the project tracks: service / bm25s throughput at batch 64 (target >= 0.85)
and service / rank_bm25 throughput (target >= 10). Corpora are cached under
``$RESEARCH_CACHE/bench`` (generated once: Zipf-distributed words, about 100 per passage, like
Wikipedia's 100-word passages).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

K = 5
N_VOCAB = 200_000
WORDS_PER_DOC = 100


def _vocab(rng) -> list[str]:
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    seen, out = set(), []
    while len(out) < N_VOCAB:
        w = "".join(letters[rng.integers(0, 26, size=rng.integers(3, 10))])
        if w not in seen:
            seen.add(w)
            out.append(w)
    return out


def make_corpus(path: Path, n_docs: int, seed: int = 0) -> Path:
    """A FlashRAG jsonl corpus of ``n_docs`` passages with Zipf-distributed words."""
    if path.is_file():
        return path
    rng = np.random.default_rng(seed)
    vocab = np.array(_vocab(rng))
    ranks = np.arange(1, N_VOCAB + 1)
    p = 1.0 / ranks
    p /= p.sum()
    tmp = path.with_suffix(".tmp")
    with tmp.open("w") as f:
        for start in range(0, n_docs, 10_000):
            n = min(10_000, n_docs - start)
            words = vocab[rng.choice(N_VOCAB, size=(n, WORDS_PER_DOC), p=p)]
            for i, row in enumerate(words):
                title = " ".join(row[:2])
                f.write(json.dumps({"id": str(start + i), "contents": f'"{title}"\n' +
                                    " ".join(row)}) + "\n")
    tmp.rename(path)
    return path


def make_queries(corpus: Path, n: int, seed: int = 1) -> list[str]:
    """Queries of 3-6 words taken from random passages (so they match something)."""
    rng = np.random.default_rng(seed)
    lines = corpus.read_text().splitlines() if corpus.stat().st_size < 2e8 else None
    if lines is None:
        with corpus.open() as f:
            lines = [next(f) for _ in range(50_000)]
    out = []
    for i in rng.choice(len(lines), size=n, replace=False):
        words = json.loads(lines[i])["contents"].split("\n", 1)[1].split()
        take = rng.choice(len(words), size=int(rng.integers(3, 7)), replace=False)
        out.append(" ".join(words[j] for j in sorted(take)))
    return out


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _qps(fn, queries: list[str], batch: int, budget_s: float) -> float:
    """Queries per second of ``fn(list_of_queries)`` at a batch size, within a time budget."""
    fn(queries[:batch])  # warm-up (JIT, caches)
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < budget_s and done < len(queries):
        chunk = queries[done : done + batch]
        fn(chunk)
        done += len(chunk)
    return done / (time.perf_counter() - start)


def _both_qps(fn, queries, budget) -> dict:
    return {"qps_b1": _qps(fn, queries, 1, budget), "qps_b64": _qps(fn, queries, 64, budget)}


def child_bm25s(corpus: Path, queries: list[str], budget: float) -> dict:
    import bm25s
    import Stemmer

    stemmer = Stemmer.Stemmer("english")
    t0 = time.perf_counter()
    docs = [json.loads(line) for line in corpus.open()]  # kept: retrieval returns documents
    tokens = bm25s.tokenize([d["contents"] for d in docs], stopwords="en", stemmer=stemmer,
                            show_progress=False)
    backend = "numba" if _has("numba") else "numpy"
    model = bm25s.BM25(backend=backend)
    model.index(tokens, show_progress=False)
    build = time.perf_counter() - t0
    del tokens

    def search(qs):
        q = bm25s.tokenize(qs, stopwords="en", stemmer=stemmer, show_progress=False)
        ids, scores = model.retrieve(q, k=K, show_progress=False, n_threads=1)
        return [[docs[i] for i in row] for row in ids]

    return {"build_s": build, "build_peak_rss_mb": _peak_rss_mb(), "backend": backend,
            **_both_qps(search, queries, budget)}


def child_rank_bm25(corpus: Path, queries: list[str], budget: float) -> dict:
    import re

    from rank_bm25 import BM25Okapi

    split = re.compile(r"\w\w+").findall
    t0 = time.perf_counter()
    model = BM25Okapi([split(json.loads(line)["contents"].lower()) for line in corpus.open()])
    build = time.perf_counter() - t0

    def search(qs):
        for q in qs:
            scores = model.get_scores(split(q.lower()))
            np.argpartition(-scores, K)[:K]

    return {"build_s": build, "build_peak_rss_mb": _peak_rss_mb(),
            **_both_qps(search, queries, budget)}


def run_service(corpus: Path, queries: list[str], budget: float, work: Path) -> dict:
    from research.retrieval.client import SearchClient
    from research.serving.launch import running_service

    index = work / f"{corpus.stem}-bm25"
    t0 = time.perf_counter()
    build = subprocess.run(
        [sys.executable, "-c", "import resource, sys\nfrom research.cli import main\n"
         "rc = main(sys.argv[1:])\nprint('PEAK', resource.getrusage(resource.RUSAGE_SELF)"
         ".ru_maxrss / 1024)\nsys.exit(rc)",
         "index", "build", "--corpus", str(corpus), "--out", str(index), "--force"],
        capture_output=True, text=True, check=True,
    )
    build_s = time.perf_counter() - t0
    peak = float(build.stdout.split("PEAK")[1])
    cfg = work / "serving.yaml"
    cfg.write_text(f"retriever:\n  index_dir: {index}\nserver:\n  num_retriever: 1\n")
    with running_service(cfg, work / "service.log") as service, \
            SearchClient(service.url, timeout=600) as client:
        out = {"build_s": build_s, "build_peak_rss_mb": peak,
               **_both_qps(lambda qs: client.batch_search(qs, K), queries, budget)}
        status = Path(f"/proc/{service.process.pid}/status").read_text()
        out["server_peak_rss_mb"] = int(status.split("VmHWM:")[1].split()[0]) / 1024
    return out


def _has(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def _child(system: str, corpus: str, queries_file: str, budget: float) -> None:
    queries = json.loads(Path(queries_file).read_text())
    fn = {"bm25s": child_bm25s, "rank_bm25": child_rank_bm25}[system]
    print("RESULT " + json.dumps(fn(Path(corpus), queries, budget)))


def _in_child(system: str, corpus: Path, queries_file: Path, budget: float) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", system, str(corpus),
                          str(queries_file), str(budget)], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{system} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.split("RESULT ", 1)[1])


def bench_size(n_docs: int, work: Path, n_queries: int, budget: float, systems) -> dict:
    corpus = make_corpus(work / f"synthetic-{n_docs}.jsonl", n_docs)
    queries = make_queries(corpus, n_queries)
    qfile = work / f"queries-{n_docs}.json"
    qfile.write_text(json.dumps(queries))
    results = {}
    for system in systems:
        print(f"[{n_docs:,} docs] {system} ...", file=sys.stderr, flush=True)
        if system == "service":
            results[system] = run_service(corpus, queries, budget, work)
        else:
            results[system] = _in_child(system, corpus, qfile, budget)
        print(f"  {results[system]}", file=sys.stderr, flush=True)
    return results


def ratios(r: dict) -> dict:
    out = {}
    if "service" in r and "bm25s" in r:
        out["service/bm25s qps b64"] = r["service"]["qps_b64"] / r["bm25s"]["qps_b64"]
        out["service/bm25s qps b1"] = r["service"]["qps_b1"] / r["bm25s"]["qps_b1"]
    if "service" in r and "rank_bm25" in r:
        out["service/rank_bm25 qps b64"] = r["service"]["qps_b64"] / r["rank_bm25"]["qps_b64"]
        out["service/rank_bm25 qps b1"] = r["service"]["qps_b1"] / r["rank_bm25"]["qps_b1"]
    return out


def table(all_results: dict) -> str:
    lines = ["| docs | system | build s | build peak RSS MB | qps batch 1 | qps batch 64 |",
             "|---|---|---|---|---|---|"]
    for n, r in all_results.items():
        for system, m in r["systems"].items():
            lines.append(f"| {int(n):,} | {system} | {m['build_s']:.1f} | "
                         f"{m['build_peak_rss_mb']:.0f} | {m['qps_b1']:.1f} | {m['qps_b64']:.1f} |")
    lines += ["", "| docs | ratio | value |", "|---|---|---|"]
    for n, r in all_results.items():
        for name, v in r["ratios"].items():
            lines.append(f"| {int(n):,} | {name} | {v:.2f} |")
    return "\n".join(lines)


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _child(sys.argv[2], sys.argv[3], sys.argv[4], float(sys.argv[5]))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--queries", type=int, default=512)
    ap.add_argument("--budget", type=float, default=20.0, help="seconds per throughput figure")
    ap.add_argument("--systems", nargs="+", default=["bm25s", "service", "rank_bm25"])
    ap.add_argument("--work", default=None,
                    help="corpus and index cache (default $RESEARCH_CACHE/bench)")
    ap.add_argument("--out", default="benchmarks/results/retrieval.json")
    args = ap.parse_args()
    from research.paths import cache_root

    work = Path(args.work) if args.work else cache_root() / "bench"
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    all_results = {}
    for n in args.sizes:
        r = bench_size(n, work, args.queries, args.budget, args.systems)
        all_results[str(n)] = {"systems": r, "ratios": ratios(r)}
    meta = {"cpu_count": os.cpu_count(), "date": time.strftime("%Y-%m-%d"),
            "command": " ".join(sys.argv)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"meta": meta, "results": all_results}, indent=2))
    print(table(all_results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
