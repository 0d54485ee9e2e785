"""The request and response handling of four real clients of the retrieval service,
re-implemented from reading their public code (none of it is copied), so tests can drive the
real service exactly as those clients do, including their retries and failure paths.

Which clients are re-implemented here and which are installed: the original ReSearch rollout
and Search-R1's trainer are training repositories, not packages a user installs, and FlashRAG's
``RemoteRetriever`` (the copy vendored in ReSearch) is not in the ``flashrag-dev`` wheel: they
exist only here (FlashRAG itself, 0.1.2, is installed and runs this project's
``ReSearchPipeline`` in ``tests/test_client_packages.py``). verl's search client is both: here,
to drive its retry and failure paths against a service that fails on purpose, and installed
(verl 0.7.1's ``SearchTool`` under Ray, with SkyRL-gym 0.4.0's ``SearchEnv``) in
``tests/test_client_packages.py``.

* ``original_*``: the original ReSearch rollout (``vLLMRolloutWithSearch`` in
  Agent-RL/ReSearch before ReCall): ``POST /batch_search {"query": [...], "top_n": 5}`` (and
  ``/search`` for one query), each document's ``contents`` joined by blank lines; every call is
  wrapped in a retry of 5 tries, 1 s apart, that returns ``None`` when all fail.
* ``flashrag_*``: FlashRAG's ``RemoteRetriever`` (ReSearch's vendored copy, used by its naive,
  Iter-RetGen and IRCoT evaluations): the cache/rerank wrappers always ask for scores, so the
  body is ``{"query", "top_n", "return_score": true}`` and the caller does
  ``results, scores = response.json()``; the request (not the unpacking) is retried 10 times,
  1 s apart, and gives ``None`` when all fail.
* ``search_r1_*``: Search-R1's trainer (``LLMGenerationManager._batch_search``): every
  searching rollout's query in one ``POST /retrieve {"queries", "topk", "return_scores":
  true}``, then ``.json()["result"]`` with no status check, no timeout and no retry; each
  result list becomes ``"Doc i(Title: t) text"`` lines.
* ``verl_*``: verl's search tool (``verl/tools/utils/search_r1_like_utils.py``): the same
  ``/retrieve`` body with a per-request timeout (30 s), up to 10 tries on 5xx / connection
  errors / timeouts with delays growing by 1 s, a 4xx ends the call; the tool answers a JSON
  string ``{"result": text}`` where a failure becomes ``"Search error: ..."``.

Each client's sleep between tries is a parameter so tests can shorten it; the counts, bodies
and parsing are the clients'.
"""

from __future__ import annotations

import json
import re
import time

import requests


def _tries(n: int, sleep: float, call):
    """The original's and FlashRAG's ``retry``: ``n`` tries ``sleep`` s apart; None if all
    raise (the exception is swallowed)."""
    for i in range(n):
        try:
            return call()
        except Exception:  # noqa: BLE001 - the clients swallow every error
            if i < n - 1 and sleep:
                time.sleep(sleep)
    return None


# -- the original ReSearch rollout --------------------------------------------------------

def original_batch_search(url: str, queries: list[str], top_n: int = 5, sleep: float = 1.0):
    """A list of result texts, one per query, or None after 5 failed tries."""

    def call():
        if len(queries) == 0:
            return "invalid query"
        resp = requests.post(f"{url}/batch_search", json={"query": queries, "top_n": top_n})
        texts = []
        for docs in resp.json():
            texts.append("".join(f"{d['contents']}\n\n" for d in docs).strip())
        return texts

    return _tries(5, sleep, call)


def original_search(url: str, query: str, sleep: float = 1.0):
    def call():
        if query == "":
            return "invalid query"
        resp = requests.post(f"{url}/search", json={"query": query, "top_n": 5})
        return "".join(f"{d['contents']}\n\n" for d in resp.json()).strip()

    return _tries(5, sleep, call)


def original_turn(url: str, outputs: list[str], sleep: float = 1.0) -> list[str]:
    """One rollout turn: the last ``<search>`` of each output that asked, searched in one
    batch; the inserted ``<result>`` texts (what the model reads)."""
    queries = []
    for text in outputs:
        try:
            end = text.rindex("</search>")
            queries.append(text[text.rindex("<search>", 0, end) + len("<search>"):end].strip())
        except ValueError:
            queries.append("")
    results = original_batch_search(url, queries, sleep=sleep)
    # the original zips the positions with the results: None (retries spent) raises TypeError
    return [f" <result>\n{r}\n</result>" for _, r in zip(queries, results, strict=True)]


