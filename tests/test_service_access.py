"""The service's access token (server.api_key_env): every endpoint but /health asks for
'Authorization: Bearer <token>'; a non-loopback host needs a token or server.allow_open; the
project's clients send the token from retrieval.api_key_env; it never reaches the log."""

from __future__ import annotations

import httpx
import pytest
from conftest import start_service, stop, token

from research.errors import ConfigError
from research.retrieval.client import SearchClient, SearchRequestError
from research.serving.config import load_config

SECRET = "s3cret-token-for-tests"


def test_a_non_loopback_host_needs_a_token_or_allow_open(tmp_path, monkeypatch, caplog):
    base = ["retriever.embedded=factbook-facts"]
    with pytest.raises(ConfigError, match=r"server.host=0.0.0.0 serves the corpus to the "
                                          r"network with no access token.*server.api_key_env"):
        load_config(None, [*base, "server.host=0.0.0.0"])
    with caplog.at_level("WARNING", logger="research.serving.config"):
        load_config(None, [*base, "server.host=0.0.0.0", "server.allow_open=true"])
    assert "serving 0.0.0.0 with no access token" in caplog.text
    with pytest.raises(ConfigError, match="server.api_key_env names SEARCH_TOKEN, which is "
                                          "not set"):
        load_config(None, [*base, "server.host=0.0.0.0", "server.api_key_env=SEARCH_TOKEN"])
    monkeypatch.setenv("SEARCH_TOKEN", "two words")  # no header can carry it
    with pytest.raises(ConfigError, match="SEARCH_TOKEN, whose value holds spaces") as err:
        load_config(None, [*base, "server.api_key_env=SEARCH_TOKEN"])
    assert "two words" not in str(err.value)
    monkeypatch.setenv("SEARCH_TOKEN", SECRET)
    assert load_config(None, [*base, "server.host=0.0.0.0",
                              "server.api_key_env=SEARCH_TOKEN"]).server.host == "0.0.0.0"
    for host in ("127.0.0.1", "localhost", "::1"):  # loopback needs no token
        load_config(None, [*base, f"server.host={host}"])


@pytest.fixture(scope="module")
def guarded(bm25_index, tmp_path_factory):
    cfg = tmp_path_factory.mktemp("cfg") / "serving.yaml"
    cfg.write_text(f"retriever:\n  index_dir: {bm25_index}\n"
                   "server:\n  api_key_env: SEARCH_TOKEN\n  access_log: true\n")
    proc, url = start_service(cfg, env={"SEARCH_TOKEN": SECRET})
    yield url
    log = stop(proc)
    assert SECRET not in log, "the token reached the service's log"


def test_every_endpoint_but_health_asks_for_the_token(guarded):
    assert httpx.get(f"{guarded}/health").status_code == 200
    body = {"queries": [token(3)], "topk": 1}
    for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": SECRET}):
        resp = httpx.post(f"{guarded}/retrieve", json=body, headers=headers)
        assert resp.status_code == 401 and resp.headers["www-authenticate"] == "Bearer"
        detail = resp.json()["detail"]
        assert "Authorization: Bearer <token>" in detail and "SEARCH_TOKEN" in detail
        assert SECRET not in resp.text
    for path, payload in (("/retrieve", body), ("/search", {"query": token(3)}),
                          ("/batch_search", {"query": [token(3)]})):
        resp = httpx.post(f"{guarded}{path}", json=payload,
                          headers={"authorization": f"Bearer {SECRET}"})
        assert resp.status_code == 200, (path, resp.text)


def test_the_client_sends_the_token_from_its_variable(guarded, monkeypatch):
    monkeypatch.setenv("SEARCH_TOKEN", SECRET)
    with SearchClient(guarded, api_key_env="SEARCH_TOKEN", retries=0) as client:
        assert client.batch_search([token(3)], 1)[0][0].id == "doc-3"
    with SearchClient(guarded, retries=0) as client, pytest.raises(
            SearchRequestError, match="401.*Authorization: Bearer <token>"):
        client.batch_search([token(3)], 1)
    monkeypatch.setenv("SEARCH_TOKEN", f"{SECRET}\r\n")  # as read from a file: stripped
    with SearchClient(guarded, api_key_env="SEARCH_TOKEN", retries=0) as client:
        assert client.batch_search([token(3)], 1)[0][0].id == "doc-3"
    monkeypatch.delenv("SEARCH_TOKEN")
    with pytest.raises(ConfigError, match="retrieval.api_key_env names SEARCH_TOKEN, which is "
                                          "not set"):
        SearchClient(guarded, api_key_env="SEARCH_TOKEN")


def test_a_run_that_starts_its_own_service_guards_it_with_the_same_variable(tmp_path,
                                                                            monkeypatch):
    from research.serving.launch import search_client

    monkeypatch.setenv("RUN_TOKEN", SECRET)
    with search_client(None, "factbook-facts", tmp_path, api_key_env="RUN_TOKEN") as client:
        assert "api_key_env: RUN_TOKEN" in (tmp_path / "serving_config.yaml").read_text()
        assert client.batch_search(["Aruba population"], 1)[0][0].id == "ff-aa-population"
        assert httpx.post(f"{client.base_url}/search", json={"query": "x"}).status_code == 401


def test_a_runs_search_client_is_one_function_for_both_engines(tmp_path, service_url):
    """run_searcher: None when the run never searches, a clear error without a URL or an
    embedded corpus, a working client on a URL (training and evaluation both call it, with
    one retrieval section)."""
    from research.errors import ConfigError
    from research.evaluation.config import EvalConfig
    from research.serving.launch import RetrievalSection, run_searcher
    from research.trainers.config import TrainConfig

    assert type(TrainConfig().retrieval) is type(EvalConfig().retrieval) is RetrievalSection
    section = RetrievalSection(timeout=5.0, retries=0)
    with run_searcher(section, "squad-open-mini", tmp_path, needed=False) as client:
        assert client is None
    with pytest.raises(ConfigError, match="retrieval.search_url.*retrieval.corpus"), \
            run_searcher(section, "my-own.jsonl", tmp_path):
        pass
    with run_searcher(RetrievalSection(search_url=service_url, timeout=5.0), None,
                      tmp_path) as client:
        assert client.health()["status"] == "healthy"
