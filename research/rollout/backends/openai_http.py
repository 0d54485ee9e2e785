"""OpenAI-compatible HTTP backend: ``/v1/completions`` of vLLM, SGLang or
``research.rollout.server``, with token-id prompts and token-id results.

One request per sequence, sent concurrently from a bounded thread pool; in a rollout
(:meth:`OpenAIGenerator.generate_continuous`) each sequence's next turn is sent as soon as its
search is done, without waiting for the rest of the turn. Every request has a
timeout; connection errors, timeouts and 5xx answers are retried with exponential backoff; a
4xx answer raises :class:`GenerationRequestError` at once with the server's message, and the
last failed attempt raises :class:`GenerationError`. An API key is read only from the
environment variable named by ``api_key_env`` and sent as ``Authorization: Bearer``.

Request fields (confirmed against ``vllm/entrypoints/openai/protocol.py`` ``CompletionRequest``
and ``sglang/srt/entrypoints/openai/protocol.py`` ``CompletionRequest``): ``prompt`` accepts
``list[int]`` in both; ``max_tokens``, ``temperature`` (0 = greedy in both), ``top_p``,
``stop``, ``stop_token_ids``, ``seed``, ``logprobs`` (an int: top-N), ``skip_special_tokens``
are shared.
vLLM-only: ``include_stop_str_in_output`` (keep the stop string in the text) and
``return_tokens_as_token_ids`` (logprob tokens and top-logprob keys become ``"token_id:N"``;
``serving_completion.py`` ``_get_decoded_token``). SGLang-only: ``no_stop_trim`` (its
equivalent of ``include_stop_str_in_output``). Both (recent versions): ``return_token_ids``
(the choice carries ``token_ids``). Each server ignores the other's extra fields (vLLM logs
them; SGLang's pydantic model ignores unknown keys).

Response (both): ``choices[0]`` has ``text``, ``finish_reason`` ("stop" / "length"; SGLang may
also say "abort"), and ``logprobs`` = ``{tokens, token_logprobs, top_logprobs, text_offset}``.
vLLM's ``top_logprobs[t]`` holds the sampled token plus the top N. Which stop matched: vLLM
``stop_reason`` (the stop string, a stop token id, or None for EOS), SGLang ``matched_stop``
(the string or the EOS token id).

Token ids come, in order of preference, from ``choices[0].token_ids``, from ``"token_id:N"``
logprob tokens, or, last, by encoding the returned text with the tokenizer. That fallback
(``extra["reencoded"] = True``) can shift token boundaries relative to what was sampled; its
log-probs are the server's only when the counts agree, otherwise NaN
(``extra["logprobs_unaligned"] = True``). Do not train on re-encoded generations.

EOS: the request asks the server to stop on the whole EOS set (``stop_token_ids``; the set is
:func:`~research.rollout.generation.model_eos_ids`). An EOS anywhere in the ids ends the
generation there (``"eos"``), as in the Hugging Face backend, with the log-prob the server
gave it. vLLM (``token_ids`` or ``"token_id:N"`` tokens), SGLang and the project's model
server return the EOS that stopped them in the ids and log-probs, so the rollout trains on
the EOS as sampled. A server that stopped for EOS but returned no EOS id gives a generation
that ends without one (``extra["eos_not_returned"] = True``): no token is appended, since a
token the model did not sample (with a made-up log-prob) must not be trained on.

Log-probs: vLLM returns, by default, those of the raw model distribution (before temperature
and top-p; its ``--logprobs-mode`` changes that), while the Hugging Face backend records those
of the sampling distribution. They agree for greedy decoding and temperature 1 without top-p.

Seeds: ``SamplingParams.seed`` ``s`` becomes ``s + i`` for the ``i``-th sequence of a call, so
several samples of one prompt differ (a server seeds each request separately).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

from research.errors import ConfigError
from research.http import JsonPoster, RequestFailed, RequestRejected
from research.rollout.generation import (
    FirstTurns,
    Generation,
    NextTurn,
    SamplingParams,
    check_batch,
    model_eos_ids,
)

logger = logging.getLogger(__name__)

TOKEN_ID_PREFIX = "token_id:"


class GenerationError(RequestFailed):
    """A generation request that failed after the backend's retries (or was rejected)."""


class GenerationRequestError(GenerationError, RequestRejected):
    """The server rejected the request (4xx): retrying cannot help."""


