"""FlashRAG's jsonl datasets -> rows, and FlashRAG's folder layout.

FlashRAG (and the ReSearch evaluation) keeps each dataset as ``DATA_DIR/NAME/SPLIT.jsonl``
(``hotpotqa/dev.jsonl``, ``bamboogle/test.jsonl``, ``strategyqa/dev.jsonl``, ...), one JSON
object per line: ``{"id": ..., "question": ..., "golden_answers": [...], "metadata": {...}}``
(``metadata`` optional).

Rows follow :mod:`research.data.rows` as the paper version wrote them from these files
(``data/prepare_musique.py``): ``data_source`` is the dataset name, ``ground_truth`` is the
whole ``golden_answers`` list, ``extra_info`` holds ``id`` (as a string) and ``index`` (the
record's position in the file). ``metadata`` is dropped unless asked for; then it is kept as a
JSON string in ``extra_info.metadata`` (its keys differ between datasets and records, which a
parquet column cannot hold). A sample of ``sample`` records uses the same shuffle as the
HotpotQA dev sample (the paper version sampled MuSiQue dev that way).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from research.data.rows import (
    DataFormatError,
    make_row,
    progress_stream,
    sample_indices,
    write_rows,
)
from research.errors import ConfigError, ResearchError

logger = logging.getLogger(__name__)

DEFAULT_SEED = 42
_FORMAT_FIX = 'each line must be {"id": ..., "question": "...", "golden_answers": ["..."]}'


class FlashRAGFormatError(DataFormatError):
    """A FlashRAG jsonl file or record that is not in FlashRAG's format."""


class FlashRAGLayoutError(ResearchError, FileNotFoundError):
    """A dataset or split missing from a FlashRAG data folder; the message lists what exists."""


@dataclass(frozen=True)
class FlashRAGSummary:
    """What :func:`convert_flashrag` wrote."""

    name: str
    out_path: Path
    rows: int
    total: int

    def __str__(self) -> str:
        return f"wrote {self.rows} of {self.total} {self.name} rows to {self.out_path}"


def flashrag_path(data_dir: str | os.PathLike[str], name: str, split: str) -> Path:
    """``DATA_DIR/NAME/SPLIT.jsonl``, checked to exist.

    Raises :class:`FlashRAGLayoutError` listing the available splits (or datasets).
    """
    data_dir = Path(data_dir)
    dataset_dir = data_dir / name
    if not dataset_dir.is_dir():
        found = available_datasets(data_dir)
        raise FlashRAGLayoutError(
            f"no dataset folder {dataset_dir}; datasets in {data_dir}: "
            f"{', '.join(found) or 'none'}. Fix: put FlashRAG's NAME/SPLIT.jsonl files there"
        )
    path = dataset_dir / f"{split}.jsonl"
    if not path.is_file():
        splits = available_splits(data_dir, name)
        raise FlashRAGLayoutError(
            f"no split {split!r} for {name}: {path} does not exist; available splits: "
            f"{', '.join(splits) or 'none'}"
        )
    return path


