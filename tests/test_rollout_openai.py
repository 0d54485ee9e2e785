"""The OpenAI-compatible HTTP backend against the stub model server (tiny random Qwen2 model,
uvicorn on loopback): same outputs as the Hugging Face backend, stop strings, budgets, EOS,
response parsing, retries and a full rollout."""

from __future__ import annotations

import math
import threading
import time
from collections import deque

import httpx
import pytest
import torch
from fastapi.responses import JSONResponse

from research.retrieval.base import Hit
from research.rollout.backends.hf import HFGenerator
from research.rollout.backends.openai_http import (
    GenerationError,
    GenerationRequestError,
    OpenAIGenerator,
    completion_payload,
    generation_from_choice,
)
from research.rollout.engine import run_rollouts
from research.rollout.generation import SamplingParams
from research.rollout.settings import RolloutSettings

GREEDY = SamplingParams(12, temperature=0)


class Faults:
    """Middleware state: statuses to answer before letting requests through; what was seen."""

    def __init__(self):
        self.plan: deque[int] = deque()
        self.seen = 0
        self.authorization: str | None = None


@pytest.fixture(scope="module")
def server(tiny):
    import uvicorn
    from conftest import free_port

    from research.rollout.server import create_model_app

    model, tok = tiny
    app = create_model_app(model, tok, model_name="tiny")
    faults = Faults()

    @app.middleware("http")
    async def inject(request, call_next):
        faults.seen += 1
        faults.authorization = request.headers.get("authorization")
        if faults.plan:
            status = faults.plan.popleft()
            return JSONResponse({"error": {"message": f"injected {status}"}}, status)
        return await call_next(request)

    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not srv.started and time.time() < deadline:
        time.sleep(0.05)
    assert srv.started, "the stub server did not start"
    yield f"http://127.0.0.1:{port}", faults
    srv.should_exit = True
    thread.join(10)


@pytest.fixture
def gen(server, tiny):
    url, faults = server
    faults.plan.clear()
    with OpenAIGenerator(url, "tiny", tiny[1], retries=2, backoff=0.01) as g:
        yield g


def prompts(tokenizer, texts):
    return [tokenizer.encode(t, add_special_tokens=False) for t in texts]


class Force:
    """Makes the model write given texts, one per generate call, then EOS (a forward hook on
    the model: a prefill, i.e. more than one input token, starts the next text)."""

    def __init__(self, model, tokenizer, turns: list[str]):
        self.plan = [tokenizer.encode(t, add_special_tokens=False) for t in turns]
        self.eos = tokenizer.eos_token_id
        self.turn, self.pos = -1, 0
        self.handle = model.register_forward_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs, output):
        if kwargs["input_ids"].shape[1] > 1:
            self.turn, self.pos = self.turn + 1, 0
        plan = self.plan[self.turn] if self.turn < len(self.plan) else []
        forced = plan[self.pos] if self.pos < len(plan) else self.eos
        self.pos += 1
        output.logits[:, -1] = -1e9
        output.logits[:, -1, forced] = 0.0
        return output

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def test_greedy_equals_hf_backend(tiny, gen):
    model, tok = tiny
    hf = HFGenerator(model, tok)
    ps = prompts(tok, ["The capital of France is", "Question: who wrote Hamlet?", "a"])
    remote = gen.generate(ps, [GREEDY] * len(ps))
    for p, r in zip(ps, remote, strict=True):
        (local,) = hf.generate([p], [GREEDY])
        assert r.token_ids == local.token_ids and r.finish_reason == local.finish_reason
        torch.testing.assert_close(torch.tensor(r.logprobs), torch.tensor(local.logprobs),
                                   atol=1e-4, rtol=0)
        assert "reencoded" not in r.extra and "eos_not_returned" not in r.extra
        # an independent truth: the model's own log-probs of those tokens, teacher-forced
        with torch.no_grad():
            logits = model(torch.tensor([p + r.token_ids])).logits[0].float()
        forced = torch.log_softmax(logits[len(p) - 1 : -1], -1)
        expected = forced.gather(1, torch.tensor(r.token_ids)[:, None]).squeeze(1)
        torch.testing.assert_close(torch.tensor(r.logprobs), expected, atol=2e-4, rtol=0)


