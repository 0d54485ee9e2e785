"""The verl engine's launcher: the project's training config -> verl's Hydra overrides, the
agent-loop file, data verl can read; then ``python -m verl.trainer.main_ppo``.

    python -m research.trainers.verl_launch [--config original] [section.key=value ...]
                                            [--resume] [--dry-run]

(``bash training/run.sh --engine verl ...`` runs this.) The run directory (``run.output_dir``)
receives ``agent_loops.yaml`` (the ReSearch agent loop with the search settings),
``verl_overrides.txt`` (every override, one per line) and, when ``data.train`` / ``data.dev``
are not parquet rows already, ``train.parquet`` / ``dev.parquet`` in the project's row format.

Mapping (PROTOCOL.md section 6 -> verl 0.9.1 keys): GRPO advantages normalised by the group
std (``algorithm.adv_estimator=grpo``), one update per batch (``ppo_mini_batch_size`` = the
batch), k3 KL to the reference in the loss (``use_kl_loss``, ``low_var_kl``), symmetric clip
(``clip_ratio_low/high``; verl's dual clip ``clip_ratio_c`` stays at its 3.0), token-mean
loss aggregation for ``dapo`` / ``bnpo`` and sequence-mean for ``grpo``, rewards from
:mod:`research.trainers.verl_reward`, rollouts by :class:`research.trainers.verl_agent.
ReSearchAgentLoop` (one per sample, results masked), validation greedy every
``run.eval_steps``, checkpoints every ``run.save_steps`` in ``run.output_dir``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import yaml

from research.errors import MissingDependency, cli_command
from research.trainers.config import ConfigError, TrainConfig, load_config

AGENT_NAME = "research_agent"
LOSS_AGG = {"dapo": "token-mean", "bnpo": "token-mean", "grpo": "seq-mean-token-mean"}


def _value(v) -> str:
    """A Hydra override value."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, list | tuple):
        return "[" + ",".join(_value(x) for x in v) + "]"
    return str(v)


def agent_loop_entries(config: TrainConfig, search_url: str) -> list[dict]:
    """The agent-loop YAML verl reads (``rollout.agent.agent_loop_config_path``)."""
    r, rc = config.rollout, config.retrieval
    if not r.search:
        raise ConfigError("rollout.search=false (the closed-book control) runs on the TRL "
                          "engine only")
    return [{"name": AGENT_NAME,
             "_target_": "research.trainers.verl_agent.ReSearchAgentLoop",
             "search_url": search_url, "rollout": r.to_dict(),
             "search_timeout": rc.timeout, "search_retries": rc.retries,
             "max_concurrent_searches": config.cluster.max_concurrent_searches}]


def overrides(config: TrainConfig, *, model_path: str, train_files: str, val_files: str | None,
              agent_loops: str, resume: bool = False) -> list[str]:
    """verl's Hydra overrides for ``config`` (the project's settings, then ``cluster.verl``)."""
    g, r, run, c = config.grpo, config.rollout, config.run, config.cluster
    if g.loss_type not in LOSS_AGG:
        raise ConfigError(f"grpo.loss_type={g.loss_type} has no verl equivalent; use "
                          f"{', '.join(LOSS_AGG)}")
    micro = g.per_device_batch
    o = {
        "algorithm.adv_estimator": "grpo",
        "algorithm.norm_adv_by_std_in_grpo": True,
        "algorithm.use_kl_in_reward": False,
        "data.train_files": train_files,
        "data.val_files": val_files or train_files,
        "data.prompt_key": "question",
        "data.train_batch_size": g.prompts_per_step,
        "data.max_prompt_length": c.max_prompt_tokens,
        "data.max_response_length": r.max_response_tokens,
        "data.filter_overlong_prompts": False,  # verl's filter measures chat prompts; the
        # agent loop renders the project's prompt and refuses one over the budget
        "data.seed": run.seed,
        "actor_rollout_ref.model.path": model_path,
        "actor_rollout_ref.model.enable_gradient_checkpointing":
            config.model.gradient_checkpointing,
        "actor_rollout_ref.actor.optim.lr": g.learning_rate,
        "actor_rollout_ref.actor.ppo_mini_batch_size": g.prompts_per_step,
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu": micro,
        "actor_rollout_ref.actor.ppo_epochs": 1,
        "actor_rollout_ref.actor.use_kl_loss": g.beta > 0,
        "actor_rollout_ref.actor.kl_loss_coef": g.beta,
        "actor_rollout_ref.actor.kl_loss_type": "low_var_kl",
        "actor_rollout_ref.actor.entropy_coeff": g.entropy_coef,
        "actor_rollout_ref.actor.clip_ratio": g.clip,
        "actor_rollout_ref.actor.clip_ratio_low": g.clip,
        "actor_rollout_ref.actor.clip_ratio_high": g.clip,
        "actor_rollout_ref.actor.loss_agg_mode": LOSS_AGG[g.loss_type],
        "actor_rollout_ref.rollout.name": c.rollout_engine,
        "actor_rollout_ref.rollout.n": g.num_generations,
        "actor_rollout_ref.rollout.temperature": r.temperature,
        "actor_rollout_ref.rollout.top_p": r.top_p,
        "actor_rollout_ref.rollout.tensor_model_parallel_size": g.vllm_tensor_parallel_size,
        "actor_rollout_ref.rollout.gpu_memory_utilization": g.vllm_gpu_memory_utilization,
        "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu": micro,
        "actor_rollout_ref.rollout.skip_tokenizer_init": False,  # stop strings on SGLang
        "actor_rollout_ref.rollout.agent.default_agent_loop": AGENT_NAME,
        "actor_rollout_ref.rollout.agent.agent_loop_config_path": agent_loops,
        "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu": micro,
        "reward.custom_reward_function.path": str(Path(__file__).with_name("verl_reward.py")),
        "reward.custom_reward_function.name": "compute_score",
        "+reward.custom_reward_function.reward_kwargs.reward_name": config.reward.name,
        "trainer.n_gpus_per_node": c.gpus_per_node,
        "trainer.nnodes": c.nnodes,
        "trainer.save_freq": run.save_steps,
        "trainer.test_freq": run.eval_steps or -1,
        "trainer.val_before_train": bool(run.eval_steps) and val_files is not None,
        "trainer.total_epochs": g.epochs,
        "trainer.total_training_steps": None if run.max_steps == -1 else run.max_steps,
        "trainer.default_local_dir": str(Path(run.output_dir).resolve()),
        "trainer.project_name": run.wandb_project,
        "trainer.experiment_name": Path(run.output_dir).name,
        "trainer.logger": ["console"] + ([] if run.wandb == "off" else ["wandb"]),
        "trainer.resume_mode": "auto" if resume or run.resume else "disable",
    }
    o.update(c.verl)
    return [f"{k}={_value(v)}" for k, v in o.items()]