def completion_payload(model: str, prompt: Sequence[int], params: SamplingParams,
                       top_logprobs: int = 0, seed: int | None = None,
                       stop_token_ids: Sequence[int] = ()) -> dict:
    """The ``/v1/completions`` body for one sequence (vLLM and SGLang fields together);
    ``stop_token_ids``: the EOS set, stopped on besides the server's own EOS."""
    payload = {
        "model": model,
        "prompt": [int(t) for t in prompt],
        "max_tokens": params.max_new_tokens,
        "temperature": params.temperature,
        "top_p": 1.0 if params.greedy else params.top_p,
        "n": 1,
        "echo": False,
        "stream": False,
        "logprobs": max(1, top_logprobs),
        "skip_special_tokens": False,
        "include_stop_str_in_output": True,  # vLLM
        "no_stop_trim": True,  # SGLang
        "return_tokens_as_token_ids": True,  # vLLM
        "return_token_ids": True,  # vLLM (recent) and SGLang
    }
    if params.stop:
        payload["stop"] = list(params.stop)
    if stop_token_ids:
        payload["stop_token_ids"] = sorted(int(t) for t in stop_token_ids)
    if seed is not None:
        payload["seed"] = seed
    return payload


def _ids_from_tokens(tokens: Sequence[str]) -> list[int] | None:
    """``["token_id:12", ...]`` -> ``[12, ...]``; None if any token is a plain string."""
    ids = []
    for tok in tokens:
        if not (isinstance(tok, str) and tok.startswith(TOKEN_ID_PREFIX)):
            return None
        try:
            ids.append(int(tok[len(TOKEN_ID_PREFIX):]))
        except ValueError:
            return None
    return ids


def _key_to_id(key: str, tokenizer) -> int | None:
    ids = _ids_from_tokens([key])
    if ids is not None:
        return ids[0]
    encoded = tokenizer.encode(key, add_special_tokens=False)  # a plain-text key (SGLang)
    return encoded[0] if len(encoded) == 1 else None


def _top_logprobs(entries: Sequence[dict | None], tokenizer, n: int) -> list[dict[int, float]]:
    """Per token: ``{token_id: logprob}``, the ``n`` most likely first (keys that cannot be
    mapped to one token id are dropped)."""
    out = []
    for entry in entries:
        pairs = ((_key_to_id(k, tokenizer), float(v)) for k, v in (entry or {}).items())
        best = sorted(((i, v) for i, v in pairs if i is not None), key=lambda p: -p[1])
        out.append(dict(best[:n]))
    return out


def _earliest_stop(text: str, stop: Sequence[str]) -> str | None:
    """The stop string whose first occurrence ends first in ``text``."""
    found = [(text.find(s) + len(s), s) for s in stop if s and s in text]
    return min(found)[1] if found else None


def _token_ids(choice: dict, tokens: list, token_lps: list[float], tokenizer, extra: dict):
    ids = choice.get("token_ids")
    if ids is None:
        ids = _ids_from_tokens(tokens)
    if ids is not None:
        if len(ids) != len(token_lps):
            raise GenerationError(f"server returned {len(ids)} token ids but "
                                  f"{len(token_lps)} log-probs")
        return [int(i) for i in ids], token_lps
    ids = tokenizer.encode(choice.get("text") or "", add_special_tokens=False)
    extra["reencoded"] = True
    if len(ids) != len(token_lps):
        extra["logprobs_unaligned"] = True
        token_lps = [math.nan] * len(ids)
    return ids, token_lps


def generation_from_choice(choice: dict, tokenizer, eos_token_ids: frozenset[int],
                           stop: Sequence[str] = (), top_logprobs: int = 0) -> Generation:
    """Turn ``choices[i]`` of a completions response into a :class:`Generation`."""
    lp = choice.get("logprobs") or {}
    tokens = list(lp.get("tokens") or [])
    token_lps = [float(x) if x is not None else math.nan for x in lp.get("token_logprobs") or []]
    extra: dict = {}
    ids, logprobs = _token_ids(choice, tokens, token_lps, tokenizer, extra)
    tops = (_top_logprobs(lp.get("top_logprobs") or [], tokenizer, top_logprobs)
            if top_logprobs else [])

    def done(n: int, reason, stop_string=None) -> Generation:
        if top_logprobs:
            extra["top_logprobs"] = tops[:n]
        return Generation(ids[:n], logprobs[:n], reason, stop_string, extra)

    eos_at = next((j for j, t in enumerate(ids) if t in eos_token_ids), None)
    if eos_at is not None:
        return done(eos_at + 1, "eos")
    finish = choice.get("finish_reason")
    if finish == "length":
        return done(len(ids), "length")
    if finish != "stop":
        raise GenerationError(f"unexpected finish_reason {finish!r}: {str(choice)[:300]}")
    matched = choice.get("stop_reason", choice.get("matched_stop"))
    if isinstance(matched, str) and matched in stop:
        return done(len(ids), "stop", matched)
    if not isinstance(matched, int):  # None: EOS, or a server that does not say; look
        text = choice.get("text") or tokenizer.decode(ids)
        hit = _earliest_stop(text, stop)
        if hit is not None:
            return done(len(ids), "stop", hit)
    # EOS, or a stop token id the server named: kept when returned (sampled, with its
    # log-prob); never appended when not
    if not ids or ids[-1] != matched:
        extra["eos_not_returned"] = True
    return done(len(ids), "eos")


