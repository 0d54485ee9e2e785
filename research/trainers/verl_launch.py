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
``run.eval_steps``, checkpoints every ``run.save_steps`` in ``run.output_dir``. Where every
other key goes, or why it is refused: :mod:`research.trainers.verl_mapping` (checked by
``load_config(..., engine="verl")`` before anything is written). ``run.wandb`` becomes
``WANDB_MODE`` for the driver and, through ``ray_kwargs.ray_init.runtime_env.env_vars``, for
every worker; the key only ever comes from the environment.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

import yaml

from research.errors import MissingDependency, cli_command
from research.trainers.config import ConfigError, TrainConfig, load_run_config
from research.trainers.run_setup import (
    CHECKOUT,
    add_front_door,
    lora_alpha,
    training_questions,
    wandb_env,
)

AGENT_NAME = "research_agent"
log = logging.getLogger(__name__)
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
    return [{"name": AGENT_NAME,
             "_target_": "research.trainers.verl_agent.ReSearchAgentLoop",
             "search_url": search_url, "rollout": r.to_dict(),
             "search_timeout": rc.timeout, "search_retries": rc.retries,
             "search_api_key_env": rc.api_key_env,
             "max_concurrent_searches": config.cluster.max_concurrent_searches}]


def warn_wandb_key_on_every_node(config: TrainConfig) -> None:
    """With ``online`` on several nodes, say that every node needs the key: verl logs to
    wandb from its TaskRunner, a Ray actor that may run on any node with the environment of
    that node's ``ray start``. Only the launching node's key is checked, and only its
    presence (the key is never put in an override)."""
    if config.run.wandb == "online" and config.cluster.nnodes > 1:
        log.warning("run.wandb=online with cluster.nnodes=%d: WANDB_API_KEY must be exported "
                    "on every node before its `ray start` (verl's wandb logger is a Ray actor "
                    "on any node); only this node's is checked", config.cluster.nnodes)


def check_search_token(config: TrainConfig) -> None:
    """With ``retrieval.api_key_env``, refuse to launch when this node lacks the token (the
    agent loops read it in their workers), and with several nodes say that every node needs
    it. The token itself is never put in an override."""
    from research.retrieval.client import bearer_header

    variable = config.retrieval.api_key_env
    if variable is None:
        return
    bearer_header(variable)
    if config.cluster.nnodes > 1:
        log.warning("retrieval.api_key_env=%s with cluster.nnodes=%d: %s must be exported on "
                    "every node before its `ray start` (the agent loops search from any node); "
                    "only this node's is checked", variable, config.cluster.nnodes, variable)


def runtime_env(config: TrainConfig) -> dict[str, str]:
    """``ray_kwargs.ray_init.runtime_env`` overrides: the wandb variables for every worker,
    and with several nodes the interpreter and the project's path (variables exported by
    training/run.sh never reach a cluster started by hand)."""
    env = "+ray_kwargs.ray_init.runtime_env.env_vars."
    o = {env + k: v for k, v in wandb_env(config).items()}
    if config.cluster.nnodes > 1:
        o["ray_kwargs.ray_init.runtime_env.py_executable"] = sys.executable
        o[env + "PYTHONPATH"] = str(CHECKOUT)
    return o


def _batching(config: TrainConfig) -> dict:
    """Dynamic batching by a token budget per GPU, or fixed micro-batches; entropy computed
    in chunks (no full-vocabulary softmax in memory)."""
    budget, micro = config.cluster.max_tokens_per_gpu, config.grpo.per_device_batch
    o = {"actor_rollout_ref.actor.entropy_from_logits_with_chunking": True,
         "actor_rollout_ref.ref.entropy_from_logits_with_chunking": True,
         "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu": micro,
         "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu": micro,
         "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu": micro}
    if budget is not None:  # the ref and rollout log-prob passes follow the actor's keys
        o |= {"actor_rollout_ref.actor.use_dynamic_bsz": True,
              "actor_rollout_ref.actor.ppo_max_token_len_per_gpu": budget}
    return o


