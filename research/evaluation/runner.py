"""The evaluation runner: a dataset, a method, a served or local model, the retrieval
service; one run folder with every item, the metrics and a table.

A run folder ``SAVE_DIR/DATASET_SPLIT_METHOD[_NOTE]`` holds:

* ``items.jsonl``: one line per question, appended as each batch finishes (question, golden
  answers, prediction, trajectory, searches, generated tokens, metrics). A crash or an
  interrupt keeps the finished lines; running the same command again skips them (resume).
* ``metrics.json``: FlashRAG's ``em``, ``acc``, ``f1``, ``precision``, ``recall`` averaged,
  plus mean searches, failures and generated tokens (and ``judge_acc`` with a judge).
* ``table.md``: the original's results table for this run; :func:`assemble_table` joins several.
* ``config.yaml``: the config that produced it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import yaml

from research import configtree
from research.evaluation.config import RENAMED, ConfigError, EvalConfig
from research.evaluation.methods import METHODS, MODEL_FREE, RETRIEVAL_FREE, Context, resolve
from research.metrics import average_metrics, compute_metrics

logger = logging.getLogger(__name__)

METRIC_KEYS = ("em", "acc", "f1", "precision", "recall")
DATASET_TITLES = {"hotpotqa": "HotpotQA", "bamboogle": "Bamboogle", "strategyqa": "StrategyQA",
                  "2wikimultihopqa": "2Wiki", "musique": "MuSiQue", "nq": "NQ",
                  "triviaqa": "TriviaQA", "squad-open-mini": "SQuAD-open-mini",
                  "factbook-hop": "Factbook-hop", "factbook-facts": "Factbook-facts",
                  "factbook-facts-bridge": "Factbook bridge",
                  "factbook-facts-one-hop": "Factbook one-hop"}
METHOD_TITLES = {"direct": "Direct", "naive-rag": "Naive-RAG", "iter-retgen": "Iter-RetGen",
                 "flare": "FLARE", "ircot": "IRCoT", "research": "ReSearch",
                 "one-search-rule": "One-search rule (scripted)",
                 "oracle-chain": "Oracle chain (scripted ceiling)"}


# --- data -----------------------------------------------------------------------------------


def dataset_path(config: EvalConfig) -> Path:
    """The FlashRAG jsonl of ``data.dataset_name`` / ``data.split``."""
    from research.data import embedded

    d = config.data
    if d.data_dir is not None:
        path = Path(d.data_dir) / d.dataset_name / f"{d.split}.jsonl"
        if path.is_file():
            return path
    if d.dataset_name in embedded.EMBEDDED:
        return embedded.split_path(d.dataset_name, d.split)
    if d.dataset_name in embedded.EVAL_SPLITS:
        return embedded.load_eval_set(d.dataset_name, d.split)
    where = f"{d.data_dir}/{d.dataset_name}/{d.split}.jsonl not found; " if d.data_dir else ""
    raise ConfigError(
        f"{where}dataset {d.dataset_name!r} is not embedded ({', '.join(embedded.EMBEDDED)}) "
        f"nor fetchable ({', '.join(embedded.EVAL_SPLITS)}): put it in FlashRAG's layout "
        "DATA_DIR/NAME/SPLIT.jsonl and set data.data_dir")


def load_items(config: EvalConfig) -> list[dict]:
    """The questions to evaluate (``id``, ``question``, ``golden_answers``, ...) of
    :func:`dataset_path`, read by :func:`research.data.questions.load_questions`, sampled."""
    from research.data.questions import load_questions

    items = load_questions(dataset_path(config), kind=config.data.type)
    n = config.data.sample_num
    if n is not None and n < len(items):
        items = (random.Random(config.data.seed).sample(items, n) if config.data.random_sample
                 else items[:n])
    if not items:
        kind = f" of metadata.type {config.data.type} (data.type)" if config.data.type else ""
        raise ConfigError(f"{dataset_path(config)} holds no questions{kind}")
    return items


def dataset_label(config: EvalConfig) -> str:
    """The dataset as run folders and tables name it: NAME, or NAME-TYPE with data.type."""
    d = config.data
    return f"{d.dataset_name}-{d.type}" if d.type else d.dataset_name


# --- what a run will cost here ----------------------------------------------------------------

# One decode step of a 16-row ReSearch batch of the packaged Qwen2.5-0.5B on 2 CPU cores, bf16:
# 16 rows / 29.5 model tokens per second (benchmarks/results/rollout.json; docs/performance.md,
# "Rollouts, 2 cores").
CPU_STEP_SECONDS = 16 / 29.5
REFERENCE_PARAMETERS = 494e6  # Qwen2.5-0.5B


def parameters_of(model_dir: Path) -> float | None:
    """About how many parameters the model of ``model_dir`` has, from its config.json."""
    path = model_dir / "config.json"
    if not path.is_file():
        return None
    c = json.loads(path.read_text())
    h, layers, vocab = c.get("hidden_size"), c.get("num_hidden_layers"), c.get("vocab_size")
    if not (h and layers and vocab):
        return None
    return 12 * layers * h * h + vocab * h


def cpu_warning(config: EvalConfig, questions: int, model_dir: Path | None) -> str | None:
    """What to say before a ReSearch evaluation on a CPU whose settings imply hours: the
    worst case (every response spends its budget, one decode step per token of the longest
    row of each batch, scaled by model size from the measured 0.5B step), and the keys to
    change. None on a GPU, for the baselines, for a served model, or under half an hour."""
    if resolve(config.method.name) != "research" or config.generator.backend != "local":
        return None
    import torch

    if torch.cuda.is_available() or not questions:
        return None
    params = (parameters_of(model_dir) if model_dir else None) or REFERENCE_PARAMETERS
    batches = -(-questions // config.run.batch_size)
    seconds = (batches * config.rollout.max_response_tokens * CPU_STEP_SECONDS
               * max(params / REFERENCE_PARAMETERS, 0.25))
    if seconds < 1800:
        return None
    return (f"ReSearch on this CPU: {questions} questions with rollout.max_response_tokens="
            f"{config.rollout.max_response_tokens} (top {config.rollout.top_k} documents per "
            f"search) may take up to {seconds / 3600:.1f} h (the worst case: every response "
            "spends its budget; measured from the 0.5B model on 2 cores). For a CPU run use "
            "--config_path cpu (1,024 tokens, 3 documents, a worked example), or lower "
            "rollout.max_response_tokens, data.sample_num or rollout.top_k; the defaults are "
            "the original's values for GPU servers")


# --- model and retrieval ----------------------------------------------------------------------


def _served_name(base_url: str, timeout: float) -> str:
    import httpx

    url = base_url.rstrip("/").removesuffix("/v1") + "/v1/models"
    try:
        models = httpx.get(url, timeout=timeout).json()["data"]
        return models[0]["id"]
    except (httpx.HTTPError, KeyError, IndexError, ValueError) as e:
        raise ConfigError(f"could not read the model name from {url} ({e}): is the server up? "
                          "Or set generator.served_model_name") from None


@contextlib.contextmanager
def open_generator(config: EvalConfig) -> Iterator[tuple[object, object]]:
    """``(generator, tokenizer)`` of ``generator.backend``."""
    from transformers import AutoTokenizer

    from research.models.prepare import prepare_model

    g = config.generator
    path = Path(prepare_model(g.model))
    if g.backend == "local":
        import torch

        from research.models.loading import load_model
        from research.rollout.backends.hf import HFGenerator

        if g.threads:
            torch.set_num_threads(g.threads)
        model, tokenizer = load_model(str(path), g.dtype if g.dtype != "auto" else "bfloat16")
        yield HFGenerator(model, tokenizer), tokenizer
        return
    from research.rollout.backends.openai_http import OpenAIGenerator
    from research.rollout.generation import model_eos_ids

    tokenizer = AutoTokenizer.from_pretrained(path)
    name = g.served_model_name or _served_name(g.base_url, g.timeout)
    kwargs = {"api_key_env": g.api_key_env} if g.api_key_env else {}
    with OpenAIGenerator(g.base_url, name, tokenizer, timeout=g.timeout,
                         max_concurrency=g.max_connections,
                         eos_token_ids=model_eos_ids(path, tokenizer), **kwargs) as generator:
        yield generator, tokenizer


# --- the run ------------------------------------------------------------------------------------


def run_name(config: EvalConfig) -> str:
    d, note = config.data, config.run.save_note
    return f"{dataset_label(config)}_{d.split}_{resolve(config.method.name)}" + (
        f"_{note}" if note else "")


def read_records(path: Path) -> list[dict]:
    """The finished records of a run's ``items.jsonl`` (none when it does not exist), up to a
    line cut by a crash. (:func:`load_items` reads the questions to evaluate.)"""
    if not path.exists():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by a crash: it is evaluated again
            break
    return records


def fingerprint(config: EvalConfig) -> dict:
    """What makes two runs' items comparable: every setting but the run's own, the judge and
    the sample size (a larger sample extends a run)."""
    tree = config.to_dict()
    tree.pop("run")
    tree.pop("judge")
    for key in ("sample_num", "random_sample"):
        tree["data"].pop(key)
    return tree


def check_same_run(out: Path, config: EvalConfig) -> None:
    """Refuse to resume a run folder made with other settings (another model, method
    settings, data...): its items would be mixed with these."""
    path = out / "fingerprint.json"
    now = fingerprint(config)
    if config.run.overwrite or not path.exists():
        path.write_text(json.dumps(now, indent=2) + "\n")
        return
    before = json.loads(path.read_text())
    configtree.rename_keys(before, RENAMED)  # a folder written before a key was renamed
    default = EvalConfig().to_dict()  # a key added since the folder was written: its default
    changed = sorted(f"{section}.{key}" for section in now for key in now[section]
                     if before.get(section, {}).get(key, default[section][key])
                     != now[section][key])
    if changed:
        raise ConfigError(f"{out} holds a run with other settings ({', '.join(changed)}): "
                          "set run.save_note to start another run folder, or "
                          "run.overwrite=true to replace it")


def summarise(records: Sequence[dict]) -> dict[str, float]:
    keys = (*METRIC_KEYS, "searches", "search_failures", "generated_tokens")
    if records and all("judge" in r for r in records):
        keys = (*keys, "judge")
    metrics = average_metrics([{k: float(r[k]) for k in keys} for r in records])
    if "judge" in metrics:
        metrics["judge_acc"] = metrics.pop("judge")
    return metrics


def run(config: EvalConfig, progress: bool = True, backend: tuple | None = None) -> Path:
    """Evaluate ``config.method.name`` on the dataset; returns the run folder.

    ``backend``: a ``(generator, tokenizer)`` pair to use instead of ``config.generator``'s.
    """
    from tqdm.auto import tqdm

    config = config.resolved()  # the rollout settings a trained model folder recorded
    method = resolve(config.method.name)
    items = load_items(config)
    out = Path(config.run.save_dir) / run_name(config)
    out.mkdir(parents=True, exist_ok=True)
    items_path = out / "items.jsonl"
    if config.run.overwrite and items_path.exists():
        items_path.unlink()
    check_same_run(out, config)
    done = read_records(items_path)
    items_path.write_text("".join(json.dumps(r) + "\n" for r in done), encoding="utf-8")
    done_ids = {r["id"] for r in done}
    pending = [it for it in items if it["id"] not in done_ids]
    (out / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    if done and pending:
        logger.info("resuming %s: %d of %d items done", out, len(done), len(items))
    start = time.perf_counter()
    if pending and method in MODEL_FREE:
        backend = (None, None)  # a scripted policy: no model to load
    if pending and backend is None:
        model = Path(config.generator.model)
        warning = cpu_warning(config, len(pending), model if model.is_dir() else None)
        if warning:
            logger.warning(warning)
    if pending:
        from research.serving.launch import run_searcher

        with (contextlib.nullcontext(backend) if backend else open_generator(config)) as (
                generator, tokenizer), \
                run_searcher(config.retrieval, config.data.dataset_name, out,
                             method not in RETRIEVAL_FREE) as searcher:
            bar = tqdm(total=len(items), initial=len(done), desc=f"{method} {run_name(config)}",
                       unit="q", disable=not progress, dynamic_ncols=True)
            with bar, items_path.open("a", encoding="utf-8") as sink:
                batch: list[dict] = []  # the batch in flight
                written: set[int] = set()  # its questions already on disk

                def write(i: int, answer) -> None:
                    """One finished question, on disk at once (a rerun resumes here)."""
                    sink.write(json.dumps(to_record(batch[i], answer)) + "\n")
                    sink.flush()
                    written.add(i)
                    bar.update(1)

                ctx = Context(generator, tokenizer, searcher, config.method, config.rollout,
                              progress=progress, on_answer=write)
                for b in range(0, len(pending), config.run.batch_size):
                    batch[:] = pending[b : b + config.run.batch_size]
                    written.clear()
                    for i, answer in enumerate(METHODS[method](list(batch), ctx)):
                        if i not in written:
                            write(i, answer)
    wanted = {it["id"] for it in items}
    records = [r for r in read_records(items_path) if r["id"] in wanted]
    if config.judge.base_url:
        from research.evaluation.judge import judge_records

        records = judge_records(records, config.judge)
        failed = sum("judge_error" in r for r in records)
        if failed:
            logger.warning("the judge failed on %d of %d items (judge_error in items.jsonl); "
                           "no judge_acc until a rerun judges them", failed, len(records))
        items_path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    metrics = summarise(records)
    summary = {"method": method, "dataset": dataset_label(config), "split": config.data.split,
               "questions": len(records), "note": config.run.save_note,
               "model": None if method in MODEL_FREE else config.generator.model,
               "backend": config.generator.backend, "metrics": metrics,
               "seconds": round(time.perf_counter() - start, 1)}
    (out / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "table.md").write_text(assemble_table([out]) + "\n")
    logger.info("%s: %s", out, {k: round(v, 4) for k, v in metrics.items()})
    return out


def to_record(item: dict, answer) -> dict:
    return {"id": item["id"], "question": item["question"],
            "golden_answers": item["golden_answers"], "prediction": answer.prediction,
            "response": answer.response, "trajectory": answer.trajectory,
            "searches": answer.searches, "search_failures": answer.search_failures,
            "generated_tokens": answer.generated_tokens,
            **compute_metrics(answer.prediction, item["golden_answers"])}


# --- the table ----------------------------------------------------------------------------------


def assemble_table(run_dirs: Sequence[str | Path], metric: str = "em") -> str:
    """The original's results table (methods x datasets, ``metric`` x 100) from run folders: one
    row per method, model and note, so that a trained folder and its base model stand side by
    side (a method run with several models or notes names them in its rows)."""
    cells: dict[tuple, dict[str, float]] = {}
    datasets: list[str] = []
    for d in run_dirs:
        path = Path(d) / "metrics.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: is {d} a finished evaluation run?")
        summary = json.loads(path.read_text())
        if metric not in summary["metrics"]:
            raise ConfigError(f"{path} has no {metric!r}; it has "
                             f"{', '.join(summary['metrics'])}")
        if summary["dataset"] not in datasets:
            datasets.append(summary["dataset"])
        key = (summary["method"], summary.get("model"), summary.get("note"))
        cells.setdefault(key, {})[summary["dataset"]] = 100 * summary["metrics"][metric]
    rank = {m: i for i, m in enumerate(METHOD_TITLES)}
    order = sorted(cells, key=lambda k: (rank.get(k[0], len(rank)), k[0], str(k[1]), str(k[2])))
    variants = {m: sum(k[0] == m for k in cells) for m, _, _ in cells}
    head = "| Method | " + " | ".join(DATASET_TITLES.get(d, d) for d in datasets) + " |"
    lines = [head, "|---" * (len(datasets) + 1) + "|"]
    for key in order:
        method, model, note = key
        label = METHOD_TITLES.get(method, method)
        named = [str(x) for x in (model, note) if x]
        if variants[method] > 1 and named:
            label += f" ({', '.join(named)})"
        row = [f"{cells[key][d]:.2f}" if d in cells[key] else "-" for d in datasets]
        lines.append(f"| {label} | " + " | ".join(row) + " |")
    return "\n".join(lines)
