"""The evaluation harness: every method's logic with a scripted generator and the real
retrieval service; the runner (items, metrics, resume, table) with the tiny model locally and
through a real OpenAI-compatible server on loopback; the judge; the command lines."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from conftest import REPO, token  # noqa: E402

from research.evaluation import methods as M  # noqa: E402
from research.evaluation.config import ConfigError, load_config  # noqa: E402
from research.evaluation.runner import assemble_table, read_records, run, summarise  # noqa: E402
from research.metrics import compute_metrics  # noqa: E402
from research.retrieval.base import Hit  # noqa: E402
from research.retrieval.client import SearchClient  # noqa: E402
from research.rollout.generation import Generation  # noqa: E402


class Scripted:
    """A generator answering from a script: ``reply(prompt_text, call_index) -> (text,
    probabilities or None)``; records every prompt and its sampling parameters."""

    def __init__(self, tokenizer, reply):
        self.tok, self.reply = tokenizer, reply
        self.eos_token_ids = frozenset({tokenizer.eos_token_id})
        self.calls: list[tuple[str, object]] = []

    def generate(self, prompts, params):
        out = []
        for prompt, p in zip(prompts, params, strict=True):
            text = self.tok.decode(prompt)
            self.calls.append((text, p))
            reply, probs = self.reply(text, len(self.calls) - 1)
            ids = self.tok.encode(reply, add_special_tokens=False)[: p.max_new_tokens]
            probs = probs or [0.9] * len(ids)
            stop = next((s for s in p.stop if s in reply), None)
            reason = "stop" if stop else ("length" if len(ids) == p.max_new_tokens else "eos")
            if reason == "eos":
                ids, probs = ids + [self.tok.eos_token_id], list(probs[: len(ids)]) + [1.0]
            out.append(Generation(ids, [math.log(x) for x in probs[: len(ids)]], reason, stop))
        return out


@pytest.fixture(scope="module")
def tok(tiny):
    return tiny[1]


@pytest.fixture
def client(service_url):
    with SearchClient(service_url) as c:
        yield c


def question(i: int) -> dict:
    return {"id": f"q{i}", "question": f"What is {token(i)}?", "golden_answers": ["alpha"]}


def ctx(gen, tok, client, rollout=None, **method):
    from research.evaluation.config import MethodSection
    from research.rollout.settings import RolloutSettings

    return M.Context(gen, tok, client, MethodSection(**method), rollout or RolloutSettings())


# --- the methods ------------------------------------------------------------------------------


def test_direct_and_naive_rag_use_flashrags_prompts(tok, client):
    gen = Scripted(tok, lambda text, i: ("alpha", None))
    [a] = M.METHODS["direct"]([question(3)], ctx(gen, tok, client))
    assert a.prediction == "alpha" and a.searches == 0
    prompt = gen.calls[0][0]
    assert M.DIRECT_SYSTEM in prompt and f"Question: What is {token(3)}?" in prompt
    assert gen.calls[0][1].temperature == 0 and gen.calls[0][1].max_new_tokens == 32

    [a] = M.METHODS["naive-rag"]([question(3)], ctx(gen, tok, client, top_k=2))
    prompt = gen.calls[1][0]
    assert "Answer the question based on the given document.Only give me" in prompt
    assert 'Doc 1(Title: "Title 3") ' in prompt and f"{token(3)}\n<|im_end|>" in prompt
    assert "Doc 2(" not in prompt  # only document 3 holds the question's one known term
    assert a.searches == 1 and a.trajectory[0]["doc_ids"] == ["doc-3"]


def test_iter_retgen_expands_the_query_with_the_last_output(tok, client):
    gen = Scripted(tok, lambda text, i: (f"{token(10 + i)}", None))
    [a] = M.METHODS["iter-retgen"]([question(3)], ctx(gen, tok, client))
    queries = [s["query"] for s in a.trajectory if "query" in s]
    assert queries == [f"What is {token(3)}?", f"What is {token(3)}? {token(10)}",
                       f"What is {token(3)}? {token(11)}"]
    assert a.searches == 3 and a.prediction == token(12)
    # round 2 retrieved with the expansion: doc-10 comes back
    assert "doc-10" in a.trajectory[2]["doc_ids"]


def test_flare_queries_without_low_probability_tokens_and_caps_the_look_ahead(tok, client):
    words = ["The", f" {token(7)}", " flight", " landed", "."]

    def reply(text, i):
        if "Doc 1(Title:" in text:  # the regenerated look-ahead, with documents
            return " Found it. Then more", None
        if i == 0:  # a look-ahead with one unsure token: " flight"
            ids = [tok.encode(w, add_special_tokens=False) for w in words]
            probs = [0.1 if w == " flight" else 0.9
                     for w, t in zip(words, ids, strict=True) for _ in t]
            return "".join(words), probs
        return " Done", None  # confident, ends with EOS

    gen = Scripted(tok, reply)
    [a] = M.METHODS["flare"]([question(1)], ctx(gen, tok, client))
    assert all(p.max_new_tokens == 64 for _, p in gen.calls)  # the look-ahead is honoured
    assert all(set(p.stop) == set(M.FLARE_STOPS) for _, p in gen.calls)
    [search] = [s for s in a.trajectory if "query" in s]
    assert search["query"] == f"The {token(7)} landed."  # " flight" (p=0.1) dropped
    assert search["doc_ids"][0] == "doc-7" and a.searches == 1
    assert a.prediction == "Found it. Done"
    assert " Found it." in gen.calls[2][0]  # the answer so far continues the assistant turn


def test_flare_look_ahead_caps_a_real_models_generation(tiny, client):
    from research.rollout.backends.hf import HFGenerator

    model, tok = tiny
    answers = M.METHODS["flare"]([question(i) for i in range(3)],
                                 ctx(HFGenerator(model, tok), tok, client, flare_look_ahead=5,
                                     flare_max_iterations=2))
    counts = [s["tokens"] for a in answers for s in a.trajectory if "tokens" in s]
    assert counts and max(counts) <= 5


def test_ircot_stops_at_the_answer_and_keeps_a_sorted_pool(tok, client):
    def reply(text, i):
        return (f" It is {token(5)}.", None) if i == 0 else (" So the answer is: alpha.", None)

    gen = Scripted(tok, reply)
    [a] = M.METHODS["ircot"]([question(3)], ctx(gen, tok, client, top_k=2))
    assert a.prediction == "alpha." and a.searches == 2  # the question, then one thought
    assert [s["query"] for s in a.trajectory if "query" in s][1] == f" It is {token(5)}."
    second = gen.calls[1][0]
    assert second.endswith(f"Thought: It is {token(5)}.")
    titles = [line for line in second.split("Question: Are both")[1].splitlines()
              if line.startswith("Wikipedia Title:")]
    assert sorted(titles) == ['Wikipedia Title: "Title 3"', 'Wikipedia Title: "Title 5"']
    assert gen.calls[0][1].stop == (".", "\n")
    assert M.ircot_prediction("no answer here") == "no answer here"


def test_ircot_pool_keeps_the_best_score_and_puts_the_best_last(tok):
    class Search:
        def __init__(self):
            self.rounds = [[Hit("d1", '"A"\na', 1.0), Hit("d2", '"B"\nb', 3.0)],
                           [Hit("d1", '"A"\na', 5.0), Hit("d3", '"C"\nc', 2.0)]]

        def batch_search(self, queries, k):
            return [self.rounds.pop(0)]

    gen = Scripted(tok, lambda text, i: (" More.", None) if i == 0
                   else (" So the answer is: x", None))
    M.METHODS["ircot"]([question(1)], ctx(gen, tok, Search()))
    docs = gen.calls[1][0].split("Question: Are both")[1]
    order = [line for line in docs.splitlines() if line.startswith("Wikipedia Title:")]
    assert order == ['Wikipedia Title: "C"', 'Wikipedia Title: "B"', 'Wikipedia Title: "A"']


def test_blank_queries_are_not_sent_and_failures_are_counted(tok):
    class Failing:
        def batch_search(self, queries, k):
            from research.retrieval.client import SearchError
            raise SearchError("down")

    answers = [M.Answer(""), M.Answer("")]
    c = ctx(None, tok, Failing())
    assert M.search(c, ["  ", "real"], answers) == [[], []]
    assert answers[0].trajectory == [{"query": "  ", "doc_ids": [], "latency_s": 0.0,
                                      "failure": "invalid query", "inserted_tokens": 0}]
    assert (answers[0].searches, answers[1].searches, answers[1].search_failures) == (0, 1, 1)
    assert answers[1].trajectory[0]["failure"] == "search failed: down"


def test_research_method_is_the_rollout(tok, client):
    def reply(text, i):
        if "</result>" in text.rsplit("Assistant:", 1)[1]:
            return " <answer> \\boxed{alpha} </answer>", None
        return f"<think> t </think> <search> {token(4)} </search>", None

    gen = Scripted(tok, reply)
    [a] = M.METHODS["research"]([question(4)], ctx(gen, tok, client, top_k=1))
    assert gen.calls[0][0].startswith("A conversation between User and Assistant.")
    assert gen.calls[0][0].endswith(f"User: What is {token(4)}?. Assistant:")
    assert gen.calls[0][1].stop == ("</search>",) and gen.calls[0][1].temperature == 0
    assert a.prediction == "alpha" and a.searches == 1
    assert a.trajectory[0]["query"] == token(4) and a.trajectory[0]["doc_ids"] == ["doc-4"]
    assert "<result>" in a.response


# --- the runner -------------------------------------------------------------------------------


def write_dataset(root: Path, name: str, rows: list[dict]) -> Path:
    (root / name).mkdir(parents=True, exist_ok=True)
    (root / name / "dev.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


ROWS = [{"id": "a", "question": "Capital of Peru?", "golden_answers": ["Lima"]},
        {"id": "b", "question": "Capital of France?", "golden_answers": ["Paris"]},
        {"id": "c", "question": "Capital of Chile?", "golden_answers": ["Santiago"]}]
REPLIES = {"Peru": "Lima", "France": "Paris city", "Chile": ""}


def scripted_answers(text, i):
    return next(v for k, v in REPLIES.items() if k in text.rsplit("Question:", 1)[1]), None


def test_metrics_resume_and_table(tok, service_url, tmp_path):
    data = write_dataset(tmp_path / "data", "capitals", ROWS)
    base = [f"data.data_dir={data}", "data.dataset_name=capitals", f"run.save_dir={tmp_path}/o",
            f"retrieval.search_url={service_url}", "method.name=direct"]
    gen = Scripted(tok, scripted_answers)
    out = run(load_config(None, [*base, "data.sample_num=2"]), progress=False, backend=(gen, tok))
    assert len(gen.calls) == 2 and len(read_records(out / "items.jsonl")) == 2
    with (out / "items.jsonl").open("a") as f:
        f.write('{"id": "c", "cut by a cr')  # a crash in the middle of a line
    run(load_config(None, base), progress=False, backend=(gen, tok))
    assert len(gen.calls) == 3  # only the missing item ran again
    records = read_records(out / "items.jsonl")
    assert [r["id"] for r in records] == ["a", "b", "c"]
    assert [r["prediction"] for r in records] == ["Lima", "Paris city", ""]
    summary = json.loads((out / "metrics.json").read_text())
    m = summary["metrics"]
    # by hand: em 1, 0, 0; acc 1, 1, 0; f1 1, 2/3 (precision 1/2, recall 1), 0
    assert m["em"] == pytest.approx(1 / 3) and m["acc"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx((1 + 2 / 3) / 3)
    assert m["precision"] == pytest.approx(0.5) and m["recall"] == pytest.approx(2 / 3)
    assert summary["questions"] == 3 and summary["method"] == "direct"
    assert records[1]["trajectory"][0] == {"output": "Paris city", "tokens": records[1][
        "generated_tokens"]}

    with pytest.raises(ConfigError, match=r"other settings \(method.answer_tokens\)"):
        run(load_config(None, [*base, "method.answer_tokens=8"]), progress=False,
            backend=(gen, tok))
    # a folder written before a key was renamed (retrieval.topk, now method.top_k) or added
    # (a key at its default) resumes; a renamed key with another value does not
    saved = json.loads((out / "fingerprint.json").read_text())
    saved["retrieval"]["topk"] = saved["method"].pop("top_k")
    del saved["method"]["ircot_thought_tokens"]
    (out / "fingerprint.json").write_text(json.dumps(saved))
    run(load_config(None, base), progress=False, backend=(gen, tok))
    assert len(gen.calls) == 3  # nothing ran again
    saved["retrieval"]["topk"] = 2
    (out / "fingerprint.json").write_text(json.dumps(saved))
    with pytest.raises(ConfigError, match=r"other settings \(method.top_k\)"):
        run(load_config(None, base), progress=False, backend=(gen, tok))
    saved["retrieval"]["topk"] = 5
    (out / "fingerprint.json").write_text(json.dumps(saved))
    rag = run(load_config(None, [*base, "method.name=naive"]), progress=False,
              backend=(Scripted(tok, lambda t, i: ("Lima", None)), tok))
    table = assemble_table([out, rag])
    assert table.splitlines() == ["| Method | capitals |", "|---|---|", "| Direct | 33.33 |",
                                  "| Naive-RAG | 33.33 |"]
    assert "| Direct | 66.67 |" in assemble_table([out, rag], "acc")
    with pytest.raises(FileNotFoundError, match="finished evaluation run"):
        assemble_table([tmp_path])


def test_a_failed_judge_request_keeps_the_other_verdicts():
    from research.evaluation.config import JudgeSection
    from research.evaluation.judge import judge_records

    records = [{"question": "q", "golden_answers": ["x"], "prediction": "x", "judge": 1.0},
               {"question": "q", "golden_answers": ["x"], "prediction": "y"}]
    out = judge_records(records, JudgeSection(base_url="http://127.0.0.1:9", model="m"),
                        workers=2)
    assert out[0]["judge"] == 1.0 and "judge" not in out[1] and "judge_error" in out[1]


def test_summarise_adds_the_judge_when_every_item_has_it():
    records = [{**compute_metrics(p, ["x"]), "searches": 1, "search_failures": 0,
                "generated_tokens": 4, "judge": j} for p, j in (("x", 1.0), ("y", 0.0))]
    m = summarise(records)
    assert m["judge_acc"] == 0.5 and m["em"] == 0.5 and m["searches"] == 1.0


@pytest.fixture(scope="module")
def model_server(tiny):
    import uvicorn
    from conftest import free_port

    from research.rollout.server import create_model_app

    model, tok = tiny
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(create_model_app(model, tok, model_name="tiny"),
                                        host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not srv.started and time.time() < deadline:
        time.sleep(0.05)
    assert srv.started
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(10)


def test_methods_through_an_openai_server_with_a_judge(tiny_path, model_server, service_url,
                                                        tmp_path):
    data = write_dataset(tmp_path / "data", "capitals", ROWS[:2])
    runs = []
    for method in ("naive-rag", "flare", "ircot"):
        config = load_config(None, [
            f"data.data_dir={data}", "data.dataset_name=capitals", f"run.save_dir={tmp_path}/o",
            f"retrieval.search_url={service_url}", f"method.name={method}",
            "generator.backend=openai", f"generator.base_url={model_server}",
            f"generator.model={tiny_path}", "method.answer_tokens=8", "method.flare_look_ahead=6",
            "method.flare_max_iterations=2", "method.ircot_max_iterations=2",
            "method.ircot_thought_tokens=8", f"judge.base_url={model_server}",
            "judge.model=tiny", "judge.max_tokens=3"])
        runs.append(run(config, progress=False))
    for out in runs:
        records = read_records(out / "items.jsonl")
        assert len(records) == 2
        assert all(r["judge"] in (0.0, 1.0) and isinstance(r["judge_output"], str)
                   for r in records)
        assert "judge_acc" in json.loads((out / "metrics.json").read_text())["metrics"]
    flare_steps = [s for r in read_records(runs[1] / "items.jsonl") for s in r["trajectory"]]
    assert max(s["tokens"] for s in flare_steps if "tokens" in s) <= 6  # through the server
    assert "| FLARE |" in assemble_table(runs)


def test_config_errors_say_the_fix():
    with pytest.raises(ConfigError, match="unknown method 'magic'"):
        load_config(None, ["method.name=magic"])
    with pytest.raises(ConfigError, match="needs generator.base_url"):
        load_config(None, ["generator.backend=openai"])
    with pytest.raises(ConfigError, match="judge.base_url and judge.model"):
        load_config(None, ["judge.base_url=http://127.0.0.1:1"])
    assert M.resolve("zero-shot") == "direct" and M.resolve("iterretgen") == "iter-retgen"


def test_run_eval_script_takes_the_seeds_flags(tiny_path, service_url, tmp_path):
    data = write_dataset(tmp_path / "data", "capitals", ROWS[:1])
    cmd = [sys.executable, str(REPO / "evaluation" / "run_eval.py"), "--config_path",
           str(REPO / "evaluation" / "eval_config.yaml"), "--method_name", "research,direct",
           "--split", "dev", "--dataset_name", "capitals", "--data_dir", str(data),
           "--save_dir", str(tmp_path / "o"), "--remote_retriever_url", service_url,
           "--generator_model", str(tiny_path), "--quiet", "generator.threads=1",
           "rollout.max_response_tokens=16", "method.answer_tokens=4"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "| ReSearch | 0.00 |" in done.stdout and "| Direct |" in done.stdout
    assert (tmp_path / "o" / "table.md").exists()
    bad = subprocess.run([*cmd[:2], "--method_name", "magic", "--dataset_name", "capitals",
                          "--data_dir", str(data)], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "unknown method 'magic'" in bad.stderr


# --- FlashRAG adapter -------------------------------------------------------------------------


def test_flashrag_searcher_maps_documents_and_failures():
    from research.evaluation.flashrag_adapter import FlashRAGSearcher
    from research.retrieval.client import SearchError

    class Retriever:
        def batch_search(self, queries, num, return_score):
            docs = [[{"id": f"{q}-{j}", "contents": f'"T"\n{q} {j}'} for j in range(num)]
                    for q in queries]
            return docs, [[1.0 / (j + 1) for j in range(num)] for _ in queries]

    hits = FlashRAGSearcher(Retriever()).batch_search(["a", "b"], 2)
    assert hits[1] == [Hit("b-0", '"T"\nb 0', 1.0), Hit("b-1", '"T"\nb 1', 0.5)]

    class Broken:
        def batch_search(self, *a, **k):
            raise RuntimeError("index not loaded")

    with pytest.raises(SearchError, match="index not loaded"):
        FlashRAGSearcher(Broken()).batch_search(["a"], 1)


def test_flashrag_pipeline_needs_flashrag_and_says_so():
    import importlib.util

    if importlib.util.find_spec("flashrag") is not None:
        pytest.skip("FlashRAG is installed here")
    import research.evaluation.flashrag_adapter as adapter

    with pytest.raises(ImportError, match="pip install flashrag-dev"):
        adapter.ReSearchPipeline  # noqa: B018


def test_the_seeds_flags_map_onto_config_keys():
    import argparse

    from research.evaluation.commands import add_arguments, overrides_of

    parse = add_arguments(argparse.ArgumentParser()).parse_args
    args = parse(["data.sample_num=3", "--method_name", "research,naive", "--apply_chat", "True",
                  "--gpu_id", "", "--sgl_remote_url", "http://h:80", "--split", "test"])
    assert args.method_name == ["research", "naive"]
    assert overrides_of(args) == ["data.split=test", "generator.backend=openai",
                                  "generator.base_url=http://h:80",
                                  "rollout.template=chat", "data.sample_num=3"]
    assert "rollout.template=chat" not in overrides_of(parse([]))
    with pytest.raises(SystemExit):  # an override swallowed as the flag's value is refused
        parse(["--apply_chat", "data.sample_num=3"])


def test_the_table_keeps_a_trained_folder_beside_its_base_model(tmp_path):
    def finished(name, method, model, note, em):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "metrics.json").write_text(json.dumps({
            "method": method, "dataset": "factbook-facts-bridge", "split": "dev",
            "model": model, "note": note, "metrics": {"em": em}}))
        return folder

    runs = [finished("a", "research", "qwen2.5-0.5b", None, 0.30),
            finished("b", "research", "runs/multihop/search/final", "trained", 0.62),
            finished("c", "naive-rag", "qwen2.5-0.5b", None, 0.0),
            finished("d", "oracle-chain", None, None, 0.975)]
    assert assemble_table(runs).splitlines()[2:] == [
        "| Naive-RAG | 0.00 |",
        "| ReSearch (qwen2.5-0.5b) | 30.00 |",
        "| ReSearch (runs/multihop/search/final, trained) | 62.00 |",
        "| Oracle chain (scripted ceiling) | 97.50 |"]
