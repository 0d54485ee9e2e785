"""The one-machine training engine: TRL's ``GRPOTrainer`` with the project's rollout and rewards.

TRL owns the update (settings from :mod:`research.trainers.trl_settings`), checkpoints and
logging; this module hands it:

- :class:`ReSearchRollout`, the ``rollout_func``: TRL passes the raw questions (each repeated
  ``num_generations`` times); they are encoded with the project's template and rolled out by
  :func:`research.rollout.engine.run_rollouts` against the retrieval service, with the
  trainer's current weights (Hugging Face backend; TRL's colocated vLLM engine on GPUs). It
  returns ``prompt_ids``, ``completion_ids``, ``logprobs`` and ``env_mask`` (the rollout's
  loss mask: 0 on inserted result tokens, which TRL multiplies into every loss term), plus the
  per-sample fields the reward needs (``ended_with_eos``, ``num_searches``, ...).
- :class:`ReSearchReward`, a TRL reward function over the response text (TRL decodes the
  completion ids: the model's tokens and the inserted results, never the prompt) and the
  dataset's ``golden_answers`` column, with :func:`research.rewards.get_reward_fn`.
- :class:`RunRecorder` and :class:`ValidationCallback`, ``TrainerCallback`` s writing
  ``metrics.jsonl``, ``rollouts.jsonl`` and ``validation.jsonl`` in the run directory.

:func:`train` runs a :class:`~research.trainers.config.TrainConfig` and returns the run
directory; :func:`prepared_run` builds everything without training (tests use it).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from transformers import TrainerCallback
from transformers.trainer_callback import ProgressCallback

from research.rollout import settings as rollout_settings
from research.trainers.config import ConfigError, TrainConfig, world_size
from research.trainers.plot import plot_training, plot_validation

logger = logging.getLogger(__name__)

EXTRA_FIELDS = ("ended_with_eos", "num_searches", "num_failures", "finish_reason")


# --- data -----------------------------------------------------------------------------------


def training_questions(source: str, split: str, limit: int | None, kind: str | None = None
                       ) -> list[dict]:
    """The questions of ``data.train`` / ``data.dev``
    (:func:`research.data.questions.load_questions`), or a ConfigError naming the keys to
    check when none are left."""
    from research.data.questions import load_questions

    items = load_questions(source, split, limit, kind)
    if not items:
        raise ConfigError(f"no questions in {source} ({split}"
                          f"{f', metadata.type {kind}' if kind else ''}): check data.train / "
                          "data.dev and data.train_type / data.dev_type")
    return items


def build_dataset(items: Sequence[dict]):
    """A ``datasets.Dataset`` with TRL's ``prompt`` column (the raw question, no template),
    ``golden_answers`` (a list per row, handed to the reward) and ``id``."""
    from datasets import Dataset

    return Dataset.from_list([{"prompt": it["question"], "golden_answers":
                               [str(a) for a in it["golden_answers"]], "id": str(it.get("id"))}
                              for it in items])


# --- rollout ----------------------------------------------------------------------------------


def to_trl_output(trajectories) -> dict[str, list]:
    """TRL's ``rollout_func`` result from trajectories (one per prompt, in order).

    ``env_mask[i][t]`` is the rollout's loss mask: 1 on sampled tokens, 0 on inserted result
    tokens (unless ``mask_results`` was off); ``logprobs`` are 0.0 on inserted tokens.
    """
    out: dict[str, list] = {k: [] for k in ("prompt_ids", "completion_ids", "logprobs",
                                            "env_mask", *EXTRA_FIELDS)}
    for t in trajectories:
        out["prompt_ids"].append(list(t.prompt_ids))
        out["completion_ids"].append(list(t.response_ids))
        out["logprobs"].append(list(t.logprobs))
        out["env_mask"].append(list(t.loss_mask))
        out["ended_with_eos"].append(t.ended_with_eos)
        out["num_searches"].append(t.num_searches)
        out["num_failures"].append(t.num_failures)
        out["finish_reason"].append(t.finish_reason)
    return out


def rollout_monitors(trajectories) -> dict[str, float]:
    """Per-step facts of the rollout a user watches for learning or collapse: searches,
    empty and repeated queries, search failures and turn-cap notices per sample, and the
    share of response tokens that were inserted (retrieved, masked out of the loss)."""
    n = max(1, len(trajectories))
    queries = [[turn.query for turn in t.turns] for t in trajectories]
    tokens = sum(len(t.response_ids) for t in trajectories)
    return {
        "rollout/searches": sum(map(len, queries)) / n,
        "rollout/empty_queries": sum(not q.strip() for qs in queries for q in qs) / n,
        "rollout/repeated_queries": sum(len(qs) - len(set(qs)) for qs in queries) / n,
        "rollout/search_failures": sum(t.num_failures for t in trajectories) / n,
        "rollout/turn_limit_notices": sum(t.turn_limit_notices for t in trajectories) / n,
        "rollout/inserted_share": sum(t.inserted_tokens for t in trajectories) / max(1, tokens),
    }


@dataclass
class StepSamples:
    """What the current step rolled out and how it scored (read by :class:`RunRecorder`)."""

    records: list[dict] = field(default_factory=list)
    reasons: Counter = field(default_factory=Counter)
    monitors: dict = field(default_factory=dict)  # rollout_monitors of the step

    def reset(self) -> None:
        self.records, self.reasons, self.monitors = [], Counter(), {}


class ReSearchRollout:
    """TRL's ``rollout_func``: the project's search-interleaved rollout on the current policy."""

    def __init__(self, config: TrainConfig, tokenizer, searcher, samples: StepSamples,
                 make_logits_processors: Callable[[], list] | None = None):
        self.settings = config.rollout
        self.max_batch = config.model.max_batch
        self.tokenizer = tokenizer
        self.searcher = searcher
        self.samples = samples
        self.make_logits_processors = make_logits_processors or list
        self._prompt_cache: dict[str, list[int]] = {}

    def encode(self, question: str) -> list[int]:
        if question not in self._prompt_cache:
            self._prompt_cache[question] = self.settings.encode_prompt(self.tokenizer, question)
        return self._prompt_cache[question]

    def __call__(self, prompts: list, trainer) -> dict[str, list]:
        from research.rollout.engine import run_rollouts

        if any(not isinstance(p, str) for p in prompts):
            raise ConfigError("the prompt column must hold raw questions (strings); the "
                              "template is applied by the rollout (rollout.template)")
        ids = [self.encode(q) for q in prompts]  # [B x G] prompts, each repeated G times
        start = time.perf_counter()
        with self.generator(trainer) as generator:
            trajectories = run_rollouts(ids, generator, self.searcher, self.tokenizer,
                                        self.settings)
        seconds = time.perf_counter() - start
        self.samples.reset()
        self.samples.records = [{"question": q, **t.to_dict()}
                                for q, t in zip(prompts, trajectories, strict=True)]
        self.samples.monitors = {**rollout_monitors(trajectories), "rollout/seconds": seconds}
        logger.debug("rolled out %d trajectories in %.1f s", len(trajectories), seconds)
        return to_trl_output(trajectories)

    @contextlib.contextmanager
    def generator(self, trainer) -> Iterator:
        """The backend on the trainer's current weights, in eval mode without gradients, under
        the trainer's mixed precision (``grpo.bf16``: bf16 matmuls on fp32 weights)."""
        if trainer.args.use_vllm:
            yield self._vllm_generator(trainer)
            return
        import torch
        from trl.models.utils import unwrap_model_for_generation

        from research.rollout.backends.hf import HFGenerator

        with unwrap_model_for_generation(
                trainer.model_wrapped, trainer.accelerator,
                gather_deepspeed3_params=trainer.args.ds3_gather_for_generation,
                gradient_checkpointing_kwargs=trainer.args.gradient_checkpointing_kwargs,
        ) as model, torch.no_grad(), trainer.accelerator.autocast():
            was_training = model.training
            model.eval()
            try:
                yield HFGenerator(model, self.tokenizer, max_batch=self.max_batch,
                                  logits_processors=self.make_logits_processors())
            finally:
                model.train(was_training)

    def _vllm_generator(self, trainer):
        # GPU path, not tested here (no GPU, no vLLM): generate through TRL's colocated vLLM
        # engine. TRL syncs the weights before each rollout_func call; validation runs between
        # calls, so sync here too when the step moved on (what TRL's own _generate does).
        from research.rollout.backends.vllm import VLLMGenerator
        from research.rollout.generation import model_eos_ids

        if trainer.args.vllm_mode != "colocate":
            raise ConfigError("the ReSearch rollout needs vllm_mode colocate (grpo.trl: "
                              "{vllm_mode: colocate}); server mode is not supported yet")
        if trainer.state.global_step != trainer._last_loaded_step:
            trainer.vllm_generation.sync_weights()
            trainer._last_loaded_step = trainer.state.global_step
        return VLLMGenerator(trainer.vllm_generation.llm,
                             eos_token_ids=model_eos_ids(trainer.model, self.tokenizer))


