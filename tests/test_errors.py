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


def _cli(code: str, *argv: str):
    """Run ``code`` (which may patch research.cli) then research.cli.main(argv) in a child."""
    import subprocess
    import sys

    script = f"import sys\nimport research.cli as cli\n{code}\nsys.exit(cli.main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", script, *argv], capture_output=True,
                          text=True, timeout=120)


def test_a_plain_value_error_in_a_command_shows_its_traceback():
    bug = ("def broken(args):\n    raise ValueError('a library bug')\n"
           "cli.cmd_index_info = broken")
    result = _cli(bug, "index", "info", "anywhere")
    assert result.returncode not in (0, 2)
    assert "Traceback" in result.stderr and "ValueError: a library bug" in result.stderr


def test_a_config_error_is_one_line_and_exit_2(tmp_path):
    result = _cli("", "train", "--config", str(tmp_path / "nope.yaml"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith(f"error: config file {tmp_path / 'nope.yaml'} not found")
    raised = ("from research.errors import ConfigError\n"
              "def bad(args):\n    raise ConfigError('retriever.method must be bm25 or dense')\n"
              "cli.cmd_index_info = bad")
    result = _cli(raised, "index", "info", "anywhere")
    assert (result.returncode, result.stderr) == (
        2, "error: retriever.method must be bm25 or dense\n")


def test_a_missing_optional_dependency_names_the_extra_and_others_propagate(capsys):
    from research.errors import cli_command

    def needs(module):
        @cli_command
        def command():
            raise ModuleNotFoundError(f"No module named '{module}'", name=module)
        return command

    assert needs("trl")() == 2
    err = capsys.readouterr().err
    assert err.startswith("error: No module named 'trl'") and "pip install -e '.[trl]'" in err
    with pytest.raises(ModuleNotFoundError, match="research.nothing"):
        needs("research.nothing")()
