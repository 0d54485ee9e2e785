"""The README and the manual in ``docs/``: every link lands, every page is reachable from the
README, and every command they show parses with the real program's arguments."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = sorted((ROOT / "docs").glob("*.md"))
DOCUMENTS = [README, *PAGES, ROOT / "benchmarks" / "README.md"]
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]{1,2}(?=\S)|(?<=\S)[`*_]{1,2}", "", heading.strip())
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def outside_fences(text: str) -> list[str]:
    lines, fenced = [], False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced:
            lines.append(line)
    return lines


@cache
def anchors(path: Path) -> frozenset[str]:
    seen: dict[str, int] = {}
    out = set()
    for line in outside_fences(path.read_text()):
        m = re.match(r"#{1,6} (.*)", line)
        if m:
            base = slug(m.group(1))
            n = seen.get(base, 0)
            seen[base] = n + 1
            out.add(base if n == 0 else f"{base}-{n}")
    return frozenset(out)


def links(path: Path) -> list[str]:
    found = []
    for line in outside_fences(path.read_text()):
        line = re.sub(r"`[^`]*`", "", line)  # code spans are not links
        found += [a or b for a, b in LINK.findall(line)]
    return found


def test_slug_follows_github():
    assert slug("Learning *when* to search: one-hop and two-hop questions together") == \
        "learning-when-to-search-one-hop-and-two-hop-questions-together"
    assert slug("A run's report: `research report`") == "a-runs-report-research-report"
    assert slug("Training (one machine, TRL)") == "training-one-machine-trl"


@pytest.mark.parametrize("doc", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_lands(doc):
    broken = []
    for target in links(doc):
        if re.match(r"[a-z]+:", target):
            continue  # http(s), mailto: not checked offline
        file, _, anchor = target.partition("#")
        dest = (doc.parent / file).resolve() if file else doc
        if not dest.exists():
            broken.append(f"{target}: no file {dest.relative_to(ROOT)}")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading with anchor #{anchor} in "
                          f"{dest.relative_to(ROOT)}")
    assert not broken, f"{doc.relative_to(ROOT)}: " + "; ".join(broken)


def test_the_readme_is_a_front_page_that_reaches_every_page():
    text = README.read_text()
    assert len(text.splitlines()) < 250
    linked = {(README.parent / t.partition("#")[0]).resolve() for t in links(README)}
    unreachable = [p.name for p in PAGES if p.resolve() not in linked]
    assert not unreachable, f"docs pages not linked from the README: {unreachable}"
    assert "bash scripts/quickstart.sh" in text and "bash scripts/test.sh" in text


# ---- commands ---------------------------------------------------------------------------

SCRIPTS = ("python evaluation/run_eval.py", "python rag_serving/serving.py",  # and benchmarks/
           "bash training/run.sh", "python training/data_preprocess_hpqa.py")


def commands(path: Path) -> list[str]:
    """The shell commands of a page's ``bash`` blocks, continuation lines joined, comments and
    environment assignments dropped, the project's virtual environment prefix removed."""
    out, block, pending = [], None, ""
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            block = line[3:].strip() if block is None else None
            continue
        if block != "bash":
            continue
        if line.lstrip().startswith("#"):
            continue
        line = pending + line.split(" #")[0].rstrip()
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        pending = ""
        words = line.strip()
        while re.match(r"^(time |[A-Z_]+=\S* )", words):
            words = words.split(" ", 1)[1]
        words = re.sub(r"^(\.venv[\w-]*/bin/|\./)", "", words)
        if words:
            out.append(words)
    return out


@cache
def help_text(program: str) -> str:
    argv = program.split()
    interpreter = [sys.executable] if argv[0] == "python" else ["bash"]
    result = subprocess.run([*interpreter, *argv[1:], "--help"], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, f"{program} --help failed: {result.stderr[-2000:]}"
    return result.stdout


def check(command: str) -> str | None:
    """None when the command parses; otherwise what is wrong with it."""
    words = shlex.split(command.replace("...", "").rstrip("& "))
    if words[0] == "research":
        from research.cli import build_parser
        from research.errors import ResearchError
        from research.trainers.config import DEFAULT_CONFIGS, load_run_config, named_paths

        try:
            args = build_parser().parse_args(words[1:])
        except SystemExit as e:
            return None if e.code == 0 else "the research parser refuses it"
        config = getattr(args, "config", None) or DEFAULT_CONFIGS["trl"]
        if words[1] == "train" and (config in named_paths() or Path(config).is_file()):
            try:  # the config and its overrides, as `research train` reads them
                load_run_config(args.config, args.overrides, args.resume, "trl")
            except ResearchError as e:
                return str(e)
        return None
    program = " ".join(words[:2])
    if words[0] in ("python", "bash") and len(words) > 1 and (
            program in SCRIPTS or words[1].startswith("benchmarks/")):
        if not (ROOT / words[1]).exists():
            return f"{words[1]} does not exist"
        flags = {w.split("=")[0] for w in words[2:] if w.startswith("--")}
        unknown = sorted(f for f in flags if f not in help_text(program))
        return f"unknown flags {unknown}" if unknown else None
    if words[0] == "bash" and len(words) > 1 and words[1].startswith("scripts/"):
        return None if (ROOT / words[1]).exists() else f"{words[1]} does not exist"
    return None  # pip, curl, git, other tools: not the project's to check


@pytest.mark.parametrize("doc", [README, *PAGES], ids=lambda p: str(p.relative_to(ROOT)))
def test_every_command_shown_parses(doc):
    shown = commands(doc)
    wrong = [f"{c!r}: {why}" for c in shown if (why := check(c))]
    assert not wrong, f"{doc.relative_to(ROOT)}:\n" + "\n".join(wrong)


def test_command_check_can_fail():
    assert check("research train --no-such-flag") is not None
    assert check("python benchmarks/references.py --no-such-flag") is not None
    assert check("python benchmarks/no_such.py") is not None
    assert check("research train --config cpu-small model.path=x") is None
    assert "no_such_key" in check("research train --config cpu-small model.no_such_key=1")