class OpenAIGenerator:
    """Generates through an OpenAI-compatible ``/v1/completions`` server.

    ``base_url`` is the server root (``http://host:8000``; a trailing ``/v1`` is accepted).
    ``top_logprobs > 0`` asks for that many alternatives per token and puts them in
    ``Generation.extra["top_logprobs"]`` as ``{token_id: logprob}`` dicts, most likely first.
    ``eos_token_ids``: the ids that end a sequence, by default
    :func:`~research.rollout.generation.model_eos_ids` of the folder the tokenizer was loaded
    from (``tokenizer.name_or_path``).

    >>> gen = OpenAIGenerator("http://127.0.0.1:8000", "model", tokenizer)  # doctest: +SKIP
    >>> gen.generate([[9707, 11]], [SamplingParams(64, temperature=0)])  # doctest: +SKIP
    """

    def __init__(self, base_url: str, model: str, tokenizer, *, timeout: float = 120.0,
                 retries: int = 3, backoff: float = 0.5, max_backoff: float = 8.0,
                 max_concurrency: int = 32, api_key_env: str = "OPENAI_API_KEY",
                 top_logprobs: int = 0, eos_token_ids: Sequence[int] | None = None):
        if retries < 0 or max_concurrency < 1 or top_logprobs < 0:
            raise ConfigError("retries and top_logprobs must be >= 0, max_concurrency >= 1")
        self.base_url = base_url.rstrip("/").removesuffix("/v1")
        self.model = model
        self.tokenizer = tokenizer
        self.max_concurrency = max_concurrency
        self.top_logprobs = top_logprobs
        if eos_token_ids is None:
            eos_token_ids = model_eos_ids(getattr(tokenizer, "name_or_path", None), tokenizer)
        self.eos_token_ids = frozenset(int(e) for e in eos_token_ids)
        headers = {}
        if key := os.environ.get(api_key_env):
            headers["authorization"] = f"Bearer {key}"
        self._poster = JsonPoster(
            self.base_url, what="generation", timeout=timeout, retries=retries, backoff=backoff,
            max_backoff=max_backoff, failed=GenerationError, rejected=GenerationRequestError,
            headers=headers, max_connections=max_concurrency,
        )

    def __repr__(self) -> str:
        return f"OpenAIGenerator({self.base_url!r}, model={self.model!r})"

    def generate(self, prompts: Sequence[Sequence[int]], params: Sequence[SamplingParams]
                 ) -> list[Generation]:
        collect = FirstTurns(len(prompts))
        self.generate_continuous(prompts, params, collect)
        return collect.generations

    continuous = True  # run_rollouts drives generate_continuous

    def generate_continuous(self, prompts: Sequence[Sequence[int]],
                            params: Sequence[SamplingParams], next_turn: NextTurn) -> None:
        """Every sequence's turns without a barrier between them: whenever requests
        complete, ``next_turn`` hears all that completed (their searches go together) and
        each next turn is sent at once, while the other requests are still being served; the
        server batches what is in flight (vLLM and SGLang continuously, with their prefix
        caches keeping what a sequence held). At most ``max_concurrency`` requests are in
        flight; a request that fails after its retries raises, as in :meth:`generate`."""
        if not check_batch(prompts, params):
            return
        workers = min(self.max_concurrency, len(prompts))
        with ThreadPoolExecutor(workers, thread_name_prefix="openai-gen") as pool:
            running = {pool.submit(self._one, prompt, p, i): i
                       for i, (prompt, p) in enumerate(zip(prompts, params, strict=True))}
            try:
                while running:
                    done, _ = wait(running, return_when=FIRST_COMPLETED)
                    ended = sorted(((running.pop(f), f.result()) for f in done),
                                   key=lambda e: e[0])
                    nexts = next_turn(ended)
                    for (i, _), nxt in zip(ended, nexts, strict=True):
                        if nxt is not None:
                            running[pool.submit(self._one, nxt[0], nxt[1], i)] = i
            except BaseException:
                for f in running:
                    f.cancel()
                raise

    def _one(self, prompt: Sequence[int], p: SamplingParams, index: int) -> Generation:
        seed = None if p.seed is None else p.seed + index
        body = self._post(completion_payload(self.model, prompt, p, self.top_logprobs, seed,
                                             self.eos_token_ids))
        try:
            choice = body["choices"][0]
        except (KeyError, IndexError, TypeError):
            raise GenerationError(f"{self.base_url}/v1/completions answered in an unexpected "
                                  f"shape: {str(body)[:300]}") from None
        return generation_from_choice(choice, self.tokenizer, self.eos_token_ids, p.stop,
                                      self.top_logprobs)

    def _post(self, payload: dict) -> dict:
        return self._poster.post("/v1/completions", payload)

    def close(self) -> None:
        self._poster.close()

    def __enter__(self) -> OpenAIGenerator:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

