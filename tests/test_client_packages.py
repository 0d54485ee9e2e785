"""Real third-party clients, installed from PyPI in their own environments by
``bash scripts/setup_clients.sh``, driven against the real service on loopback, unchanged.
(``tests/real_clients.py`` re-implements the clients that cannot be installed here.)

* SkyRL-gym 0.4.0 (``.venv-skyrl``): ``SearchEnv.step`` with a ``<search>`` action posts
  ``/retrieve {"query": "<one string>", "topk", "return_scores": true}`` through
  ``skyrl_gym/tools/search.py`` and wraps the passages in ``<information>``.
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
