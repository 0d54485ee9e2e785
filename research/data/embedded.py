"""The project's small datasets, all in FlashRAG's jsonl formats: their paths and readers.

Embedded sets are committed under ``research/data/sets/`` and ship with the package (built by
``python -m research.data.build_embedded``; data cards and licences in
``research/data/sets/README.md`` and each set's ``NOTICE.md``):

- ``squad-open-mini``: SQuAD v1.1 dev + SQuADShifts New-Wiki paragraphs and questions.
- ``factbook-hop``: two-hop questions over CIA World Factbook 2015 passages.
- ``factbook-facts``: one fact per passage from the same Factbook; one-hop and two-hop
  questions whose answers (populations, areas, calling codes, ...) need a search.

Evaluation-only sets are never committed: :func:`load_eval_set` fetches the package that holds
them into the cache (``~/.cache/research`` or ``$RESEARCH_CACHE``) on first use and writes
``<cache>/eval/<name>/<split>.jsonl``:

- ``strategyqa`` (split ``dev``): 2,290 yes/no questions from the ``bigbench==1.0.0`` sdist.
- ``nq``, ``triviaqa`` (splits ``dev``, ``test``): DPR's open-domain questions and answer
  lists from the Anserini jar in the ``pyserini==0.21.0`` wheel.

>>> [p.name for p in (corpus_path("factbook-hop"), split_path("factbook-hop", "dev"))]
['corpus.jsonl', 'dev.jsonl']
"""

from __future__ import annotations

import ast
import csv
import io
import json
import os
from pathlib import Path

from research.data import sources
from research.errors import ConfigError
from research.paths import cache_root, package_path

EMBEDDED = ("squad-open-mini", "factbook-hop", "factbook-facts")
SPLITS = ("train", "dev")
EVAL_SPLITS = {"strategyqa": ("dev",), "nq": ("dev", "test"), "triviaqa": ("dev", "test")}
STRATEGYQA_MEMBER = "bigbench/benchmark_tasks/strategyqa/task.json"
# Anserini's copies of DPR's qas files: a question, a tab, a Python list of answer strings.
# ``topics.nq.*`` are the detokenised NQ answers ("May 18, 2018"; the ``topics.dpr.nq.*``
# copies read "May 18 , 2018"); TriviaQA has only the DPR copies.
TOPIC_FILES = {
    ("nq", "dev"): "topics.nq.dev.txt",
    ("nq", "test"): "topics.nq.test.txt",
    ("triviaqa", "dev"): "topics.dpr.trivia.dev.txt",
    ("triviaqa", "test"): "topics.dpr.trivia.test.txt",
}


def data_root() -> Path:
    """The embedded sets' folder, shipped with the package (``research/data/sets``)."""
    root = package_path("data", "sets")
    if not root.is_dir():
        raise FileNotFoundError(
            f"the embedded data directory {root} is missing from this install of the package: "
            "reinstall it (pip install .), or rebuild the sets with "
            "`python -m research.data.build_embedded`"
        )
    return root


def _check_name(name: str) -> None:
    if name not in EMBEDDED:
        raise ConfigError(f"unknown embedded dataset {name!r}; valid: {', '.join(EMBEDDED)}")


def corpus_path(name: str) -> Path:
    """The set's FlashRAG corpus (``corpus.jsonl``, or ``corpus.jsonl.gz`` if compressed)."""
    _check_name(name)
    directory = data_root() / name
    plain = directory / "corpus.jsonl"
    packed = directory / "corpus.jsonl.gz"
    return packed if packed.exists() and not plain.exists() else plain


def split_path(name: str, split: str) -> Path:
    """``NAME/SPLIT.jsonl`` under :func:`data_root` (FlashRAG's DATA_DIR/NAME/SPLIT.jsonl)."""
    _check_name(name)
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r} of {name}; valid: {', '.join(SPLITS)}")
    return data_root() / name / f"{split}.jsonl"


def read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def read_split(name: str, split: str) -> list[dict]:
    """Rows ``{"id", "question", "golden_answers", "metadata"}`` of an embedded split, as
    committed (:func:`research.data.questions.load_questions` reads any question source)."""
    return read_jsonl(split_path(name, split))


def load_eval_set(name: str, split: str, cache: str | os.PathLike | None = None) -> Path:
    """Path of an evaluation set's FlashRAG jsonl in the cache, building it on first use.

    Raises :class:`~research.errors.ConfigError` (a ``ValueError``) for an unknown name or
    split, and
    :class:`research.data.sources.SourceUnavailable` (naming the package to fetch by hand)
    when the package is not cached and the registry cannot be reached.
    """
    if name not in EVAL_SPLITS:
        raise ConfigError(f"unknown evaluation set {name!r}; valid: {', '.join(EVAL_SPLITS)}")
    if split not in EVAL_SPLITS[name]:
        valid = ", ".join(EVAL_SPLITS[name])
        raise ConfigError(f"unknown split {split!r} of {name}; valid: {valid}")
    target = cache_root(cache) / "eval" / name / f"{split}.jsonl"
    if target.exists():
        return target
    if name == "strategyqa":
        member = sources.bigbench_files([STRATEGYQA_MEMBER], cache)[STRATEGYQA_MEMBER]
        rows = strategyqa_rows(json.loads(member.read_text(encoding="utf-8")), split)
    else:
        filename = TOPIC_FILES[(name, split)]
        topics = sources.pyserini_topics([filename], cache)[filename]
        rows = dpr_topic_rows(topics.read_text(encoding="utf-8"), split, filename)
    write_jsonl(target, rows)
    return target


def strategyqa_rows(task: dict, split: str = "dev") -> list[dict]:
    """FlashRAG rows from BIG-bench's ``strategyqa/task.json``: the gold choice of each
    example's ``target_scores`` becomes ``["yes"]`` or ``["no"]``; BIG-bench's ``target``
    (the answer and its supporting facts) is kept as ``metadata.facts``."""
    rows = []
    for i, example in enumerate(task["examples"]):
        gold = [k.lower() for k, v in example["target_scores"].items() if v == 1]
        if len(gold) != 1 or gold[0] not in ("yes", "no"):
            raise ValueError(f"strategyqa example {i} has no single yes/no answer: {example}")
        rows.append({
            "id": f"{split}_{i}",
            "question": example["input"].strip(),
            "golden_answers": gold,
            "metadata": {"facts": example.get("target", ""), "source": "bigbench-1.0.0"},
        })
    return rows


def dpr_topic_rows(text: str, split: str, source: str = "") -> list[dict]:
    """FlashRAG rows from a DPR qas file: tab-separated CSV records ``question, answers``
    where ``answers`` is a Python list literal (quoted, possibly over several lines)."""
    rows = []
    for record in csv.reader(io.StringIO(text, newline=""), delimiter="\t"):
        if not record:
            continue
        if len(record) != 2:
            raise ValueError(f"{source}: expected question<TAB>answers, got {record!r:.160}")
        parsed = ast.literal_eval(record[1])
        golden = [str(a).strip() for a in parsed if str(a).strip()]
        if not isinstance(parsed, list) or not golden:
            raise ValueError(f"{source}: no answer list in record {record!r:.160}")
        rows.append({
            "id": f"{split}_{len(rows)}",
            "question": record[0].strip(),
            "golden_answers": golden,
            "metadata": {"source": source},
        })
    return rows


def write_jsonl(path: Path, rows) -> None:
    """Write rows as jsonl, atomically (a ``.part`` file renamed into place)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".jsonl.part")
    with open(tmp, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.replace(path)
