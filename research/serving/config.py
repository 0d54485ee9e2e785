"""Configuration of the retrieval service: one YAML file, validated at load time.

Example (``rag_serving/serving_config.yaml``)::

    retriever:
      embedded: squad-open-mini   # or index_dir: PATH (built by `research index build`)
      method: bm25
    server:
      host: 127.0.0.1
      port: 8000
      num_retriever: 1
    limits:
      max_top_n: 100
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml


class ConfigError(ValueError):
    """A configuration value that cannot work; the message says what to change."""


@dataclass
class RetrieverConfig:
    """Which index the service loads. Exactly one source must be set."""

    index_dir: str | None = None  # an index built by `research index build`
    embedded: str | None = None  # an embedded corpus name: its index is built into the cache
    faiss_index: str | None = None  # FlashRAG's prebuilt faiss index (with `corpus`, `encoder`)
    corpus: str | None = None  # the FlashRAG jsonl corpus that `faiss_index` was built over
    method: str = "bm25"  # for `embedded`: bm25 | dense
    encoder: dict = field(default_factory=dict)  # DenseConfig fields (model, prefixes, pooling)
    gpu_ids: list[int] = field(default_factory=list)  # dense: one replica per listed GPU
    threads_per_query: int = 1  # bm25s threads inside one batch

    def validate(self) -> None:
        sources = [n for n in ("index_dir", "embedded", "faiss_index") if getattr(self, n)]
        if len(sources) != 1:
            raise ConfigError(
                "retriever: set exactly one of index_dir (an index built by `research index "
                "build`), embedded (squad-open-mini, factbook-hop) or faiss_index (+ corpus, "
                f"encoder) for FlashRAG's prebuilt files; got {sources or 'none'}"
            )
        if self.faiss_index and not self.corpus:
            raise ConfigError("retriever.faiss_index needs retriever.corpus (the jsonl it indexes)")
        if self.method not in ("bm25", "dense"):
            raise ConfigError(f"retriever.method must be bm25 or dense, got {self.method!r}")
        if self.threads_per_query < 1:
            raise ConfigError("retriever.threads_per_query must be >= 1")


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"  # loopback by default; 0.0.0.0 exposes the service to the network
    port: int = 8000
    num_retriever: int = 1  # concurrent searches (worker threads / replicas)
    torch_threads: int | None = None  # dense encoders: torch intra-op threads (None: torch's)
    log_level: str = "info"
    access_log: bool = False

    def validate(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"server.port must be in 0..65535, got {self.port}")
        if self.num_retriever < 1:
            raise ConfigError(f"server.num_retriever must be >= 1, got {self.num_retriever}")


@dataclass
class LimitsConfig:
    max_top_n: int = 100
    max_batch: int = 16384  # queries in one batch request (a whole PopQA test set fits)
    max_query_chars: int = 4096  # longer queries are searched as their first this many
    batch_chunk: int = 256  # queries per retriever call inside one batch request
    max_body_bytes: int = 16 * 1024 * 1024  # larger request bodies get a 413

    def validate(self) -> None:
        for f in fields(self):
            if getattr(self, f.name) < 1:
                raise ConfigError(f"limits.{f.name} must be >= 1")


@dataclass
class ServingConfig:
    retriever: RetrieverConfig = field(default_factory=RetrieverConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)

    def validate(self) -> ServingConfig:
        self.retriever.validate()
        self.server.validate()
        self.limits.validate()
        return self


def _section(cls, data, name: str, base: Path):
    if data is None:
        return cls()
    if not isinstance(data, dict):
        raise ConfigError(f"{name}: expected a mapping, got {type(data).__name__}")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(f"{name}: unknown key(s) {unknown}; valid keys: {sorted(known)}")
    values = {}
    for key, value in data.items():
        if isinstance(value, str) and key in ("index_dir", "faiss_index", "corpus"):
            value = str(_resolve(value, base))
        values[key] = value
    try:
        return cls(**values)
    except TypeError as e:
        raise ConfigError(f"{name}: {e}") from None


def _resolve(value: str, base: Path) -> Path:
    """Expand ``~`` and ``$VARS``; relative paths are relative to the config file."""
    path = Path(os.path.expandvars(os.path.expanduser(value)))
    return path if path.is_absolute() else (base / path).resolve()


def load_config(path: str | Path | None = None, **overrides) -> ServingConfig:
    """Read and validate a serving config; ``overrides`` set ``server.*`` keys (CLI flags)."""
    data: dict = {}
    base = Path.cwd()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path} is not valid YAML: {e}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
        base = path.resolve().parent
    unknown = sorted(set(data) - {"retriever", "server", "limits"})
    if unknown:
        raise ConfigError(f"unknown section(s) {unknown}; valid: retriever, server, limits")
    config = ServingConfig(
        retriever=_section(RetrieverConfig, data.get("retriever"), "retriever", base),
        server=_section(ServerConfig, data.get("server"), "server", base),
        limits=_section(LimitsConfig, data.get("limits"), "limits", base),
    )
    for key, value in overrides.items():
        if value is not None:
            setattr(config.server, key, value)
    return config.validate()