def _model(config: TrainConfig, model_path: str) -> dict:
    m = config.model
    o = {"actor_rollout_ref.model.path": model_path,
         "actor_rollout_ref.model.enable_gradient_checkpointing": m.gradient_checkpointing,
         "actor_rollout_ref.rollout.dtype": m.dtype,
         "actor_rollout_ref.actor.fsdp_config.dtype": "bfloat16",  # grpo.bf16 (checked)
         "actor_rollout_ref.ref.fsdp_config.dtype": "bfloat16",
         # the reference only runs forward in bf16: bf16 weights give the same matmuls as
         # the actor's fp32 master weights cast to bf16, at half the memory (verl's default
         # loads it in fp32)
         "actor_rollout_ref.ref.fsdp_config.model_dtype": "bf16"}
    if m.lora_rank:
        o |= {"actor_rollout_ref.model.lora_rank": m.lora_rank,
              "actor_rollout_ref.model.lora_alpha": lora_alpha(m),
              "actor_rollout_ref.model.target_modules": "all-linear"}
    return o


def _data(config: TrainConfig, train_files: str, val_files: str | None) -> dict:
    """The data keys; with no dev set, validation is off and verl's (unused) validation set
    is one training row, never the whole training set."""
    d, run = config.data, config.run
    return {"data.train_files": train_files,
            "data.val_files": val_files or train_files,
            "data.train_max_samples": d.train_limit or -1,
            "data.val_max_samples": d.dev_limit if val_files else 1,
            "data.prompt_key": "question",
            "data.train_batch_size": config.grpo.prompts_per_step,
            "data.max_prompt_length": config.cluster.max_prompt_tokens,
            "data.max_response_length": config.rollout.max_response_tokens,
            "data.filter_overlong_prompts": False,  # verl measures chat prompts; the launcher
            # drops the project's prompts over the budget (drop_long_prompts)
            "data.seed": run.seed,
            "trainer.test_freq": run.eval_steps if val_files and run.eval_steps else -1,
            "trainer.val_before_train": bool(val_files and run.eval_steps)}


def overrides(config: TrainConfig, *, model_path: str, train_files: str, val_files: str | None,
              agent_loops: str) -> list[str]:
    """verl's Hydra overrides for ``config`` (the project's settings, then ``cluster.verl``);
    :mod:`research.trainers.verl_mapping` lists where each key goes."""
    g, r, run, c = config.grpo, config.rollout, config.run, config.cluster
    if g.loss_type not in LOSS_AGG:
        raise ConfigError(f"grpo.loss_type={g.loss_type} has no verl equivalent; use "
                          f"{', '.join(LOSS_AGG)}")
    o = {
        "algorithm.adv_estimator": "grpo",
        "algorithm.norm_adv_by_std_in_grpo": True,
        "algorithm.use_kl_in_reward": False,
        **_data(config, train_files, val_files),
        **_model(config, model_path),
        **_batching(config),
        "actor_rollout_ref.actor.optim.lr": g.learning_rate,
        "actor_rollout_ref.actor.ppo_mini_batch_size": g.prompts_per_step,
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
        "actor_rollout_ref.rollout.skip_tokenizer_init": False,  # stop strings on SGLang
        "actor_rollout_ref.rollout.agent.default_agent_loop": AGENT_NAME,
        "actor_rollout_ref.rollout.agent.agent_loop_config_path": agent_loops,
        "reward.custom_reward_function.path": str(Path(__file__).with_name("verl_reward.py")),
        "reward.custom_reward_function.name": "compute_score",
        "+reward.custom_reward_function.reward_kwargs.reward_name": config.reward.name,
        "trainer.n_gpus_per_node": c.gpus_per_node,
        "trainer.nnodes": c.nnodes,
        "trainer.save_freq": run.save_steps,
        "trainer.max_actor_ckpt_to_keep": run.save_total_limit,
        "trainer.total_epochs": g.epochs,
        "trainer.total_training_steps": None if run.max_steps == -1 else run.max_steps,
        "trainer.default_local_dir": str(Path(run.output_dir).resolve()),
        "trainer.project_name": run.wandb_project,
        "trainer.experiment_name": Path(run.output_dir).name,
        "trainer.logger": ["console"] + ([] if run.wandb == "off" else ["wandb"]),
        "trainer.resume_mode": "auto" if run.resume else "disable",
        **runtime_env(config),
    }
    if r.seed is not None:
        o["actor_rollout_ref.rollout.seed"] = r.seed
    o.update(c.verl)
    return [f"{k}={_value(v)}" for k, v in o.items()]