# --- reward -----------------------------------------------------------------------------------


class ReSearchReward:
    """A TRL reward function: the project's reward on the response text and golden answers.

    >>> reward = ReSearchReward("v1", StepSamples())
    >>> ok = "<think> t </think> <answer> \\\\boxed{Paris} </answer>"
    >>> reward(prompts=["q"], completions=[ok], golden_answers=[["paris"]],
    ...        ended_with_eos=[True], num_searches=[0])
    [1.0]
    """

    def __init__(self, name: str, samples: StepSamples):
        from research.rewards import get_reward_fn

        self.fn = get_reward_fn(name)
        self.samples = samples
        self.__name__ = f"reward_{name}"  # TRL names the reward's metrics after it

    def __call__(self, prompts, completions, golden_answers, ended_with_eos, num_searches=None,
                 log_metric=None, **kwargs) -> list[float]:
        texts = [c if isinstance(c, str) else c[-1]["content"] for c in completions]
        results = [self.fn(text, list(golds), ended_with_eos=bool(eos))
                   for text, golds, eos in zip(texts, golden_answers, ended_with_eos,
                                               strict=True)]
        reasons = Counter(r.reason for r in results)
        self.samples.reasons.update(reasons)
        for record, r in zip(self.samples.records, results, strict=False):
            record.update(reward=r.score, reason=r.reason)
        if log_metric is not None:
            log_metric("accuracy", reasons["correct"] / len(results))
            # passes every gate of the reward (format, proper end, a box): the share GRPO
            # can tell apart from invalid samples at all
            log_metric("format_valid", sum(r.score > 0 for r in results) / len(results))
            if num_searches is not None:
                log_metric("searches_per_answer", sum(num_searches) / len(num_searches))
        logger.info("reward reasons: %s", dict(reasons.most_common()))
        return [r.score for r in results]


