"""Configuration of the retrieval service: one YAML tree of dataclasses, ``key=value``
overrides, checked at load time (the same machinery as the training and evaluation configs,
:mod:`research.configtree`).

The default (``research/configs/serving_config.yaml``, shipped with the package, commented)::

    retriever:
      embedded: squad-open-mini   # or index_dir: PATH (built by `research index build`)
      method: bm25
    server:
      host: 127.0.0.1
      port: 8000
      num_retriever: 1
    limits:
      max_top_n: 100

:func:`load_config` reads a YAML file (any subset of the tree; the default above when none is
given), applies overrides such as
``server.num_retriever=2`` (values parsed as YAML scalars) and validates the result; every
problem raises :class:`~research.errors.ConfigError` with the fix. Relative paths
(``index_dir``, ``faiss_index``, ``corpus``) are relative to the config file, or to the
working directory when given as overrides; ``~`` and ``$VARS`` are expanded.
:func:`describe` lists every key with its default and help (``research serve --keys``).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field, fields
from pathlib import Path

from research import configtree
from research.errors import ConfigError
from research.paths import package_path

_f = configtree.option
PATH_KEYS = ("index_dir", "faiss_index", "corpus")


@dataclass
class RetrieverConfig:
    """Which index the service loads. Exactly one source must be set."""

    index_dir: str | None = _f(None, "an index built by `research index build`")
    embedded: str | None = _f(None, "an embedded corpus (squad-open-mini, factbook-hop, "
                              "factbook-facts): its index is built into the cache on first "
                              "start")
    faiss_index: str | None = _f(None, "FlashRAG's prebuilt faiss index (with corpus and "
                                 "encoder)")
    corpus: str | None = _f(None, "the FlashRAG jsonl corpus that faiss_index was built over")
    method: str = _f("bm25", "the index of an embedded corpus", ("bm25", "dense"))
    encoder: dict = field(default_factory=dict, metadata={
        "help": "dense: DenseConfig fields (model, query_prefix, passage_prefix, pooling, "
                "batch_size, fp16, ...); default the packaged MiniLM", "choices": None})
    gpu_ids: list[int] = field(default_factory=list, metadata={
        "help": "dense: one replica per listed GPU (e.g. [0, 1])", "choices": None})
    search_params: dict = field(default_factory=dict, metadata={
        "help": "dense: faiss search-time knobs, {nprobe: 32} for IVF indexes, {efSearch: 128} "
                "for HNSW (more: higher recall, fewer queries/s); empty: faiss' defaults",
        "choices": None})
    threads_per_query: int = _f(1, "BM25 search threads inside one batch request")


@dataclass
class ServerConfig:
    host: str = _f("127.0.0.1", "bind address: loopback; 0.0.0.0 exposes the service to the "
                   "network")
    port: int = _f(8000, "TCP port (0: any free port)")
    num_retriever: int = _f(1, "searches served at once (worker threads, or replicas)")
    torch_threads: int | None = _f(None, "dense on CPU: torch intra-op threads (null: torch's "
                                   "default; the trainer may share the cores)")
    log_level: str = _f("info", "uvicorn's log level",
                        ("critical", "error", "warning", "info", "debug", "trace"))
    access_log: bool = _f(False, "log every request")
    api_key_env: str | None = _f(None, "the environment variable holding an access token: "
                                 "every endpoint but /health then asks for 'Authorization: "
                                 "Bearer <token>' (clients: retrieval.api_key_env)")
    allow_open: bool = _f(False, "serve a non-loopback host without an access token (anyone on "
                          "that network can read the corpus): logged as a warning")


@dataclass
class LimitsConfig:
    max_top_n: int = _f(100, "most documents per query")
    max_batch: int = _f(16384, "most queries per /batch_search or /retrieve request (a whole "
                        "PopQA test set fits)")
    max_query_chars: int = _f(4096, "longest query, in characters: longer ones are searched "
                              "as their first this many (counted in /health)")
    batch_chunk: int = _f(256, "queries per retriever call inside one batch request")
    max_body_bytes: int = _f(16 * 1024 * 1024, "largest request body; larger ones get a 413")


@dataclass
class ServingConfig:
    retriever: RetrieverConfig = field(default_factory=RetrieverConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)


def validate(config: ServingConfig) -> ServingConfig:
    """Checks across fields; each message says the fix."""
    spec = config.retriever
    sources = [n for n in ("index_dir", "embedded", "faiss_index") if getattr(spec, n)]
    if len(sources) != 1:
        clear = (f" (an override that picks one source clears the others, e.g. "
                 f"retriever.{sources[0]}=null)" if len(sources) > 1 else "")
        raise ConfigError(
            "retriever: set exactly one of index_dir (an index built by `research index "
            "build`), embedded (squad-open-mini, factbook-hop, factbook-facts) or faiss_index "
            f"(+ corpus, encoder) for FlashRAG's prebuilt files; got {sources or 'none'}{clear}")
    if spec.faiss_index and not spec.corpus:
        raise ConfigError("retriever.faiss_index needs retriever.corpus (the jsonl it indexes)")
    if spec.threads_per_query < 1:
        raise ConfigError("retriever.threads_per_query must be >= 1")
    _check_search_params(spec)
    if not 0 <= config.server.port <= 65535:
        raise ConfigError(f"server.port must be in 0..65535, got {config.server.port}")
    if config.server.num_retriever < 1:
        raise ConfigError(f"server.num_retriever must be >= 1, got {config.server.num_retriever}")
    for f in fields(config.limits):
        if getattr(config.limits, f.name) < 1:
            raise ConfigError(f"limits.{f.name} must be >= 1")
    _check_access(config.server)
    return config


def is_loopback(host: str) -> bool:
    """Whether ``host`` binds the loopback interface only.

    >>> is_loopback("127.0.0.1"), is_loopback("localhost"), is_loopback("0.0.0.0")
    (True, True, False)
    """
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def access_token(server: ServerConfig) -> str | None:
    """The service's access token (from ``server.api_key_env``), or None when it has none."""
    from research.http import env_token

    if server.api_key_env is None:
        return None
    return env_token(server.api_key_env, "server.api_key_env")


