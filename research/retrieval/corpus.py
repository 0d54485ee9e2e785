"""Corpus files in FlashRAG's jsonl format, read as a stream, and a random-access doc store.

A corpus is one JSON object per line, ``{"id": str, "contents": "\\"Title\\"\\ntext"}``;
gzip-compressed files (``.gz``) are accepted. FlashRAG corpora with ``title`` and ``text``
fields instead of ``contents`` are read too. Nothing here holds the whole corpus as Python
objects: :func:`iter_corpus` streams records with their byte offsets, and :class:`DocStore`
reads single documents through an ``mmap`` and a ``numpy`` array of line offsets (itself
memory-mapped from the index's ``offsets.npy``), so serving the 21M-passage Wikipedia corpus
(13 GB) holds in memory only the pages of the documents it returns.
"""

from __future__ import annotations

import gzip
import hashlib
import mmap
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson

from research.errors import ResearchError

_HASH_BLOCK = 1 << 20


class CorpusFormatError(ResearchError, ValueError):
    """A corpus line that is not a valid document; the message names file and line."""


@dataclass(frozen=True, slots=True)
class CorpusRecord:
    """One document as read from a corpus file."""

    line_no: int  # 1-based line number in the (decompressed) file
    offset: int  # byte offset of the line in the (decompressed) file
    doc_id: str
    contents: str


def is_gzip(path: Path) -> bool:
    """True when ``path`` starts with the gzip magic bytes (whatever its suffix)."""
    with open(path, "rb") as f:
        return f.read(2) == b"\x1f\x8b"


def open_binary(path: Path):
    """Open a corpus for reading bytes, decompressing gzip transparently."""
    return gzip.open(path, "rb") if is_gzip(path) else open(path, "rb")


def parse_document(line: bytes, path: Path | str, line_no: int) -> tuple[str, str]:
    """Parse one corpus line into ``(id, contents)`` or raise :class:`CorpusFormatError`."""
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError as e:
        raise CorpusFormatError(f"{path}:{line_no}: not valid JSON ({e})") from None
    if not isinstance(obj, dict):
        raise CorpusFormatError(
            f"{path}:{line_no}: expected a JSON object, got {type(obj).__name__}"
        )
    if "id" not in obj:
        raise CorpusFormatError(f"{path}:{line_no}: missing field 'id'")
    contents = obj.get("contents")
    if contents is None and "text" in obj:
        contents = f'"{obj.get("title", "")}"\n{obj["text"]}'
    if not isinstance(contents, str):
        raise CorpusFormatError(
            f"{path}:{line_no}: missing string field 'contents' (or 'title' + 'text'); "
            'each line must be {"id": ..., "contents": "\\"Title\\"\\ntext"}'
        )
    return str(obj["id"]), contents


def iter_corpus(path: str | Path) -> Iterator[CorpusRecord]:
    """Stream the documents of a corpus file, skipping blank lines.

    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "c.jsonl"
    >>> _ = p.write_text('{"id": "1", "contents": "\\\\"A\\\\"\\\\nb"}\\n')
    >>> [(r.doc_id, r.contents) for r in iter_corpus(p)]
    [('1', '"A"\\nb')]
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"corpus file not found: {path}")
    offset = 0
    with open_binary(path) as f:
        for line_no, line in enumerate(f, start=1):
            start, offset = offset, offset + len(line)
            if not line.strip():
                continue
            doc_id, contents = parse_document(line, path, line_no)
            yield CorpusRecord(line_no, start, doc_id, contents)


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes as stored (compressed bytes for a gzip file)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_HASH_BLOCK):
            h.update(block)
    return h.hexdigest()


def line_offsets(path: str | Path) -> np.ndarray:
    """Byte offsets of the non-blank lines of an uncompressed file, plus the file size.

    Returns an ``int64`` array of ``n_docs + 1`` entries; line ``i`` spans
    ``[offsets[i], offsets[i + 1])`` up to trailing blank lines.
    """
    from array import array

    offsets = array("q")  # 8 bytes a line, not a Python int object each (21M lines: 170 MB)
    pos = 0
    with open(path, "rb") as f:
        for line in f:
            if line.strip():
                offsets.append(pos)
            pos += len(line)
    offsets.append(pos)
    return np.frombuffer(offsets, dtype=np.int64).copy()


class DocStore:
    """Random access to the documents of an uncompressed jsonl corpus.

    Documents are addressed by their position (0-based, blank lines skipped) in the file,
    the same position that the indexes store.
    """

    def __init__(self, path: str | Path, offsets: np.ndarray):
        self.path = Path(path)
        if is_gzip(self.path):
            raise ValueError(
                f"{self.path} is gzip-compressed; the doc store needs an uncompressed copy "
                "(`research index build` writes one into the index directory)"
            )
        size = os.path.getsize(self.path)
        if len(offsets) < 1 or int(offsets[-1]) != size:
            raise ValueError(
                f"the line offsets do not match {self.path} ({size} bytes, offsets end at "
                f"{int(offsets[-1]) if len(offsets) else 0}): the corpus changed since the index "
                "was built; rebuild it with `research index build`"
            )
        self.offsets = offsets
        self._file = open(self.path, "rb")  # noqa: SIM115 (kept open for the mmap)
        self._mm = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ) if size else b""

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def prefetch(self, positions) -> None:
        """Ask the OS to read documents ``positions`` in the background, all at once.

        A search's hits lie anywhere in a corpus of many GB; read one after another, each
        costs a disk round trip when not cached (milliseconds). Advised together, the disk
        serves them in parallel, and the :meth:`get` calls that follow find them in memory.
        """
        if not isinstance(self._mm, mmap.mmap) or not hasattr(mmap, "MADV_WILLNEED"):
            return
        page = mmap.PAGESIZE
        for i in positions:
            start, end = int(self.offsets[i]), int(self.offsets[i + 1])
            first = start - start % page
            self._mm.madvise(mmap.MADV_WILLNEED, first, end - first)

    def get(self, i: int) -> tuple[str, str]:
        """The ``(id, contents)`` of document ``i``."""
        start, end = int(self.offsets[i]), int(self.offsets[i + 1])
        return parse_document(self._mm[start:end], self.path, i + 1)

    def close(self) -> None:
        if isinstance(self._mm, mmap.mmap):
            self._mm.close()
        self._file.close()
