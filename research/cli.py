"""The ``research`` command: serve, index, search, quickstart, data, model, rollout, train.

Each subcommand parses its arguments, calls one library function and returns an exit code;
expected failures (a :class:`~research.errors.ResearchError` such as a bad config, a missing
index or a malformed corpus; a path that does not exist; a missing optional dependency) print
one line ``error: ...`` on stderr and exit with code 2 (:func:`research.errors.cli_command`).
Any other exception is a bug and shows its traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from research import __version__
from research.errors import cli_command

logger = logging.getLogger("research")


def add_serve_args(p: argparse.ArgumentParser) -> None:
    """The service's flags (``rag_serving/serving.py`` takes the same)."""
    p.add_argument("overrides", nargs="*", metavar="section.key=value",
                   help="config overrides, e.g. retriever.embedded=factbook-facts "
                        "limits.max_top_n=50")
    p.add_argument("--config", help="serving YAML (default: the package's "
                                    "research/configs/serving_config.yaml)")
    p.add_argument("--port", type=int, help="port (overrides server.port)")
    p.add_argument("--host", help="bind address (overrides server.host; default 127.0.0.1)")
    p.add_argument("--num_retriever", "--num-retriever", dest="num_retriever", type=int,
                   help="concurrent searches: worker threads / replicas (server.num_retriever)")
    p.add_argument("--keys", action="store_true", help="list every config key and exit")


def cmd_serve(args: argparse.Namespace) -> int:
    from research.serving.config import describe, load_config
    from research.serving.server import serve

    if args.keys:
        print(describe())
        return 0
    config = load_config(args.config, args.overrides, port=args.port, host=args.host,
                         num_retriever=args.num_retriever)
    return serve(config)


def _dense_config(args: argparse.Namespace):
    from research.retrieval.dense import DenseConfig

    kw = dict(model=args.model, index_type=args.index_type, batch_size=args.batch_size,
              max_length=args.max_length, device=args.device, fp16=args.fp16)
    if args.e5:
        return DenseConfig.e5(**kw)
    return DenseConfig(query_prefix=args.query_prefix, passage_prefix=args.passage_prefix,
                       pooling=args.pooling, **kw)


def cmd_index_build(args: argparse.Namespace) -> int:
    from research.retrieval.bm25 import BM25Params
    from research.retrieval.index import build_index

    manifest = build_index(
        args.corpus, args.out, args.method, force=args.force,
        bm25_params=BM25Params(k1=args.k1, b=args.b, stopwords=args.stopwords,
                               stemmer=args.stemmer),
        dense_config=_dense_config(args) if args.method == "dense" else None,
        chunk_docs=args.chunk_docs,
    )
    print(f"{manifest.method} index of {manifest.doc_count} documents in {args.out} "
          f"({manifest.build_seconds:.1f} s)")
    return 0