# --- callbacks --------------------------------------------------------------------------------


def _append_jsonl(path: Path, record: dict) -> None:
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(record, default=str) + "\n")


def truncate_jsonl(path: Path, last_step: int) -> None:
    """Drop the records of ``path`` after ``last_step`` (a resumed run writes them again)."""
    if not path.exists():
        return
    lines = path.read_text(encoding="utf-8").splitlines()
    kept = [line for line in lines if line.strip() and json.loads(line).get("step", 0) <= last_step]
    path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")


class RunRecorder(TrainerCallback):
    """Writes ``metrics.jsonl`` (every log, with step time and reward reasons) and
    ``rollouts.jsonl`` (the first ``rollout_samples`` trajectories of every step)."""

    def __init__(self, out: Path, samples: StepSamples, rollout_samples: int):
        self.metrics, self.rollouts = out / "metrics.jsonl", out / "rollouts.jsonl"
        self.samples, self.rollout_samples = samples, rollout_samples
        self._step_start, self.step_time = None, None

    def on_step_begin(self, args, state, control, **kwargs):
        self._step_start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if self._step_start is not None:
            self.step_time = round(time.perf_counter() - self._step_start, 3)
        if state.is_world_process_zero:
            for record in self.samples.records[: self.rollout_samples]:
                _append_jsonl(self.rollouts, {"step": state.global_step, **record})

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is not None and "loss" in logs:  # a step's log, not the end-of-run summary
            logs["step_time"] = self.step_time  # the progress bar shows it too
            logs.update(self.samples.monitors)
            if "frac_reward_zero_std" in logs:  # GRPO has a gradient only in these groups
                logs["groups_with_spread"] = 1.0 - logs["frac_reward_zero_std"]
        if not state.is_world_process_zero:
            return
        record = {"step": state.global_step, "epoch": state.epoch, **(logs or {})}
        if "loss" in record:
            record["reasons"] = dict(self.samples.reasons)
        _append_jsonl(self.metrics, record)

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:  # the figure follows the checkpoints
            plot_training(self.metrics.parent)


