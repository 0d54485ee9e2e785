"""The reward and recording side of the TRL engine.

- :class:`ReSearchReward`, a TRL reward function over the response text (TRL decodes the
  completion ids: the model's tokens and the inserted results, never the prompt) and the
  dataset's ``golden_answers`` column, with :func:`research.rewards.get_reward_fn`; it adds
  each sample's score and reason to the step's :class:`~research.trainers.trl_rollout.StepSamples`.
- ``TrainerCallback`` s writing the run directory: :class:`RunRecorder` (``metrics.jsonl``,
  ``rollouts.jsonl``), :class:`ValidationCallback` (``validation.jsonl``,
  ``validation_items.jsonl``), and :class:`ProgressBar` (the console's one bar);
  :func:`truncate_jsonl` cuts those files back to a resumed checkpoint's step.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from pathlib import Path

from transformers import TrainerCallback

from research.behaviour import behaviour, question_facts
from research.trainers.config import TrainConfig
from research.trainers.plot import plot_training, plot_validation
from research.trainers.trl_rollout import StepSamples

logger = logging.getLogger(__name__)


class ReSearchReward:
    """A TRL reward function: the project's reward on the response text and golden answers.
    With the dataset's ``question_type`` and ``bridge_entity`` columns it adds the step's
    :func:`research.behaviour.behaviour` monitors (searches and exact share by question type,
    the bridge entity in the second query, repeated queries) to the step's samples.

    >>> reward = ReSearchReward("v1", StepSamples())
    >>> ok = "<think> t </think> <answer> \\\\boxed{Paris} </answer>"
    >>> reward(prompts=["q"], completions=[ok], golden_answers=[["paris"]],
    ...        complete=[True], searches=[0])
    [1.0]
    """

    def __init__(self, name: str, samples: StepSamples):
        from research.rewards import get_reward_fn

        self.fn = get_reward_fn(name)
        self.samples = samples
        self.__name__ = f"reward_{name}"  # TRL names the reward's metrics after it

    def __call__(self, prompts, completions, golden_answers, complete, searches=None,
                 log_metric=None, question_type=None, bridge_entity=None, queries=None,
                 **kwargs) -> list[float]:
        texts = [c if isinstance(c, str) else c[-1]["content"] for c in completions]
        results = [self.fn(text, list(golds), complete=bool(ended))
                   for text, golds, ended in zip(texts, golden_answers, complete,
                                                 strict=True)]
        reasons = Counter(r.reason for r in results)
        self.samples.reasons.update(reasons)
        for record, r in zip(self.samples.records, results, strict=False):
            record.update(reward=r.score, reason=r.reason)
        if any(question_type or ()) and queries is not None:  # the rollout's summary fields
            entities = bridge_entity or [""] * len(results)
            self.samples.monitors.update(behaviour(
                {"type": kind or None, "bridge_entity": entity or None, "correct":
                 r.correct_and_valid, "queries": list(asked)}
                for kind, entity, r, asked in zip(question_type, entities, results, queries,
                                                  strict=True)))
        if log_metric is not None:
            log_metric("accuracy", sum(r.correct_and_valid for r in results) / len(results))
            # passes every gate of the reward (format, proper end, a box): the share GRPO
            # can tell apart from invalid samples at all
            log_metric("format_valid", sum(r.valid for r in results) / len(results))
            if searches is not None:
                log_metric("searches_per_answer", sum(searches) / len(searches))
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
        """Count the step; a step that is logged is drawn once, with its numbers, by
        :meth:`on_log` (drawing here too would print the bar twice per step in a log)."""
        if self.bar is None:
            return
        self.bar.n = state.global_step
        if state.global_step % max(1, args.logging_steps):
            self.bar.refresh()

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
        from research.trainers.trl_rollout import shows_progress

        with self.rollout.generator(self.trainer) as generator:
            metrics, records = evaluate(self.items, generator, self.rollout.tokenizer,
                                        self.rollout.searcher, self.rollout.settings,
                                        batch_size=max(1, len(self.items)),
                                        progress=shows_progress(self.trainer))
        results = [self.reward_fn(rec["response"], rec["golden_answers"],
                                  complete=rec["complete"]) for rec in records]
        n = len(results)
        record = {"step": state.global_step, "questions": n,
                  "reward": sum(x.score for x in results) / n,
                  "accuracy": sum(x.correct_and_valid for x in results) / n,
                  "searches_per_answer": metrics["searches"],
                  "response_length": metrics["response_tokens"],
                  **{k: metrics[k] for k in ("em", "acc", "f1")}}
        facts = [question_facts(item) for item in self.items]
        if any(f["type"] for f in facts):  # the behaviour monitors need typed questions
            record.update(behaviour({**f, "queries": rec["queries"], "correct": rec["em"] == 1.0}
                                    for f, rec in zip(facts, records, strict=True)))
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
