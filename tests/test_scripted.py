"""The scripted policies (research.evaluation.scripted) through the evaluation runner, against
the real retrieval service on the embedded factbook-facts corpus, with no model loaded."""

from __future__ import annotations

import json

import pytest

from research.evaluation import runner
from research.evaluation.config import load_config as load_eval_config
from research.evaluation.scripted import first_number, title_entity


def evaluate(tmp_path, method: str, kind: str, n: int = 24) -> list[dict]:
    config = load_eval_config(None, [f"method.name={method}", "data.dataset_name=factbook-facts",
                                     f"data.type={kind}", f"data.sample_num={n}",
                                     "data.random_sample=true", "method.top_k=1",
                                     f"run.save_dir={tmp_path}"])
    out = runner.run(config, progress=False)
    assert out.name == f"factbook-facts-{kind}_dev_{method}"
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["dataset"] == f"factbook-facts-{kind}" and summary["questions"] == n
    return [json.loads(line) for line in (out / "items.jsonl").read_text().splitlines()]


@pytest.fixture
def no_model(monkeypatch):
    def refuse(config):
        raise AssertionError("a scripted policy loaded a model")

    monkeypatch.setattr(runner, "open_generator", refuse)


def test_one_search_rule_answers_one_hop_questions_and_not_bridge_ones(tmp_path, no_model):
    one_hop = evaluate(tmp_path, "one-search-rule", "one-hop")
    # the answer passage is the question's top hit and its first number is the answer
    assert all(r["searches"] == 1 and r["trajectory"][0]["query"] == r["question"]
               for r in one_hop)
    assert sum(r["em"] for r in one_hop) == len(one_hop)
    bridge = evaluate(tmp_path, "one-search-rule", "bridge")
    assert sum(r["em"] for r in bridge) <= 2  # the whole question rarely finds the second hop


def test_oracle_chain_reads_the_entity_from_the_first_result_and_searches_it(tmp_path,
                                                                             no_model):
    from research.data.questions import load_questions

    meta = {q["id"]: q["metadata"] for q in load_questions("factbook-facts", "dev",
                                                           kind="bridge")}
    records = evaluate(tmp_path, "oracle-chain", "bridge")
    for r in records:
        m = meta[r["id"]]
        first, second = (t["query"] for t in r["trajectory"])
        assert first == m["hop1_query"]
        if r["trajectory"][0]["doc_ids"] == [m["hop1_id"]]:  # the first hop found its passage
            assert second == m["hop2_query"]
    assert sum(r["em"] for r in records) >= 0.9 * len(records)
    assert all(r["searches"] == 1 for r in evaluate(tmp_path, "oracle-chain", "one-hop", 8))


@pytest.mark.parametrize(("text", "number"), [
    ("The population of Aruba is 112,162.", "112,162"),
    ("The total area of Aruba is 180 sq km.", "180"),
    ("The median age in Aruba is 38.3 years.", "38.3"),
    ("The international calling code of Aruba is 297.", "297"),
    ("The international calling code of Dominica is 1-767.", "1-767"),
    ("none", "")])
def test_first_number(text, number):
    assert first_number(text) == number


def test_title_entity():
    assert title_entity('"Saint Kitts and Nevis: Capital"\nThe capital is Basseterre.') == (
        "Saint Kitts and Nevis")
