"""ReSearch inside FlashRAG: a ``ReSearchPipeline`` for users of FlashRAG's evaluation.

FlashRAG is imported only when ``ReSearchPipeline`` or ``FlashRAGConfig`` is first used
(``pip install flashrag-dev``; see ``docs/evaluation.md`` for the dependencies its wheel leaves
out); the rest of this module needs nothing from it::

    from flashrag.utils import get_dataset
    from research.evaluation.flashrag_adapter import FlashRAGConfig, ReSearchPipeline

    config = FlashRAGConfig("my_config.yaml")  # or FlashRAGConfig(config_dict={...})
    pipeline = ReSearchPipeline(config, base_url="http://127.0.0.1:8000")
    dataset = pipeline.run(get_dataset(config)["dev"])

``FlashRAGConfig`` is FlashRAG's ``Config`` (same arguments) that also works where FlashRAG's
built-in defaults file is missing: the ``flashrag-dev`` wheels on PyPI (0.1.2 included) lack
``flashrag/config/basic_config.yaml``, which ``Config`` always reads, so there every
``Config(...)`` fails with ``FileNotFoundError``. Where the file is installed (a source
checkout) it is used as FlashRAG does; where it is not, :data:`FLASHRAG_DEFAULTS` take its
place.

The pipeline generates with the project's backends (token ids in and out, so the rollout
never re-encodes what the model wrote): an OpenAI-compatible server at ``base_url`` (SGLang,
vLLM), or the model of ``config["generator_model_path"]`` loaded locally. It retrieves with
FlashRAG's own retriever (``config``'s, or the one passed in). The rollout settings are
``rollout`` (a :class:`~research.rollout.settings.RolloutSettings`), by default those a
training run recorded in the model folder, with ``retrieval_topk`` documents per search. Each
item gets ``pred`` (the boxed answer), ``final_response`` and ``num_searches``, and
FlashRAG's ``evaluate`` scores the dataset.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Sequence
from pathlib import Path

from research.errors import MissingDependency
from research.retrieval.base import Hit
from research.retrieval.client import SearchError

#: The settings FlashRAG 0.1.2's config, pipelines, dataset, BM25 / dense retrievers and
#: evaluator read, with the values of FlashRAG's own ``basic_config.yaml``, except: ``gpu_id``
#: is None (CPU unless set: FlashRAG's "0,1,2,3" would claim four GPUs), ``framework`` is "hf"
#: (FlashRAG's "fschat" is not installed with it), ``metrics`` leave out ``input_tokens``
#: (it downloads tiktoken's GPT-4 vocabulary and counts a ``prompt`` this pipeline does not
#: write) and ``bm25_backend`` is "bm25s" (read by the BM25 retriever, absent from the file;
#: pyserini needs Java). Any of them can be overridden by the file or dict given.
FLASHRAG_DEFAULTS: dict = {
    "model2path": {"e5": "intfloat/e5-base-v2", "bge": "intfloat/e5-base-v2",
                   "contriever": "facebook/contriever"},
    "model2pooling": {"e5": "mean", "bge": "cls", "contriever": "mean", "jina": "mean",
                      "dpr": "cls"},
    "method2index": {"e5": None, "bm25": None, "contriever": None},
    "data_dir": "dataset/", "save_dir": "output/", "gpu_id": None, "dataset_name": "nq",
    "split": ["test"], "test_sample_num": None, "random_sample": False, "seed": 2024,
    "save_intermediate_data": True, "save_note": "experiment",
    "retrieval_method": "e5", "retrieval_model_path": None, "index_path": None,
    "faiss_gpu": False, "corpus_path": None, "use_sentence_transformer": False,
    "bm25_backend": "bm25s", "retrieval_topk": 5, "retrieval_batch_size": 256,
    "retrieval_use_fp16": True, "retrieval_query_max_length": 128,
    "save_retrieval_cache": False, "use_retrieval_cache": False, "retrieval_cache_path": None,
    "retrieval_pooling_method": None, "instruction": None,
    "use_reranker": False, "rerank_model_name": None, "rerank_model_path": None,
    "rerank_pooling_method": None, "rerank_topk": 5, "rerank_max_length": 512,
    "rerank_batch_size": 256, "rerank_use_fp16": True,
    "framework": "hf", "generator_model": "llama3-8B-instruct",
    "openai_setting": {"api_key": None, "base_url": None}, "generator_model_path": None,
    "generator_max_input_len": 1024, "generator_batch_size": 4,
    "generation_params": {"max_tokens": 32}, "use_fid": False, "gpu_memory_utilization": 0.85,
    "refiner_name": None, "refiner_model_path": None,
    "metrics": ["em", "f1", "acc", "precision", "recall"],
    "metric_setting": {"retrieval_recall_topk": 5, "tokenizer_name": None},
    "save_metric_score": True,
}


class FlashRAGSearcher:
    """The rollout's ``BatchSearcher`` over a FlashRAG retriever (``batch_search(queries,
    num=k)`` returning lists of ``{"id", "contents"}`` documents)."""

    def __init__(self, retriever):
        self.retriever = retriever

    def batch_search(self, queries: Sequence[str], k: int) -> list[list[Hit]]:
        try:
            found = self.retriever.batch_search(list(queries), num=k, return_score=True)
        except Exception as e:  # any retriever failure becomes the rollout's counted failure
            raise SearchError(f"FlashRAG retriever failed: {e}") from e
        docs, scores = found if isinstance(found, tuple) else (found, None)
        out = []
        for i, per_query in enumerate(docs):
            row_scores = scores[i] if scores is not None else [0.0] * len(per_query)
            out.append([Hit(str(d.get("id", j)), d["contents"], float(s))
                        for j, (d, s) in enumerate(zip(per_query, row_scores, strict=True))])
        return out


def _pipeline_class():
    try:
        from flashrag.pipeline import BasicPipeline
        from flashrag.utils import get_retriever
    except ImportError as e:
        raise MissingDependency("ReSearchPipeline needs FlashRAG: pip install flashrag-dev "
                          f"(import failed: {e})") from None

    from research.evaluation.config import MethodSection
    from research.evaluation.methods import Context, research
    from research.rollout import settings as rollout_settings
    from research.rollout.settings import RolloutSettings

    class ReSearchPipeline(BasicPipeline):
        """FlashRAG pipeline running the ReSearch rollout (greedy)."""

        def __init__(self, config, prompt_template=None, retriever=None, generator=None,
                     base_url: str | None = None, served_model_name: str | None = None,
                     rollout: RolloutSettings | None = None, batch_size: int = 16,
                     tokenizer=None):
            super().__init__(config, prompt_template)
            self.retriever = retriever if retriever is not None else get_retriever(config)
            self.batch_size = batch_size
            topk = int(config["retrieval_topk"] or 5)
            if rollout is None:  # what the model was trained with, FlashRAG's top-k
                rollout = rollout_settings.from_dict({**rollout_settings.recorded(
                    config["generator_model_path"]), "top_k": topk})
            self.method, self.rollout = MethodSection(top_k=topk), rollout
            self.generator, self.tokenizer = generator, tokenizer
            if generator is None:
                self.generator, self.tokenizer = _generator(config, base_url, served_model_name)
            elif tokenizer is None:  # a generator passed in: its tokenizer, else the model's
                self.tokenizer = getattr(generator, "tokenizer", None) or _tokenizer(config)

        def run(self, dataset, do_eval=True, pred_process_fun=None):
            ctx = Context(self.generator, self.tokenizer, FlashRAGSearcher(self.retriever),
                          self.method, self.rollout)
            items = [{"id": str(i), "question": q, "golden_answers": g}
                     for i, (q, g) in enumerate(zip(dataset.question, dataset.golden_answers,
                                                    strict=True))]
            answers = []
            for b in range(0, len(items), self.batch_size):
                answers += research(items[b : b + self.batch_size], ctx)
            dataset.update_output("final_response", [a.response for a in answers])
            dataset.update_output("num_searches", [a.searches for a in answers])
            dataset.update_output("pred", [a.prediction for a in answers])
            return self.evaluate(dataset, do_eval=do_eval, pred_process_fun=pred_process_fun)

    return ReSearchPipeline


def _config_class():
    try:
        from flashrag.config import Config
    except ImportError as e:
        raise MissingDependency("FlashRAGConfig needs FlashRAG: pip install flashrag-dev "
                                f"(import failed: {e})") from None

    class FlashRAGConfig(Config):
        """FlashRAG's ``Config``; its built-in defaults are FlashRAG's ``basic_config.yaml``
        where installed, else :data:`FLASHRAG_DEFAULTS`."""

        def _get_internal_config(self):
            if Path(inspect.getfile(Config)).with_name("basic_config.yaml").exists():
                return super()._get_internal_config()
            return copy.deepcopy(FLASHRAG_DEFAULTS)  # Config updates nested dicts in place

    return FlashRAGConfig


def _tokenizer(config):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(config["generator_model_path"])


def _generator(config, base_url: str | None, served_model_name: str | None):
    path = config["generator_model_path"]
    if base_url:
        from research.rollout.backends.openai_http import OpenAIGenerator
        from research.rollout.generation import model_eos_ids

        tokenizer = _tokenizer(config)
        return OpenAIGenerator(base_url, served_model_name or config["generator_model"],
                               tokenizer, eos_token_ids=model_eos_ids(path, tokenizer)), tokenizer
    from research.models.loading import load_model
    from research.rollout.backends.hf import HFGenerator

    model, tokenizer = load_model(path, "bfloat16")
    return HFGenerator(model, tokenizer), tokenizer


_LAZY = {"ReSearchPipeline": _pipeline_class, "FlashRAGConfig": _config_class}


def __getattr__(name: str):
    if name in _LAZY:
        cls = _LAZY[name]()
        globals()[name] = cls
        return cls
    raise AttributeError(name)
