"""One rollout settings object: one set of defaults and checks, one YAML shape, and the same
object in every consumer (the TRL rollout, validation, the verl agent-loop YAML, evaluation
and the run directory it is recorded in)."""

from __future__ import annotations

import contextlib
import dataclasses

import pytest
import yaml

from research.configtree import ConfigError
from research.evaluation.config import load_config as load_eval_config
from research.rollout import settings as rs
from research.rollout.settings import RolloutSettings
from research.trainers.config import load_config as load_train_config

CHANGED = ["rollout.top_k=2", "rollout.example=one-search", "rollout.max_turns=1",
           "rollout.stop_at_answer=true", "rollout.max_result_tokens=40",
           "rollout.max_response_tokens=300", "rollout.template=base", "rollout.clean=true"]


def changed_training_config(tmp_path):
    return load_train_config(None, [*CHANGED, f"run.output_dir={tmp_path / 'run'}"])


def test_training_and_evaluation_share_the_defaults_and_the_yaml_shape():
    train, evaluation = load_train_config(None).rollout, load_eval_config(None).rollout
    assert train == evaluation == RolloutSettings()
    assert RolloutSettings().example is None  # the original's prompt: no worked example
    assert rs.from_dict(yaml.safe_load(yaml.safe_dump(RolloutSettings().to_dict()))) == train


def test_the_checks_name_the_key(caplog):
    with pytest.raises(ConfigError, match="rollout.example must be one of two-search, "
                                          "one-search, bridge, null"):
        rs.from_dict({"example": "three-search"})
    with pytest.raises(ConfigError, match="rollout.top_k must be >= 1"):
        RolloutSettings(top_k=0)
    with pytest.raises(ConfigError, match="unknown key rollout.example_style"):
        load_eval_config(None, ["rollout.example_style=one-search"])
    # the boolean form of older configs still reads, with a warning that names the new form
    with caplog.at_level("WARNING", logger="research.configtree"):
        assert rs.from_dict({"example": True}).example == "two-search"
        assert rs.from_dict({"example": False}).example is None
    assert [r.getMessage() for r in caplog.records] == [
        "rollout.example: true is an older form, read as two-search; write example: two-search",
        "rollout.example: false is an older form, read as null; write example: null"]
    # built directly, the field takes a name or None, never a boolean
    with pytest.raises(ConfigError, match="rollout.example must be one of .*; got True"):
        RolloutSettings(example=True)


def test_the_closed_book_control_has_no_searches_and_no_search_prompt():
    closed = RolloutSettings(search=False, max_turns=3)
    assert closed.turn_cap == 0 and RolloutSettings(max_turns=3).turn_cap == 3

    class Tok:
        def encode(self, text, add_special_tokens=False):
            return list(text.encode())

    assert "<search>" not in bytes(closed.encode_prompt(Tok(), "Q?")).decode()
    assert "<search>" in bytes(RolloutSettings().encode_prompt(Tok(), "Q?")).decode()


def test_one_settings_object_reaches_the_trl_rollout_and_validation(tmp_path, monkeypatch):
    pytest.importorskip("trl")
    from research.evaluation import research_pipeline
    from research.rewards import get_reward_fn
    from research.trainers.trl_callbacks import ValidationCallback
    from research.trainers.trl_rollout import ReSearchRollout, StepSamples

    config = changed_training_config(tmp_path)

    class Tok:
        def encode(self, text, add_special_tokens=False):
            return list(text.encode())

    rollout = ReSearchRollout(config.rollout, Tok(), searcher=None, samples=StepSamples())
    assert rollout.settings is config.rollout
    assert rollout.encode("Q?") == config.rollout.encode_prompt(Tok(), "Q?")

    seen = []

    def fake_evaluate(items, generator, tokenizer, searcher, settings, **kwargs):
        seen.append(settings)
        return ({"searches": 0.0, "response_tokens": 0.0, "em": 0.0, "acc": 0.0, "f1": 0.0},
                [{"response": "", "golden_answers": ["a"], "complete": True,
                  **dict.fromkeys(("id", "question", "prediction", "em", "f1", "searches",
                                   "queries", "finish_reason", "response_tokens"))}])

    monkeypatch.setattr(research_pipeline, "evaluate", fake_evaluate)
    monkeypatch.setattr(ReSearchRollout, "generator",
                        lambda self, trainer: contextlib.nullcontext(None))
    (tmp_path / "run").mkdir()
    callback = ValidationCallback(tmp_path / "run", config, [{"question": "Q?"}], rollout,
                                  get_reward_fn("v1"))
    callback.attach(type("Trainer", (), {"args": type("Args", (), {"disable_tqdm": True}),
                                         "is_world_process_zero": lambda self: True})())
    callback.validate(type("State", (), {"global_step": 0, "is_world_process_zero": True}))
    assert seen == [config.rollout]


def test_one_settings_object_reaches_the_verl_agent_loop_yaml(tmp_path):
    from research.trainers.verl_launch import agent_loop_entries

    config = changed_training_config(tmp_path)
    [entry] = agent_loop_entries(config, "http://127.0.0.1:8000")
    written = yaml.safe_load(yaml.safe_dump([entry]))[0]  # what the agent loop reads back
    assert rs.from_dict(written["rollout"]) == config.rollout


def test_evaluation_starts_from_the_settings_the_model_was_trained_with(tmp_path):
    config = changed_training_config(tmp_path)
    model = tmp_path / "final"
    model.mkdir()
    rs.save(config.rollout, model)

    evaluation = load_eval_config(None, [f"generator.model={model}"]).resolved()
    assert evaluation.rollout == config.rollout
    # a key given explicitly wins; the others stay the recorded ones
    given = load_eval_config(None, [f"generator.model={model}", "rollout.top_k=4"]).resolved()
    assert given.rollout == dataclasses.replace(config.rollout, top_k=4)
    # a packaged model name (no folder) has nothing recorded: the defaults
    assert load_eval_config(None).resolved().rollout == RolloutSettings()
