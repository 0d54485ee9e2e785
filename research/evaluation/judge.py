"""LLM-as-judge scoring through any OpenAI-compatible ``/v1/chat/completions`` endpoint.

The judge sees the question, the golden answers and the prediction and answers "yes" or "no";
``judge`` is 1.0 for an answer starting with "yes" (case-insensitive), else 0.0, and the
judge's own words are kept as ``judge_output``. The API key is read only from the environment
variable that ``judge.api_key_env`` names.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from research.errors import ConfigError
from research.http import JsonPoster, RequestFailed

JUDGE_PROMPT = (
    "You are checking an answer to a question against the reference answers.\n"
    "Question: {question}\nReference answers: {golden}\nPredicted answer: {prediction}\n"
    "Does the predicted answer mean the same as one of the reference answers? "
    "Reply with yes or no only."
)


def judge_payload(record: dict, model: str, max_tokens: int) -> dict:
    content = JUDGE_PROMPT.format(question=record["question"],
                                  golden="; ".join(record["golden_answers"]),
                                  prediction=record["prediction"] or "(no answer)")
    return {"model": model, "messages": [{"role": "user", "content": content}],
            "temperature": 0.0, "max_tokens": max_tokens}


def verdict(text: str) -> float:
    """1.0 when the judge said yes.

    >>> verdict(" Yes."), verdict("no"), verdict("")
    (1.0, 0.0, 0.0)
    """
    return 1.0 if text.strip().lower().startswith("yes") else 0.0


def judge_records(records: Sequence[dict], judge, workers: int = 8) -> list[dict]:
    """``records`` with ``judge`` and ``judge_output`` set (records already judged are kept).
    A request that fails after its retries leaves ``judge_error`` on its record instead; a
    rerun judges those again."""
    headers = {}
    if judge.api_key_env:
        key = os.environ.get(judge.api_key_env)
        if not key:
            raise ConfigError(f"judge.api_key_env names {judge.api_key_env}, which is not set")
        headers["authorization"] = f"Bearer {key}"
    poster = JsonPoster(judge.base_url.rstrip("/").removesuffix("/v1"), what="judge",
                        timeout=120.0, retries=3, backoff=0.5, max_backoff=8.0, headers=headers,
                        max_connections=workers)

    def one(record: dict) -> dict:
        if "judge" in record:
            return record
        try:
            body = poster.post("/v1/chat/completions",
                               judge_payload(record, judge.model, judge.max_tokens))
            text = body["choices"][0]["message"]["content"] or ""
        except (RequestFailed, KeyError, IndexError, TypeError) as e:  # judged on a rerun
            return {**{k: v for k, v in record.items() if k != "judge_error"},
                    "judge_error": str(e)}
        return {**{k: v for k, v in record.items() if k != "judge_error"},
                "judge": verdict(text), "judge_output": text}

    try:
        with ThreadPoolExecutor(workers) as pool:
            return list(pool.map(one, records))
    finally:
        poster.close()