# -- FlashRAG's RemoteRetriever -----------------------------------------------------------

def flashrag_batch_search(url: str, queries: list[str], num: int = 5, sleep: float = 1.0):
    """``(results, scores)`` as the pipelines unpack them (raises where they would)."""
    body = _tries(10, sleep, lambda: requests.post(
        f"{url}/batch_search", json={"query": queries, "top_n": num, "return_score": True}
    ).json())
    results, scores = body
    return results, scores


def flashrag_search(url: str, query: str, num: int = 5, sleep: float = 1.0):
    body = _tries(10, sleep, lambda: requests.post(
        f"{url}/search", json={"query": query, "top_n": num, "return_score": True}).json())
    results, scores = body
    return results, scores


# -- Search-R1's trainer ------------------------------------------------------------------

def search_r1_postprocess(outputs: list[str]) -> list[tuple[str | None, str]]:
    """``(action, content)`` per output: the first ``<search>`` / ``<answer>`` pair."""
    out = []
    for text in outputs:
        m = re.search(r"<(search|answer)>(.*?)</\1>", text, re.DOTALL)
        out.append((m.group(1), m.group(2).strip()) if m else (None, ""))
    return out


def _passages(result: list[dict]) -> str:
    text = ""
    for i, item in enumerate(result):
        lines = item["document"]["contents"].split("\n")
        text += f"Doc {i + 1}(Title: {lines[0]}) {chr(10).join(lines[1:])}\n"
    return text


def search_r1_batch_search(url: str, queries: list[str], topk: int = 3) -> list[str]:
    """The trainer's search of one turn: raises (KeyError...) where the trainer crashes."""
    resp = requests.post(f"{url}/retrieve",
                         json={"queries": queries, "topk": topk, "return_scores": True})
    return [_passages(r) for r in resp.json()["result"]]


def search_r1_turn(url: str, outputs: list[str], topk: int = 3) -> list[str]:
    """``execute_predictions``' search part: the information block of each searching
    rollout, in order."""
    queries = [c for a, c in search_r1_postprocess(outputs) if a == "search"]
    results = search_r1_batch_search(url, queries, topk)
    assert len(results) == len(queries)
    return [f"\n\n<information>{r.strip()}</information>\n\n" for r in results]


# -- verl's search tool -------------------------------------------------------------------

def verl_call_search_api(url: str, queries: list[str], topk: int = 3, timeout: float = 30,
                         delay: float = 1.0) -> tuple[dict | None, str | None]:
    """``(response json, None)`` or ``(None, error)`` after the tool's tries."""
    payload = {"queries": queries, "topk": topk, "return_scores": True}
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    error = None
    for attempt in range(10):
        try:
            resp = requests.post(url, headers=headers, json=payload, timeout=timeout)
            if resp.status_code in (500, 502, 503, 504):
                error = f"Server Error ({resp.status_code})"
                if attempt < 9:
                    time.sleep(delay * (attempt + 1))
                continue
            resp.raise_for_status()
            return resp.json(), None
        except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as e:
            error = f"{type(e).__name__}: {e}"
            if attempt < 9:
                time.sleep(delay * (attempt + 1))
        except requests.exceptions.RequestException as e:
            return None, f"API Request Error: {e}"
        except json.JSONDecodeError as e:
            return None, f"JSON Decode Error: {e}"
    return None, f"API Call Failed: {error}"


def verl_passages(result: list[dict]) -> str:
    parts = []
    for i, item in enumerate(result):
        lines = item["document"]["contents"].split("\n")
        parts.append(f"Doc {i + 1} (Title: {lines[0]})\n" + "\n".join(lines[1:]) + "\n\n")
    return "".join(parts).strip()


def verl_search(url: str, queries: list[str], topk: int = 3, timeout: float = 30,
                delay: float = 1.0) -> tuple[str, str]:
    """The tool's ``(result JSON text, status)``: status is ``success``, ``no_results`` or
    ``api_error``, as in its metadata."""
    body, error = verl_call_search_api(f"{url}/retrieve", queries, topk, timeout, delay)
    if error:
        return json.dumps({"result": f"Search error: {error}"}), "api_error"
    results = body.get("result", [])
    if not results:
        return json.dumps({"result": "No search results found."}), "no_results"
    text = "\n---\n".join(verl_passages(r) for r in results)
    return json.dumps({"result": text}), "success"
