"""The rollout settings: one frozen object, the same everywhere a ReSearch rollout runs.

:class:`RolloutSettings` holds the prompt (template, worked example, wording, closed book),
the budgets (response tokens, searches, documents, result tokens), the sampling and the stops.
It is the ``rollout:`` section of the training config and of the evaluation config (one YAML
shape, one set of defaults, one validation), and it travels whole to every consumer: the TRL
engine's rollout, validation during training, the verl agent loop (through its YAML), the
evaluation's ReSearch method, the FlashRAG adapter and ``research rollout``.

The defaults are the original's protocol (PROTOCOL.md section 4): the base template without
a worked example, 8,192 response tokens, 5 documents, no turn cap, generation on to EOS. The
CPU configs set the small-model options (an example, a turn cap, a stop at ``</answer>``).

A training run records its settings in the run directory and in its final model folder
(:data:`SETTINGS_FILE`); evaluating that folder starts from them (:func:`recorded`), so a
checkpoint is evaluated the way it was trained unless a key is given explicitly.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from research import configtree, protocol
from research.configtree import ConfigError

_f = configtree.option

SETTINGS_FILE = "research_rollout.yaml"
EXAMPLE_NAMES = tuple(protocol.EXAMPLES)


@dataclass(frozen=True)
class RolloutSettings:
    """Prompt, budgets, sampling and stops of a ReSearch rollout (the ``rollout:`` section)."""

    # the prompt
    template: str = _f("base", "prompt template: base (plain text, for base models) or chat "
                       "(the tokenizer's chat template)", ("base", "chat"))
    example: str | None = _f(None, "a worked example in the prompt (small models need one to "
                             "search): two-search (two chained searches), one-search (one "
                             "search, a short fact boxed), bridge (two chained searches, the "
                             "second naming the entity the first found, a number boxed) or "
                             "null (none, as the original); the chat template gets it as a "
                             "previous exchange",
                             (*EXAMPLE_NAMES, None), aliases={True: EXAMPLE_NAMES[0],
                                                              False: None})
    clean: bool = _f(False, "the cleaned base prompt instead of the original's wording")
    search: bool = _f(True, "false: the closed-book control (the prompt without the search "
                      "tool, no search turns, no retrieval service)")
    # budgets
    max_response_tokens: int = _f(8192, "response budget, inserted results included")
    max_turns: int | None = _f(None, "most searches per response (null: no cap, as the "
                               "original)")
    top_k: int = _f(5, "documents per search")
    max_result_tokens: int | None = _f(None, "cap on one inserted result's document tokens "
                                       "(null: none)")
    # sampling (evaluation and validation always decode greedily)
    temperature: float = _f(1.0, "sampling temperature of training rollouts (TRL scores "
                            "log-probs at it too); 0 is greedy")
    top_p: float = _f(1.0, "nucleus sampling")
    seed: int | None = _f(None, "sampling seed of the backend (null: the process's RNG)")
    # stops and what the rollout does at its limits
    stop_at_answer: bool = _f(False, "end the response at its first </answer> (Search-R1; "
                              "false: generate on to EOS, as the original)")
    on_max_turns: str = _f("answer", "a search asked for beyond max_turns: answer (a notice "
                           "that no more searches are possible, once, then the model goes on "
                           "to its answer) or end (the trajectory ends there, no answer)",
                           ("answer", "end"))
    mask_results: bool = _f(True, "inserted results out of the loss (false: the first "
                            "version's bug)")

    def __post_init__(self):
        for key in ("max_response_tokens", "top_k"):
            if getattr(self, key) < 1:
                raise ConfigError(f"rollout.{key} must be >= 1")
        if self.max_turns is not None and self.max_turns < 0:
            raise ConfigError("rollout.max_turns must be >= 0 or null (no cap)")
        if self.max_result_tokens is not None and self.max_result_tokens < 1:
            raise ConfigError("rollout.max_result_tokens must be >= 1 or null (no cap)")
        if self.temperature < 0:
            raise ConfigError("rollout.temperature must be >= 0 (0: greedy)")
        if not 0 < self.top_p <= 1:
            raise ConfigError("rollout.top_p must be in (0, 1]")
        choices = {f.name: f.metadata["choices"] for f in dataclasses.fields(self)
                   if f.metadata.get("choices")}
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                names = ", ".join("null" if c is None else str(c) for c in allowed)
                raise ConfigError(f"rollout.{key} must be one of {names}; got "
                                  f"{getattr(self, key)!r}")

    # --- what the consumers read --------------------------------------------------------

    @property
    def turn_cap(self) -> int | None:
        """The searches allowed: none in the closed-book control, else ``max_turns``."""
        return self.max_turns if self.search else 0

    @property
    def stops(self) -> tuple[str, ...]:
        """The stop strings of every turn."""
        return (protocol.SEARCH_END, protocol.ANSWER_END) if self.stop_at_answer else (
            protocol.SEARCH_END,)

    def greedy(self) -> RolloutSettings:
        """The same settings decoding greedily (validation and evaluation)."""
        return dataclasses.replace(self, temperature=0.0)

    def encode_prompt(self, tokenizer, question: str) -> list[int]:
        """The prompt token ids of ``question`` under these settings."""
        from research.rollout.prompts import encode_prompt

        return encode_prompt(tokenizer, question, self.template, clean=self.clean,
                             example=self.example, search=self.search)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def replace(self, **changes) -> RolloutSettings:
        return dataclasses.replace(self, **changes)


def from_dict(values: dict | None, where: str = "rollout") -> RolloutSettings:
    """Settings from a (partial) ``rollout:`` mapping, checked like every config section."""
    return configtree.build_section(where, RolloutSettings, values or {})


def save(settings: RolloutSettings, folder: str | os.PathLike) -> Path:
    """Record ``settings`` in ``folder`` (a run directory or a model folder)."""
    path = Path(folder) / SETTINGS_FILE
    path.write_text("# the rollout settings this model was trained with (research train)\n"
                    + yaml.safe_dump(settings.to_dict(), sort_keys=False), encoding="utf-8")
    return path


def recorded(folder: str | os.PathLike) -> dict:
    """The settings a training run recorded in ``folder`` (a model folder), or ``{}``."""
    path = Path(folder) / SETTINGS_FILE
    if not path.is_file():
        return {}
    tree = configtree.read_yaml(path, "a rollout settings file")
    known = {f.name for f in dataclasses.fields(RolloutSettings)}
    return {k: v for k, v in tree.items() if k in known}