class ProgressBar(TrainerCallback):
    """One progress bar over the steps with the numbers that matter, in place of the
    trainer's default bar (which prints every logged key): reward, accuracy, the share of
    samples the reward passes (valid), the share of groups with reward spread, searches per
    answer, response length and step time of the last step."""

    FIELDS = (("reward", "reward", "{:.3f}"), ("accuracy", "acc", "{:.2f}"),
              ("format_valid", "valid", "{:.2f}"), ("groups_with_spread", "spread", "{:.2f}"),
              ("searches_per_answer", "searches", "{:.2f}"),
              ("completions/mean_length", "len", "{:.0f}"), ("step_time", "step_s", "{:.1f}"))

    def __init__(self):
        self.bar = None

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero and not args.disable_tqdm:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc="GRPO",
                            unit="step", dynamic_ncols=True)

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.bar is not None and logs and "loss" in logs:
            self.bar.set_postfix({short: fmt.format(logs[key]) for key, short, fmt in self.FIELDS
                                  if logs.get(key) is not None}, refresh=True)

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


VALIDATION_ITEM_KEYS = ("id", "question", "golden_answers", "prediction", "em", "f1",
                        "searches", "queries", "finish_reason", "response_tokens", "response")


class ValidationCallback(TrainerCallback):
    """Greedy ReSearch rollouts on the dev questions before training and every
    ``eval_steps`` steps: mean reward, accuracy, searches; appended to ``validation.jsonl``,
    and each question's prediction to ``validation_items.jsonl``."""

    def __init__(self, out: Path, config: TrainConfig, items: list[dict], rollout, reward_fn):
        self.path, self.items, self.rollout = out / "validation.jsonl", items, rollout
        self.items_path = out / "validation_items.jsonl"
        self.every, self.reward_fn = config.run.eval_steps, reward_fn
        self.trainer = None  # set by attach(): the generator needs the trainer's model

    def attach(self, trainer) -> None:
        self.trainer = trainer

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if not self._done(state.global_step):
            self.validate(state)

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % self.every == 0 and not self._done(state.global_step):
            self.validate(state)

    def _done(self, step: int) -> bool:  # a resumed run does not repeat a validation
        return self.path.exists() and any(
            json.loads(line).get("step") == step for line in self.path.read_text().splitlines())

    def validate(self, state) -> dict:
        """The ReSearch pipeline (greedy) on the dev items: FlashRAG metrics and the reward."""
        from research.evaluation.research_pipeline import evaluate

        with self.rollout.generator(self.trainer) as generator:
            metrics, records = evaluate(self.items, generator, self.rollout.tokenizer,
                                        self.rollout.searcher, self.rollout.settings,
                                        batch_size=max(1, len(self.items)))
        results = [self.reward_fn(rec["response"], rec["golden_answers"],
                                  ended_with_eos=rec["ended_with_eos"]) for rec in records]
        n = len(results)
        record = {"step": state.global_step, "questions": n,
                  "reward": sum(x.score for x in results) / n,
                  "accuracy": sum(x.reason == "correct" for x in results) / n,
                  "searches_per_answer": metrics["searches"],
                  "response_length": metrics["response_tokens"],
                  **{k: metrics[k] for k in ("em", "acc", "f1")}}
        if state.is_world_process_zero:
            truncate_jsonl(self.items_path, state.global_step - 1)  # a validation cut short
            for rec, result in zip(records, results, strict=True):
                _append_jsonl(self.items_path, {"step": state.global_step, "reward": result.score,
                                                "reason": result.reason,
                                                **{k: rec[k] for k in VALIDATION_ITEM_KEYS}})
            _append_jsonl(self.path, record)
            plot_validation(self.path.parent)
        logger.info("validation at step %d: %s", state.global_step, record)
        return record