def rows_file(source: str, split: str, limit: int | None, out: Path, kind: str | None = None
              ) -> str:
    """A parquet of the project's rows for verl: ``source`` itself when it is one, else the
    embedded set or FlashRAG jsonl converted (only the questions whose ``metadata.type`` is
    ``kind``, when given)."""
    if source.endswith(".parquet"):
        if not Path(source).is_file():
            raise ConfigError(f"{source} not found (data.train / data.dev)")
        if kind is not None:
            raise ConfigError(f"data.train_type / data.dev_type={kind} filters on metadata.type, "
                              f"which rows .parquet files do not carry: give {source}'s "
                              "embedded set or .jsonl instead, or set the type to null")
        return str(Path(source).resolve())
    from research.data.questions import load_questions
    from research.data.rows import make_row, write_rows

    items = load_questions(source, split, limit, kind=kind)
    if not items:
        raise ConfigError(f"no questions in {source} ({split}"
                          f"{f', metadata.type {kind}' if kind else ''}): check data.train / "
                          "data.dev and data.train_type / data.dev_type")
    name = Path(source).parent.name if source.endswith(".jsonl") else source  # NAME/SPLIT.jsonl
    rows = [make_row(it["question"], [str(a) for a in it["golden_answers"]],
                     id=str(it.get("id", i)), data_source=name, index=i)
            for i, it in enumerate(items)]
    write_rows(rows, out)
    return str(out.resolve())


def prepare(config: TrainConfig, resume: bool = False) -> list[str]:
    """Write the run directory's files; returns ``main_ppo``'s overrides."""
    from research.models.prepare import prepare_model

    if config.retrieval.search_url is None:
        raise ConfigError("the verl engine needs retrieval.search_url (--search_url): start "
                          "rag_serving/serving.py on each node (or one shared) first")
    out = Path(config.run.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    d = config.data
    train = rows_file(d.train, d.train_split, d.train_limit, out / "train.parquet", d.train_type)
    dev = (rows_file(d.dev, d.dev_split, d.dev_limit, out / "dev.parquet", d.dev_type)
           if d.dev is not None else None)
    loops = out / "agent_loops.yaml"
    loops.write_text(yaml.safe_dump(agent_loop_entries(config, config.retrieval.search_url),
                                    sort_keys=False))
    result = overrides(config, model_path=str(prepare_model(config.model.path)),
                       train_files=train, val_files=dev, agent_loops=str(loops.resolve()),
                       resume=resume)
    (out / "verl_overrides.txt").write_text("\n".join(result) + "\n")
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="verl_launch", description=__doc__.split("\n\n")[0])
    p.add_argument("overrides", nargs="*", metavar="section.key=value")
    p.add_argument("--config", default="original", help="YAML file or named config")
    p.add_argument("--resume", action="store_true", help="continue the run in run.output_dir")
    p.add_argument("--dry-run", action="store_true", help="write the files, print the command")
    return launch(p.parse_args(argv))


@cli_command
def launch(args: argparse.Namespace) -> int:
    """Prepare the run and exec verl's trainer (print its command with ``--dry-run``)."""
    hydra = prepare(load_config(args.config, args.overrides), resume=args.resume)
    cmd = [sys.executable, "-m", "verl.trainer.main_ppo", *hydra]
    if args.dry_run:
        print(" ".join(cmd))
        return 0
    import importlib.util

    if importlib.util.find_spec("verl") is None:
        raise MissingDependency(
            "verl is not installed in this environment: pip install -e '.[verl]' in its own "
            "environment (bash scripts/setup_verl.sh; verl pins transformers below TRL's "
            "range), then run with PYTHON=.venv-verl/bin/python")
    os.execv(sys.executable, cmd)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