def cmd_index_info(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from research.retrieval.index import Manifest

    print(json.dumps(asdict(Manifest.load(args.dir)), indent=2))
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from research.retrieval.client import SearchClient

    with SearchClient(args.url, retry_budget=args.retry_budget) as client:
        for query, hits in zip(args.query, client.batch_search(args.query, args.k), strict=True):
            print(f"## {query}")
            for rank, hit in enumerate(hits, 1):
                print(f"{rank}. [{hit.id}] {hit.score:.3f} {hit.contents[:200]!r}")
    return 0


def cmd_quickstart(args: argparse.Namespace) -> int:
    from research.quickstart import (
        format_steps_table,
        format_table,
        format_training_table,
        run_quickstart,
        run_training,
    )

    start = time.time()
    run_dir = Path(args.run_dir or f"runs/quickstart-{time.strftime('%Y%m%d-%H%M%S')}")
    result = run_quickstart(run_dir, dataset=args.dataset, limit=args.limit or None, k=args.k)
    print(format_table(result))
    if args.train_steps > 0:
        validation, steps = run_training(run_dir, args.train_steps, tuple(args.override))
        print("\nGRPO steps (training questions, sampled at temperature 1):")
        print(format_steps_table(steps))
        print("\nReSearch pipeline on held-out dev questions (greedy), before and after GRPO:")
        print(format_training_table(validation))
        print(f"figures: {run_dir / 'train' / 'training.png'}, "
              f"{run_dir / 'train' / 'validation.png'}")
        print(f"report: {run_dir / 'train' / 'report.html'}")
    print(f"run directory: {run_dir} ({time.time() - start:.0f} s)")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from research.report import write_report

    print(f"report: {write_report(args.run_dir, args.out)}")
    return 0


def _index_parser(sub) -> None:
    index = sub.add_parser("index", help="build and inspect retrieval indexes")
    isub = index.add_subparsers(dest="index_cmd", required=True)
    b = isub.add_parser("build", help="index a FlashRAG jsonl corpus (gzip accepted)")
    b.add_argument("--corpus", required=True, help='jsonl: {"id", "contents"} per line')
    b.add_argument("--method", choices=("bm25", "dense"), default="bm25")
    b.add_argument("--out", required=True, help="index directory to write")
    b.add_argument("--force", action="store_true", help="rebuild even if up to date")
    b.add_argument("--chunk-docs", type=int, default=100_000, help="BM25 documents per chunk")
    g = b.add_argument_group("bm25")
    g.add_argument("--k1", type=float, default=1.5)
    g.add_argument("--b", type=float, default=0.75)
    g.add_argument("--stopwords", default="en", help="bm25s stopword list, or none")
    g.add_argument("--stemmer", default="english", help="PyStemmer language, or none")
    d = b.add_argument_group("dense")
    d.add_argument("--model", default="minilm", help="packaged encoder name or local folder")
    d.add_argument("--e5", action="store_true", help="E5 prefixes and mean pooling")
    d.add_argument("--query-prefix", default="")
    d.add_argument("--passage-prefix", default="")
    d.add_argument("--pooling", choices=("mean", "cls", "max"), default=None)
    d.add_argument("--index-type", default="Flat", help="faiss factory string (HNSW32, ...)")
    d.add_argument("--batch-size", type=int, default=64)
    d.add_argument("--max-length", type=int, default=256)
    d.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if any)")
    d.add_argument("--fp16", action="store_true", help="half precision on GPU")
    b.set_defaults(func=cmd_index_build)
    i = isub.add_parser("info", help="print an index's manifest")
    i.add_argument("dir")
    i.set_defaults(func=cmd_index_info)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="research", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"research {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the retrieval service")
    add_serve_args(serve)
    serve.set_defaults(func=cmd_serve)
    _index_parser(sub)
    s = sub.add_parser("search", help="query a running retrieval service")
    s.add_argument("query", nargs="+")
    s.add_argument("--url", default="http://127.0.0.1:8000")
    s.add_argument("-k", type=int, default=5)
    s.add_argument("--retry-budget", type=float, default=5.0,
                   help="seconds to keep retrying an unreachable or failing service")
    s.set_defaults(func=cmd_search)
    q = sub.add_parser("quickstart", help="the main job on the embedded default")
    q.add_argument("--run-dir", help="output directory (default runs/quickstart-TIME)")
    q.add_argument("--dataset", default="squad-open-mini", choices=("squad-open-mini",))
    q.add_argument("--limit", type=int, default=1000, help="dev questions (0: all)")
    q.add_argument("-k", type=int, default=5)
    q.add_argument("--train-steps", type=int, default=4,
                   help="GRPO steps of the training stage (0: retrieval only)")
    q.add_argument("override", nargs="*", default=[],
                   help="key=value overrides of the named training config quickstart")
    q.set_defaults(func=cmd_quickstart)
    r = sub.add_parser("report", help="one self-contained HTML page about a training or "
                                      "evaluation run")
    r.add_argument("run_dir", help="a training run's output_dir, an evaluation run folder, or "
                                   "the evaluation save_dir holding several")
    r.add_argument("--out", help="the HTML file to write (default RUN_DIR/report.html)")
    r.set_defaults(func=cmd_report)
    from research.data.commands import register as register_data
    from research.evaluation.commands import register as register_eval
    from research.evaluation.inspect_rollouts import register as register_rollout
    from research.models.commands import register as register_model
    from research.trainers.commands import register as register_train

    for register in (register_data, register_model, register_rollout, register_train,
                     register_eval):
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("httpx").setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    try:
        return cli_command(args.func)(args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