# --- the run ----------------------------------------------------------------------------------


def set_threads(config: TrainConfig) -> int:
    """torch's CPU threads: ``run.torch_threads`` or every core (the service stays mostly idle
    while the model runs; two busy processes with all threads each slow both down)."""
    import torch

    threads = config.run.torch_threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    return threads


def grpo_config(config: TrainConfig, use_cpu: bool):
    """``trl.GRPOConfig``: the protocol's settings, then this config's values."""
    from research.trainers.trl_settings import (
        protocol_grpo_config,
        step_batch_kwargs,
    )

    g, r, run = config.grpo, config.rollout, config.run
    report = [] if run.wandb == "off" else ["wandb"]
    kwargs = dict(
        output_dir=run.output_dir, num_generations=g.num_generations,
        **step_batch_kwargs(g.prompts_per_step, g.num_generations, g.per_device_batch,
                            world_size()),
        learning_rate=g.learning_rate, beta=g.beta, epsilon=g.clip, epsilon_high=g.clip,
        entropy_coef=g.entropy_coef, loss_type=g.loss_type, num_train_epochs=g.epochs,
        temperature=r.temperature, top_p=r.top_p, max_completion_length=r.max_response_tokens,
        max_steps=run.max_steps, save_steps=run.save_steps, save_total_limit=run.save_total_limit,
        logging_steps=run.logging_steps, seed=run.seed, report_to=report,
        run_name=Path(run.output_dir).name, bf16=g.bf16, use_cpu=use_cpu,
        **{_checkpointing_arg(): config.model.gradient_checkpointing},
        model_init_kwargs={"dtype": config.model.dtype},
        use_vllm=g.use_vllm, vllm_mode="colocate",
        vllm_tensor_parallel_size=g.vllm_tensor_parallel_size,
        vllm_gpu_memory_utilization=g.vllm_gpu_memory_utilization,
    )
    kwargs.update(g.trl)
    try:
        return protocol_grpo_config(**kwargs)
    except TypeError as exc:  # an unknown grpo.trl option
        raise ConfigError(f"grpo.trl: {exc}; see trl.GRPOConfig for the valid options") from None


def _checkpointing_arg() -> str:
    """transformers 5 renamed ``gradient_checkpointing`` to ``activation_checkpointing`` (the
    old name warns); older versions know only the old one."""
    import dataclasses

    from trl import GRPOConfig

    names = {f.name for f in dataclasses.fields(GRPOConfig)}
    return "activation_checkpointing" if "activation_checkpointing" in names else (
        "gradient_checkpointing")


