"""One error hierarchy: every user-facing error is a ResearchError and keeps its old base."""

from __future__ import annotations

import pytest

from research.data.flashrag import FlashRAGFormatError, FlashRAGLayoutError
from research.data.hotpotqa import HotpotQAFormatError
from research.data.rows import DataFormatError, RowValidationError
from research.data.sources import SourceUnavailable
from research.errors import ConfigError, MissingDependency, ResearchError
from research.http import RequestFailed, RequestRejected
from research.models.prepare import ChecksumError, ModelError
from research.retrieval.client import SearchError, SearchRequestError
from research.retrieval.corpus import CorpusFormatError
from research.retrieval.index import IndexLoadError
from research.rollout.backends.openai_http import GenerationError, GenerationRequestError


@pytest.mark.parametrize(("cls", "builtin"), [
    (ConfigError, ValueError), (MissingDependency, ImportError),
    (RequestFailed, RuntimeError), (RequestRejected, RuntimeError),
    (SearchError, RuntimeError), (SearchRequestError, RuntimeError),
    (GenerationError, RuntimeError), (GenerationRequestError, RuntimeError),
    (IndexLoadError, RuntimeError), (CorpusFormatError, ValueError),
    (ModelError, RuntimeError), (ChecksumError, RuntimeError),
    (DataFormatError, ValueError), (RowValidationError, ValueError),
    (FlashRAGFormatError, ValueError), (HotpotQAFormatError, ValueError),
    (FlashRAGLayoutError, FileNotFoundError), (SourceUnavailable, RuntimeError),
])
def test_user_facing_errors_are_research_errors_with_their_old_base(cls, builtin):
    assert issubclass(cls, ResearchError) and issubclass(cls, builtin)


def test_there_is_one_config_error():
    from research import configtree
    from research.evaluation import config as eval_config
    from research.serving import config as serving_config
    from research.trainers import config as train_config

    assert {m.ConfigError for m in (configtree, eval_config, serving_config, train_config)} == {
        ConfigError}