def available_datasets(data_dir: str | os.PathLike[str]) -> list[str]:
    """The dataset folders under ``data_dir``, sorted (empty if ``data_dir`` is missing)."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        return []
    return sorted(p.name for p in data_dir.iterdir() if p.is_dir())


def available_splits(data_dir: str | os.PathLike[str], name: str) -> list[str]:
    """The splits (``*.jsonl`` stems) of dataset ``name`` under ``data_dir``, sorted."""
    dataset_dir = Path(data_dir) / name
    if not dataset_dir.is_dir():
        return []
    return sorted(p.stem for p in dataset_dir.glob("*.jsonl") if p.is_file())


def load_flashrag_jsonl(
    path: str | os.PathLike[str], *, progress: bool = False
) -> Iterator[dict[str, Any]]:
    """Stream the validated records of a FlashRAG jsonl file; blank lines are skipped.

    Each record keeps its fields, with ``id`` as a string and ``golden_answers`` as a list.
    Raises :class:`FlashRAGFormatError` naming the file and line for malformed JSON or a
    record without ``id`` / ``question`` / ``golden_answers``.
    """
    path = Path(path)
    with progress_stream(path, progress) as (stream, bar):
        for number, raw in enumerate(stream, start=1):
            bar.update(len(raw))
            if raw.strip():
                yield _parse_line(raw, path=path, line=number)


def _parse_line(raw: bytes, *, path: Path, line: int) -> dict[str, Any]:
    where = {"path": path, "location": f"line {line}"}
    try:
        record = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise FlashRAGFormatError(f"malformed JSON ({error})", fix=_FORMAT_FIX, **where) from error
    if not isinstance(record, dict):
        raise FlashRAGFormatError(
            f"expected a JSON object, got {type(record).__name__}", fix=_FORMAT_FIX, **where
        )
    for field in ("id", "question", "golden_answers"):
        if field not in record:
            raise FlashRAGFormatError(f"record has no {field!r} field", fix=_FORMAT_FIX, **where)
    record["id"] = _record_id(record["id"], where)
    record["golden_answers"] = _answers(record["golden_answers"], where)
    if not isinstance(record["question"], str) or not record["question"].strip():
        raise FlashRAGFormatError("'question' must be a non-empty string", fix=_FORMAT_FIX, **where)
    return record


def _record_id(value: Any, where: dict[str, Any]) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)) or not str(value).strip():
        raise FlashRAGFormatError(
            f"'id' must be a non-empty string or an int, got {value!r:.60}",
            fix=_FORMAT_FIX,
            **where,
        )
    return str(value)


def _answers(value: Any, where: dict[str, Any]) -> list[str]:
    answers = [value] if isinstance(value, str) else value
    if not isinstance(answers, list) or not answers or not all(isinstance(a, str) for a in answers):
        raise FlashRAGFormatError(
            f"'golden_answers' must be a non-empty list of strings, got {value!r:.60}",
            fix=_FORMAT_FIX,
            **where,
        )
    return answers


def flashrag_record_to_row(
    record: dict[str, Any], name: str, *, index: int, keep_metadata: bool = False
) -> dict[str, Any]:
    """One validated FlashRAG record -> one row with ``data_source=name``."""
    extra: dict[str, Any] = {"index": index}
    if keep_metadata and "metadata" in record:
        extra["metadata"] = json.dumps(record["metadata"], ensure_ascii=False)
    return make_row(
        record["question"], record["golden_answers"], id=record["id"], data_source=name, **extra
    )


def load_flashrag_rows(
    path: str | os.PathLike[str], name: str, *, keep_metadata: bool = False, progress: bool = False
) -> Iterator[dict[str, Any]]:
    """Stream the rows of a FlashRAG jsonl file, in file order."""
    records = load_flashrag_jsonl(path, progress=progress)
    for index, record in enumerate(records):
        yield flashrag_record_to_row(record, name, index=index, keep_metadata=keep_metadata)


def convert_flashrag(
    input_path: str | os.PathLike[str],
    name: str,
    out_path: str | os.PathLike[str],
    *,
    sample: int | None = None,
    seed: int = DEFAULT_SEED,
    keep_metadata: bool = False,
    progress: bool = True,
) -> FlashRAGSummary:
    """Write the rows of a FlashRAG jsonl file to ``out_path`` (parquet).

    ``sample=None`` keeps every record in file order; ``sample=k`` keeps the first ``k`` after
    the seeded shuffle of :func:`research.data.rows.sample_indices`.
    """
    if not name or not name.strip() or any(c.isspace() for c in name):
        raise ConfigError(f"dataset name must be a non-empty word, got {name!r}")
    if sample is not None and sample < 1:
        raise ConfigError(f"sample must be >= 1, got {sample}")
    rows = list(
        load_flashrag_rows(input_path, name, keep_metadata=keep_metadata, progress=progress)
    )
    if not rows:
        raise FlashRAGFormatError("holds no records", path=input_path, fix=_FORMAT_FIX)
    chosen = rows if sample is None else [rows[i] for i in sample_indices(len(rows), sample, seed)]
    summary = FlashRAGSummary(
        name=name, out_path=Path(out_path), rows=write_rows(chosen, out_path), total=len(rows)
    )
    logger.debug("%s", summary)
    return summary