@contextlib.contextmanager
def _quiet_trl_internals():
    """TRL 1.16 itself reads two names transformers 5 deprecated (``is_gradient_checkpointing``
    in its generation unwrap, ``past_key_values`` in its forward wrapper): hide those two
    FutureWarnings, which no setting of the project can avoid."""
    import warnings

    with warnings.catch_warnings():
        for message in (".*is_gradient_checkpointing.*", ".*past_key_values.*"):
            warnings.filterwarnings("ignore", message=message, category=FutureWarning)
        yield


def find_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """The newest ``checkpoint-N`` folder of ``output_dir``, or None."""
    out = Path(output_dir)
    found = [p for p in out.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()]
    return max(found, key=lambda p: int(p.name.split("-")[-1]), default=None)


def check_resume(config: TrainConfig) -> Path | None:
    """The checkpoint to resume from (``run.resume``), or a ConfigError saying what to do."""
    out, checkpoint = config.run.output_dir, find_checkpoint(config.run.output_dir)
    if config.run.resume and checkpoint is None:
        raise ConfigError(f"nothing to resume: {out} has no checkpoint-N folder; run without "
                          "--resume to start, or set run.output_dir to the killed run's folder")
    if not config.run.resume and checkpoint is not None:
        raise ConfigError(f"{out} already holds {checkpoint.name}: pass --resume to continue "
                          "that run, or choose another run.output_dir")
    return checkpoint


@contextlib.contextmanager
def retrieval(config: TrainConfig, out: Path) -> Iterator:
    """A ``SearchClient`` on ``retrieval.search_url``, or on a service started for the run;
    None for the closed-book control (``rollout.search: false``), which never searches."""
    from research.serving.launch import search_client

    rc = config.retrieval
    if not config.rollout.search:
        yield None
        return
    with search_client(rc.search_url, rc.corpus, out, rc.timeout, rc.retries) as client:
        yield client


def _wandb_env(config: TrainConfig) -> None:
    if config.run.wandb == "off":
        return
    import importlib.util

    if importlib.util.find_spec("wandb") is None:
        raise ConfigError(f"run.wandb={config.run.wandb} needs the wandb package: pip install "
                          "wandb, or set run.wandb=off")
    os.environ.setdefault("WANDB_PROJECT", config.run.wandb_project)
    os.environ["WANDB_MODE"] = config.run.wandb
    if config.run.wandb == "online" and not os.environ.get("WANDB_API_KEY"):
        raise ConfigError("run.wandb=online needs WANDB_API_KEY in the environment (never a "
                          "flag); or use run.wandb=offline")