def test_stop_strings_and_per_sequence_budgets(tiny, gen):
    model, tok = tiny
    p = prompts(tok, ["Once upon a time"])[0]
    (free,) = gen.generate([p], [SamplingParams(20, temperature=0)])
    assert free.finish_reason == "length" and len(free.token_ids) == 20
    stop = tok.decode(free.token_ids[6:8])
    params = [SamplingParams(20, temperature=0, stop=(stop,)), SamplingParams(3, temperature=0)]
    stopped, short = gen.generate([p, p], params)
    assert stopped.finish_reason == "stop" and stopped.stop_string == stop
    assert stop in tok.decode(stopped.token_ids)
    assert stop not in tok.decode(stopped.token_ids[:-1])
    assert short.finish_reason == "length" and short.token_ids == free.token_ids[:3]
    local = HFGenerator(model, tok).generate([p], params[:1])[0]
    assert stopped.token_ids == local.token_ids and stopped.stop_string == local.stop_string


def test_eos_from_the_server(tiny, gen):
    model, tok = tiny
    with Force(model, tok, ["hello world"]):
        (g,) = gen.generate(prompts(tok, ["Say hello"]), [GREEDY])
    assert g.finish_reason == "eos"
    assert g.token_ids == tok.encode("hello world", add_special_tokens=False) + [tok.eos_token_id]
    assert len(g.logprobs) == len(g.token_ids) and "eos_not_returned" not in g.extra


def test_the_eos_is_the_sampled_token_with_its_log_prob(tiny, server):
    """The client asks the server to stop on its EOS set (stop_token_ids); the server returns
    the EOS it sampled, with its log-prob, and the rollout trains on it (loss mask 1)."""
    model, tok = tiny
    p = prompts(tok, ["Once upon a time"])[0]
    (free,) = HFGenerator(model, tok).generate([p], [GREEDY])
    eos = free.token_ids[4]  # a token greedy decoding reaches, made an EOS
    expected = free.token_ids[: free.token_ids.index(eos) + 1]
    with OpenAIGenerator(server[0], "tiny", tok, eos_token_ids=[tok.eos_token_id, eos]) as gen:
        (t,) = run_rollouts([p], gen, ScriptedSearcher(), tok,
                            RolloutSettings(max_response_tokens=12, temperature=0))
    assert t.finish_reason == "eos" and t.response_ids == expected
    eos_logprob = free.logprobs[len(expected) - 1]
    assert t.loss_mask[-1] == 1 and t.logprobs[-1] == pytest.approx(eos_logprob, abs=1e-4)
    assert t.logprobs[-1] < -1e-3  # a real log-prob, not the 0.0 of an appended token
    body = httpx.post(f"{server[0]}/v1/completions", json={
        "prompt": p, "max_tokens": 12, "temperature": 0, "stop_token_ids": [eos],
        "return_token_ids": True, "logprobs": 0}).json()
    (c,) = body["choices"]
    assert c["token_ids"] == expected and c["stop_reason"] == eos  # as vLLM: the id
    assert len(c["logprobs"]["token_logprobs"]) == len(expected)
    assert c["text"] == tok.decode(expected[:-1], skip_special_tokens=True)  # EOS text left out


def choice(**fields):
    return {"index": 0, "text": "", "finish_reason": "length", **fields}


def logprobs_of(tokens, lps, tops=None):
    return {"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops or [None] * len(lps),
            "text_offset": [0] * len(lps)}


