"""The rollout side of the TRL engine: TRL's ``rollout_func`` and what it hands TRL.

:class:`ReSearchRollout` receives the raw questions (each repeated ``num_generations`` times),
encodes them with the project's template and rolls them out with
:func:`research.rollout.engine.run_rollouts` against the retrieval service, on the trainer's
current weights (Hugging Face backend; TRL's colocated vLLM engine on GPUs).
:func:`to_trl_output` turns the trajectories into ``prompt_ids``, ``completion_ids``,
``logprobs`` and ``env_mask`` (the rollout's loss mask: 0 on inserted result tokens, which TRL
multiplies into every loss term), plus each trajectory's summary record
(:meth:`~research.rollout.engine.Trajectory.summary`: searches, failures, ...) that the reward
reads. :class:`StepSamples` keeps the step's trajectories and their
:func:`rollout_monitors` for the callbacks of :mod:`research.trainers.trl_callbacks`.

Importing this module needs neither torch nor TRL.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from research.errors import ConfigError
from research.rollout.settings import RolloutSettings

logger = logging.getLogger(__name__)

def to_trl_output(trajectories) -> dict[str, list]:
    """TRL's ``rollout_func`` result from trajectories (one per prompt, in order).

    ``env_mask[i][t]`` is the rollout's loss mask: 1 on sampled tokens, 0 on inserted result
    tokens (unless ``mask_results`` was off); ``logprobs`` are 0.0 on inserted tokens.
    """
    out: dict[str, list] = {k: [] for k in ("prompt_ids", "completion_ids", "logprobs",
                                            "env_mask")}
    for t in trajectories:
        out["prompt_ids"].append(list(t.prompt_ids))
        out["completion_ids"].append(list(t.response_ids))
        out["logprobs"].append(list(t.logprobs))
        out["env_mask"].append(list(t.loss_mask))
        for key, value in t.summary().items():
            out.setdefault(key, []).append(value)
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
        "rollout/search_failures": sum(t.search_failures for t in trajectories) / n,
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


def shows_progress(trainer) -> bool:
    """Whether this process draws progress lines (the main one, unless tqdm is off)."""
    return not trainer.args.disable_tqdm and trainer.is_world_process_zero()


class ReSearchRollout:
    """TRL's ``rollout_func``: the project's search-interleaved rollout on the current policy."""

    def __init__(self, settings: RolloutSettings, tokenizer, searcher, samples: StepSamples,
                 make_logits_processors: Callable[[], list] | None = None,
                 max_batch: int | None = None, int8: bool = False):
        """``settings``: the run's ``rollout:`` section; ``max_batch``: most sequences the
        Hugging Face backend decodes at once (``model.max_batch``); ``int8``: sample from an
        int8 copy of the policy (``grpo.rollout_int8``, CPU)."""
        self.settings = settings
        self.max_batch = max_batch
        self.int8 = int8
        self.tokenizer = tokenizer
        self.searcher = searcher
        self.samples = samples
        self.make_logits_processors = make_logits_processors or list
        self._prompt_cache: dict[str, list[int]] = {}
        self._copy = None  # the bf16 / int8 generation copy (CPU), built on first use

    def encode(self, question: str) -> list[int]:
        if question not in self._prompt_cache:
            self._prompt_cache[question] = self.settings.encode_prompt(self.tokenizer, question)
        return self._prompt_cache[question]

    def __call__(self, prompts: list, trainer) -> dict[str, list]:
        from research.rollout.engine import run_rollouts
        from research.rollout.progress import RolloutProgress

        if any(not isinstance(p, str) for p in prompts):
            raise ConfigError("the prompt column must hold raw questions (strings); the "
                              "template is applied by the rollout (rollout.template)")
        ids = [self.encode(q) for q in prompts]  # [B x G] prompts, each repeated G times
        start = time.perf_counter()
        with self.generator(trainer) as generator, RolloutProgress(
                len(ids), desc="rollout", enabled=shows_progress(trainer)) as progress:
            trajectories = run_rollouts(ids, generator, self.searcher, self.tokenizer,
                                        self.settings, progress=progress)
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
        the trainer's mixed precision (``grpo.bf16``: bf16 matmuls on fp32 weights; on CPU a
        bf16 copy of the current weights, :mod:`research.trainers.generation_copy`), or on an
        int8 copy of them (``grpo.rollout_int8``)."""
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
        ) as model, torch.no_grad():
            on_cpu = next(model.parameters()).device.type == "cpu"
            if self.int8 and not on_cpu:
                raise ConfigError("grpo.rollout_int8 quantises the rollout's copy with torch's "
                                  "CPU int8 kernels: on a GPU set it to false")
            if self.int8 or (trainer.args.bf16 and on_cpu):
                # int8: torch's dynamic int8 kernels; bf16: bf16 matmuls as under autocast,
                # without casting every weight every step
                if self._copy is None:
                    from research.trainers.generation_copy import GenerationCopy

                    self._copy = GenerationCopy("int8" if self.int8 else "bfloat16")
                source, precision = self._copy.refresh(model), contextlib.nullcontext()
            else:
                source, precision = model, trainer.accelerator.autocast()
            was_training = model.training
            model.eval()
            try:
                with precision:
                    yield HFGenerator(source, self.tokenizer, max_batch=self.max_batch,
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
