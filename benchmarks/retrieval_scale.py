"""BM25 at the original's scale: 21M passages built, served and queried on one machine.

    python benchmarks/retrieval_scale.py --docs 21000000 --resume \
        --out benchmarks/results/retrieval_scale.json

Stages, each saved under ``WORK/stages/`` as it finishes (``--resume`` skips the saved ones,
so an interrupted run goes on from the next stage; ``WORK`` is
``$RESEARCH_CACHE/bench-scale`` by default, outside the repository):

1. ``corpus``: a generated FlashRAG jsonl corpus of ``--docs`` passages of 100 Zipf-distributed
   words (``benchmarks/retrieval.py``'s generator, the one its 1M figures use), written as a
   stream;
2. ``build``: ``research index build`` in a child process: wall and CPU seconds, peak resident
   memory (``ru_maxrss``: anonymous memory and mapped file pages together), the index's size
   on disk;
3. ``serve_cold`` and ``serve``: the service started on the index (one worker, ``--threads``
   search threads), queried over HTTP with :class:`research.retrieval.client.SearchClient`:
   queries per second and per-request latency (p50 / p99) at batch 1 and batch 64, and the
   server's resident memory after loading and after the queries (``VmRSS``, split into
   anonymous and file pages, and ``VmHWM``). ``serve_cold`` empties the OS page cache first
   (root only; recorded) and times from the first request; ``serve`` first reads the index
   files through the page cache (the steady state);
4. ``peer``: the same index searched in process by ``bm25s.BM25.retrieve`` (numba backend,
   memory-mapped arrays: how the service searched before its MaxScore kernel), batches of 64,
   the same queries; and an exactness check of the service's top ``k`` against every
   document scored by ``bm25s`` (``get_scores_from_ids``) with ties in document order.

Targets (issue: one 24 GB machine): build peak < 20 GB, server < 12 GB, a 64-query batch in
< 1 s at p50.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from retrieval import _pid_cpu_s, build_index_child, make_corpus, make_queries


def _status_mb(pid: int) -> dict:
    """Resident memory of a running process, MB: total, anonymous, file pages, peak."""
    status = Path(f"/proc/{pid}/status").read_text()

    def field(name):
        return int(status.split(f"{name}:")[1].split()[0]) / 1024

    return {"rss_mb": field("VmRSS"), "rss_anon_mb": field("RssAnon"),
            "rss_file_mb": field("RssFile"), "peak_rss_mb": field("VmHWM")}


def _du_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def _percentiles(seconds: list[float]) -> dict:
    a = np.asarray(seconds)
    return {"p50_s": float(np.percentile(a, 50)), "p99_s": float(np.percentile(a, 99)),
            "mean_s": float(a.mean()), "n": len(a)}


def stage_corpus(args, work: Path) -> dict:
    path = work / f"corpus-{args.docs}.jsonl"
    existed = path.is_file()
    t0 = time.perf_counter()
    make_corpus(path, args.docs)
    return {"path": str(path), "bytes": path.stat().st_size,
            "seconds": None if existed else time.perf_counter() - t0,
            "generated_here": not existed}


def stage_build(args, work: Path, corpus: Path) -> dict:
    index = work / f"index-{args.docs}"
    seconds, cpu_s, peak = build_index_child(corpus, index, log=work / "build.log")
    manifest = json.loads((index / "manifest.json").read_text())
    return {"index": str(index), "seconds": seconds, "cpu_s": cpu_s, "peak_rss_mb": peak,
            "index_mb_on_disk": _du_mb(index / "bm25"),
            "offsets_mb_on_disk": (index / "offsets.npy").stat().st_size / 2**20,
            "stats": manifest["stats"], "doc_count": manifest["doc_count"]}


def _timed(fn, batches: list[list[str]], budget_s: float) -> dict:
    """Each call's latency until the budget or the batches run out; queries per second."""
    fn(batches[0])  # warm-up
    latencies, done, start = [], 0, time.perf_counter()
    for batch in batches[1:]:
        t = time.perf_counter()
        fn(batch)
        latencies.append(time.perf_counter() - t)
        done += len(batch)
        if time.perf_counter() - start > budget_s:
            break
    return {"qps": done / sum(latencies), **_percentiles(latencies)}


