"""The training and evaluation row: one question, its answers, where it came from.

Every converter in :mod:`research.data` writes the same row, the one the original ReSearch's
``training/data_preprocess_hpqa.py`` wrote (PROTOCOL.md section 1)::

    {
        "data_source": "hotpotqa",            # dataset name; picks the reward / metric
        "question": "Which magazine ...?",    # the raw question, no template applied
        "ability": "qa",
        "reward_model": {"style": "rule", "ground_truth": "Arthur's Magazine"},
        "extra_info": {"id": "5a7a0693...", "index": 0},
    }

Ground truth. ``reward_model.ground_truth`` is either one string or a list of strings:

- a string, as the original wrote it from HotpotQA's ``answer`` (its reward compares the
  boxed answer with this one string after lower-casing);
- a list of strings, as the paper version wrote it from FlashRAG's ``golden_answers`` (its
  F1 reward takes the best match over the list).

Both forms are kept exactly as the source gave them, with no extra copy of the answers in the
row; :func:`golden_answers` turns either form into a list, and reward code should call it
rather than look at the field. One parquet file holds one form only (a column has one type):
:func:`write_rows` refuses a mix and says how to fix it.

``extra_info`` holds ``id`` (the source's question id, a string) and ``index`` (the record's
position in its source file, before any shuffling; verl's dataset reads ``extra_info.index``,
and it lets a row be traced back to its source record). The original wrote ``id`` only; other
keys may be added by converters (e.g. FlashRAG ``metadata`` as a JSON string).

Prompt. The original stored no prompt: its trainer was launched with ``data.prompt_key=question``
and rendered the template at load time (``template.format(prompt=question)``). The rows here do
the same: they carry the raw question, and the trainer renders it with
``research.protocol.build_prompt(question, template=..., clean=...)``, so one parquet file
serves the base and the chat templates and the faithful and the clean forms.
"""

from __future__ import annotations

import logging
import os
import random
import secrets
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import pyarrow as pa
import pyarrow.parquet as pq

from research.errors import ResearchError
from research.metrics import golden_list

logger = logging.getLogger(__name__)

ROW_FIELDS = ("data_source", "question", "ability", "reward_model", "extra_info")
"""The row's top-level fields, in the order the original wrote them."""

DEFAULT_ABILITY = "qa"
REWARD_STYLE = "rule"

GroundTruth = str | list[str]


class DataFormatError(ResearchError, ValueError):
    """Input data that does not have the expected form.

    The message names the file (when there is one), the place in it (record index, line or
    row) and the fix. ``path`` and ``location`` are kept as attributes for callers.
    """

    def __init__(
        self,
        problem: str,
        *,
        path: str | os.PathLike[str] | None = None,
        location: str | None = None,
        fix: str | None = None,
    ) -> None:
        self.path = None if path is None else str(path)
        self.location = location
        self.problem = problem
        self.fix = fix
        super().__init__(self._message())

    def _message(self) -> str:
        where = ", ".join(part for part in (self.path, self.location) if part)
        text = f"{where}: {self.problem}" if where else self.problem
        return f"{text}. Fix: {self.fix}" if self.fix else text


class RowValidationError(DataFormatError):
    """A row that does not follow the schema; ``field`` is the dotted name of the bad field."""

    def __init__(self, field: str, problem: str, **kwargs: Any) -> None:
        self.field = field
        super().__init__(f"field {field!r} {problem}", **kwargs)


def make_row(
    question: str,
    ground_truth: GroundTruth,
    *,
    id: str,
    data_source: str = "hotpotqa",
    ability: str = DEFAULT_ABILITY,
    **extra_info: Any,
) -> dict[str, Any]:
    """Build one validated row.

    Args:
        question: the raw question text (no prompt template).
        ground_truth: one answer (str) or the list of accepted answers.
        id: the source's question id.
        data_source: dataset name, e.g. ``"hotpotqa"`` or ``"bamboogle"``.
        ability: task family; the original always wrote ``"qa"``.
        **extra_info: more ``extra_info`` keys, e.g. ``index=3``.

    >>> make_row("Who?", "Ann", id="q1", index=0)["reward_model"]
    {'style': 'rule', 'ground_truth': 'Ann'}
    """
    truth = list(ground_truth) if _is_answer_list(ground_truth) else ground_truth
    row = {
        "data_source": data_source,
        "question": question,
        "ability": ability,
        "reward_model": {"style": REWARD_STYLE, "ground_truth": truth},
        "extra_info": {"id": id, **extra_info},
    }
    validate_row(row)
    return row


