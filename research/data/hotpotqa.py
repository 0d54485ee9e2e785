"""HotpotQA's JSON files -> training rows (``train.parquet``) and validation rows (``dev.parquet``).

Reproduces the original ``training/data_preprocess_hpqa.py`` (see :mod:`research.data.rows`
for the row):

- train: every record of ``hotpot_train_v1.1.json`` (90,447), in file order, one row each;
- dev: the records of ``hotpot_dev_fullwiki_v1.json`` shuffled as the original did
  (``random.seed(42)`` then ``random.shuffle`` of the whole list, see
  :func:`research.data.rows.sample_indices`), first 100 kept. ``full_dev=True`` keeps all
  7,405 in the same shuffled order, so its first 100 rows are the default sample.

``ground_truth`` is HotpotQA's ``answer`` string, as in the original. The original named the
dev file ``test.parquet``; here it is ``dev.parquet`` (the trainer takes the path explicitly).

The files are JSON lists (the train file is 540 MB, mostly paragraph context that the rows do
not keep). :func:`iter_json_array` decodes one record at a time from a bounded buffer, so only
the fields the rows need stay in memory.
"""

from __future__ import annotations

import codecs
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from tqdm import tqdm

from research.data.rows import (
    DataFormatError,
    make_row,
    progress_stream,
    sample_indices,
    write_rows,
)
from research.errors import ConfigError

logger = logging.getLogger(__name__)

DATA_SOURCE = "hotpotqa"
TRAIN_FILE = "train.parquet"
DEV_FILE = "dev.parquet"
DEFAULT_DEV_SIZE = 100
DEFAULT_SEED = 42
REQUIRED_FIELDS = ("_id", "question", "answer")

_WHITESPACE = " \t\n\r"
_NUMBER_TAIL = frozenset("0123456789.eE+-") | {""}
_CHUNK_CHARS = 1 << 20


class HotpotQAFormatError(DataFormatError):
    """A HotpotQA file or record that is not in the released format."""


@dataclass(frozen=True)
class HotpotQASummary:
    """What :func:`convert_hotpotqa` wrote."""

    train_path: Path
    train_rows: int
    dev_path: Path
    dev_rows: int
    dev_total: int
    seed: int

    def __str__(self) -> str:
        return (
            f"wrote {self.train_rows} train rows to {self.train_path} and "
            f"{self.dev_rows} of {self.dev_total} dev rows (seed {self.seed}) to {self.dev_path}"
        )


def convert_hotpotqa(
    train: str | os.PathLike[str],
    dev: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    dev_size: int = DEFAULT_DEV_SIZE,
    full_dev: bool = False,
    seed: int = DEFAULT_SEED,
    progress: bool = True,
) -> HotpotQASummary:
    """Write ``train.parquet`` and ``dev.parquet`` under ``out_dir`` from HotpotQA's JSON files.

    Raises :class:`HotpotQAFormatError` (a ``ValueError``) naming the file and record index
    for malformed input, before anything is written.
    """
    if dev_size < 1 and not full_dev:
        raise ConfigError(f"dev_size must be >= 1, got {dev_size}")
    dev_rows = _load_nonempty(dev, progress)
    chosen = sample_indices(len(dev_rows), None if full_dev else dev_size, seed)
    train_rows = _load_nonempty(train, progress)
    out_dir = Path(out_dir)
    summary = HotpotQASummary(
        train_path=out_dir / TRAIN_FILE,
        train_rows=write_rows(train_rows, out_dir / TRAIN_FILE),
        dev_path=out_dir / DEV_FILE,
        dev_rows=write_rows([dev_rows[i] for i in chosen], out_dir / DEV_FILE),
        dev_total=len(dev_rows),
        seed=seed,
    )
    logger.debug("%s", summary)
    return summary


def _load_nonempty(path: str | os.PathLike[str], progress: bool) -> list[dict[str, Any]]:
    rows = list(load_hotpotqa_rows(path, progress=progress))
    if not rows:
        raise HotpotQAFormatError(
            "the list holds no records", path=path, fix="pass the HotpotQA file as released"
        )
    return rows


def load_hotpotqa_rows(
    path: str | os.PathLike[str], *, progress: bool = True
) -> Iterator[dict[str, Any]]:
    """Stream the rows of one HotpotQA JSON file, in file order, validated."""
    for index, record in iter_json_array(path, progress=progress):
        yield record_to_row(record, index=index, path=path)


def record_to_row(
    record: Any, *, index: int, path: str | os.PathLike[str] | None = None
) -> dict[str, Any]:
    """One HotpotQA record -> one row; raise :class:`HotpotQAFormatError` if malformed."""
    location = f"record {index}"
    if not isinstance(record, dict):
        raise HotpotQAFormatError(
            f"expected a JSON object, got {type(record).__name__}",
            path=path,
            location=location,
            fix="pass hotpot_train_v1.1.json / hotpot_dev_fullwiki_v1.json as released",
        )
    for field in REQUIRED_FIELDS:
        _check_field(record, field, path=path, location=location)
    return make_row(
        record["question"],
        record["answer"],
        id=record["_id"],
        data_source=DATA_SOURCE,
        index=index,
    )