def prompt_fits(config: TrainConfig, tokenizer) -> Callable[[str], bool]:
    """Whether a question's prompt, rendered as the agent loop renders it (``rollout``
    settings, the model's tokenizer), is within ``cluster.max_prompt_tokens``."""
    budget = config.cluster.max_prompt_tokens
    return lambda question: len(config.rollout.encode_prompt(tokenizer, question)) <= budget


def rows_file(source: str, split: str, limit: int | None, out: Path, kind: str | None = None,
              seed: int | None = None, fits: Callable[[str], bool] | None = None) -> str:
    """A parquet of the project's rows for verl, in one pass: ``source``'s rows (a rows
    parquet, or an embedded set / FlashRAG jsonl converted: only the questions whose
    ``metadata.type`` is ``kind``, when given; with ``seed``, ``limit`` of them drawn as
    :func:`research.data.questions.load_questions` draws them), the first ``limit``, without
    those whose prompt does not ``fit`` (logged; verl's ``*_max_samples`` alone would pick rows
    at random). ``source`` itself when it is a parquet left whole, else written to ``out``."""
    from research.data.rows import make_row, read_rows, write_rows

    whole = None
    if source.endswith(".parquet"):
        if not Path(source).is_file():
            raise ConfigError(f"{source} not found (data.train / data.dev)")
        if kind is not None:
            raise ConfigError(f"data.train_type / data.dev_type={kind} filters on metadata.type, "
                              f"which rows .parquet files do not carry: give {source}'s "
                              "embedded set or .jsonl instead, or set the type to null")
        whole = read_rows(source)
        rows = whole[:limit] if limit else whole
    else:
        items = training_questions(source, split, limit, kind, seed)
        name = Path(source).parent.name if source.endswith(".jsonl") else source  # NAME/SPLIT
        rows = [make_row(it["question"], [str(a) for a in it["golden_answers"]],
                         id=str(it.get("id", i)), data_source=name, index=i)
                for i, it in enumerate(items)]
    if fits is not None:
        kept = [row for row in rows if fits(row["question"])]
        log.info("%s: %d of %d prompts over the prompt budget (cluster.max_prompt_tokens) "
                 "dropped", source, len(rows) - len(kept), len(rows))
        if not kept:
            raise ConfigError(f"every prompt of {source} is over cluster.max_prompt_tokens: "
                              "raise it")
        rows = kept
    if whole is not None and len(rows) == len(whole):
        return str(Path(source).resolve())
    write_rows(rows, out)
    return str(out.resolve())


