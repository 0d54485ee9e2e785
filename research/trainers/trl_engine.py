"""The one-machine training engine: TRL's ``GRPOTrainer`` with the project's rollout and rewards.

TRL owns the update (settings from :mod:`research.trainers.trl_settings`), checkpoints and
logging; the engine is three modules:

- :mod:`research.trainers.trl_rollout`: :class:`~research.trainers.trl_rollout.ReSearchRollout`,
  the ``rollout_func`` (the project's search-interleaved rollout on the trainer's current
  weights, handed to TRL with its loss mask as ``env_mask``).
- :mod:`research.trainers.trl_callbacks`: :class:`~research.trainers.trl_callbacks.ReSearchReward`
  (the reward function) and the ``TrainerCallback`` s writing ``metrics.jsonl``,
  ``rollouts.jsonl`` and ``validation.jsonl`` in the run directory.
- this module, the run: TRL's dataset (:func:`build_dataset`), ``trl.GRPOConfig``
  (:func:`grpo_config`), checkpoints and resuming (:func:`check_resume`), LoRA, the final
  model (:func:`save_final`), the figures and the report (``report.html``,
  :mod:`research.report`); what both engines set up alike (the questions, wandb, the LoRA
  scaling) is :mod:`research.trainers.run_setup`, the run's search client
  :func:`research.serving.launch.run_searcher`.

:func:`train` runs a :class:`~research.trainers.config.TrainConfig` and returns the run
directory; :func:`prepared_run` builds everything without training (tests use it).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from transformers.trainer_callback import ProgressCallback

from research.report import write_report
from research.rollout import settings as rollout_settings
from research.trainers.config import ConfigError, TrainConfig, world_size
from research.trainers.plot import plot_training, plot_validation
from research.trainers.run_setup import lora_alpha, training_questions, wandb_env
from research.trainers.trl_callbacks import (
    ProgressBar,
    ReSearchReward,
    RunRecorder,
    ValidationCallback,
    truncate_jsonl,
)
from research.trainers.trl_rollout import ReSearchRollout, StepSamples

logger = logging.getLogger(__name__)


# --- data -----------------------------------------------------------------------------------


def build_dataset(items: Sequence[dict]):
    """A ``datasets.Dataset`` with TRL's ``prompt`` column (the raw question, no template),
    ``golden_answers`` (a list per row, handed to the reward), ``id``, and the question's
    ``question_type`` and ``bridge_entity`` (:func:`research.behaviour.question_facts`; ""
    when the set has none), which the reward hands on to the behaviour monitors."""
    from datasets import Dataset

    from research.behaviour import question_facts

    return Dataset.from_list([{"prompt": it["question"], "golden_answers":
                               [str(a) for a in it["golden_answers"]], "id": str(it.get("id")),
                               "question_type": facts["type"] or "",
                               "bridge_entity": facts["bridge_entity"] or ""}
                              for it in items for facts in [question_facts(it)]])

# --- the run ----------------------------------------------------------------------------------


def set_threads(config: TrainConfig) -> int:
    """torch's CPU threads: ``run.torch_threads`` or every core (the service stays mostly idle
    while the model runs; two busy processes with all threads each slow both down)."""
    import torch

    threads = config.run.torch_threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    return threads


def cpu_bf16(config: TrainConfig) -> bool:
    """``grpo.bf16`` as it runs on this CPU: False, with a warning, where the CPU has no bf16
    instructions (the TRL engine on CPU and the signal probe both compute so)."""
    from research.models.loading import cpu_bf16_or_fp32

    return cpu_bf16_or_fp32(config.grpo.bf16, "grpo.bf16", "set grpo.bf16=false")


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
        run_name=Path(run.output_dir).name, use_cpu=use_cpu,
        bf16=cpu_bf16(config) if use_cpu else g.bf16,
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


def _wandb_env(config: TrainConfig) -> None:
    if config.run.wandb == "off":
        return
    import importlib.util

    if importlib.util.find_spec("wandb") is None:
        raise ConfigError(f"run.wandb={config.run.wandb} needs the wandb package: pip install "
                          "wandb, or set run.wandb=off")
    os.environ.update(wandb_env(config))
    os.environ.setdefault("WANDB_PROJECT", config.run.wandb_project)


def lora_config(config: TrainConfig, model_path: str | None = None):
    """peft's ``LoraConfig`` for ``model.lora_rank > 0`` (every linear layer; of the top
    ``model.lora_layers`` transformer layers of the model at ``model_path`` when set), else
    None."""
    m = config.model
    if not m.lora_rank:
        return None
    try:
        from peft import LoraConfig
    except ImportError:
        raise ConfigError("model.lora_rank > 0 needs peft: pip install -e '.[trl]' (or pip "
                          "install peft), or set model.lora_rank=0") from None
    targets, layers = "all-linear", None
    if m.lora_layers is not None:
        targets, layers = _top_layer_targets(model_path, m.lora_layers)
    return LoraConfig(r=m.lora_rank, lora_alpha=lora_alpha(m),
                      lora_dropout=0.0, target_modules=targets, task_type="CAUSAL_LM",
                      layers_to_transform=layers)


def _top_layer_targets(model_path: str, n: int) -> tuple[list[str], list[int]]:
    """The linear layers' names (what "all-linear" adapts) and the indices of the top ``n``
    transformer layers of the model at ``model_path`` (built on the meta device: no
    weights are read)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    model_config = AutoConfig.from_pretrained(model_path)
    total = model_config.num_hidden_layers
    if n > total:
        raise ConfigError(f"model.lora_layers={n} but the model has {total} layers: set at "
                          f"most {total}, or null for every layer")
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(model_config)
    names = sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                    if isinstance(module, torch.nn.Linear) and ".layers." in name})
    return names, list(range(total - n, total))


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
    from research.trainers.trl_head import install_compact_head

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
    from research.serving.launch import run_searcher

    # None for the closed-book control (rollout.search: false), which never searches
    with run_searcher(config.retrieval, config.data.train, out,
                      config.rollout.search) as client, _silence_experimental():
        rollout = ReSearchRollout(config.rollout, tokenizer, client, samples,
                                  make_logits_processors, config.model.max_batch,
                                  int8=config.grpo.rollout_int8)
        callbacks = [RunRecorder(out, samples, config.run.rollout_samples)]
        if config.run.eval_steps:
            items = training_questions(d.dev, d.dev_split, d.dev_limit, d.dev_type, d.dev_seed)
            callbacks.append(ValidationCallback(out, config, items, rollout,
                                                get_reward_fn(config.reward.name)))
        trainer = GRPOTrainer(model=model_path, reward_funcs=ReSearchReward(config.reward.name,
                                                                            samples),
                              args=args, train_dataset=dataset, processing_class=tokenizer,
                              rollout_func=rollout, callbacks=callbacks,
                              peft_config=lora_config(config, model_path))
        if config.grpo.rollout_int8:  # the rollout's log-probs are the int8 copy's
            from research.trainers.trl_correction import install_rollout_correction

            install_rollout_correction(trainer, config.grpo.rollout_is_cap)
        policy = trainer.model
        if config.grpo.share_prompt:
            from research.trainers.trl_prefix import install_shared_prompts

            install_shared_prompts(trainer)
        install_compact_head(policy.get_base_model() if hasattr(policy, "get_base_model")
                             else policy, trainer.temperature)
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
    logger.info("report: %s", write_report(run.out, tokenizer=run.trainer.processing_class))
    return run.out
