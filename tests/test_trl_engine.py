"""The TRL engine end to end: real GRPO steps of the tiny model through TRL's GRPOTrainer with
the project's rollout, reward and the real retrieval service on loopback."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("trl", reason="the TRL engine is optional: pip install trl==1.16.0")

from conftest import REPO, token, write_alpha_questions  # noqa: E402

from research.rollout.engine import Trajectory, Turn  # noqa: E402
from research.trainers.config import ConfigError, load_config  # noqa: E402
from research.trainers.trl_callbacks import ReSearchReward  # noqa: E402
from research.trainers.trl_engine import check_resume, prepared_run, train  # noqa: E402
from research.trainers.trl_rollout import StepSamples, to_trl_output  # noqa: E402

pytestmark = pytest.mark.filterwarnings(  # TRL 1.16.0's config sets a renamed Trainer option
    "ignore:.*gradient_checkpointing` is deprecated:FutureWarning")


@pytest.fixture(scope="module")
def questions(tmp_path_factory) -> Path:
    """Four FlashRAG questions, one-hop and bridge in turn; the answer of each is "alpha"."""
    return write_alpha_questions(tmp_path_factory.mktemp("data") / "train.jsonl", 4, typed=True)


def small(tiny_path, questions, service_url, out, *extra):
    """2 questions x 2 responses per step, short budgets, one thread."""
    return load_config(None, [
        f"model.path={tiny_path}", f"data.train={questions}", "data.dev=null",
        f"retrieval.search_url={service_url}", "rollout.max_response_tokens=16",
        "rollout.max_turns=1", "rollout.top_k=1", "rollout.max_result_tokens=12",
        "rollout.example=null", "reward.name=f1", "grpo.prompts_per_step=2",
        "grpo.num_generations=2", "grpo.per_device_batch=2", "grpo.learning_rate=1e-3",
        "run.eval_steps=0", "run.max_steps=2", "run.save_steps=100", "run.torch_threads=1",
        f"run.output_dir={out}", *extra])


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def weights(path) -> dict[str, torch.Tensor]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


class ForceSearch:
    """Makes every row search ``token(3)`` and then answer; row i answers "alpha" (correct)
    when i is even, "beta" otherwise, so each group of two has a reward spread."""

    def __init__(self, tokenizer):
        enc = lambda text: tokenizer.encode(text, add_special_tokens=False)  # noqa: E731
        self.search = enc(f"<think> look </think> <search> {token(3)} </search>")
        self.answers = [enc(f" <answer> \\boxed{{{w}}} </answer>") for w in ("alpha", "beta")]
        assert len(self.answers[0]) == len(self.answers[1])  # rows stay in lockstep
        self.eos = tokenizer.eos_token_id
        self.turn, self.pos, self.expected_width = -1, 0, None

    def __call__(self, input_ids, scores):  # [B, L], [B, V]
        width = input_ids.shape[1]
        if width != self.expected_width:  # a new generate call: the next turn
            self.turn, self.pos = self.turn + 1, 0
        self.expected_width = width + 1
        out = torch.full_like(scores, -1e9)
        for row in range(scores.shape[0]):
            plan = self.search if self.turn == 0 else self.answers[row % 2]
            out[row, plan[self.pos] if self.pos < len(plan) else self.eos] = 0.0
        self.pos += 1
        return out


# --- pieces -----------------------------------------------------------------------------------


def test_trajectories_become_trls_rollout_output():
    t = Trajectory(index=0, prompt_ids=[1, 2], response_ids=[5, 6, 7, 8, 9],
                   loss_mask=[1, 0, 0, 1, 1], logprobs=[-0.5, 0.0, 0.0, -1.0, -0.1],
                   finish_reason="eos", turns=[Turn("q", ["d1"], 0.01, None, 2)])
    out = to_trl_output([t])
    assert out["prompt_ids"] == [[1, 2]] and out["completion_ids"] == [[5, 6, 7, 8, 9]]
    assert out["env_mask"] == [[1, 0, 0, 1, 1]] and out["logprobs"][0][1] == 0.0
    assert (out["complete"], out["searches"], out["search_failures"]) == ([True], [1], [0])


def test_reward_uses_the_response_and_golden_answers_and_logs_reasons():
    samples = StepSamples(records=[{}, {}, {}])
    logged = {}
    reward = ReSearchReward("v1", samples)
    ok = "<think> t </think> <answer> \\boxed{Paris} </answer>"
    scores = reward(prompts=["q"] * 3, completions=[ok, ok, "no tags"],
                    golden_answers=[["paris"], ["Lyon"], ["paris"]],
                    complete=[True, True, True], searches=[1, 0, 2],
                    log_metric=logged.__setitem__, trainer_state=None)
    assert scores == [1.0, 0.1, 0.0]
    assert samples.reasons == {"correct": 1, "wrong answer": 1, "bad format: no think tags": 1}
    assert samples.records[0] == {"reward": 1.0, "reason": "correct"}
    assert logged == {"accuracy": pytest.approx(1 / 3), "format_valid": pytest.approx(2 / 3),
                      "searches_per_answer": 1.0}
    assert reward.__name__ == "reward_v1"


def test_graded_rewards_broken_format_is_neither_valid_nor_accurate():
    """Under reward.name=graded a correct answer in a broken format scores 0.8: it counts in
    neither the valid share nor the accuracy (the reward says so, no reason is parsed)."""
    logged = {}
    reward = ReSearchReward("graded", StepSamples(records=[{}, {}]))
    ok = "<think> t </think> <answer> \\boxed{Paris} </answer>"
    scores = reward(prompts=["q"] * 2, completions=[ok, "<answer> \\boxed{Paris} </answer>"],
                    golden_answers=[["paris"], ["paris"]], complete=[True, True],
                    log_metric=logged.__setitem__)
    assert scores == [1.0, 0.8]
    assert logged == {"accuracy": 0.5, "format_valid": 0.5}


def test_rollout_monitors_count_queries_failures_notices_and_inserted_tokens():
    from research.trainers.trl_rollout import rollout_monitors

    def traj(queries, inserted, failures=(), notices=0):
        turns = [Turn(q, [], 0.0, f, 0) for q, f in zip(queries, [*failures, *[None] * 9],
                                                         strict=False)]
        return Trajectory(index=0, prompt_ids=[1], response_ids=[0] * len(inserted),
                          inserted=inserted, turns=turns, turn_limit_notices=notices)

    out = rollout_monitors([
        traj(["a", "a", ""], [False, True, True, False], failures=[None, "search failed: x"]),
        traj(["b"], [False] * 4, notices=1),
    ])
    assert out == {"rollout/searches": 2.0, "rollout/empty_queries": 0.5,
                   "rollout/repeated_queries": 0.5, "rollout/search_failures": 0.5,
                   "rollout/turn_limit_notices": 0.5, "rollout/inserted_share": 0.25}


def test_resume_needs_a_checkpoint_and_a_fresh_run_refuses_one(tmp_path):
    config = load_config(None, [f"run.output_dir={tmp_path}", "run.resume=true"])
    with pytest.raises(ConfigError, match="nothing to resume.*without --resume"):
        check_resume(config)
    (tmp_path / "checkpoint-3").mkdir()
    assert check_resume(config) == tmp_path / "checkpoint-3"
    with pytest.raises(ConfigError, match="pass --resume"):
        check_resume(load_config(None, [f"run.output_dir={tmp_path}"]))


# --- real training ----------------------------------------------------------------------------


def test_two_grpo_steps_through_trl_with_the_real_service(tiny_path, questions, service_url,
                                                           tmp_path):
    from research.rollout import settings as rollout_settings

    before = weights(tiny_path)
    config = small(tiny_path, questions, service_url, tmp_path / "run", f"data.dev={questions}",
                   "data.dev_limit=2", "run.eval_steps=1")
    out = train(config)
    after = weights(out / "final")
    for folder in (out, out / "final"):  # recorded for the evaluation of the trained model
        assert rollout_settings.from_dict(rollout_settings.recorded(folder)) == config.rollout
    assert any(not torch.equal(before[k], after[k]) for k in before), "no parameter changed"
    steps = [m for m in jsonl(out / "metrics.jsonl") if "loss" in m]
    assert [m["step"] for m in steps] == [1, 2]
    assert all(torch.isfinite(torch.tensor(m["loss"])) for m in steps)
    assert all(m["step_time"] > 0 and sum(m["reasons"].values()) == 4 for m in steps)
    assert {"reward", "accuracy", "searches_per_answer"} <= set(steps[0])
    monitors = {"format_valid", "groups_with_spread", "entropy", "clip_ratio/region_mean",
                "rollout/searches", "rollout/empty_queries", "rollout/repeated_queries",
                "rollout/inserted_share", "rollout/turn_limit_notices", "rollout/seconds"}
    assert all(monitors <= set(m) for m in steps), monitors - set(steps[0])
    by_type = {"type/one-hop/searches", "type/one-hop/exact", "type/bridge/searches",
               "type/bridge/exact", "bridge/entity_in_second_query"}
    # the two steps see the four questions once (an epoch): both types, 4 samples a step
    assert by_type <= set().union(*steps), by_type - set().union(*steps)
    assert all(m.get("type/one-hop/samples", 0) + m.get("type/bridge/samples", 0) == 4
               for m in steps)
    assert all(0 <= m["format_valid"] <= 1 and 0 <= m["groups_with_spread"] <= 1
               for m in steps)
    assert (out / "training.png").stat().st_size > 1000  # the monitors' figure
    rollouts = jsonl(out / "rollouts.jsonl")
    assert {r["step"] for r in rollouts} == {1, 2}
    assert all({"question", "response_ids", "loss_mask", "reward", "reason"} <= set(r)
               for r in rollouts)
    validation = jsonl(out / "validation.jsonl")  # greedy, before training and every step
    assert [v["step"] for v in validation] == [0, 1, 2]
    assert all(v["questions"] == 2 and 0 <= v["reward"] <= 1 for v in validation)
    assert all(v.get("type/one-hop/samples", 0) + v.get("type/bridge/samples", 0) == 2
               for v in validation)
    assert all({"em", "acc", "f1", "response_length"} <= set(v) for v in validation)
    assert (out / "validation.png").stat().st_size > 1000  # the run draws its figure
    assert '<svg class="curve" data-key="reward"' in (out / "report.html").read_text()


def test_forced_searches_are_masked_and_carry_no_gradient(tiny_path, questions, service_url,
                                                          tmp_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_path)
    config = small(tiny_path, questions, service_url, tmp_path / "run",
                   "rollout.max_response_tokens=96")
    with prepared_run(config, lambda: [ForceSearch(tokenizer)]) as run:
        trainer = run.trainer
        # the loss below runs through the compact head (labelled positions only, on CPU)
        assert getattr(trainer.model, "research_compact_head", False)
        trainer.model.train()
        trainer.current_gradient_accumulation_steps = 1
        batch = next(iter(trainer.get_train_dataloader()))
        out = trainer._generate_and_score_completions(batch)
        mask = out["completion_mask"] * out["tool_mask"]  # [B, T]: the loss mask
        inserted = torch.zeros_like(mask, dtype=torch.bool)  # [B, T], from the trajectories
        for row, record in enumerate(run.samples.records):
            inserted[row, : len(record["inserted"])] = torch.tensor(record["inserted"])
        assert inserted.sum(1).min() > 0, "every row searched and got a result inserted"
        assert torch.equal(mask.bool(), out["completion_mask"].bool() & ~inserted)
        text = tokenizer.decode(out["completion_ids"][0][inserted[0]])
        assert text.startswith(" <result>\n") and text.endswith("</result>")
        assert run.samples.records[0]["turns"][0]["doc_ids"] == ["doc-3"]
        assert sorted(run.samples.reasons.elements()) == ["correct", "correct",
                                                          "wrong answer", "wrong answer"]
        assert (out["advantages"] != 0).all()

        kept = {}
        forward = trainer._get_per_token_logps_and_entropies

        def keep_logps(*args, **kwargs):  # the real forward; keep the log-probs' gradient
            logps, entropies, *rest = forward(*args, **kwargs)
            logps.retain_grad()
            kept["logps"] = logps
            return logps, entropies, *rest

        trainer._get_per_token_logps_and_entropies = keep_logps
        trainer._compute_loss(trainer.model, dict(out)).backward()
        grad = kept["logps"].grad  # [B, T]
        assert (grad[inserted] == 0).all(), "inserted result tokens contribute no gradient"
        assert (grad[mask == 1] != 0).any()
        del trainer._get_per_token_logps_and_entropies

        before = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
        trainer.train()
        changed = [k for k, v in trainer.model.state_dict().items()
                   if not torch.equal(before[k], v)]
        assert changed
    steps = [m for m in jsonl(run.out / "metrics.jsonl") if "loss" in m]
    assert [m["reasons"] for m in steps] == [{"correct": 2, "wrong answer": 2}] * 2
    assert all(m["searches_per_answer"] == 1.0 for m in steps)
    assert all(m["rollout/searches"] == 1.0 and m["rollout/inserted_share"] > 0 for m in steps)
    assert all(m["groups_with_spread"] == 1.0 for m in steps)  # each group: right and wrong


def test_closed_book_control_trains_without_search_or_service(tiny_path, questions, tmp_path,
                                                               monkeypatch):
    """rollout.search=false: the closed-book prompt, a search request ends the response (no
    retrieval: the service URL is dead), and bf16 mixed precision runs on CPU (taken to have
    bf16 support, so that the bf16 path runs on any CPU)."""
    from transformers import AutoTokenizer

    from research.models import loading

    monkeypatch.setattr(loading, "cpu_runs_bf16", lambda: True)

    tokenizer = AutoTokenizer.from_pretrained(tiny_path)
    dead = "http://127.0.0.1:9"  # nothing listens on the discard port
    config = small(tiny_path, questions, dead, tmp_path / "run", "rollout.search=false",
                   "rollout.max_response_tokens=96", "grpo.bf16=true",
                   f"data.dev={questions}", "data.dev_limit=2", "run.eval_steps=2")
    assert config.rollout.turn_cap == 0
    with prepared_run(config, lambda: [ForceSearch(tokenizer)]) as run:
        run.trainer.train()
    # bf16 on CPU: the rollouts (training and validation) sampled from the bf16 copy
    assert {p.dtype for p in run.rollout._copy.model.parameters()} == {torch.bfloat16}
    rollouts = jsonl(run.out / "rollouts.jsonl")
    prompt = tokenizer.decode(rollouts[0]["prompt_ids"])
    assert "search" not in prompt
    assert re.search(r"\. User: What is \w+\?\. Assistant:$", prompt)
    assert all(r["turns"] == [] and r["finish_reason"] == "turns" for r in rollouts)
    assert all(" <result>" not in r["text"] for r in rollouts)
    steps = [m for m in jsonl(run.out / "metrics.jsonl") if "loss" in m]
    assert [m["searches_per_answer"] for m in steps] == [0.0, 0.0]
    assert all(torch.isfinite(torch.tensor(m["loss"])) for m in steps)
    assert [v["searches_per_answer"] for v in jsonl(run.out / "validation.jsonl")] == [0.0, 0.0]


def test_lora_trains_adapters_and_saves_a_merged_model(tiny_path, questions, service_url,
                                                       tmp_path):
    pytest.importorskip("peft")
    before = weights(tiny_path)
    out = train(small(tiny_path, questions, service_url, tmp_path / "run", "model.lora_rank=4",
                      "run.max_steps=1"))
    after = weights(out / "final")  # a plain model folder: no adapter files needed
    assert set(after) == set(before)
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed and all("proj" in k for k in changed)  # linear layers only, merged
    assert not (out / "final" / "adapter_config.json").exists()


def test_int8_rollout_trains_with_its_correction_logged(tiny_path, questions, service_url,
                                                         tmp_path):
    """grpo.rollout_int8: the rollout samples from an int8 copy of the LoRA policy and the
    loss is corrected for the gap (its facts in metrics.jsonl)."""
    pytest.importorskip("peft")
    out = train(small(tiny_path, questions, service_url, tmp_path / "run", "model.lora_rank=4",
                      "grpo.rollout_int8=true", "run.max_steps=1"))
    [step] = [m for m in jsonl(out / "metrics.jsonl") if "loss" in m]
    assert 0 < step["rollout_correction/weight_mean"] <= 2.0
    assert 0 <= step["rollout_correction/clipped_share"] <= 1
    assert 0 < step["rollout_correction/gap"] < 1  # int8 is close to the policy, not equal
    assert (out / "final" / "config.json").exists()
    with pytest.raises(ConfigError, match="set only one of them"):
        small(tiny_path, questions, service_url, tmp_path, "grpo.rollout_int8=true",
              "grpo.bf16=true")


def test_lora_layers_adapts_only_the_top_layers(tiny_path):
    """``model.lora_layers=N`` puts adapters on the top N transformer layers only (so the
    backward pass stops there); more layers than the model has, or no LoRA, is refused."""
    peft = pytest.importorskip("peft")
    from transformers import AutoConfig, AutoModelForCausalLM

    from research.trainers.trl_engine import lora_config

    total = AutoConfig.from_pretrained(tiny_path).num_hidden_layers
    assert total >= 2
    config = load_config(None, ["model.lora_rank=4", "model.lora_layers=1"])
    cfg = lora_config(config, str(tiny_path))
    model = peft.get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_path), cfg)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(f"layers.{total - 1}." in n and "lora_" in n for n in trainable)
    every = lora_config(load_config(None, ["model.lora_rank=4"]), str(tiny_path))
    assert every.layers_to_transform is None
    with pytest.raises(ConfigError, match=f"has {total} layers"):
        lora_config(load_config(None, ["model.lora_rank=4", f"model.lora_layers={total + 1}"]),
                    str(tiny_path))
    with pytest.raises(ConfigError, match="model.lora_rank > 0"):
        load_config(None, ["model.lora_layers=1"])
    with pytest.raises(ConfigError, match="model.lora_layers"):
        load_config(None, ["model.lora_rank=4", "model.lora_layers=1"], engine="verl")


def test_progress_bar_shows_the_step_numbers():
    import io

    from tqdm import tqdm

    from research.trainers.trl_callbacks import ProgressBar

    bar = ProgressBar()
    bar.bar = tqdm(total=4, file=io.StringIO())
    logs = {"loss": 0.1, "reward": 0.25, "accuracy": 0.5, "searches_per_answer": 1.5,
            "completions/mean_length": 97.4, "step_time": 12.34, "format_valid": 0.75,
            "groups_with_spread": 0.5}
    bar.on_log(None, None, None, logs=logs)
    assert bar.bar.postfix == ("reward=0.250, acc=0.50, valid=0.75, spread=0.50, searches=1.50, "
                               "len=97, step_s=12.3")
    bar.on_log(None, None, None, logs={"train_runtime": 3.0})  # the summary: bar unchanged
    assert bar.bar.postfix.startswith("reward=0.250")


def test_progress_bar_draws_each_logged_step_once():
    import io
    from types import SimpleNamespace as NS

    from tqdm import tqdm

    from research.trainers.trl_callbacks import ProgressBar

    sink = io.StringIO()  # not a terminal: every draw is a new "\r"-separated line
    bar = ProgressBar()
    bar.bar = tqdm(total=4, file=sink, mininterval=0, miniters=1, desc="GRPO")
    start = sink.getvalue().count("GRPO")
    for step in (1, 2):
        bar.on_step_end(NS(logging_steps=1), NS(global_step=step), None)
        bar.on_log(None, None, None, logs={"loss": 0.1, "reward": 0.5 * step})
    draws = sink.getvalue().split("\r")[-2:]
    assert sink.getvalue().count("GRPO") - start == 2  # one line per step, not two
    assert "1/4" in draws[0] and "reward=0.500" in draws[0]
    assert "2/4" in draws[1] and "reward=1.000" in draws[1]
    bar.on_step_end(NS(logging_steps=2), NS(global_step=3), None)  # a step not logged
    assert "3/4" in sink.getvalue().split("\r")[-1]


def test_resume_continues_the_same_run(tiny_path, questions, service_url, tmp_path):
    out = tmp_path / "run"
    train(small(tiny_path, questions, service_url, out, "run.save_steps=1"))
    assert {p.name for p in out.glob("checkpoint-*")} == {"checkpoint-1", "checkpoint-2"}
    train(small(tiny_path, questions, service_url, out, "run.save_steps=1", "run.max_steps=3",
                "run.resume=true"))
    state = json.loads((out / "checkpoint-3" / "trainer_state.json").read_text())
    assert state["global_step"] == 3
    steps = [m["step"] for m in jsonl(out / "metrics.jsonl") if "loss" in m]
    assert steps == [1, 2, 3], "the metrics continue rather than restart"
    assert sorted({r["step"] for r in jsonl(out / "rollouts.jsonl")}) == [1, 2, 3]


def test_resuming_a_run_at_its_last_step_trains_no_further(tiny_path, questions, service_url,
                                                            tmp_path):
    """A run killed after its last checkpoint (before its final model) is finished on resume
    from that checkpoint's weights, without the extra step the trainer would take."""
    import shutil

    out = tmp_path / "run"  # one step of an epoch of two: the checkpoint is mid-epoch
    train(small(tiny_path, questions, service_url, out, "run.save_steps=1", "run.max_steps=1"))
    first = weights(out / "final")
    shutil.rmtree(out / "final")
    train(small(tiny_path, questions, service_url, out, "run.save_steps=1", "run.max_steps=1",
                "run.resume=true"))
    assert not (out / "checkpoint-2").exists()
    assert [m["step"] for m in jsonl(out / "metrics.jsonl") if "loss" in m] == [1]
    again = weights(out / "final")
    assert all(torch.equal(first[k], again[k]) for k in first)


