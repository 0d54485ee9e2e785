"""The real retrieval service on loopback: endpoints, bad input, concurrency, start-up."""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from conftest import REPO, stop, token


def post(url, path, payload, **kw):
    return httpx.post(f"{url}{path}", json=payload, timeout=30, **kw)


def test_health(service_url):
    body = httpx.get(f"{service_url}/health").json()
    assert body["status"] == "healthy"
    assert body["retrievers"] == {"total": 2, "available": 2}
    assert body["num_docs"] == 500


def test_search_returns_documents(service_url):
    docs = post(service_url, "/search", {"query": token(12), "top_n": 3}).json()
    assert docs == [{"id": "doc-12", "contents": docs[0]["contents"]}]
    assert docs[0]["contents"].startswith('"Title 12"\n')


def test_search_with_scores_is_docs_then_scores(service_url):
    docs, scores = post(service_url, "/search",
                        {"query": "river castle", "top_n": 5, "return_score": True}).json()
    assert len(docs) == len(scores) == 5
    assert scores == sorted(scores, reverse=True)
    assert all(set(d) == {"id", "contents"} for d in docs)


def test_default_top_n_is_ten(service_url):
    assert len(post(service_url, "/search", {"query": "river"}).json()) == 10


def test_batch_search_answers_each_query_in_order(service_url):
    queries = [token(i) for i in (3, 99, 250)] + ["glacier"]
    out = post(service_url, "/batch_search", {"query": queries, "top_n": 2}).json()
    assert [hits[0]["id"] for hits in out[:3]] == ["doc-3", "doc-99", "doc-250"]
    assert len(out[3]) == 2
    docs, scores = post(service_url, "/batch_search",
                        {"query": queries, "top_n": 2, "return_score": True}).json()
    assert docs == out
    assert [len(s) for s in scores] == [len(d) for d in docs]


def test_retrieve_speaks_search_r1(service_url):
    body = post(service_url, "/retrieve", {"queries": [token(8), token(9)], "topk": 3}).json()
    first = body["result"][0][0]
    assert first["document"]["id"] == "doc-8" and isinstance(first["score"], float)
    plain = post(service_url, "/retrieve",
                 {"queries": [token(8)], "topk": 3, "return_scores": False}).json()
    assert plain["result"][0][0]["id"] == "doc-8"


@pytest.mark.parametrize(
    ("path", "payload", "status", "message"),
    [
        ("/search", {"query": ""}, 400, "query is empty or whitespace"),
        ("/search", {"query": "   \n"}, 400, "query is empty or whitespace"),
        ("/search", {"query": "x", "top_n": 0}, 400, "top_n must be between 1 and 50"),
        ("/search", {"query": "x", "top_n": 51}, 400, "top_n must be between 1 and 50"),
        ("/search", {"query": "x" * 201}, 400, "query is too long: 201 characters > 200"),
        ("/search", {"query": 5}, 422, "query: Input should be a valid string"),
        ("/search", {"query": "x", "top_n": "5"}, 422, "top_n: Input should be a valid integer"),
        ("/search", {"top_n": 5}, 422, "query: Field required"),
        ("/batch_search", {"query": []}, 400, "'query' is an empty list"),
        ("/batch_search", {"query": ["ok", " "]}, 400, r"query\[1\] is empty"),
        ("/batch_search", {"query": ["q"] * 65}, 400, "too many queries in one request: 65 > 64"),
        ("/batch_search", {"query": "not a list"}, 422, "query: Input should be a valid list"),
        ("/retrieve", {"queries": ["a", ""]}, 400, r"queries\[1\] is empty"),
        ("/retrieve", {"queries": ["a"], "topk": -1}, 400, "topk must be between 1 and 50"),
    ],
)
def test_bad_input_gets_a_clear_4xx(service_url, path, payload, status, message):
    import re

    resp = post(service_url, path, payload)
    assert resp.status_code == status
    assert re.search(message, resp.json()["detail"]), resp.json()


def test_malformed_json_is_a_clear_422(service_url):
    resp = httpx.post(f"{service_url}/search", content=b'{"query": "x",',
                      headers={"content-type": "application/json"})
    assert resp.status_code == 422
    assert "request body is not valid JSON" in resp.json()["detail"]


def test_200_concurrent_requests_all_answered_correctly(service_url):
    def one(i: int):
        if i % 2:
            return post(service_url, "/search", {"query": token(i), "top_n": 1}).json()[0]["id"]
        out = post(service_url, "/batch_search",
                   {"query": [token(i), token(i + 1)], "top_n": 1}).json()
        return [hits[0]["id"] for hits in out]

    with ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(pool.map(one, range(200)))
    for i, got in enumerate(answers):
        assert got == (f"doc-{i}" if i % 2 else [f"doc-{i}", f"doc-{i + 1}"])
    health = httpx.get(f"{service_url}/health").json()
    assert health["retrievers"]["available"] == 2  # every worker returned to the pool