def golden_answers(row: Mapping[str, Any]) -> list[str]:
    """The accepted answers of ``row`` as a list, whichever form ``ground_truth`` has
    (:func:`research.metrics.golden_list`, which also reads the array pandas gives for a list
    column); a :class:`RowValidationError` for any other value.

    >>> golden_answers({"reward_model": {"ground_truth": "Ann"}})
    ['Ann']
    >>> golden_answers({"reward_model": {"ground_truth": ["Ann", "Anne"]}})
    ['Ann', 'Anne']
    """
    truth = row["reward_model"]["ground_truth"]
    try:
        return golden_list(truth)
    except ValueError:
        raise RowValidationError(
            "reward_model.ground_truth",
            f"must be a str or a list of str, got {type(truth).__name__}",
        ) from None


def validate_row(
    row: Any, *, path: str | os.PathLike[str] | None = None, location: str | None = None
) -> None:
    """Check ``row`` against the schema; raise :class:`RowValidationError` naming the field.

    Extra top-level keys are allowed (rows made by other tools may carry e.g. ``prompt``).
    """
    where = {"path": path, "location": location}
    if not isinstance(row, Mapping):
        raise RowValidationError("<row>", f"must be a mapping, got {type(row).__name__}", **where)
    for field in ROW_FIELDS:
        if field not in row:
            raise RowValidationError(field, "is missing", **where)
    for field in ("data_source", "question", "ability"):
        _require_text(row[field], field, where)
    _validate_reward_model(row["reward_model"], where)
    _validate_extra_info(row["extra_info"], where)


def _validate_reward_model(reward_model: Any, where: dict[str, Any]) -> None:
    if not isinstance(reward_model, Mapping):
        raise RowValidationError("reward_model", "must be a mapping", **where)
    if reward_model.get("style") != REWARD_STYLE:
        got = reward_model.get("style")
        raise RowValidationError("reward_model.style", f"must be 'rule', got {got!r}", **where)
    if "ground_truth" not in reward_model:
        raise RowValidationError("reward_model.ground_truth", "is missing", **where)
    truth = reward_model["ground_truth"]
    if isinstance(truth, str):
        return
    if not _is_answer_list(truth):
        raise RowValidationError(
            "reward_model.ground_truth",
            f"must be a str or a list of str, got {type(truth).__name__}",
            **where,
        )
    if len(truth) == 0:
        raise RowValidationError(
            "reward_model.ground_truth", "is an empty list (no accepted answer)", **where
        )
    for answer in truth:
        if not isinstance(answer, str):
            raise RowValidationError(
                "reward_model.ground_truth",
                f"must hold str answers only, got {type(answer).__name__}",
                **where,
            )


def _validate_extra_info(extra_info: Any, where: dict[str, Any]) -> None:
    if not isinstance(extra_info, Mapping):
        raise RowValidationError("extra_info", "must be a mapping", **where)
    if "id" not in extra_info:
        raise RowValidationError("extra_info.id", "is missing", **where)
    _require_text(extra_info["id"], "extra_info.id", where)
    index = extra_info.get("index")
    if index is not None and (isinstance(index, bool) or not isinstance(index, int)):
        raise RowValidationError("extra_info.index", "must be an int", **where)


def _require_text(value: Any, field: str, where: dict[str, Any]) -> None:
    if not isinstance(value, str):
        raise RowValidationError(field, f"must be a str, got {type(value).__name__}", **where)
    if not value.strip():
        raise RowValidationError(field, "is empty", **where)


