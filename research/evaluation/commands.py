"""Evaluate ReSearch and the RAG baselines on datasets: research eval, evaluation/run_eval.py.

::

    research eval [--config_path FILE] [--method_name M[,M...]] [--dataset_name D[,D...]]
                  [--split S] [--data_dir DIR] [--save_dir DIR] [--save_note NOTE]
                  [--sgl_remote_url URL] [--remote_retriever_url URL]
                  [--generator_model PATH] [--apply_chat] [section.key=value ...]
    research eval --table RUN_DIR ... [--metric em]
    research eval --keys

the original's flags map onto config keys (``--sgl_remote_url`` selects the OpenAI-compatible
backend: SGLang and vLLM both serve it). Several methods and datasets run one after the other
and end with one table. Expected failures (:func:`research.errors.cli_command`) print one line
on stderr and exit with code 2.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from research.errors import cli_command

EXIT_OK = 0

FLAG_KEYS = {"split": "data.split", "data_dir": "data.data_dir", "save_dir": "run.save_dir",
             "save_note": "run.save_note", "remote_retriever_url": "retrieval.search_url",
             "generator_model": "generator.model"}


def _names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise argparse.ArgumentTypeError("give at least one name")
    return names


def _flag_value(text: str) -> str:
    if "=" in text:
        raise argparse.ArgumentTypeError(f"{text!r} looks like an override: give --apply_chat "
                                         "a value (--apply_chat True) or put it last")
    return text


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("overrides", nargs="*", metavar="section.key=value",
                   help="config overrides, e.g. data.sample_num=50 method.flare_threshold=0.3")
    p.add_argument("--config_path", default=None,
                   help="YAML config, or a named one: default (the package's "
                        "research/configs/eval_config.yaml, the faithful GPU values) or cpu "
                        "(research/configs/eval_cpu.yaml, a 2-core budget)")
    p.add_argument("--method_name", type=_names, default=None,
                   help="research, direct, naive-rag, iter-retgen, flare, ircot; several "
                        "comma-separated (research,naive-rag) run one after the other")
    p.add_argument("--dataset_name", type=_names, default=None,
                   help="dataset name; several comma-separated")
    for flag in FLAG_KEYS:
        p.add_argument(f"--{flag}", default=None, help=f"sets {FLAG_KEYS[flag]}")
    p.add_argument("--sgl_remote_url", default=None,
                   help="an OpenAI-compatible server (SGLang, vLLM): sets generator.backend="
                        "openai and generator.base_url")
    p.add_argument("--apply_chat", nargs="?", const="True", default=None, type=_flag_value,
                   help="the ReSearch prompt through the chat template (rollout.template="
                        "chat); as the original, any non-empty value turns it on")
    p.add_argument("--gpu_id", default=None, help="accepted for the original's command lines; "
                   "GPUs are the model server's (set CUDA_VISIBLE_DEVICES for a local model)")
    p.add_argument("--table", nargs="+", metavar="RUN_DIR", default=None,
                   help="print the results table of finished run folders and exit")
    p.add_argument("--metric", default="em", help="the table's metric (em, acc, f1, ...)")
    p.add_argument("--keys", action="store_true", help="list every config key and exit")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def register(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("eval", help="evaluate ReSearch and RAG baselines",
                              description=__doc__.split("\n\n")[0])
    add_arguments(p)
    p.set_defaults(func=run_command)
    return p


def overrides_of(args: argparse.Namespace) -> list[str]:
    out = [f"{key}={getattr(args, flag)}" for flag, key in FLAG_KEYS.items()
           if getattr(args, flag) is not None]
    if args.sgl_remote_url:
        out += ["generator.backend=openai", f"generator.base_url={args.sgl_remote_url}"]
    if args.apply_chat:
        out.append("rollout.template=chat")
    return out + list(args.overrides)


@cli_command
def run_command(args: argparse.Namespace) -> int:
    from research.evaluation.config import describe, load_config
    from research.evaluation.runner import assemble_table, run

    if args.keys:
        print(describe())
        return EXIT_OK
    if args.table:
        print(assemble_table(args.table, args.metric))
        return EXIT_OK
    base = load_config(args.config_path, overrides_of(args))
    runs = []
    for dataset in args.dataset_name or [base.data.dataset_name]:
        for method in args.method_name or [base.method.name]:
            config = load_config(args.config_path, [*overrides_of(args),
                                                    f"data.dataset_name={dataset}",
                                                    f"method.name={method}"])
            out = run(config, progress=not args.quiet)
            runs.append(out)
            print(f"run folder: {out}", flush=True)
    table = assemble_table(runs, args.metric)
    if len(runs) > 1:
        (Path(base.run.save_dir) / "table.md").write_text(table + "\n")
    print(table)
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: "
                        "%(message)s")
    parser = add_arguments(argparse.ArgumentParser(
        prog="run_eval.py", description=__doc__.split("\n\n")[0]))
    return run_command(parser.parse_args(argv))
