"""The real service on loopback driven by four real clients' request and response handling
(``tests/real_clients.py``): the original ReSearch rollout, FlashRAG's RemoteRetriever,
Search-R1's trainer and verl's search tool. Every case is ordinary traffic of one of them."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import httpx
import pytest
import real_clients as rc
import uvicorn
from conftest import free_port, start_service, stop, token, wait_healthy

from research.retrieval.client import SearchClient
from research.retrieval.index import load_retriever
from research.serving.app import create_app
from research.serving.config import ServingConfig

UNICODE = "Zürich «café» 東京 naïve glacier"  # one indexed word
FAST = 0.01  # the clients' sleep between tries, shortened (their counts are kept)


def peak_rss_mb(pid: int) -> float:
    """The process' peak resident memory so far (VmHWM), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc status")


def test_first_search_after_healthy_is_fast(default_service):
    """The retrievers are warmed before /health answers: a 5 s client gets its first call."""
    _, url = default_service
    start = time.perf_counter()
    with SearchClient(url, timeout=5.0, retries=0) as client:
        assert client.search(token(7), k=1)[0].id == "doc-7"
    assert time.perf_counter() - start < 2.0


# -- the original ReSearch rollout ---------------------------------------------------------

def test_original_rollout_turn_with_unicode_and_duplicates(service_url):
    outputs = [f"<think>x</think> <search> {token(3)} </search>",
               f"<search> {UNICODE} river </search>", f"<search> {token(3)} </search>"]
    results = rc.original_turn(service_url, outputs, sleep=FAST)
    assert results[0] == results[2] and '"Title 3"' in results[0]
    assert results[1].startswith(" <result>\n") and "river" in results[1]


def test_original_rollout_blank_query_does_not_sink_the_turn(service_url):
    results = rc.original_turn(service_url, [f"<search> {token(4)} </search>",
                                             "<search> </search>"], sleep=FAST)
    assert '"Title 4"' in results[0]
    assert results[1] == " <result>\n\n</result>"


def test_original_rollout_long_query_is_truncated_and_answered(default_service):
    _, url = default_service
    long = token(5) + " river" * 1000  # 6,000 characters > limits.max_query_chars
    before = httpx.get(f"{url}/health").json()["truncated_queries"]
    results = rc.original_turn(url, [f"<search> {long} </search>",
                                     f"<search> {token(6)} </search>"], sleep=FAST)
    assert '"Title 5"' in results[0] and '"Title 6"' in results[1]
    assert httpx.get(f"{url}/health").json()["truncated_queries"] == before + 1


def test_original_config_turn_of_1280_trajectories(default_service):
    _, url = default_service
    results = rc.original_turn(url, [f"<search> {token(i % 500)} </search>"
                                     for i in range(1280)], sleep=FAST)
    assert all(f'"Title {i % 500}"' in r for i, r in enumerate(results))


def test_original_single_search(service_url):
    text = rc.original_search(service_url, token(9), sleep=FAST)
    assert text.startswith('"Title 9"')


# -- FlashRAG's RemoteRetriever -------------------------------------------------------------

def test_flashrag_scores_are_floats_best_first(service_url):
    results, scores = rc.flashrag_batch_search(service_url, ["river castle", UNICODE, "river"],
                                               num=5, sleep=FAST)
    assert [len(r) for r in results] == [len(s) for s in scores]
    for row in scores:
        assert all(isinstance(s, float) for s in row) and row == sorted(row, reverse=True)
    docs, one = rc.flashrag_search(service_url, "river castle", num=5, sleep=FAST)
    assert docs == results[0] and one == scores[0]


def test_flashrag_whole_hotpotqa_dev_in_one_batch_search(default_service):
    """The original's naive / Iter-RetGen evaluation: 7,405 questions in one request, the
    server's peak memory recorded."""
    proc, url = default_service
    base = peak_rss_mb(proc.pid)
    questions = [f"who built the {token(i % 500)} {UNICODE if i % 7 == 0 else 'tower'}?"
                 for i in range(7405)]
    start = time.perf_counter()
    results, scores = rc.flashrag_batch_search(url, questions, num=5, sleep=FAST)
    took = time.perf_counter() - start
    assert len(results) == len(scores) == 7405
    assert all(r[0]["id"] == f"doc-{i % 500}" for i, r in enumerate(results))
    peak = peak_rss_mb(proc.pid)
    print(f"\n7,405-query /batch_search: {took:.1f} s, server peak RSS {base:.0f} -> "
          f"{peak:.0f} MiB")
    assert peak - base < 64