def _check_access(server: ServerConfig) -> None:
    token = access_token(server)
    if token is None and not is_loopback(server.host):
        if not server.allow_open:
            raise ConfigError(
                f"server.host={server.host} serves the corpus to the network with no access "
                "token: set server.api_key_env to an environment variable holding one (and "
                "retrieval.api_key_env on the clients), or server.allow_open=true to serve it "
                "open")
        logging.getLogger(__name__).warning(
            "serving %s with no access token (server.allow_open): anyone who can reach it can "
            "read the corpus and load the service", server.host)


def _check_search_params(spec: RetrieverConfig) -> None:
    if not spec.search_params and "search_params" not in spec.encoder:
        return
    from research.retrieval.dense import check_search_params

    if "search_params" in spec.encoder:
        raise ConfigError("set search_params as retriever.search_params, not inside "
                          "retriever.encoder")
    check_search_params(spec.search_params, "retriever.search_params")
    if spec.search_params and spec.embedded and spec.method != "dense":
        raise ConfigError("retriever.search_params apply to dense indexes: set "
                          "retriever.method=dense or remove them")


def _resolve_paths(tree: dict, base: Path) -> None:
    """Expand ``~`` and ``$VARS`` in the retriever's paths; relative ones are under ``base``."""
    retriever = tree.get("retriever")
    if not isinstance(retriever, dict):
        return
    for key in PATH_KEYS:
        value = retriever.get(key)
        if isinstance(value, str):
            path = Path(os.path.expandvars(os.path.expanduser(value)))
            retriever[key] = str(path if path.is_absolute() else (base / path).resolve())


def default_config_path() -> Path:
    """The default config, shipped with the package (``research/configs/serving_config.yaml``)."""
    return package_path("configs", "serving_config.yaml")


def load_config(path: str | os.PathLike | None = None,
                overrides: list[str] | tuple[str, ...] = (), **server) -> ServingConfig:
    """The config of ``path`` (default: :func:`default_config_path`) with ``overrides``
    (``section.key=value``) applied, then the ``server`` keywords that are not None (the
    command line's ``--port``, ``--host``, ``--num_retriever``)."""
    tree = configtree.load_tree(ServingConfig, path, overrides, "a serving config",
                                default=default_config_path(), relative_to_file=_resolve_paths)
    _resolve_paths(tree, Path.cwd())
    flags = {k: v for k, v in server.items() if v is not None}
    if flags:
        section = tree.get("server") or {}
        if not isinstance(section, dict):
            raise ConfigError(f"server must be a mapping of keys (e.g. server: {{port: 8000}}), "
                              f"got {section!r}")
        tree["server"] = {**section, **flags}
    return validate(configtree.from_dict(ServingConfig, tree, "a serving config"))


def describe() -> str:
    """Every key with its default and help (``research serve --keys``)."""
    return configtree.describe(ServingConfig)