def _batches(queries: list[str], size: int) -> list[list[str]]:
    return [queries[i:i + size] for i in range(0, len(queries) - size + 1, size)]


def _drop_page_cache() -> bool:
    """Empty the OS page cache (root on Linux), so that the next reads come from disk."""
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def _read_through(paths: list[Path]) -> float:
    """Read files sequentially into the page cache; returns the seconds it took."""
    t0 = time.perf_counter()
    for p in paths:
        with open(p, "rb") as f:
            while f.read(1 << 24):
                pass
    return time.perf_counter() - t0


def stage_serve(args, work: Path, index: Path, queries: list[str], cache: str) -> dict:
    """``cache="cold"``: the page cache emptied before the service starts, timing from its
    first request (what a user sees first); ``"warm"``: the index files read through the
    page cache first (the steady state of a service that has run a while)."""
    from research.retrieval.client import SearchClient
    from research.serving.launch import running_service

    cfg = work / "serving.yaml"
    cfg.write_text(f"retriever:\n  index_dir: {index}\n  threads_per_query: {args.threads}\n"
                   "server:\n  num_retriever: 1\n")
    out = {"cache": cache}
    if cache == "cold":
        out["page_cache_dropped"] = _drop_page_cache()
    else:
        files = sorted((index / "bm25").glob("*.npy"))
        out["read_through_s"] = _read_through(files)
        out["read_through_mb"] = sum(f.stat().st_size for f in files) / 2**20
    t0 = time.perf_counter()
    with running_service(cfg, work / "service.log", timeout=1800) as service, \
            SearchClient(service.url, timeout=600) as client:
        pid = service.process.pid
        out.update({"start_s": time.perf_counter() - t0, "after_load": _status_mb(pid)})
        cpu0 = _pid_cpu_s(pid)
        budget = args.budget if cache == "warm" else args.budget / 2
        for size in (1, 64):
            out[f"batch_{size}"] = _timed(lambda qs: client.batch_search(qs, args.k),
                                          _batches(queries, size), budget)
        out["server_cpu_s"] = _pid_cpu_s(pid) - cpu0
        out["after_queries"] = _status_mb(pid)
        out["top"] = [[h.id for h in hits]
                      for hits in client.batch_search(queries[:args.check], args.k)]
    return out


def stage_peer(args, index: Path, queries: list[str], service_top: list[list[str]]) -> dict:
    """bm25s' own retrieve over the same files, and the exactness check."""
    import bm25s

    from research.retrieval.bm25 import BM25Params, _QueryTokenizer
    from research.retrieval.index import Manifest, open_docstore

    model = bm25s.BM25.load(index / "bm25", mmap=True, backend="numba")
    params = BM25Params(**json.loads((index / "bm25" / "research_bm25.json").read_text()))
    tokenize = _QueryTokenizer(model.vocab_dict, params)

    def retrieve(qs):
        ids = [t for t in (tokenize(q) for q in qs) if t]
        return model.retrieve(ids, k=args.k, show_progress=False, n_threads=args.threads)

    out = {"batch_64": _timed(retrieve, _batches(queries, 64)[: args.peer_batches + 1],
                              args.budget)}
    store = open_docstore(index, Manifest.load(index))
    exact = 0
    for q, top in zip(queries[:args.check], service_top, strict=True):
        full = model.get_scores_from_ids(tokenize(q))  # [num_docs] float32
        best = np.argpartition(-full, args.k)[: args.k]
        kth = full[best].min()
        tied = np.flatnonzero(full >= kth)  # every document at least the k-th score
        order = tied[np.lexsort((tied, -full[tied]))][: args.k]
        exact += [store.get(int(d))[0] for d in order if full[d] > 0] == top
    out["exact_queries"] = exact
    out["checked_queries"] = len(service_top)
    store.close()
    return out