def test_flashrag_iter_retgen_long_query(default_service):
    """Iter-RetGen appends the last generation to the question: one may run long."""
    _, url = default_service
    queries = [f"{token(11)} " + "generated text " * 400, token(12)]
    results, _ = rc.flashrag_batch_search(url, queries, num=3, sleep=FAST)
    assert [r[0]["id"] for r in results] == ["doc-11", "doc-12"]


# -- Search-R1's trainer --------------------------------------------------------------------

def test_search_r1_turn(service_url):
    outputs = [f"<search> {token(20)} </search>", "<answer> x </answer>",
               f"<search>{UNICODE}</search>", f"<search> {token(20)} </search>"]
    blocks = rc.search_r1_turn(service_url, outputs, topk=3)
    assert len(blocks) == 3 and blocks[0] == blocks[2]
    assert blocks[0].startswith('\n\n<information>Doc 1(Title: "Title 20")')


def test_search_r1_turn_without_a_search(service_url):
    assert rc.search_r1_turn(service_url, ["<answer> a </answer>", "no tag"]) == []


def test_search_r1_empty_search_tag_gets_an_empty_result_in_place(service_url):
    blocks = rc.search_r1_turn(service_url, [f"<search> {token(21)} </search>",
                                             "<search></search>", f"<search>{token(22)}</search>"])
    assert '"Title 21"' in blocks[0] and '"Title 22"' in blocks[2]
    assert blocks[1] == "\n\n<information></information>\n\n"


def test_search_r1_grpo_turn_of_2560_queries(default_service):
    """512 prompts x 5 rollouts, all searching in one turn; the server's peak memory."""
    proc, url = default_service
    base = peak_rss_mb(proc.pid)
    outputs = [f"<search> {token(i % 500)} river </search>" for i in range(2560)]
    blocks = rc.search_r1_turn(url, outputs, topk=3)
    assert all(f'(Title: "Title {i % 500}")' in b for i, b in enumerate(blocks))
    peak = peak_rss_mb(proc.pid)
    print(f"\n2,560-query /retrieve: server peak RSS {base:.0f} -> {peak:.0f} MiB")
    assert peak - base < 64


def test_search_r1_server_fields(service_url):
    """Search-R1's own server takes ``topk`` null (its default) and ``return_scores``."""
    body = httpx.post(f"{service_url}/retrieve",
                      json={"queries": [f"{token(2)} river"], "topk": None,
                            "return_scores": False}).json()
    assert [d["id"] for d in body["result"][0]][:1] == ["doc-2"] and len(body["result"][0]) == 3


# -- verl's search tool ---------------------------------------------------------------------

def test_verl_tool_search(service_url):
    text, status = rc.verl_search(service_url, [token(30), UNICODE], topk=3, delay=FAST)
    assert status == "success"
    first, second = json.loads(text)["result"].split("\n---\n")
    assert first.startswith('Doc 1 (Title: "Title 30")\n')
    assert second.startswith("Doc 1 (Title: ")


def test_verl_tool_one_blank_query_does_not_lose_the_call(service_url):
    text, status = rc.verl_search(service_url, [token(31), "  ", token(32)], delay=FAST)
    assert status == "success"
    parts = json.loads(text)["result"].split("\n---\n")
    assert '"Title 31"' in parts[0] and parts[1] == "" and '"Title 32"' in parts[2]


# -- the same documents from every endpoint -------------------------------------------------

def _post(url, path, payload):
    return httpx.post(f"{url}{path}", json=payload, timeout=30).json()


def test_endpoints_agree_and_top_k_is_a_prefix(service_url):
    from conftest import WORDS

    queries = WORDS + [f"{a} {b}" for a, b in zip(WORDS, WORDS[1:], strict=False)]
    deep, deep_scores = _post(service_url, "/batch_search",
                             {"query": queries, "top_n": 50, "return_score": True})
    for k in (1, 2, 3, 5, 10):
        docs, scores = _post(service_url, "/batch_search",
                            {"query": queries, "top_n": k, "return_score": True})
        retrieved = _post(service_url, "/retrieve", {"queries": queries, "topk": k})["result"]
        for i, q in enumerate(queries):
            assert docs[i] == deep[i][:k], (q, k)  # ties broken by document order
            assert scores[i] == deep_scores[i][:k]
            assert [r["document"] for r in retrieved[i]] == docs[i]
            assert [r["score"] for r in retrieved[i]] == scores[i]
        single, single_scores = _post(service_url, "/search",
                                     {"query": queries[k], "top_n": k, "return_score": True})
        assert single == docs[k] and single_scores == scores[k]