def lora_config(config: TrainConfig):
    """peft's ``LoraConfig`` for ``model.lora_rank > 0`` (every linear layer), else None."""
    m = config.model
    if not m.lora_rank:
        return None
    try:
        from peft import LoraConfig
    except ImportError:
        raise ConfigError("model.lora_rank > 0 needs peft: pip install -e '.[trl]' (or pip "
                          "install peft), or set model.lora_rank=0") from None
    return LoraConfig(r=m.lora_rank, lora_alpha=m.lora_alpha or 2 * m.lora_rank,
                      lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")


def save_final(trainer, path: Path, settings) -> None:
    """The trained model as a plain Hugging Face folder (LoRA adapters merged into the
    weights), loadable by the evaluation and by another training run, with the rollout
    settings it was trained with (the evaluation starts from them)."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    if hasattr(model, "merge_and_unload"):  # a peft model
        import copy

        copy.deepcopy(model).merge_and_unload().save_pretrained(str(path))
        trainer.processing_class.save_pretrained(str(path))
    else:
        trainer.save_model(str(path))
    rollout_settings.save(settings, path)


@dataclass
class PreparedRun:
    trainer: object
    out: Path
    checkpoint: Path | None
    samples: StepSamples
    rollout: ReSearchRollout


@contextlib.contextmanager
def prepared_run(config: TrainConfig, make_logits_processors: Callable[[], list] | None = None
                 ) -> Iterator[PreparedRun]:
    """Everything :func:`train` needs, built but not started; the service stops on exit.

    ``make_logits_processors`` returns fresh logits processors for each rollout (Hugging
    Face backend only; constrained decoding, or tests that force a search).
    """
    import torch
    from transformers import AutoTokenizer
    from trl import GRPOTrainer

    from research.models.prepare import prepare_model
    from research.rewards import get_reward_fn

    checkpoint = check_resume(config)
    _wandb_env(config)
    out = Path(config.run.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    set_threads(config)
    model_path = str(prepare_model(config.model.path))
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    d = config.data
    dataset = build_dataset(training_questions(d.train, d.train_split, d.train_limit, d.train_type))
    args = grpo_config(config, use_cpu=not torch.cuda.is_available())
    (out / "train_config.yaml").write_text(_yaml(config.to_dict()), encoding="utf-8")
    rollout_settings.save(config.rollout, out)
    samples = StepSamples()
    with retrieval(config, out) as client, _silence_experimental():
        rollout = ReSearchRollout(config, tokenizer, client, samples, make_logits_processors)
        callbacks = [RunRecorder(out, samples, config.run.rollout_samples)]
        if config.run.eval_steps:
            items = training_questions(d.dev, d.dev_split, d.dev_limit, d.dev_type)
            callbacks.append(ValidationCallback(out, config, items, rollout,
                                                get_reward_fn(config.reward.name)))
        trainer = GRPOTrainer(model=model_path, reward_funcs=ReSearchReward(config.reward.name,
                                                                            samples),
                              args=args, train_dataset=dataset, processing_class=tokenizer,
                              rollout_func=rollout, callbacks=callbacks,
                              peft_config=lora_config(config))
        trainer.remove_callback(ProgressCallback)
        trainer.add_callback(ProgressBar())
        for callback in callbacks[1:]:
            callback.attach(trainer)
        yield PreparedRun(trainer, out, checkpoint, samples, rollout)


@contextlib.contextmanager
def _silence_experimental():
    """TRL warns that ``rollout_func`` is experimental; the pin makes that known."""
    old = os.environ.get("TRL_EXPERIMENTAL_SILENCE")
    os.environ["TRL_EXPERIMENTAL_SILENCE"] = "1"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TRL_EXPERIMENTAL_SILENCE", None)
        else:
            os.environ["TRL_EXPERIMENTAL_SILENCE"] = old


def _yaml(tree: dict) -> str:
    import yaml

    return yaml.safe_dump(tree, sort_keys=False)


def train(config: TrainConfig, make_logits_processors: Callable[[], list] | None = None) -> Path:
    """Run GRPO with TRL as ``config`` says; returns the run directory.

    With ``run.resume`` the newest checkpoint of ``run.output_dir`` is loaded (weights,
    optimiser, scheduler, RNG, step) and the JSONL logs continue from its step. A checkpoint
    already at ``run.max_steps`` is not trained further (the trainer would take one more
    step): its weights become the final model.
    """
    with _quiet_trl_internals(), prepared_run(config, make_logits_processors) as run:
        step = None
        if run.checkpoint is not None:
            step = json.loads((run.checkpoint / "trainer_state.json").read_text())["global_step"]
            for name in ("metrics.jsonl", "rollouts.jsonl", "validation.jsonl",
                         "validation_items.jsonl"):
                truncate_jsonl(run.out / name, step)
            logger.info("resuming from %s (step %d)", run.checkpoint, step)
        if step is not None and 0 < config.run.max_steps <= step:
            run.trainer._load_from_checkpoint(str(run.checkpoint))
        else:
            run.trainer.train(resume_from_checkpoint=str(run.checkpoint) if run.checkpoint
                              else None)
        save_final(run.trainer, run.out / "final", config.rollout)
    plot_validation(run.out)
    plot_training(run.out)
    return run.out