def _check_field(record: dict[str, Any], field: str, *, path: Any, location: str) -> None:
    if field not in record:
        fix = "pass a HotpotQA train or dev file (records need _id, question and answer)"
        if field == "answer":
            fix = "the HotpotQA test files have no answers: use hotpot_dev_fullwiki_v1.json"
        raise HotpotQAFormatError(
            f"record has no {field!r} field", path=path, location=location, fix=fix
        )
    value = record[field]
    if not isinstance(value, str) or (field != "answer" and not value.strip()):
        raise HotpotQAFormatError(
            f"field {field!r} must be a non-empty string, got {value!r:.60}",
            path=path,
            location=location,
            fix="repair or drop this record",
        )


def iter_json_array(
    path: str | os.PathLike[str], *, progress: bool = True, chunk_chars: int = _CHUNK_CHARS
) -> Iterator[tuple[int, Any]]:
    """Yield ``(index, element)`` for each element of the JSON list in ``path``, streaming.

    Raises :class:`HotpotQAFormatError` naming the file, the element index and the line when
    the top level is not a list or the JSON is malformed.
    """
    path = Path(path)
    with progress_stream(path, progress) as (stream, bar):
        yield from _ArrayReader(stream, path, bar, chunk_chars).elements()


class _ArrayReader:
    """Incremental decoder of one top-level JSON list (a buffer plus a read position)."""

    def __init__(self, stream: BinaryIO, path: Path, bar: tqdm, chunk_chars: int) -> None:
        self.stream = stream
        self.path = path
        self.bar = bar
        self.chunk_chars = chunk_chars
        self.utf8 = codecs.getincrementaldecoder("utf-8")()
        self.decoder = json.JSONDecoder()
        self.buf = ""
        self.pos = 0
        self.lines_before = 0
        self.bytes_read = 0
        self.eof = False

    def elements(self) -> Iterator[tuple[int, Any]]:
        if self._next_char() != "[":
            self._fail(
                "the top level is not a JSON list",
                0,
                "pass the .json file as released "
                "(a JSON list of question records), not a jsonl or a single record",
            )
        self.pos += 1
        if self._next_char() == "]":
            self._finish()
            return
        index = 0
        while True:
            yield index, self._decode_value(index)
            separator = self._next_char()
            if separator == "]":
                self._finish()
                return
            if separator != ",":
                self._fail("expected ',' or ']' after this record", index, "repair the JSON")
            self.pos += 1
            index += 1

    def _decode_value(self, index: int) -> Any:
        self._next_char()
        while True:
            try:
                value, end = self.decoder.raw_decode(self.buf, self.pos)
            except json.JSONDecodeError as error:
                if self.eof:
                    self._fail(
                        f"malformed JSON ({error.msg})", index, "repair the JSON", at=error.pos
                    )
                self._read(max(self.chunk_chars, len(self.buf)))
                continue
            if not self.eof and self.buf[end : end + 1] in _NUMBER_TAIL:
                self._read(self.chunk_chars)  # a number may go on in the next chunk ("2." "5")
                continue
            self.pos = end
            return value

    def _next_char(self) -> str:
        """Skip whitespace and return the next character ('' at the end of the file)."""
        while True:
            while self.pos < len(self.buf) and self.buf[self.pos] in _WHITESPACE:
                self.pos += 1
            if self.pos < len(self.buf) or self.eof:
                return self.buf[self.pos : self.pos + 1]
            self._read(self.chunk_chars)

    def _read(self, chars: int) -> None:
        """Drop the consumed text and append about ``chars`` more characters."""
        self.lines_before += self.buf.count("\n", 0, self.pos)
        self.buf = self.buf[self.pos :]
        self.pos = 0
        data = self.stream.read(chars)
        self.bar.update(len(data))
        self.bytes_read += len(data)
        self.eof = not data
        try:
            self.buf += self.utf8.decode(data, final=self.eof)
        except UnicodeDecodeError as error:
            offset = self.bytes_read - len(data) + error.start
            raise HotpotQAFormatError(
                f"not UTF-8 text ({error.reason} near byte {offset})",
                path=self.path,
                fix="pass the .json file as released (UTF-8)",
            ) from error

    def _finish(self) -> None:
        self.pos += 1
        if self._next_char():
            self._fail("unexpected text after the closing ']'", None, "repair the JSON")

    def _fail(self, problem: str, index: int | None, fix: str, at: int | None = None) -> None:
        at = self.pos if at is None else at
        line = self.lines_before + self.buf.count("\n", 0, at) + 1
        where = f"line {line}" if index is None else f"record {index} (line {line})"
        raise HotpotQAFormatError(problem, path=self.path, location=where, fix=fix)
