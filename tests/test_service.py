"""The real retrieval service on loopback: endpoints, bad input, concurrency, start-up."""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from conftest import REPO, token


def post(url, path, payload, **kw):
    return httpx.post(f"{url}{path}", json=payload, timeout=30, **kw)


def test_health(service_url):
    body = httpx.get(f"{service_url}/health").json()
    assert body["status"] == "healthy"
    assert body["retrievers"] == {"total": 2, "available": 2}
    assert body["num_docs"] == 500
    assert body["limits"] == {"max_top_n": 50, "max_batch": 64, "max_query_chars": 200,
                              "batch_chunk": 16, "max_body_bytes": 65536}
    assert isinstance(body["truncated_queries"], int)


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


def test_retrieve_takes_skyrls_one_query_form(service_url):
    """SkyRL-gym's client posts {"query": "<one string>"} and reads result[0] as the query's
    documents; a string "queries" is the same batch of one."""
    batch = post(service_url, "/retrieve", {"queries": [token(8)], "topk": 2}).json()
    for body in ({"query": token(8), "topk": 2, "return_scores": True},
                 {"queries": token(8), "topk": 2}):
        resp = post(service_url, "/retrieve", body)
        assert resp.status_code == 200, resp.text
        assert resp.json() == batch and len(resp.json()["result"]) == 1
    assert post(service_url, "/retrieve", {"query": " "}).json() == {"result": [[]]}


@pytest.mark.parametrize(
    ("path", "payload", "status", "message"),
    [
        ("/search", {"query": ""}, 400, "query is empty or whitespace"),
        ("/search", {"query": "   \n"}, 400, "query is empty or whitespace"),
        ("/search", {"query": "x", "top_n": 0}, 400, "top_n must be between 1 and 50"),
        ("/search", {"query": "x", "top_n": 51}, 400, "top_n must be between 1 and 50"),
        ("/search", {"query": 5}, 422, "query: Input should be a valid string"),
        ("/search", {"query": "x", "top_n": "5"}, 422, "top_n: Input should be a valid integer"),
        ("/search", {"top_n": 5}, 422, "query: Field required"),
        ("/search", ["river"], 422, 'must be a JSON object with "query", "top_n", '
         '"return_score", got a JSON list'),
        ("/batch_search", {"query": ["q"] * 65}, 400, "too many queries in one request: 65 > 64"),
        ("/batch_search", {"query": "not a list"}, 422, "query: Input should be a valid list"),
        ("/batch_search", {"query": ["a", ["b"]]}, 422, "query.1: Input should be a valid string"),
        ("/retrieve", {"queries": ["a"], "topk": -1}, 400, "topk must be between 1 and 50"),
        ("/retrieve", {"queries": ["a"], "topk": 0}, 400, "topk must be between 1 and 50"),
        ("/retrieve", {"queries": [3]}, 422, "queries.list.*.0: Input should be a valid string"),
        ("/retrieve", {"topk": 3}, 422, 'field required: "queries" .a list of strings. or '
         '"query" .one string.'),
        ("/retrieve", {"queries": ["a"], "query": "a"}, 422, 'give "queries" .* or "query" .*'
         "not both"),
        ("/retrieve", {"queries": ["a"], "return_scores": "yes"}, 422,
         "return_scores: Input should be a valid boolean"),
    ],
)
def test_bad_input_gets_a_clear_4xx(service_url, path, payload, status, message):
    import re

    resp = post(service_url, path, payload)
    assert resp.status_code == status
    assert re.search(message, resp.json()["detail"]), resp.json()


@pytest.mark.parametrize(
    ("body", "headers", "status", "message"),
    [
        (b'{"query": "x",', {}, 422, r"request body is not valid JSON \(unexpected end of data"),
        (b"", {}, 422, "request body is not valid JSON"),
        (b'{"query": "river"}', {"content-type": "text/plain"}, 415,
         "content-type is 'text/plain'; expected application/json"),
        (b"query=river", {"content-type": "application/x-www-form-urlencoded"}, 415,
         "expected application/json: send the body as JSON"),
        (b'{"query": "riv\xffer"}', {}, 400,
         "request body is not valid UTF-8: byte 0xff at offset 14"),
        (b'{"query": ' + b"[" * 2000 + b"]" * 2000 + b"}", {}, 400,
         "nests arrays / objects deeper than 1024 levels"),
        (b'{"query": "' + b"x" * 70_000 + b'"}', {}, 413,
         r"request body is 70013 bytes, over the service's 65536 \(limits.max_body_bytes\)"),
    ],
)
def test_bad_bodies_get_a_clear_4xx(service_url, body, headers, status, message):
    import re

    resp = httpx.post(f"{service_url}/search", content=body,
                      headers={"content-type": "application/json", **headers})
    assert resp.status_code == status, resp.text
    assert re.search(message, resp.json()["detail"]), resp.json()


def test_a_body_without_content_type_is_read_as_json(service_url):
    resp = httpx.post(f"{service_url}/search", content=b'{"query": "river", "top_n": 2}')
    assert resp.status_code == 200 and len(resp.json()) == 2
    resp = httpx.post(f"{service_url}/search", content=b'{"query": "river"}',
                      headers={"content-type": "application/json; charset=utf-8"})
    assert resp.status_code == 200


def test_batch_endpoints_answer_every_position(service_url):
    assert post(service_url, "/batch_search", {"query": []}).json() == []
    scored = post(service_url, "/batch_search", {"query": [], "return_score": True}).json()
    assert scored == [[], []]
    assert post(service_url, "/retrieve", {"queries": []}).json() == {"result": []}
    docs = post(service_url, "/batch_search", {"query": [token(1), " ", token(2)]}).json()
    assert [len(d) for d in docs] == [1, 0, 1] and docs[2][0]["id"] == "doc-2"
    result = post(service_url, "/retrieve", {"queries": ["", token(3)]}).json()["result"]
    assert result[0] == [] and result[1][0]["document"]["id"] == "doc-3"


def test_long_queries_are_truncated_and_counted(service_url):
    before = httpx.get(f"{service_url}/health").json()["truncated_queries"]
    long = token(14) + " river" * 60  # 368 characters > 200 (limits.max_query_chars)
    assert post(service_url, "/search", {"query": long, "top_n": 1}).json()[0]["id"] == "doc-14"
    out = post(service_url, "/retrieve", {"queries": [long, long, "x"], "topk": 1}).json()
    assert [r[0]["document"]["id"] for r in out["result"][:2]] == ["doc-14", "doc-14"]
    assert httpx.get(f"{service_url}/health").json()["truncated_queries"] == before + 3


def test_batches_over_one_chunk_are_streamed_in_order(service_url):
    """``service_url`` searches 16 queries per retriever call: 60 take four calls."""
    queries = [token(i) for i in range(60)]
    resp = post(service_url, "/batch_search", {"query": queries, "top_n": 1,
                                                "return_score": True})
    assert "content-length" not in resp.headers  # streamed
    docs, scores = resp.json()
    assert [d[0]["id"] for d in docs] == [f"doc-{i}" for i in range(60)]
    assert all(len(s) == 1 and s[0] > 0 for s in scores)
    result = post(service_url, "/retrieve", {"queries": queries, "topk": 1}).json()["result"]
    assert [r[0]["document"] for r in result] == [d[0] for d in docs]


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


def test_num_retriever_flag_and_loopback_default(default_service):
    from conftest import listening_addresses

    proc, url = default_service
    assert httpx.get(f"{url}/health").json()["retrievers"]["total"] == 3
    assert listening_addresses(proc.pid) == [url.removeprefix("http://")]
