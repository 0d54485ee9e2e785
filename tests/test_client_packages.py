"""Real third-party clients, installed from PyPI in their own environments by
``bash scripts/setup_clients.sh``, driven against the real service on loopback, unchanged.
(``tests/real_clients.py`` re-implements the clients that cannot be installed here.)

* SkyRL-gym 0.4.0 (``.venv-skyrl``): ``SearchEnv.step`` with a ``<search>`` action posts
  ``/retrieve {"query": "<one string>", "topk", "return_scores": true}`` through
  ``skyrl_gym/tools/search.py`` and wraps the passages in ``<information>``.
* verl 0.7.1 (``.venv-verl07``, the last release with a search tool): ``SearchTool`` under a
  local Ray, its searches run by a Ray actor pool with a rate-limiter actor, posts
  ``/retrieve {"queries": [...], "topk", "return_scores": true}`` through
  ``verl/tools/utils/search_r1_like_utils.py`` and answers ``{"result": text}``.
"""

from __future__ import annotations

import json
import subprocess

from conftest import REPO, missing, token

SKYRL_STEP = """
import json, sys
from skyrl_gym.envs.search.env import SearchEnv, SearchEnvConfig

url, query = sys.argv[1], sys.argv[2]
env = SearchEnv(SearchEnvConfig(search_url=url + "/retrieve", topk=2, log_requests=False),
                extras={"reward_spec": {"ground_truth": {"target": ["alpha"]}}, "max_turns": 3})
env.init([{"role": "user", "content": "What is it?"}])
out = env.step(f"<think> search it </think> <search> {query} </search>")
print(json.dumps({"observations": out["observations"], "done": out["done"],
                  "metadata": out["metadata"]}))
"""


VERL_SEARCH_TOOL = """
import asyncio, json, sys
import ray
from verl.tools.schemas import OpenAIFunctionToolSchema
from verl.tools.search_tool import SearchTool

url, queries = sys.argv[1], sys.argv[2:]
ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
schema = OpenAIFunctionToolSchema.model_validate({"type": "function", "function": {
    "name": "search", "description": "Searches the corpus.", "parameters": {
        "type": "object", "properties": {"query_list": {"type": "array",
        "items": {"type": "string"}}}, "required": ["query_list"]}}})
tool = SearchTool({"retrieval_service_url": url + "/retrieve", "topk": 2, "num_workers": 2,
                   "rate_limit": 2, "timeout": 30}, schema)

async def main():
    instance, _ = await tool.create()
    response, reward, metrics = await tool.execute(instance, {"query_list": queries})
    return {"text": response.text, "reward": reward, "metrics": metrics}

print(json.dumps(asyncio.run(main())))
ray.shutdown()
"""


def client_python(venv: str):
    python = REPO / venv / "bin" / "python"
    if not python.exists():
        missing(f"{venv} is not built: bash scripts/setup_clients.sh")
    return str(python)


def test_skyrl_gym_search_env_reads_passages_from_the_service(service_url):
    python = client_python(".venv-skyrl")
    done = subprocess.run([python, "-c", SKYRL_STEP, service_url, token(8)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert not out["done"] and out["metadata"]["tool_input"] == [f" {token(8)} "]
    [observation] = out["observations"]
    text = observation["content"]
    assert text.startswith("\n<information>") and text.endswith("</information>\n")
    passages = json.loads(text.removeprefix("\n<information>").removesuffix(
        "</information>\n"))["result"]
    # only the query's own document holds its unique token
    assert passages.startswith('Doc 1: "Title 8"') and token(8) in passages
    assert "Doc 2:" not in passages and "error" not in passages.lower()


def test_verl_071_search_tool_reads_passages_under_ray(service_url):
    python = client_python(".venv-verl07")
    done = subprocess.run([python, "-c", VERL_SEARCH_TOOL, service_url, token(3), token(11)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["metrics"]["status"] == "success", out
    assert out["metrics"]["query_count"] == 2 and out["metrics"]["api_request_error"] is None
    text = json.loads(out["text"])["result"]
    # one block per query, in order, each led by the document holding the query's token
    first, second = text.split("\n---\n")
    assert first.startswith('Doc 1 (Title: "Title 3")') and token(3) in first
    assert second.startswith('Doc 1 (Title: "Title 11")') and token(11) in second
    assert "error" not in text.lower() and "failed" not in text.lower()
