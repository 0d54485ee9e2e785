"""What both training engines set up the same way before a run: their command-line front
door, its questions, its wandb environment and its LoRA scaling. (No TRL, verl or torch
import here: the verl engine's environment lacks TRL, the TRL engine's lacks verl.)"""

from __future__ import annotations

import os
from pathlib import Path

import research
from research.errors import ConfigError

CHECKOUT = Path(research.__file__).resolve().parent.parent  # the folder holding the package


def training_questions(source: str, split: str, limit: int | None, kind: str | None = None,
                       seed: int | None = None) -> list[dict]:
    """The questions of ``data.train`` / ``data.dev``
    (:func:`research.data.questions.load_questions`), or a ConfigError naming the keys to
    check when none are left."""
    from research.data.questions import load_questions

    items = load_questions(source, split, limit, kind, seed)
    if not items:
        raise ConfigError(f"no questions in {source} ({split}"
                          f"{f', metadata.type {kind}' if kind else ''}): check data.train / "
                          "data.dev and data.train_type / data.dev_type")
    return items


def wandb_env(config, environ=os.environ) -> dict[str, str]:
    """The wandb variables of a run (the driver's, and on verl every Ray worker's; never the
    key, which stays in the environment): ``WANDB_MODE`` (``disabled`` for ``run.wandb=off``)
    and ``WANDB_DIR`` (the run's folder). Refuses ``online`` without ``WANDB_API_KEY``."""
    mode = config.run.wandb
    if mode == "online" and not environ.get("WANDB_API_KEY"):
        raise ConfigError("run.wandb=online needs WANDB_API_KEY in the environment of the "
                          "launch (and of every `ray start` on a running cluster); never a "
                          "flag. Or set run.wandb=offline")
    return {"WANDB_MODE": "disabled" if mode == "off" else mode,
            "WANDB_DIR": str(Path(config.run.output_dir).resolve())}


def lora_alpha(model) -> int:
    """``model.lora_alpha``, or twice ``model.lora_rank`` when it is null."""
    return model.lora_alpha or 2 * model.lora_rank


def add_front_door(parser, engine: str) -> None:
    """The arguments both training entry points take (``research train`` for TRL,
    ``training/run.sh --engine verl``): overrides, ``--config`` with the engine's default,
    ``--resume`` (read as ``run.resume=true``); :func:`~research.trainers.config.load_run_config`
    reads them."""
    from research.trainers.config import DEFAULT_CONFIGS

    parser.add_argument("overrides", nargs="*", metavar="section.key=value",
                        help="config overrides, e.g. grpo.num_generations=4 run.max_steps=10")
    parser.add_argument("--config", default=None,
                        help=f"YAML file or named config (default {DEFAULT_CONFIGS[engine]}; "
                             "`research train --keys` lists every key)")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the last checkpoint in run.output_dir "
                             "(run.resume=true)")
