"""The training config: named configs load, overrides apply, bad values say the fix."""

from __future__ import annotations

import pytest

from research.trainers.config import (
    ConfigError,
    describe,
    from_dict,
    load_config,
)

pytestmark = pytest.mark.filterwarnings(  # TRL 1.16.0's config sets a renamed Trainer option
    "ignore:.*gradient_checkpointing` is deprecated:FutureWarning")


def test_defaults_are_the_protocols():
    c = load_config()
    assert (c.grpo.prompts_per_step, c.grpo.num_generations, c.grpo.learning_rate) == (
        256, 5, 1e-6)
    assert (c.grpo.beta, c.grpo.clip, c.rollout.max_response_tokens) == (0.001, 0.2, 8192)
    assert (c.run.wandb, c.run.resume, c.reward.name) == ("off", False, "v1")


def test_cpu_small_fits_two_cores_and_a_packaged_model():
    c = load_config("cpu-small")
    assert c.model.path in ("smollm2-135m", "qwen2.5-0.5b")
    assert c.grpo.num_generations in (4, 5) and c.grpo.prompts_per_step <= 8
    assert not c.grpo.bf16 and not c.grpo.use_vllm and c.retrieval.search_url is None
    assert c.rollout.max_response_tokens <= 1024 and c.run.max_steps > 0
    assert c.run.wandb == "off"


def test_original_has_the_original_values():
    c = load_config("original")
    g, r = c.grpo, c.rollout
    assert (g.prompts_per_step, g.num_generations, g.learning_rate, g.beta, g.clip) == (
        256, 5, 1e-6, 0.001, 0.2)
    assert (r.max_response_tokens, r.max_turns, g.use_vllm, g.bf16) == (8192, None, True, True)
    assert (g.vllm_tensor_parallel_size, g.vllm_gpu_memory_utilization) == (2, 0.6)


def test_a_file_path_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("grpo:\n  num_generations: 4\n  per_device_batch: 8\nrun:\n  wandb: off\n")
    c = load_config(path, ["grpo.learning_rate=1e-5", "rollout.max_turns=null",
                           "run.output_dir=/tmp/x y", "rollout.example=true",
                           "grpo.trl={logging_first_step: true}", "reward.name=f1"])
    assert c.grpo.num_generations == 4 and c.grpo.learning_rate == 1e-5
    assert c.rollout.max_turns is None and c.rollout.example == "two-search"
    assert c.run.output_dir == "/tmp/x y" and c.run.wandb == "off"
    assert c.grpo.trl == {"logging_first_step": True} and c.reward.name == "f1"
    assert c.to_dict()["grpo"]["num_generations"] == 4
    assert c.rollout.turn_cap is None


@pytest.mark.parametrize("overrides, fix", [
    (["grpo.n=4"], r"unknown key grpo\.n; valid keys of grpo: prompts_per_step, "
                   r"num_generations"),
    (["optim.lr=1"], r"unknown section 'optim'; valid sections: model, data"),
    (["grpo.num_generations=3", "grpo.per_device_batch=5"],
     r"768 trajectories .* not divisible .* set grpo.per_device_batch to a divisor of 768"),
    (["grpo.num_generations=1"], r"must be >= 2"),
    (["grpo.num_generations=four"], r"grpo.num_generations must be an int, got 'four'"),
    (["rollout.top_k=null"], r"rollout.top_k cannot be null"),
    (["rollout.template=chatml"], r"rollout.template must be one of base, chat"),
    (["run.wandb=yes please"], r"run.wandb must be one of off, offline, online"),
    (["rollout.temperature=0"], r"temperature must be > 0 for training"),
    (["run.max_steps=0"], r"-1 to train grpo.epochs epochs"),
    (["data.dev=null"], r"set data.dev, or run.eval_steps=0"),
    (["grpo.trl={learning_rate: 1}"], r"grpo.trl.learning_rate is set by grpo.learning_rate"),
    (["grpo.num_generations"], r"is not section.key=value"),
    (["rollout.max_result_tokens=0"], r"max_result_tokens must be >= 1 or null"),
])
def test_each_error_names_the_fix(overrides, fix):
    with pytest.raises(ConfigError, match=fix):
        load_config(None, overrides)


def test_missing_file_lists_the_named_configs(tmp_path):
    with pytest.raises(ConfigError, match="cpu-small, original"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="mapping of sections"):
        load_config(bad)
    with pytest.raises(ConfigError, match="grpo must be a mapping"):
        from_dict({"grpo": 3})


def test_divisibility_counts_the_processes(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "8")
    load_config("original")  # 1,280 = 8 x 8 x 20
    with pytest.raises(ConfigError, match="10 x 8"):
        load_config("original", ["grpo.per_device_batch=10", "grpo.prompts_per_step=100"])


def test_describe_lists_every_key_with_help():
    text = describe()
    assert "  num_generations: 5  # responses per question" in text
    assert "  wandb: 'off'" in text or "  wandb: off" in text