def prepare(config: TrainConfig) -> list[str]:
    """Write the run directory's files; returns ``main_ppo``'s overrides."""
    from research.models.prepare import prepare_model

    if config.retrieval.search_url is None:
        raise ConfigError("the verl engine needs retrieval.search_url (--search_url): start "
                          "rag_serving/serving.py on each node (or one shared) first")
    wandb_env(config)  # refuse online without a key before anything is written
    warn_wandb_key_on_every_node(config)
    check_search_token(config)
    out = Path(config.run.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    from transformers import AutoTokenizer

    # the model is prepared (a packaged one converted) only once the data has been read
    model = functools.cache(lambda: str(prepare_model(config.model.path)))
    tokenizer = functools.cache(lambda: AutoTokenizer.from_pretrained(model()))
    fits = lambda question: prompt_fits(config, tokenizer())(question)  # noqa: E731
    d = config.data
    train = rows_file(d.train, d.train_split, d.train_limit, out / "train.parquet", d.train_type,
                      fits=fits)
    dev = (rows_file(d.dev, d.dev_split, d.dev_limit, out / "dev.parquet", d.dev_type,
                     d.dev_seed, fits=fits)
           if d.dev is not None else None)
    loops = out / "agent_loops.yaml"
    loops.write_text(yaml.safe_dump(agent_loop_entries(config, config.retrieval.search_url),
                                    sort_keys=False))
    result = overrides(config, model_path=model(), train_files=train, val_files=dev,
                       agent_loops=str(loops.resolve()))
    (out / "verl_overrides.txt").write_text("\n".join(result) + "\n")
    return result


def check_shared_paths(paths: list[str], nnodes: int, address: str = "auto", **init) -> None:
    """On the running Ray cluster (``ray start`` on every node): at least ``nnodes`` nodes,
    and every path of ``paths`` visible on each (verl runs agent loops and rewards on every
    node: the run directory, model, data and checkout must be on a shared file system)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    try:
        ray.init(address=address, log_to_driver=False, **init)
    except ConnectionError as exc:
        raise ConfigError(f"cluster.nnodes={nnodes} needs a running Ray cluster ({exc}): "
                          "start it with .venv-verl/bin/ray start on every node (docs/clusters.md, "
                          "Several nodes)") from exc
    try:
        nodes = [n for n in ray.nodes() if n["Alive"]]
        where = ray.remote(num_cpus=0)(_missing)
        found = ray.get([where.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
            n["NodeID"], soft=False)).remote(paths) for n in nodes])
    finally:
        ray.shutdown()
    if len(nodes) < nnodes:
        raise ConfigError(f"cluster.nnodes={nnodes} but the Ray cluster has {len(nodes)} "
                          "node(s): start Ray on the others, or lower cluster.nnodes")
    problems = [f"{n['NodeManagerAddress']}: {', '.join(m)}"
                for n, m in zip(nodes, found, strict=True) if m]
    if problems:
        raise ConfigError("not on every node (put them on a file system every node mounts at "
                          "the same path): " + "; ".join(problems))


def _missing(paths: list[str]) -> list[str]:
    return [p for p in paths if not os.path.exists(p)]


def shared_paths(hydra: list[str]) -> list[str]:
    """The files every node reads: the interpreter, the checkout and the paths among the
    overrides (model, data, agent-loop file, reward file, run directory)."""
    keys = ("actor_rollout_ref.model.path=", "data.train_files=", "data.val_files=",
            "actor_rollout_ref.rollout.agent.agent_loop_config_path=",
            "reward.custom_reward_function.path=", "trainer.default_local_dir=")
    found = [line.split("=", 1)[1] for line in hydra if line.startswith(keys)]
    return [sys.executable, str(CHECKOUT), *dict.fromkeys(found)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="verl_launch", description=__doc__.split("\n\n")[0])
    add_front_door(p, "verl")
    p.add_argument("--dry-run", action="store_true", help="write the files, print the command")
    return launch(p.parse_args(argv))


@cli_command
def launch(args: argparse.Namespace) -> int:
    """Prepare the run and exec verl's trainer (print its command with ``--dry-run``)."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    config = load_run_config(args.config, args.overrides, args.resume, "verl")
    hydra = prepare(config)
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
    if config.cluster.nnodes > 1:
        check_shared_paths(shared_paths(hydra), config.cluster.nnodes)
    os.environ.update(wandb_env(config))  # the driver's; the workers' go by runtime_env
    os.execv(sys.executable, cmd)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