def test_token_id_strings_are_the_sampled_ids(tiny):
    tok = tiny[1]
    eos = frozenset([tok.eos_token_id])
    c = choice(text="whatever", logprobs=logprobs_of(["token_id:5", "token_id:70"], [-0.5, -1.0]))
    g = generation_from_choice(c, tok, eos)
    assert g.token_ids == [5, 70] and g.logprobs == [-0.5, -1.0] and g.finish_reason == "length"
    assert "reencoded" not in g.extra
    c["token_ids"] = [6, 71]  # return_token_ids wins over the logprob tokens
    assert generation_from_choice(c, tok, eos).token_ids == [6, 71]
    c["token_ids"] = [6]
    with pytest.raises(GenerationError, match="1 token ids but 2 log-probs"):
        generation_from_choice(c, tok, eos)
    with pytest.raises(GenerationError, match="abort"):
        generation_from_choice(choice(finish_reason="abort"), tok, eos)


def test_plain_token_strings_fall_back_to_reencoding(tiny):
    tok = tiny[1]
    eos = frozenset([tok.eos_token_id])
    ids = tok.encode(" hello world", add_special_tokens=False)
    pieces = [tok.decode([i]) for i in ids]
    c = choice(text=" hello world", logprobs=logprobs_of(pieces, [-0.25] * len(ids)))
    g = generation_from_choice(c, tok, eos)
    assert g.token_ids == ids and g.logprobs == [-0.25] * len(ids) and g.extra["reencoded"]
    c["logprobs"] = logprobs_of(["x"], [-0.25])  # counts disagree: log-probs unknown
    g = generation_from_choice(c, tok, eos)
    assert g.token_ids == ids and all(math.isnan(x) for x in g.logprobs)
    assert g.extra["logprobs_unaligned"]


def test_finish_reasons_from_hand_made_responses(tiny):
    tok = tiny[1]
    eos_id = tok.eos_token_id
    eos = frozenset([eos_id])
    stop = ("</search>",)
    toks = ["token_id:10", "token_id:11"]
    # EOS stop with stop_reason None but the EOS absent from the ids -> nothing appended
    g = generation_from_choice(choice(text="ab", finish_reason="stop", stop_reason=None,
                                      logprobs=logprobs_of(toks, [-1.0, -2.0])), tok, eos, stop)
    assert g.finish_reason == "eos" and g.token_ids == [10, 11]
    assert g.logprobs == [-1.0, -2.0] and g.extra["eos_not_returned"]
    # vLLM: a stop token id outside the set, named and returned: kept as sampled
    g = generation_from_choice(choice(finish_reason="stop", stop_reason=11,
                                      logprobs=logprobs_of(toks, [-1.0, -2.0])), tok, eos, stop)
    assert g.token_ids == [10, 11] and "eos_not_returned" not in g.extra
    # EOS present in the ids: ends there, nothing appended
    g = generation_from_choice(choice(finish_reason="length", logprobs=logprobs_of(
        ["token_id:10", f"token_id:{eos_id}", "token_id:12"], [-1.0, -2.0, -3.0])), tok, eos)
    assert g.finish_reason == "eos" and g.token_ids == [10, eos_id] and g.logprobs == [-1.0, -2.0]
    # SGLang: matched_stop is the EOS id; plain tokens -> re-encoded, no EOS made up
    g = generation_from_choice(choice(text=" hi", finish_reason="stop", matched_stop=eos_id,
                                      logprobs=logprobs_of([" hi"], [-0.5])), tok, eos, stop)
    assert g.finish_reason == "eos" and eos_id not in g.token_ids and g.extra["reencoded"]
    assert g.extra["eos_not_returned"] and len(g.logprobs) == len(g.token_ids)
    # a stop string named by the server (vLLM stop_reason / SGLang matched_stop) or found
    for named in ({"stop_reason": "</search>"}, {"matched_stop": "</search>"}, {}):
        g = generation_from_choice(choice(text="q </search>", finish_reason="stop", **named,
                                          logprobs=logprobs_of(toks, [-1.0, -2.0])),
                                   tok, eos, stop)
        assert g.finish_reason == "stop" and g.stop_string == "</search>"
        assert g.token_ids == [10, 11]


