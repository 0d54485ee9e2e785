"""ReSearch inside FlashRAG: a ``ReSearchPipeline`` for users of FlashRAG's evaluation.

FlashRAG is imported only when the pipeline class is first used (``pip install flashrag-dev``);
the rest of this module needs nothing from it::

    from flashrag.config import Config
    from flashrag.utils import get_dataset
    from research.evaluation.flashrag_adapter import ReSearchPipeline

    config = Config("my_config.yaml")
    pipeline = ReSearchPipeline(config, base_url="http://127.0.0.1:8000")
    dataset = pipeline.run(get_dataset(config)["dev"])

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

from collections.abc import Sequence

from research.errors import MissingDependency
from research.retrieval.base import Hit
from research.retrieval.client import SearchError


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
                     rollout: RolloutSettings | None = None, batch_size: int = 16):
            super().__init__(config, prompt_template)
            self.retriever = retriever if retriever is not None else get_retriever(config)
            self.batch_size = batch_size
            topk = int(config["retrieval_topk"] or 5)
            if rollout is None:  # what the model was trained with, FlashRAG's top-k
                rollout = rollout_settings.from_dict({**rollout_settings.recorded(
                    config["generator_model_path"]), "top_k": topk})
            self.method, self.rollout = MethodSection(top_k=topk), rollout
            self.generator, self.tokenizer = generator, None
            if generator is None:
                self.generator, self.tokenizer = _generator(config, base_url, served_model_name)

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


def _generator(config, base_url: str | None, served_model_name: str | None):
    from transformers import AutoTokenizer

    path = config["generator_model_path"]
    if base_url:
        from research.rollout.backends.openai_http import OpenAIGenerator
        from research.rollout.generation import model_eos_ids

        tokenizer = AutoTokenizer.from_pretrained(path)
        return OpenAIGenerator(base_url, served_model_name or config["generator_model"],
                               tokenizer, eos_token_ids=model_eos_ids(path, tokenizer)), tokenizer
    from research.models.loading import load_model
    from research.rollout.backends.hf import HFGenerator

    model, tokenizer = load_model(path, "bfloat16")
    return HFGenerator(model, tokenizer), tokenizer


def __getattr__(name: str):
    if name == "ReSearchPipeline":
        cls = _pipeline_class()
        globals()[name] = cls
        return cls
    raise AttributeError(name)