def _run_serving(*args, timeout=60):
    return subprocess.run([sys.executable, str(REPO / "rag_serving" / "serving.py"), *args],
                          capture_output=True, text=True, timeout=timeout)


def test_missing_index_fails_at_startup_naming_path_and_command(tmp_path):
    cfg = tmp_path / "s.yaml"
    cfg.write_text(f"retriever:\n  index_dir: {tmp_path / 'absent'}\n")
    result = _run_serving("--config", str(cfg), "--port", "0")
    assert result.returncode == 2
    assert f"index directory {tmp_path / 'absent'} does not exist" in result.stderr
    assert "research index build --corpus" in result.stderr


def test_corrupt_index_fails_at_startup(tmp_path, bm25_index):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(bm25_index, broken)
    (broken / "bm25" / "params.index.json").unlink()
    cfg = tmp_path / "s.yaml"
    cfg.write_text(f"retriever:\n  index_dir: {broken}\n")
    from conftest import free_port

    result = _run_serving("--config", str(cfg), "--port", str(free_port()))
    assert result.returncode != 0
    assert f"{broken / 'bm25'} is missing or incomplete" in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("retriever:\n  index_dir: x\n  embedded: y\n", "set exactly one of index_dir"),
        ("retriever:\n  embedded: y\nserver:\n  num_retriever: 0\n", "num_retriever must be >= 1"),
        ("retriever:\n  embedded: y\n  colour: blue\n",
         "unknown key retriever.colour; valid keys of retriever: index_dir, embedded"),
        ("retriever:\n  embedded: y\nserver:\n  port: eighty\n",
         "server.port must be an int, got 'eighty' (str)"),
        ("retriever:\n  embedded: y\n  gpu_ids: 0\n", "retriever.gpu_ids must be a list"),
        ("retriever: [1, 2\n", "is not valid YAML"),
    ],
)
def test_bad_config_is_a_clear_error(tmp_path, yaml_text, message):
    cfg = tmp_path / "s.yaml"
    cfg.write_text(yaml_text)
    result = _run_serving("--config", str(cfg))
    assert result.returncode == 2
    assert message in result.stderr and result.stderr.startswith("error: ")
    assert "Traceback" not in result.stderr


def test_serving_config_takes_overrides_like_the_other_configs(tmp_path, monkeypatch):
    from research.errors import ConfigError
    from research.serving.config import describe, load_config

    (tmp_path / "conf").mkdir()
    cfg = tmp_path / "conf" / "s.yaml"
    cfg.write_text("retriever:\n  index_dir: ../idx\nserver:\n  port: 8100\n")
    monkeypatch.chdir(tmp_path)
    c = load_config(cfg, ["server.num_retriever=3", "limits.max_top_n=7"], port=8200)
    assert c.retriever.index_dir == str(tmp_path / "idx")  # relative to the config file
    assert (c.server.port, c.server.num_retriever, c.limits.max_top_n) == (8200, 3, 7)
    c = load_config(cfg, ["retriever.index_dir=here", "retriever.gpu_ids=[0, 1]"])
    assert c.retriever.index_dir == str(tmp_path / "here")  # an override: the working dir
    assert c.retriever.gpu_ids == [0, 1]
    with pytest.raises(ConfigError, match="retriever.index_dir=null"):
        load_config(cfg, ["retriever.embedded=squad-open-mini"])
    with pytest.raises(ConfigError, match="is not section.key=value"):
        load_config(cfg, ["port=1"])
    assert "  num_retriever: 1  # searches served at once" in describe()


def test_serve_command_lists_its_keys_and_takes_overrides(bm25_index):
    keys = _run_serving("--keys")
    assert keys.returncode == 0 and "limits:\n  max_top_n: 100" in keys.stdout
    bad = _run_serving("retriever.embedded=null", f"retriever.index_dir={bm25_index}",
                       "limits.max_batch=0")
    assert bad.returncode == 2 and bad.stderr == "error: limits.max_batch must be >= 1\n"


def test_num_retriever_flag_and_loopback_default(tmp_path, bm25_index):
    from conftest import start_service

    cfg = tmp_path / "s.yaml"
    cfg.write_text(f"retriever:\n  index_dir: {bm25_index}\n")
    proc, url = start_service(cfg, "--num_retriever", "3")
    try:
        assert httpx.get(f"{url}/health").json()["retrievers"]["total"] == 3
        assert url.startswith("http://127.0.0.1:")
    finally:
        log = stop(proc)
    assert "127.0.0.1" in log
