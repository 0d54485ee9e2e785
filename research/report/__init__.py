"""``research report RUN_DIR``: one self-contained HTML page about a training or evaluation run.

:func:`write_report` reads the files a run wrote and writes ``RUN_DIR/report.html``: inline
SVG charts and CSS, no script, nothing fetched when the page is opened.

* Training run (``metrics.jsonl``, ``rollouts.jsonl``, ...; :mod:`research.report.training`):
  a curve against step for every numeric monitor the run recorded and for the validation
  scores, the reward reasons per step, the sampled trajectories with their tags coloured and
  their inserted result tokens marked as masked, queries, retrieved document ids and reward.
* Evaluation run folder (``items.jsonl``, ``metrics.json``), or the save_dir holding several
  (:mod:`research.report.evaluation`): the metrics beside the other runs on the same data,
  and each question's prediction with its golden answers.

The response tokens are decoded piecewise with the run's tokenizer (``model.path`` of
``train_config.yaml``, else the run's ``final`` folder) when it loads without a download;
otherwise the recorded text is shown and its ``<result>`` blocks are marked as inserted.
"""

from __future__ import annotations

import logging
from pathlib import Path

from research.errors import ResearchError
from research.report.evaluation import eval_runs, evaluation_sections
from research.report.page import page
from research.report.training import run_summary, step_rows, training_sections

logger = logging.getLogger(__name__)

REPORT_FILE = "report.html"


class ReportError(ResearchError):
    """The folder is neither a training run nor an evaluation run."""


def is_training_run(path: Path) -> bool:
    return (path / "metrics.jsonl").is_file() or (path / "rollouts.jsonl").is_file()


def run_tokenizer(run_dir: Path):
    """The run's tokenizer, loaded from local files only, or None (with the reason logged)."""
    import yaml

    config = run_dir / "train_config.yaml"
    name = (yaml.safe_load(config.read_text()) or {}).get("model", {}).get("path") if (
        config.is_file()) else None
    for source in (name, run_dir / "final"):
        if source is None:
            continue
        try:
            return _load_tokenizer(source)
        except Exception as exc:  # noqa: BLE001 - any failure means: show the text instead
            logger.info("report: no tokenizer from %s (%s)", source, exc)
    return None


def _load_tokenizer(source):
    from transformers import AutoTokenizer

    from research.models.prepare import REGISTRY, is_prepared, prepare_model

    if str(source) in REGISTRY and not is_prepared(REGISTRY[str(source)]):
        raise FileNotFoundError(f"{source} is not prepared on this machine")
    folder = prepare_model(source) if str(source) in REGISTRY else Path(source)
    return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)


def write_report(run_dir: str | Path, out: str | Path | None = None, tokenizer=None) -> Path:
    """Write the report of ``run_dir`` (default ``run_dir/report.html``); returns its path.

    ``tokenizer``: the run's tokenizer, when the caller has it (else :func:`run_tokenizer`).
    """
    shown, run_dir = str(run_dir), Path(run_dir).resolve()
    if not run_dir.is_dir():
        raise ReportError(f"{run_dir} is not a folder")
    if is_training_run(run_dir):
        tok = tokenizer or run_tokenizer(run_dir)
        decode = (lambda ids: tok.decode(ids, skip_special_tokens=False)) if tok else None
        note = ("decoded piecewise from the token ids with the run's tokenizer" if tok else
                "from the recorded text (the run's tokenizer could not be loaded here): "
                "<result> blocks marked as inserted")
        steps = step_rows(run_dir)
        subtitle = " · ".join(filter(None, [f"training run {shown}", f"{len(steps)} logged steps",
                                            run_summary(run_dir)]))
        html = page(f"Training report: {run_dir.name}", subtitle,
                    training_sections(run_dir, decode, note))
    elif eval_runs(run_dir):
        runs = eval_runs(run_dir)
        html = page(f"Evaluation report: {run_dir.name}",
                    f"evaluation {shown} · {len(runs)} run folder(s)",
                    evaluation_sections(run_dir))
    else:
        raise ReportError(f"{run_dir} holds no run: a training run has metrics.jsonl or "
                          "rollouts.jsonl, an evaluation run items.jsonl or metrics.json "
                          "(or give the save_dir holding such folders)")
    path = Path(out) if out else run_dir / REPORT_FILE
    path.write_text(html, encoding="utf-8")
    return path