def test_top_logprobs_sorted_and_consistent(server, tiny):
    tok = tiny[1]
    with OpenAIGenerator(server[0], "tiny", tok, top_logprobs=3) as gen:
        (g,) = gen.generate(prompts(tok, ["The capital of France is"]), [GREEDY])
    tops = g.extra["top_logprobs"]
    assert len(tops) == len(g.token_ids)
    for t, lp, top in zip(g.token_ids, g.logprobs, tops, strict=True):
        assert len(top) == 3 and all(isinstance(k, int) for k in top)
        values = list(top.values())
        assert values == sorted(values, reverse=True) and values[0] <= 0
        assert next(iter(top)) == t  # greedy: the sampled token is the most likely
        assert abs(top[t] - lp) < 1e-4


def test_seeded_sampling_is_reproducible_and_differs_per_sequence(tiny, gen):
    p = prompts(tiny[1], ["Once upon a time"])[0]
    params = [SamplingParams(8, temperature=1.0, seed=7)] * 2
    first, second = gen.generate([p, p], params)
    again = gen.generate([p, p], params)
    assert [first.token_ids, second.token_ids] == [g.token_ids for g in again]
    assert first.token_ids != second.token_ids


def test_payload_fields():
    body = completion_payload("m", [1, 2], SamplingParams(5, temperature=0, top_p=0.5,
                                                           stop=("</search>",)), 4, seed=3)
    assert body["prompt"] == [1, 2] and body["max_tokens"] == 5 and body["temperature"] == 0
    assert body["top_p"] == 1.0 and body["stop"] == ["</search>"] and body["logprobs"] == 4
    assert body["seed"] == 3 and body["return_tokens_as_token_ids"]
    assert body["include_stop_str_in_output"] and body["skip_special_tokens"] is False
    assert "stop_token_ids" not in body
    assert completion_payload("m", [1], GREEDY, stop_token_ids={7, 2})["stop_token_ids"] == [2, 7]


def test_retries_5xx_then_succeeds(gen, server):
    _, faults = server
    faults.plan.extend([503, 503])
    before = faults.seen
    (g,) = gen.generate([[1, 2, 3]], [SamplingParams(2, temperature=0)])
    assert len(g.token_ids) == 2 and faults.seen - before == 3


def test_gives_up_after_the_last_attempt(gen, server):
    _, faults = server
    faults.plan.extend([503] * 5)
    with pytest.raises(GenerationError, match="after 3 attempt") as err:
        gen.generate([[1, 2, 3]], [SamplingParams(2, temperature=0)])
    assert err.value.attempts == 3 and "injected 503" in str(err.value)


def test_4xx_fails_at_once_with_the_message(gen, server):
    _, faults = server
    faults.plan.append(400)
    before = faults.seen
    with pytest.raises(GenerationRequestError, match="injected 400") as err:
        gen.generate([[1, 2, 3]], [SamplingParams(2, temperature=0)])
    assert err.value.status == 400 and faults.seen - before == 1
    with pytest.raises(GenerationRequestError, match="token ids in"):  # the server's own 400
        gen.generate([[10**9]], [SamplingParams(2, temperature=0)])


def test_connection_refused_is_retried_then_raised(tiny):
    from conftest import free_port

    with OpenAIGenerator(f"http://127.0.0.1:{free_port()}/v1", "m", tiny[1], retries=1,
                         backoff=0.01) as gen, pytest.raises(GenerationError, match="ConnectError"):
        gen.generate([[1]], [SamplingParams(2)])


def test_api_key_only_from_the_environment(server, tiny, monkeypatch):
    url, faults = server
    monkeypatch.setenv("RESEARCH_TEST_KEY", "sk-secret")
    with OpenAIGenerator(url, "tiny", tiny[1], api_key_env="RESEARCH_TEST_KEY") as gen:
        gen.generate([[1, 2]], [SamplingParams(1, temperature=0)])
        assert faults.authorization == "Bearer sk-secret" and "sk-secret" not in repr(gen)