def test_configs_map_onto_trls_grpo_config():
    pytest.importorskip("trl")
    from research.trainers.trl_engine import grpo_config

    c = grpo_config(load_config("cpu-small", ["run.output_dir=/tmp/unused"]), use_cpu=True)
    assert (c.num_generations, c.per_device_train_batch_size, c.gradient_accumulation_steps) \
        == (4, 4, 4)
    assert c.generation_batch_size == 16 and c.report_to == [] and not c.bf16
    assert (c.loss_type, c.scale_rewards, c.use_bias_correction_kl) == ("dapo", "group", False)
    o = grpo_config(load_config("original"), use_cpu=True)
    assert o.generation_batch_size == 1280 and o.learning_rate == 1e-6 and o.beta == 0.001
    assert (o.epsilon, o.epsilon_high, o.max_completion_length, o.use_vllm) == (
        0.2, 0.2, 8192, True)
    with pytest.raises(ConfigError, match="grpo.trl"):
        grpo_config(load_config(None, ["grpo.trl={no_such_option: 1}"]), use_cpu=True)


def _config_keys() -> set[str]:
    import dataclasses

    from research.trainers.config import TrainConfig

    return {f"{s.name}.{f.name}" for s in dataclasses.fields(TrainConfig)
            for f in dataclasses.fields(s.default_factory())}


def test_every_key_is_mapped_or_refused_under_verl():
    """A new config key fails here until research/trainers/verl_mapping.py says where it
    goes under the verl engine."""
    from research.trainers import verl_mapping

    keys = _config_keys()
    assert keys - verl_mapping.every_key() == set(), "add these keys to verl_mapping"
    assert verl_mapping.every_key() - keys == set(), "stale keys in verl_mapping"
    assert not (set(verl_mapping.MAPPED) & set(verl_mapping.TRL_ONLY))
    load_config("original", engine="verl")


@pytest.mark.parametrize("override", ["model.max_batch=4", "grpo.trl={logging_first_step: true}",
                                      "retrieval.corpus=factbook-facts", "run.logging_steps=2",
                                      "run.rollout_samples=0", "run.torch_threads=2"])
def test_trl_only_keys_are_refused_under_verl(override):
    key = override.split("=")[0]
    load_config("original", [override])  # the TRL engine takes it
    with pytest.raises(ConfigError, match=rf"{key} is read by the TRL engine only; under "
                                          r"--engine verl .+"):
        load_config("original", [override], engine="verl")


@pytest.mark.parametrize("overrides, fix", [
    (["grpo.bf16=false"], r"grpo.bf16=false: .* set grpo.bf16=true"),
    (["rollout.search=false"], r"closed-book control\) runs on the TRL engine only"),
    (["cluster.max_tokens_per_gpu=8000"], r"under one trajectory's 8704 tokens .* at least 8704"),
])
def test_verl_refusals_name_the_fix(overrides, fix):
    with pytest.raises(ConfigError, match=fix):
        load_config("original", overrides, engine="verl")


@pytest.mark.parametrize("supported", [True, False])
def test_grpo_bf16_on_a_cpu_without_bf16_support_computes_in_fp32(monkeypatch, caplog,
                                                                  supported):
    """grpo.bf16 on a CPU: kept where the CPU runs bf16, else fp32 with a warning that names
    the setting (bf16 matmuls there run hundreds of times slower)."""
    pytest.importorskip("trl")
    from research.models import loading
    from research.trainers.trl_engine import grpo_config

    monkeypatch.setattr(loading, "cpu_runs_bf16", lambda: supported)
    config = load_config("quickstart", ["run.output_dir=/tmp/unused"])
    assert config.grpo.bf16
    with caplog.at_level("WARNING", logger="research.models.loading"):
        c = grpo_config(config, use_cpu=True)
    assert c.bf16 is supported
    assert ("grpo.bf16 asks for bf16" in caplog.text) is not supported


def test_one_front_door_for_both_engines():
    """research train (TRL) and training/run.sh --engine verl read --config, overrides and
    --resume the same way: --resume is run.resume, each engine has its named default."""
    from research.cli import build_parser
    from research.trainers.config import DEFAULT_CONFIGS, load_run_config

    args = build_parser().parse_args(["train", "--resume", "run.max_steps=3"])
    config = load_run_config(args.config, args.overrides, args.resume, "trl")
    assert config.run.resume and config.run.max_steps == 3
    assert config == load_config(DEFAULT_CONFIGS["trl"], ["run.resume=true", "run.max_steps=3"])
    assert not load_run_config(None, [], False, "trl").run.resume
    verl = load_run_config(None, ["retrieval.search_url=http://h:1"], True, "verl")
    assert verl == load_config("original", ["retrieval.search_url=http://h:1",
                                            "run.resume=true"], engine="verl")