# -- SearchClient ---------------------------------------------------------------------------

def test_search_client_splits_a_batch_over_the_server_limit(service_url):
    """``service_url`` allows 64 queries a request: 150 go in three, answered in order."""
    assert httpx.get(f"{service_url}/health").json()["limits"]["max_batch"] == 64
    queries = [token(i) for i in range(150)]
    with SearchClient(service_url) as client:
        hits = client.batch_search(queries, k=1)
    assert [h[0].id for h in hits] == [f"doc-{i}" for i in range(150)]


# -- a restart of the service during a rollout ----------------------------------------------

def _rollout_across(url: str, restart, turns: int = 4, trajectories: int = 6):
    """``trajectories`` rollouts of ``turns`` searches each; ``restart()`` runs when the
    second turn's generation is done, so that turn's search meets the downtime."""
    from test_rollout_engine import ByteTokenizer, Scripted

    from research.rollout.engine import run_rollouts
    from research.rollout.settings import RolloutSettings

    scripts = {i: [f"<search> {token(i * 10 + t)} </search>" for t in range(turns)]
               + [" <answer> \\boxed{x} </answer><eos>"] for i in range(trajectories)}

    class Restarting(Scripted):
        def generate(self, prompts, params):
            out = super().generate(prompts, params)
            if len(self.calls) == 2:
                restart()
            return out

    with SearchClient(url) as client:  # the default retry budget (30 s)
        return run_rollouts([[i] for i in scripts], Restarting(scripts), client,
                            ByteTokenizer(), RolloutSettings(top_k=2))


class InProcessService:
    """The real app under uvicorn in a thread, stoppable and restartable on one port."""

    def __init__(self, index):
        self.index, self.port = index, free_port()
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self):
        app = create_app(ServingConfig(), retrievers=[load_retriever(self.index)])
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port,
                                                    log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        wait_healthy(self.url)

    def stop(self):
        self.server.should_exit = True
        self.thread.join(timeout=20)


def _check_no_failed_turn(trajectories, turns=4):
    for t in trajectories:
        assert t.search_failures == 0, [turn.failure for turn in t.turns]
        assert [turn.doc_ids[0] for turn in t.turns] == [f"doc-{t.index * 10 + i}"
                                                         for i in range(turns)]


def test_restart_during_a_rollout_short_downtime(bm25_index):
    """The fast variant: the same app restarted in process after 5 s down (longer than the
    original's 3.5 s of retries)."""
    service = InProcessService(bm25_index)
    service.start()
    down = {}

    def restart():
        service.stop()
        down["at"] = time.monotonic()
        threading.Timer(5.0, service.start).start()

    try:
        trajectories = _rollout_across(service.url, restart)
        _check_no_failed_turn(trajectories)
        assert time.monotonic() - down["at"] >= 5.0
    finally:
        service.stop()


@pytest.mark.slow
def test_restart_during_a_rollout_ten_seconds_down(bm25_index, tmp_path):
    """The service process stopped and started again, unreachable for at least 10 s (the new
    process is launched 10 s after the old one stopped; its start adds a few seconds, within
    the client's 30 s retry budget). Launching it earlier, to end its start at 10 s, assumed
    the second start takes as long as the first: on a loaded machine it did not (9.9 s)."""
    cfg = tmp_path / "serving.yaml"
    cfg.write_text(f"retriever:\n  index_dir: {bm25_index}\n")
    port = free_port()
    procs = [start_service(cfg, port=port)[0]]
    down = {}

    def restart():
        stop(procs[-1])
        down["at"] = time.monotonic()

        def again():
            procs.append(start_service(cfg, port=port)[0])
            down["for"] = time.monotonic() - down["at"]

        threading.Timer(10.0, again).start()

    try:
        _check_no_failed_turn(_rollout_across(f"http://127.0.0.1:{port}", restart))
        print(f"\nservice unreachable for {down['for']:.1f} s; no failed turn")
        assert 10.0 <= down["for"] < 30.0  # inside the client's retry budget
    finally:
        stop(procs[-1])
