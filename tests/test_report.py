"""The run report: the page of a tiny training run (the files of a real 2-step TRL run of the
tiny model with forced searches, in ``tests/data/tiny_training_run``) and of tiny evaluation
runs made here with the real runner and retrieval service; a headless Chromium loads them."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

pytest.importorskip("transformers")

from conftest import REPO, missing, token  # noqa: E402

from research.cli import main  # noqa: E402
from research.report import ReportError, write_report  # noqa: E402
from research.report.training import monitor_keys, step_rows  # noqa: E402

SNAPSHOT = REPO / "tests" / "data" / "tiny_training_run"
EXTERNAL = re.compile(r"""(?:src|href|action)\s*=\s*["']?\s*(?:https?:)?//|url\(|@import|"""
                      r"""<script|<link|<iframe|<img""", re.IGNORECASE)


def training_run(tmp_path: Path, model_path: str) -> Path:
    import yaml

    run = tmp_path / "train"
    shutil.copytree(SNAPSHOT, run)
    config = yaml.safe_load((run / "train_config.yaml").read_text())
    config["model"]["path"] = model_path
    (run / "train_config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return run


@pytest.fixture(scope="module")
def train_page(tiny_path, tmp_path_factory) -> tuple[Path, str]:
    run = training_run(tmp_path_factory.mktemp("report"), str(tiny_path))
    path = write_report(run)
    return path, path.read_text()


@pytest.fixture(scope="module")
def eval_dir(tiny, service_url, tmp_path_factory) -> Path:
    """A save_dir with two real evaluation runs: ReSearch (one search, then an answer) and
    the direct baseline, on three questions."""
    from test_evaluation import Scripted

    from research.evaluation.config import load_config
    from research.evaluation.runner import run

    tok = tiny[1]
    root = tmp_path_factory.mktemp("eval")
    rows = [{"id": f"q{i}", "question": f"What is {token(i)}?", "golden_answers": ["alpha"]}
            for i in range(3)]
    (root / "data" / "toy").mkdir(parents=True)
    (root / "data" / "toy" / "dev.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    def research(text, i):
        if "</result>" in text.rsplit("Assistant:", 1)[1]:
            return " <answer> \\boxed{alpha} </answer>", None
        return f"<think> look </think> <search> {token(1)} </search>", None

    base = [f"data.data_dir={root / 'data'}", "data.dataset_name=toy",
            f"run.save_dir={root / 'out'}", f"retrieval.search_url={service_url}",
            "method.top_k=1"]
    for method, reply in (("research", research), ("direct", lambda text, i: ("beta", None))):
        run(load_config(None, [*base, f"method.name={method}"]), progress=False,
            backend=(Scripted(tok, reply), tok))
    return root / "out"


def test_training_page_has_a_curve_per_monitor_reasons_and_masked_results(train_page):
    path, html = train_page
    rows = step_rows(path.parent)
    keys = monitor_keys(rows)
    assert {"reward", "format_valid", "rollout/inserted_share", "entropy"} <= set(keys)
    for key in keys:  # one chart per monitor, a point per logged step
        svg = re.search(rf'<svg class="curve" data-key="{re.escape(key)}".*?</svg>', html, re.S)
        assert svg and svg.group(0).count("<circle") == len(rows), key
    assert html.count('<svg class="curve" data-key="validation/') == 5
    assert '<svg class="bars" data-key="reasons"' in html and "wrong answer" in html
    # inserted tokens decoded from their ids with the run's tokenizer, marked as masked
    assert "decoded piecewise from the token ids" in html
    opened = html.count('<span class="masked inserted" title=')
    whole = re.findall(r'<span class="masked inserted" title="[^"]*"> <span class="tag t-result">'
                       r"&lt;result&gt;</span>[^<]*<span class=\"tag t-result\">&lt;/result&gt;"
                       r"</span></span>", html)
    assert opened == len(whole) == 8 + 2  # a block per sample, per last validation answer
    assert '<span class="tag t-search">&lt;search&gt;</span>' in html
    assert f"<td>{token(3)}</td>" in html and "<td>doc-3</td>" in html  # query, doc id
    assert not EXTERNAL.search(html)


def test_without_the_tokenizer_result_blocks_are_marked_from_the_text(tmp_path):
    run = training_run(tmp_path, str(tmp_path / "no-such-model"))
    html = write_report(run, tmp_path / "page.html").read_text()
    assert "from the recorded text" in html
    assert re.search(r'<span class="masked inserted"[^>]*>\s*<span class="tag t-result">'
                     r"&lt;result&gt;", html)


def test_evaluation_page_puts_the_metrics_beside_the_baselines(eval_dir):
    research_run = next(eval_dir.glob("toy_dev_research"))
    html = write_report(research_run).read_text()
    table = html.split("<h2>Per-question predictions</h2>")[0]
    assert "<b>toy_dev_research</b>" in table and "toy_dev_direct" in table
    assert html.count("<td>alpha</td>") >= 6  # golden answers and ReSearch's predictions
    assert '<span class="masked inserted"' in html and "doc-1" in html
    assert not EXTERNAL.search(html)
    assert main(["report", str(eval_dir)]) == 0
    whole = (eval_dir / "report.html").read_text()
    assert "<td>beta</td>" in whole and whole.count("<details open>") == 0


def test_a_folder_without_a_run_is_a_one_line_error(tmp_path, capsys):
    with pytest.raises(ReportError, match="holds no run"):
        write_report(tmp_path)
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "is not a folder" in capsys.readouterr().err


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if found := shutil.which(name):
            return found
    missing("no chromium binary (apt-get install -y chromium) for the headless load test")


def dump_dom(path: Path) -> str:
    done = subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu",
                           "--no-first-run", f"--user-data-dir={path.parent / 'chromium'}",
                           "--dump-dom", path.as_uri()],
                          capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_headless_chromium_loads_the_pages(train_page, eval_dir):
    dom = dump_dom(train_page[0])
    curves = re.findall(r'<svg class="curve"[^>]*>.*?</svg>', dom, re.S)
    assert len(curves) > 20 and all("<circle" in c for c in curves)
    assert re.search(r'<span class="masked inserted"[^>]*>.*?&lt;result&gt;', dom, re.S)
    dom = dump_dom(write_report(eval_dir / "toy_dev_research"))
    assert "Metrics beside the baselines" in dom and '<span class="masked inserted"' in dom
