"""The retrieval service and the long-running commands under load and faults, as figures.

    python benchmarks/reliability.py                         # 200 clients, 30 s down
    python benchmarks/reliability.py --clients 20 --requests 3 --down 2   # the test's size

1. ``load``: the BM25 service on the embedded factbook-facts corpus (its index built under
   ``--work``, 2 search threads), ``--clients`` concurrent clients (threads, each with its own
   ``SearchClient``) sending ``--requests`` requests each of batch 1, then of batch 64 (queries:
   the dev questions); requests and queries held per second, p50 / p99 latency; every
   answer's document ids compared with a sequential run of the same queries (one client, one
   request at a time): answers lost (an error after the client's retries) and answers that
   differ;
2. ``restart``: a client searching batches of 16 in a loop, as a rollout's turns do (the
   project's ``SearchClient``, retry budget ``--down`` + 30 s), while the service is stopped,
   kept down ``--down`` seconds, and started again on the same port: batches sent, answered,
   lost, answers that differ from the same batch before the restart, and the longest wait;
3. ``kill``: ``research eval`` of the scripted one-search rule (no model) on the factbook-facts
   dev questions, 8 per batch, SIGKILLed once its first questions are on disk, then the same
   command again: questions finished before the kill, after it, answered twice (redone) and
   missing; and ``research index build`` (BM25) SIGKILLed half-way through an uninterrupted
   build's time, then the same command again: whether the killed build left an index a
   service would load (it must not), and whether the finished index answers as an
   uninterrupted build's does. (A BM25 build restarts from the start; a dense build resumes
   after its last saved shard, which needs an encoder and is tested in the suite.)

Written to ``--out`` (``benchmarks/results/reliability.json``) and printed.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def percentiles(seconds: list[float]) -> dict:
    s = sorted(seconds) or [0.0]
    return {"p50_s": round(s[len(s) // 2], 4), "p99_s": round(s[min(len(s) - 1,
                                                                   int(len(s) * 0.99))], 4)}


def dev_queries() -> list[str]:
    from research.data.embedded import data_root

    lines = (data_root() / "factbook-facts" / "dev.jsonl").read_text().splitlines()
    return [json.loads(line)["question"] for line in lines]


def ids(answers) -> list[list[str]]:
    return [[h.id for h in hits] for hits in answers]


def serving_config(work: Path, index: Path) -> Path:
    cfg = work / "serving.yaml"
    cfg.write_text(f"retriever:\n  index_dir: {index}\n  threads_per_query: 1\n"
                   "server:\n  num_retriever: 2\n")
    return cfg


def build_index(work: Path) -> Path:
    from research.data.embedded import data_root

    index = work / "factbook-facts-bm25"
    subprocess.run([sys.executable, "-m", "research.cli", "index", "build", "--corpus",
                    str(data_root() / "factbook-facts" / "corpus.jsonl"), "--out", str(index)],
                   check=True, capture_output=True, text=True)
    return index


def concurrent(url: str, batches: list[list[list[str]]], expected: dict, k: int) -> dict:
    """Each client (a thread with its own ``SearchClient``) sends its batches in turn."""
    from research.retrieval.client import SearchClient

    latencies, counts, lock = [], {"lost": 0, "differ": 0}, threading.Lock()

    def run(client_batches):
        with SearchClient(url, timeout=120, retry_budget=60) as client:
            for b in client_batches:
                t = time.perf_counter()
                try:
                    got = ids(client.batch_search(b, k))
                except Exception:
                    with lock:
                        counts["lost"] += 1
                    continue
                with lock:
                    latencies.append(time.perf_counter() - t)
                    counts["differ"] += got != expected[tuple(b)]

    threads = [threading.Thread(target=run, args=(cb,)) for cb in batches]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"wall_s": time.perf_counter() - start, "latencies": latencies, **counts}


def load(args, url: str, queries: list[str]) -> dict:
    """``args.clients`` clients, each ``args.requests`` requests, at batch 1 and 64."""
    from research.retrieval.client import SearchClient

    out = {}
    with SearchClient(url, timeout=120) as one:
        for size in (1, 64):
            batches = [[[queries[((c * args.requests + r) * size + j) % len(queries)]
                         for j in range(size)] for r in range(args.requests)]
                       for c in range(args.clients)]
            expected = {}
            for client_batches in batches:  # the sequential reference, one request at a time
                for b in client_batches:
                    if tuple(b) not in expected:
                        expected[tuple(b)] = ids(one.batch_search(b, args.k))
            r = concurrent(url, batches, expected, args.k)
            n = args.clients * args.requests
            out[f"batch_{size}"] = {"clients": args.clients, "requests": n,
                                    "requests_per_s": round(n / r["wall_s"], 1),
                                    "queries_per_s": round(n * size / r["wall_s"], 1),
                                    **percentiles(r["latencies"]), "lost": r["lost"],
                                    "differ_from_sequential": r["differ"]}
    return out


def restart(args, cfg: Path, work: Path, queries: list[str]) -> dict:
    """Search in a loop while the service is down ``args.down`` seconds and back."""
    from research.retrieval.client import SearchClient
    from research.serving.launch import free_port, start_service

    port = free_port()
    service = start_service(cfg, work / "service-restart.log", port=port)
    batches = [queries[i:i + 16] for i in range(0, 16 * 40, 16)]
    before = {}
    with SearchClient(service.url, timeout=60) as client:
        for b in batches:
            before[tuple(b)] = ids(client.batch_search(b, args.k))
    done = {"sent": 0, "answered": 0, "lost": 0, "differ": 0, "longest_wait_s": 0.0}
    stop = threading.Event()

    def searcher():
        with SearchClient(service.url, timeout=60, retry_budget=args.down + 30) as client:
            i = 0
            while not stop.is_set():
                b = batches[i % len(batches)]
                i += 1
                done["sent"] += 1
                t = time.perf_counter()
                try:
                    got = ids(client.batch_search(b, args.k))
                except Exception:
                    done["lost"] += 1
                    continue
                done["answered"] += 1
                done["differ"] += got != before[tuple(b)]
                done["longest_wait_s"] = max(done["longest_wait_s"], time.perf_counter() - t)

    thread = threading.Thread(target=searcher)
    thread.start()
    time.sleep(1.0)
    service.process.terminate()
    service.process.wait(timeout=30)
    down_at = time.perf_counter()
    time.sleep(max(0.0, args.down - 2.0))  # the new process takes about 2 s to answer
    service = start_service(cfg, work / "service-restart.log", port=port)
    down_s = time.perf_counter() - down_at
    time.sleep(2.0)
    stop.set()
    thread.join()
    service.process.terminate()
    service.process.wait(timeout=30)
    return {"down_s": round(down_s, 1), **{k: round(v, 2) if isinstance(v, float) else v
                                           for k, v in done.items()}}


def kill_eval(args, url: str, work: Path) -> dict:
    """SIGKILL ``research eval`` after its first finished questions; run it again."""
    out_dir = work / "eval-runs"
    cmd = [sys.executable, "-m", "research.cli", "eval", "method.name=one-search-rule",
           "data.dataset_name=factbook-facts", f"retrieval.search_url={url}",
           f"run.save_dir={out_dir}", "run.batch_size=8"]
    first = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    items = None
    deadline = time.time() + 300
    while time.time() < deadline and first.poll() is None:
        found = list(out_dir.glob("*/items.jsonl"))
        if found and found[0].stat().st_size > 0:
            items = found[0]
            break
        time.sleep(0.01)
    killed = first.poll() is None
    if killed:
        os.kill(first.pid, signal.SIGKILL)
    first.wait()
    items = items or next(out_dir.glob("*/items.jsonl"))
    before = [json.loads(x)["id"] for x in items.read_text().splitlines() if x.strip()]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    after = [json.loads(x)["id"] for x in items.read_text().splitlines() if x.strip()]
    total = len(dev_queries())
    return {"killed_while_running": killed, "questions": total,
            "finished_before_kill": len(set(before)), "finished_after_rerun": len(set(after)),
            "answered_twice": len(after) - len(set(after)),
            "missing": total - len(set(after)),
            "before_kill_kept": set(before) <= set(after)}


def kill_build(args, work: Path) -> dict:
    """SIGKILL a BM25 build half-way through an uninterrupted one's time; build again."""
    from retrieval import make_corpus

    from research.retrieval.client import SearchClient
    from research.serving.launch import running_service

    corpus = work / f"corpus-{args.build_docs}.jsonl"
    make_corpus(corpus, args.build_docs)
    cmd = [sys.executable, "-m", "research.cli", "index", "build", "--corpus", str(corpus)]
    start = time.perf_counter()
    subprocess.run([*cmd, "--out", str(work / "whole")], check=True, capture_output=True)
    whole_s = time.perf_counter() - start
    killed_dir = work / "killed"
    proc = subprocess.Popen([*cmd, "--out", str(killed_dir)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    time.sleep(whole_s / 2)
    killed = proc.poll() is None
    if killed:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    half_built_loads = (killed_dir / "manifest.json").is_file()
    start = time.perf_counter()
    subprocess.run([*cmd, "--out", str(killed_dir)], check=True, capture_output=True)
    rebuild_s = time.perf_counter() - start
    queries = [json.loads(line)["contents"].split()[3:8]
               for line in corpus.read_text().splitlines()[:32]]
    answers = {}
    for name in ("whole", "killed"):
        cfg = work / f"serving-{name}.yaml"
        cfg.write_text(f"retriever:\n  index_dir: {work / name}\n")
        with running_service(cfg, work / f"service-{name}.log") as service, \
                SearchClient(service.url) as client:
            answers[name] = ids(client.batch_search([" ".join(q) for q in queries], args.k))
    return {"docs": args.build_docs, "uninterrupted_s": round(whole_s, 1),
            "killed_at_s": round(whole_s / 2, 1), "killed_while_running": killed,
            "killed_build_left_a_loadable_index": half_built_loads,
            "rebuild_s": round(rebuild_s, 1),
            "rebuilt_answers_as_uninterrupted": answers["whole"] == answers["killed"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=200)
    p.add_argument("--requests", type=int, default=10, help="requests per client and batch size")
    p.add_argument("--down", type=float, default=30.0, help="seconds the service is down")
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--build-docs", type=int, default=300_000,
                   help="generated passages of the killed BM25 build")
    p.add_argument("--parts", nargs="+", default=["load", "restart", "kill"],
                   choices=("load", "restart", "kill"))
    p.add_argument("--work", default=None, help="default: $RESEARCH_CACHE/bench-reliability")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "reliability.json"))
    args = p.parse_args(argv)
    if str(REPO / "benchmarks") not in sys.path:
        sys.path.insert(0, str(REPO / "benchmarks"))  # the corpus generator of retrieval.py

    from research.paths import cache_root
    from research.serving.launch import running_service

    work = Path(args.work) if args.work else cache_root() / "bench-reliability"
    work.mkdir(parents=True, exist_ok=True)
    queries = dev_queries()
    results = {"command": "python benchmarks/reliability.py " + " ".join(
                   sys.argv[1:] if argv is None else argv),
               "date": time.strftime("%Y-%m-%d"), "cores": os.cpu_count(), "k": args.k}
    index = build_index(work)
    cfg = serving_config(work, index)
    if "load" in args.parts or "kill" in args.parts:
        with running_service(cfg, work / "service.log") as service:
            if "load" in args.parts:
                results["load"] = load(args, service.url, queries)
                print(json.dumps({"load": results["load"]}), flush=True)
            if "kill" in args.parts:
                results["kill_eval"] = kill_eval(args, service.url, work)
                print(json.dumps({"kill_eval": results["kill_eval"]}), flush=True)
    if "restart" in args.parts:
        results["restart"] = restart(args, cfg, work, queries)
        print(json.dumps({"restart": results["restart"]}), flush=True)
    if "kill" in args.parts:
        results["kill_build"] = kill_build(args, work)
        print(json.dumps({"kill_build": results["kill_build"]}), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
