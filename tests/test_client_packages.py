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
* FlashRAG 0.1.2 (``.venv-flashrag``, ``flashrag-dev`` installed ``--no-deps``): this project's
  ``ReSearchPipeline`` run by FlashRAG on a tiny dataset, its config built by the adapter's
  ``FlashRAGConfig`` (the wheel lacks the defaults file ``Config`` reads), its dataset by
  ``get_dataset``, scored by FlashRAG's evaluator; searching through FlashRAG's own BM25
  retriever, and through the service (``/batch_search`` with ``"return_score": true``, the
  request of FlashRAG's ``RemoteRetriever``, which the wheel lacks).
"""

from __future__ import annotations

import json
import os
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


FLASHRAG_PIPELINE = r"""
import json, re, sys
from pathlib import Path

import bm25s, httpx, Stemmer
from flashrag.config import Config
from flashrag.utils import get_dataset

from research.evaluation.flashrag_adapter import FlashRAGConfig, ReSearchPipeline
from research.rollout.generation import Generation
from research.rollout.settings import RolloutSettings
from transformers import AutoTokenizer

work, corpus, model, url = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
out = {}
try:  # as shipped: the wheel has no basic_config.yaml
    Config(config_dict={"save_dir": str(work / "shipped")})
except FileNotFoundError as e:
    out["shipped_config_error"] = str(e)


class Scripted:
    # searches the question's word, then answers the title of the first passage it read
    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.eos_token_ids = frozenset({tokenizer.eos_token_id})

    def generate(self, prompts, params):
        found = []
        for prompt, p in zip(prompts, params, strict=True):
            text = self.tokenizer.decode(prompt)
            if "<result>" not in text.rsplit("Assistant:", 1)[1]:
                word = re.search(r"What is (\w+)\?", text)[1]
                said, end = f" <search> {word} </search>", True
            else:
                title = re.search(r'<result>\s*"([^"]+)"', text)[1]
                said, end = f" <answer> \\boxed{{{title}}} </answer>", False
            ids = self.tokenizer.encode(said, add_special_tokens=False)
            ids = (ids if end else ids + [self.tokenizer.eos_token_id])[: p.max_new_tokens]
            found.append(Generation(ids, [0.0] * len(ids), "stop" if end else "eos",
                                    "</search>" if end else None))
        return found


class ServiceRetriever:
    # FlashRAG's RemoteRetriever request: POST /batch_search with "return_score": true
    def __init__(self, url):
        self.url, self.calls = url, 0

    def batch_search(self, query_list, num=None, return_score=False):
        self.calls += 1
        body = {"query": query_list, "top_n": num, "return_score": True}
        docs, scores = httpx.post(self.url + "/batch_search", json=body, timeout=30).json()
        return (docs, scores) if return_score else docs


# the bm25s index FlashRAG's BM25Retriever loads (its own index builder indexes characters)
docs = [json.loads(line) for line in open(corpus)]
index = bm25s.BM25()
index.index(bm25s.tokenize([d["contents"] for d in docs], stemmer=Stemmer.Stemmer("english"),
                           show_progress=False), show_progress=False)
index.save(str(work / "bm25"), corpus=docs)
tokenizer = AutoTokenizer.from_pretrained(model)
for name in ("bm25", "service", "tiny"):
    config = FlashRAGConfig(config_dict={
        "data_dir": str(work / "data"), "dataset_name": "tiny", "split": ["dev"],
        "save_dir": str(work / "out"), "save_note": name, "retrieval_method": "bm25",
        "index_path": str(work / "bm25"), "retrieval_topk": 2,
        "generator_model_path": model, "metrics": ["em", "acc", "f1"]})
    dataset = get_dataset(config)["dev"]
    if name == "tiny":  # the model of generator_model_path, loaded by the pipeline
        pipeline = ReSearchPipeline(config, rollout=RolloutSettings(max_response_tokens=12))
    else:  # FlashRAG's retriever from the config, or the service
        pipeline = ReSearchPipeline(
            config, retriever=ServiceRetriever(url) if name == "service" else None,
            generator=Scripted(tokenizer), rollout=RolloutSettings(max_response_tokens=256))
    pipeline.run(dataset)
    save_dir = Path(config["save_dir"])
    out[name] = {"retriever": type(pipeline.retriever).__name__,
                 "calls": getattr(pipeline.retriever, "calls", None),
                 "items": [item.to_dict() for item in dataset],
                 "metric_file": (save_dir / "metric_score.txt").read_text(),
                 "saved": json.loads((save_dir / "intermediate_data.json").read_text())}
print(json.dumps(out))
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


def test_flashrag_runs_the_research_pipeline_and_scores_it(service_url, corpus_file, tiny_path,
                                                          tmp_path):
    python = client_python(".venv-flashrag")
    questions = tmp_path / "data" / "tiny" / "dev.jsonl"
    questions.parent.mkdir(parents=True)
    numbers = (3, 17, 42)
    questions.write_text("".join(json.dumps({"id": f"q{i}", "question": f"What is {token(i)}?",
                                             "golden_answers": [f"Title {i}"]}) + "\n"
                                 for i in numbers))
    done = subprocess.run([python, "-c", FLASHRAG_PIPELINE, str(tmp_path), str(corpus_file),
                           str(tiny_path), service_url], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    # FlashRAG's own Config fails as the wheel ships it; FlashRAGConfig stands in
    assert "basic_config.yaml" in out["shipped_config_error"]
    # FlashRAG's BM25 retriever (made by the pipeline from the config) and the service give
    # each question's own document: the answer is its title
    assert out["bm25"]["retriever"] == "BM25Retriever"
    assert out["service"]["retriever"] == "ServiceRetriever" and out["service"]["calls"] == 1
    for name in ("bm25", "service"):
        items = out[name]["items"]
        assert [it["output"]["pred"] for it in items] == [f"Title {i}" for i in numbers]
        assert [it["output"]["num_searches"] for it in items] == [1, 1, 1]
        for i, it in zip(numbers, items, strict=True):
            response = it["output"]["final_response"]
            assert f"<search> {token(i)} </search> <result>" in response
            assert f'"Title {i}"' in response and token(i) in response.split("<result>")[1]
            assert it["output"]["metric_score"] == {"em": 1.0, "acc": 1.0, "f1": 1.0}
        # FlashRAG's evaluator wrote its scores and the items
        assert out[name]["metric_file"] == "em: 1.0\nacc: 1.0\nf1: 1.0\n"
        assert out[name]["saved"] == items
    # the tiny random model, loaded from generator_model_path, answers (nothing) and is scored
    tiny = out["tiny"]
    assert tiny["retriever"] == "BM25Retriever"
    for it in tiny["items"]:
        assert it["output"]["final_response"] and isinstance(it["output"]["pred"], str)
        assert isinstance(it["output"]["num_searches"], int)
        assert set(it["output"]["metric_score"]) == {"em", "acc", "f1"}
    assert tiny["metric_file"].startswith("em: ")