def _is_answer_list(value: Any) -> bool:
    """True for a list-like of answers (list, tuple, numpy array), False for str / mappings."""
    if isinstance(value, (str, bytes, Mapping)):
        return False
    return isinstance(value, Sequence) or hasattr(value, "tolist")


def ground_truth_form(row: Mapping[str, Any]) -> str:
    """``"str"`` or ``"list"``: the form of the row's ``reward_model.ground_truth``."""
    return "str" if isinstance(row["reward_model"]["ground_truth"], str) else "list"


def write_rows(rows: Iterable[Mapping[str, Any]], path: str | os.PathLike[str]) -> int:
    """Validate ``rows`` and write them to a parquet file atomically; return the row count.

    The file is written to a temporary name in the same folder and renamed over ``path`` only
    when complete, so a reader never sees a half-written file. Parent folders are created.
    """
    path = Path(path)
    table = rows_to_table(rows, path=path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A unique sibling name (not mkstemp, whose 0600 mode would stick to the renamed file).
    temp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        pq.write_table(table, temp)
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    logger.debug("wrote %d rows to %s", table.num_rows, path)
    return table.num_rows


def rows_to_table(
    rows: Iterable[Mapping[str, Any]], *, path: str | os.PathLike[str] | None = None
) -> pa.Table:
    """Validate ``rows`` and build the arrow table; one ground-truth form per table."""
    rows = list(rows)
    if not rows:
        raise DataFormatError("no rows to write", path=path, fix="check the input holds records")
    first_form = None
    for number, row in enumerate(rows):
        validate_row(row, path=path, location=f"row {number}")
        form = ground_truth_form(row)
        first_form = first_form or form
        if form != first_form:
            raise RowValidationError(
                "reward_model.ground_truth",
                f"is a {form} but earlier rows hold a {first_form}; a parquet column has one type",
                path=path,
                location=f"row {number}",
                fix="write lists everywhere: pass golden_answers(row) as ground_truth",
            )
    try:
        return pa.Table.from_pylist(rows)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as error:
        raise DataFormatError(
            f"rows cannot be stored as one table ({error})",
            path=path,
            fix="give every row's extra_info keys the same types",
        ) from error


def iter_rows(path: str | os.PathLike[str], *, batch_size: int = 4096) -> Iterator[dict[str, Any]]:
    """Stream the validated rows of a parquet file, one batch in memory at a time."""
    path = Path(path)
    parquet = pq.ParquetFile(path)
    number = 0
    for batch in parquet.iter_batches(batch_size=batch_size):
        for row in batch.to_pylist():
            validate_row(row, path=path, location=f"row {number}")
            number += 1
            yield row


def read_rows(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """All validated rows of a parquet file, in file order."""
    return list(iter_rows(path))


def sample_indices(total: int, size: int | None, seed: int = 42) -> list[int]:
    """The original's dev sampling: shuffle positions with ``seed``, keep the first ``size``.

    The original ran ``random.seed(42)`` at import and then ``random.shuffle(records)`` on the
    whole list of records before slicing ``[:100]``; ``random.shuffle`` draws depend only on
    the list's length, so shuffling ``range(total)`` with ``random.Random(seed)`` selects the
    same records in the same order. ``size=None`` keeps every position, in shuffled order.

    >>> sample_indices(5, 2, seed=42)
    [3, 1]
    """
    if size is not None and size < 0:
        raise ValueError(f"size must be >= 0, got {size}")
    order = list(range(total))
    random.Random(seed).shuffle(order)
    return order if size is None else order[:size]


@contextmanager
def progress_stream(path: Path, progress: bool) -> Iterator[tuple[BinaryIO, Any]]:
    """``(binary stream, tqdm bar counting its bytes)`` for reading a large file."""
    from tqdm import tqdm

    with (
        path.open("rb") as stream,
        tqdm(total=path.stat().st_size, unit="B", unit_scale=True, desc=f"reading {path.name}",
             disable=None if progress else True) as bar,
    ):
        yield stream, bar