def run(args) -> dict:
    from research.paths import cache_root

    work = Path(args.work) if args.work else cache_root() / "bench-scale"
    (work / "stages").mkdir(parents=True, exist_ok=True)
    settings = {"docs": args.docs, "k": args.k, "threads": args.threads,
                "queries": args.queries, "budget": args.budget, "check": args.check,
                "peer_batches": args.peer_batches}
    results: dict = {}

    def stage(name, fn):
        path = work / "stages" / f"{name}.json"
        if args.resume and path.is_file():
            saved = json.loads(path.read_text())
            if saved["settings"] == settings:
                print(f"{name}: resumed from {path}", file=sys.stderr, flush=True)
                results[name] = saved["result"]
                return
        print(f"{name} ... ({time.strftime('%H:%M:%S')})", file=sys.stderr, flush=True)
        load = os.getloadavg()[0]
        result = fn()
        result["load_avg_1m"] = [load, os.getloadavg()[0]]  # other work on the machine
        path.write_text(json.dumps({"settings": settings, "result": result}))
        results[name] = result
        shown = {k: v for k, v in result.items() if k != "top"}
        print(f"{name}: {json.dumps(shown)}", file=sys.stderr, flush=True)

    stage("corpus", lambda: stage_corpus(args, work))
    corpus = Path(results["corpus"]["path"])
    if shutil.disk_usage(work).free < 2.5 * corpus.stat().st_size and not (
            args.resume and (work / "stages" / "build.json").is_file()):
        print(f"warning: {shutil.disk_usage(work).free / 2**30:.0f} GB free in {work}; the build "
              "spills about as much as the corpus and writes an index about 0.8x its size",
              file=sys.stderr)
    stage("build", lambda: stage_build(args, work, corpus))
    index = Path(results["build"]["index"])
    queries = make_queries(corpus, args.queries)
    stage("serve_cold", lambda: stage_serve(args, work, index, queries, "cold"))
    stage("serve", lambda: stage_serve(args, work, index, queries, "warm"))
    stage("peer", lambda: stage_peer(args, index, queries, results["serve"]["top"]))
    return {"settings": settings, "results": results}


def targets(r: dict) -> dict:
    res = r["results"]
    serve, cold = res["serve"], res["serve_cold"]
    return {
        "build peak RSS GB (target < 20)": res["build"]["peak_rss_mb"] / 1024,
        "server peak RSS GB, warm (target < 12)": serve["after_queries"]["peak_rss_mb"] / 1024,
        "server anonymous memory GB, warm": serve["after_queries"]["rss_anon_mb"] / 1024,
        "batch 64 p50 s, warm (target < 1)": serve["batch_64"]["p50_s"],
        "batch 64 p50 s, cold page cache": cold["batch_64"]["p50_s"],
        "batch 1 p50 s, warm": serve["batch_1"]["p50_s"],
        "service / bm25s retrieve, batch 64 qps": serve["batch_64"]["qps"]
        / res["peer"]["batch_64"]["qps"],
        "exact top-k (service vs every document scored)":
            f"{res['peer']['exact_queries']} of {res['peer']['checked_queries']}",
    }


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=21_000_000)
    ap.add_argument("--queries", type=int, default=2048,
                    help="queries drawn from the corpus (3-6 of a passage's words)")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2, help="the service's threads_per_query")
    ap.add_argument("--budget", type=float, default=60.0, help="seconds per timed figure")
    ap.add_argument("--check", type=int, default=32, help="queries checked for exactness")
    ap.add_argument("--peer-batches", type=int, default=8, help="timed bm25s batches of 64")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--work", default=None, help="default $RESEARCH_CACHE/bench-scale")
    ap.add_argument("--out", default="benchmarks/results/retrieval_scale.json")
    args = ap.parse_args(argv)
    if args.queries < 128:  # a warm-up batch of 64 and at least one timed one
        ap.error(f"--queries {args.queries}: at least 128 (a warm-up batch of 64, then the "
                 "timed ones)")
    return args


def main() -> int:
    args = parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    r = run(args)
    for stage in r["results"].values():
        stage.pop("top", None)
    r["targets"] = targets(r)
    r["meta"] = {"command": " ".join(sys.argv), "date": time.strftime("%Y-%m-%d"),
                 "cpu_count": os.cpu_count(), "python": sys.version.split()[0]}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(r, indent=2))
    for name, value in r["targets"].items():
        print(f"{name}: {value if isinstance(value, str) else round(value, 3)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