def test_models_and_health(server):
    url, _ = server
    assert httpx.get(f"{url}/health").json() == {"status": "ok"}
    assert httpx.get(f"{url}/v1/models").json()["data"][0]["id"] == "tiny"
    body = httpx.post(f"{url}/v1/completions", json={"prompt": "Hello", "max_tokens": 3,
                                                     "temperature": 0, "logprobs": 2}).json()
    (c,) = body["choices"]
    assert c["finish_reason"] == "length" and body["usage"]["completion_tokens"] == 3
    assert len(c["logprobs"]["tokens"]) == len(c["logprobs"]["top_logprobs"]) == 3


class ScriptedSearcher:
    def __init__(self):
        self.queries: list[str] = []

    def batch_search(self, queries, k):
        self.queries += queries
        return [[Hit(f"doc-{i}", f'"Title {i}"\nabout {q}', 1.0) for i in range(k)]
                for q in queries]


def test_full_rollout_through_the_http_backend(tiny, gen):
    from research import protocol

    model, tok = tiny
    searcher = ScriptedSearcher()
    turns = ["<think> look up </think> <search> capital of France </search>",
             " <answer> \\boxed{Paris} </answer>"]
    with Force(model, tok, turns):
        (t,) = run_rollouts(prompts(tok, ["Question: capital of France?"]), gen, searcher, tok,
                            RolloutSettings(max_response_tokens=256, top_k=2, temperature=0))
    assert searcher.queries == ["capital of France"]
    assert t.finish_reason == "eos" and t.num_searches == 1 and t.search_failures == 0
    assert t.response_ids[-1] == tok.eos_token_id
    assert len(t.response_ids) == len(t.loss_mask) == len(t.logprobs)
    assert protocol.extract_answer(t.text) == "Paris"
    inserted = tok.decode([i for i, m in zip(t.response_ids, t.loss_mask, strict=True) if not m])
    assert inserted.startswith(f" {protocol.RESULT_START}\n\"Title 0\"")


def test_each_trajectorys_next_turn_is_sent_without_waiting_for_the_others(tiny):
    """Continuously: trajectory 0 searches and sends its answer turn while trajectory 1's
    first request is still being served (that request waits until it sees the answer turn
    arrive; turn by turn it would wait for ever, so a timeout fails the test instead)."""
    tok = tiny[1]
    enc = lambda text: tok.encode(text, add_special_tokens=False)  # noqa: E731
    search = [enc("<think> a </think> <search> alpha </search>"),
              enc("<think> b </think> <search> beta </search>")]
    answer = enc(" <answer> \\boxed{x} </answer>") + [tok.eos_token_id]
    second_turn_sent = threading.Event()
    order = []

    def post(payload):
        prompt = payload["prompt"]
        row, turn = prompt[0] - 100, int(len(prompt) > 2)
        order.append((row, turn))
        if turn:
            second_turn_sent.set()
            ids, reason, stop = answer, "stop", None
        else:
            if row == 1:
                assert second_turn_sent.wait(10), "trajectory 0's next turn was not sent"
            ids, reason, stop = search[row], "stop", "</search>"
        return {"choices": [choice(text=tok.decode(ids), finish_reason=reason, stop_reason=stop,
                                   token_ids=ids, logprobs=logprobs_of(
                                       [f"token_id:{i}" for i in ids], [-0.5] * len(ids)))]}

    gen = OpenAIGenerator("http://127.0.0.1:9", "scripted", tok, eos_token_ids=[tok.eos_token_id])
    gen._post = post
    searcher = ScriptedSearcher()
    out = run_rollouts([[100, 7], [101, 7]], gen, searcher, tok,
                       RolloutSettings(max_response_tokens=256, top_k=1, temperature=0))
    gen.close()
    assert order.index((0, 1)) < order.index((1, 1)) and searcher.queries == ["alpha", "beta"]
    for t, query in zip(out, ("alpha", "beta"), strict=True):
        assert t.finish_reason == "eos" and [turn.query for turn in t.turns] == [query]
        assert t.response_ids[-len(answer):] == answer and t.logprobs[-1] == -0.5