# --- entry points -----------------------------------------------------------------------------


def _train_command(*argv: str) -> tuple[int, str, str]:
    code = ("import argparse, sys\n"
            "from research.trainers.commands import register\n"
            "p = argparse.ArgumentParser(prog='research'); sub = p.add_subparsers()\n"
            "register(sub); args = p.parse_args(sys.argv[1:]); sys.exit(args.func(args))\n")
    r = subprocess.run([sys.executable, "-c", code, "train", *argv], capture_output=True,
                       text=True, cwd=REPO, timeout=120)
    return r.returncode, r.stdout, r.stderr


def test_train_command_bad_config_is_one_line_and_exit_2(tmp_path):
    rc, _, err = _train_command("grpo.num_generations=3", "grpo.per_device_batch=5")
    assert rc == 2 and err.count("\n") == 1 and "grpo.per_device_batch to a divisor" in err
    rc, _, err = _train_command("--resume", f"run.output_dir={tmp_path}")
    assert rc == 2 and "nothing to resume" in err
    rc, out, _ = _train_command("--keys")
    assert rc == 0 and "grpo:" in out and "num_generations: 5" in out


def test_run_sh_maps_the_original_flags_and_picks_the_engine():
    run = lambda *a: subprocess.run(["bash", str(REPO / "training" / "run.sh"), *a],  # noqa: E731
                                    capture_output=True, text=True, timeout=30)
    r = run("--dry-run", "--config", "original", "--actor_model_path", "/m", "--search_url",
            "http://h:1", "--train_data_path", "t.parquet", "--dev_data_path", "d.parquet",
            "--save_path", "/o", "run.max_steps=3")
    assert r.returncode == 0
    assert r.stdout.split()[1:] == [
        "-m", "research.cli", "train", "--config", "original", "model.path=/m",
        "retrieval.search_url=http://h:1", "data.train=t.parquet", "data.dev=d.parquet",
        "run.output_dir=/o", "run.max_steps=3"]
    r = run("--engine", "verl", "--dry-run", "--search_url", "http://h:1",
            "--train_data_path", "missing.parquet", "--save_path", "/tmp/none")
    assert r.returncode == 2 and "missing.parquet not found" in r.stderr  # the verl launcher
    r = run("--engine", "tensorflow")
    assert r.returncode == 2 and "valid: trl, verl" in r.stderr
    r = run("--wandb_api_key", "secret")
    assert r.returncode == 2 and "WANDB_API_KEY" in r.stderr
