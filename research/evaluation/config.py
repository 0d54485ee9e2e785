"""The evaluation config: one YAML tree (the default ``research/configs/eval_config.yaml``,
shipped with the package) with ``key=value`` overrides, checked early with messages that say
the fix. Nothing here imports torch.

::

    data:      dataset_name, split, data_dir, sample_num, random_sample, seed, type
    generator: backend (local | openai), model, base_url, served_model_name, ...
    retrieval: search_url (or a service started on `corpus`), corpus, topk, timeout, retries
    method:    name, answer_tokens, chat, iter_retgen_*, flare_*, ircot_*
    rollout:   the ReSearch method's settings (research.rollout.settings.RolloutSettings, the
               training config's section): a trained model folder's recorded ones, then the
               keys given here; always decoded greedily
    run:       save_dir, save_note, batch_size, overwrite
    judge:     base_url, model, api_key_env (optional LLM-as-judge scoring)
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from research import configtree
from research.errors import ConfigError
from research.paths import package_path
from research.rollout import settings as rollout_settings
from research.rollout.settings import RolloutSettings
from research.serving.launch import RetrievalSection

_f = configtree.option


@dataclass
class DataSection:
    dataset_name: str = _f("squad-open-mini", "dataset: DATA_DIR/NAME/SPLIT.jsonl (FlashRAG's "
                           "layout), an embedded set (squad-open-mini, factbook-hop) or an "
                           "evaluation set fetched on demand (strategyqa, nq, triviaqa)")
    split: str = _f("dev", "split (the file name without .jsonl)")
    data_dir: str | None = _f(None, "FlashRAG data folder holding NAME/SPLIT.jsonl (null: "
                              "embedded and fetched sets only)")
    sample_num: int | None = _f(None, "evaluate only N questions (null: all)")
    random_sample: bool = _f(False, "draw the N questions at random (seeded) instead of the "
                             "first N")
    seed: int = _f(2024, "seed of the random sample")
    type: str | None = _f(None, "keep only the questions whose metadata.type is this (factbook "
                          "sets: one-hop, bridge, comparison; null: all); the run folder and "
                          "the table name the dataset NAME-TYPE")


@dataclass
class GeneratorSection:
    backend: str = _f("local", "local: a Hugging Face model in this process; openai: an "
                      "OpenAI-compatible server (vLLM, SGLang, research.rollout.server)",
                      ("local", "openai"))
    model: str = _f("qwen2.5-0.5b", "local: a packaged model name or a model folder; openai: "
                    "the tokenizer's folder (prompts travel as token ids)")
    base_url: str | None = _f(None, "openai: the server root, e.g. http://127.0.0.1:8000")
    served_model_name: str | None = _f(None, "openai: the model name the server expects "
                                       "(null: the first one /v1/models lists)")
    api_key_env: str | None = _f(None, "openai: the environment variable holding an API key "
                                 "(never a flag)")
    dtype: str = _f("bfloat16", "local: weights' dtype", ("float32", "bfloat16", "auto"))
    threads: int | None = _f(None, "local: torch CPU threads (null: every core)")
    timeout: float = _f(600.0, "openai: seconds per request")
    max_connections: int = _f(16, "openai: most requests in flight at once")


@dataclass
class MethodSection:
    name: str = _f("research", "research, direct, naive-rag, iter-retgen, flare, ircot (the "
                   "original's names zero-shot, naive, iterretgen are aliases), or a scripted "
                   "policy with no model: one-search-rule, oracle-chain")
    top_k: int = _f(5, "documents per retrieval of naive-rag, iter-retgen, flare and ircot "
                    "(ReSearch's are rollout.top_k)")
    answer_tokens: int = _f(32, "answer budget of direct, naive-rag and iter-retgen (FlashRAG's "
                            "standard)")
    chat: str = _f("auto", "baselines' chat template: auto (when the tokenizer has one), on, "
                   "off", ("auto", "on", "off"))
    iter_retgen_iterations: int = _f(3, "Iter-RetGen rounds")
    flare_threshold: float = _f(0.2, "FLARE: retrieve when a token's probability is <= this")
    flare_look_ahead: int = _f(64, "FLARE: tokens per look-ahead")
    flare_max_tokens: int = _f(256, "FLARE: answer tokens before it stops")
    flare_max_iterations: int = _f(5, "FLARE: rounds before it stops")
    ircot_max_iterations: int = _f(5, "IRCoT: thoughts before it stops")
    ircot_thought_tokens: int = _f(64, "IRCoT: budget of one thought")


@dataclass
class RunSection:
    save_dir: str = _f("runs/eval", "where run folders go: SAVE_DIR/DATASET_SPLIT_METHOD[_NOTE]")
    save_note: str | None = _f(None, "suffix of the run folder's name")
    batch_size: int = _f(16, "questions in flight together (one generate call and one search "
                         "request per step for all of them)")
    overwrite: bool = _f(False, "start again instead of resuming an existing run folder")


@dataclass
class JudgeSection:
    base_url: str | None = _f(None, "LLM-as-judge: an OpenAI-compatible server root (null: "
                              "no judge)")
    model: str | None = _f(None, "the judge's model name")
    api_key_env: str | None = _f(None, "environment variable holding the judge's API key")
    max_tokens: int = _f(8, "the judge's answer budget")


@dataclass
class EvalConfig:
    data: DataSection = field(default_factory=DataSection)
    generator: GeneratorSection = field(default_factory=GeneratorSection)
    retrieval: RetrievalSection = field(default_factory=RetrievalSection)
    method: MethodSection = field(default_factory=MethodSection)
    rollout: RolloutSettings = field(default_factory=RolloutSettings)
    run: RunSection = field(default_factory=RunSection)
    judge: JudgeSection = field(default_factory=JudgeSection)
    # the rollout keys the config file or the overrides gave (set by load_config); the others
    # come from the model folder's recorded settings when it has them
    given_rollout: ClassVar[frozenset[str]] = frozenset()

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def resolved(self) -> EvalConfig:
        """This config with the ReSearch rollout settings it runs with: those a training run
        recorded in the model folder (``generator.model``, when it is a folder that has
        them), then every ``rollout.*`` key given explicitly."""
        recorded = rollout_settings.recorded(self.generator.model) if Path(
            self.generator.model).is_dir() else {}
        given = {k: getattr(self.rollout, k) for k in self.given_rollout}
        out = dataclasses.replace(self, rollout=rollout_settings.from_dict({**recorded, **given}))
        out.given_rollout = self.given_rollout
        return out


def default_config_path() -> Path:
    """The default config, shipped with the package (``research/configs/eval_config.yaml``)."""
    return package_path("configs", "eval_config.yaml")


def validate(config: EvalConfig) -> None:
    from research.evaluation.methods import resolve

    try:
        resolve(config.method.name)
    except ConfigError as e:
        raise ConfigError(f"method.name: {e}") from None
    g = config.generator
    if g.backend == "openai" and not g.base_url:
        raise ConfigError("generator.backend=openai needs generator.base_url (the server root, "
                          "e.g. http://127.0.0.1:8000), or use generator.backend=local")
    if g.api_key_env and g.api_key_env not in os.environ:
        raise ConfigError(f"generator.api_key_env names {g.api_key_env}, which is not set in the "
                          "environment")
    for key in ("method.top_k", "run.batch_size", "method.answer_tokens",
                "method.iter_retgen_iterations", "method.flare_look_ahead",
                "method.flare_max_tokens", "method.flare_max_iterations",
                "method.ircot_max_iterations", "method.ircot_thought_tokens",
                "generator.max_connections"):
        section, name = key.split(".")
        if getattr(getattr(config, section), name) < 1:
            raise ConfigError(f"{key} must be >= 1")
    if config.data.sample_num is not None and config.data.sample_num < 1:
        raise ConfigError("data.sample_num must be >= 1 or null (all questions)")
    if not 0 < config.method.flare_threshold < 1:
        raise ConfigError("method.flare_threshold is a probability in (0, 1)")
    if bool(config.judge.base_url) != bool(config.judge.model):
        raise ConfigError("the judge needs both judge.base_url and judge.model (or neither)")


NAMED = {"default": "eval_config.yaml", "cpu": "eval_cpu.yaml"}  # research/configs/
RENAMED = {"retrieval.topk": "method.top_k"}  # older key: its key now


def load_config(path: str | os.PathLike | None = None,
                overrides: list[str] | tuple[str, ...] = ()) -> EvalConfig:
    """The config of ``path`` (a file, or a named one: ``default``, ``cpu``; default:
    :func:`default_config_path`) with overrides."""
    tree = configtree.load_tree(
        EvalConfig, path, overrides, "an evaluation config", default=default_config_path(),
        named={name: package_path("configs", file) for name, file in NAMED.items()},
        renamed=RENAMED)
    config = configtree.from_dict(EvalConfig, tree, "an evaluation config")
    config.given_rollout = frozenset(tree.get("rollout") or {})
    validate(config)
    return config


def describe() -> str:
    """Every key with its default and help (``research eval --keys``)."""
    return configtree.describe(EvalConfig)
