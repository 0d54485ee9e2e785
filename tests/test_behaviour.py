"""The behaviour monitors (research.behaviour): searches and exact share by question type,
the bridge entity in the second query, repeated queries; and the TRL reward that feeds them."""

import pytest

from research.behaviour import behaviour, names_entity, question_facts, repeated_queries
from research.trainers.trl_callbacks import ReSearchReward
from research.trainers.trl_rollout import StepSamples


def sample(kind, queries, correct, entity=None):
    return {"type": kind, "queries": queries, "correct": correct, "bridge_entity": entity}


def test_searches_and_exact_share_are_split_by_type():
    m = behaviour([sample("one-hop", ["Aruba population"], True),
                   sample("one-hop", [], False),
                   sample("bridge", ["capital is Lima", "Peru area", "Peru area"], True, "Peru"),
                   sample("bridge", ["area of the country whose capital is Lima"], False, "Peru"),
                   sample("bridge", ["capital is Lima", "Lima area"], False, "Peru")])
    assert m["type/one-hop/samples"] == 2 and m["type/bridge/samples"] == 3
    assert m["type/one-hop/searches"] == 0.5 and m["type/one-hop/exact"] == 0.5
    assert m["type/bridge/searches"] == 2.0 and m["type/bridge/exact"] == pytest.approx(1 / 3)
    # only the first bridge sample's second query names Peru
    assert m["bridge/entity_in_second_query"] == pytest.approx(1 / 3)
    assert m["repeated_query_share"] == pytest.approx(1 / 7)


def test_no_bridge_samples_no_entity_figure_and_untyped_questions_have_a_name():
    m = behaviour([sample(None, ["x"], True)], prefix="val/")
    assert m == {"val/type/untyped/samples": 1, "val/type/untyped/searches": 1.0,
                 "val/type/untyped/exact": 1.0, "val/repeated_query_share": 0.0}
    assert behaviour([sample("one-hop", [], False)]) == {
        "type/one-hop/samples": 1, "type/one-hop/searches": 0.0, "type/one-hop/exact": 0.0}


@pytest.mark.parametrize(("query", "entity", "named"), [
    ("Saint Kitts and Nevis population", "Saint Kitts and Nevis", True),
    ("population of saint kitts and nevis?", "Saint Kitts and Nevis", True),
    ("Nigeria population", "Niger", False),       # a word run, not a substring
    ("Niger population", "Nigeria", False),
    ("anything", None, False), ("anything", "", False)])
def test_names_entity(query, entity, named):
    assert names_entity(query, entity) is named


def test_repeated_queries_are_counted_after_normalising():
    assert repeated_queries(["a b", "A  b.", "c", "a b"]) == 2
    assert repeated_queries([]) == 0


def test_question_facts_read_the_metadata_of_the_embedded_bridge_questions():
    from research.data.questions import load_questions

    bridge = load_questions("factbook-facts", "dev", kind="bridge")
    facts = [question_facts(q) for q in bridge]
    assert all(f["type"] == "bridge" and f["bridge_entity"] for f in facts)
    # the entity is the country the second hop asks about
    assert all(q["metadata"]["hop2_query"].startswith(f["bridge_entity"] + " ")
               for q, f in zip(bridge, facts, strict=True))


def test_the_training_reward_adds_the_monitors_of_its_step():
    ok = "<think> t </think> <answer> \\boxed{Paris} </answer>"
    samples = StepSamples(records=[{}, {}, {}])
    reward = ReSearchReward("v1", samples)
    reward(prompts=["q"] * 3, completions=[ok, ok, ok],
           golden_answers=[["paris"], ["Lyon"], ["paris"]], complete=[True] * 3,
           question_type=["bridge", "bridge", "one-hop"],
           bridge_entity=["France", "France", ""],
           queries=[["capital is X", "France capital"], ["whole question"], ["France capital"]])
    m = samples.monitors
    assert m["type/bridge/exact"] == 0.5 and m["type/bridge/searches"] == 1.5
    assert m["type/one-hop/exact"] == 1.0 and m["type/one-hop/searches"] == 1.0
    assert m["bridge/entity_in_second_query"] == 0.5
