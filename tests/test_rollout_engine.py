"""The rollout state machine against a scripted generator and a byte tokenizer."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from research import protocol
from research.retrieval.base import Hit
from research.retrieval.client import SearchError
from research.rollout.engine import RolloutState, SearchOutcome, Trajectory, run_rollouts
from research.rollout.generation import Generation
from research.rollout.settings import RolloutSettings

EOS = 256


class ByteTokenizer:
    """One token per UTF-8 byte; 256 is EOS. Decoding is exact."""

    eos_token_id = EOS

    def encode(self, text, add_special_tokens=False):
        return list(text.encode("utf-8"))

    def decode(self, ids):
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")


class Scripted:
    """Plays back, per prompt, a list of turn texts; a turn ending in "<eos>" ends with EOS.

    Honours the stop string and each call's token budget like a real backend, and records
    every call so tests can check batching.
    """

    eos_token_ids = frozenset({EOS})

    def __init__(self, scripts: dict[int, list[str]]):
        self.scripts = {k: list(v) for k, v in scripts.items()}
        self.calls: list[int] = []

    def generate(self, prompts, params):
        self.calls.append(len(prompts))
        out = []
        for prompt, p in zip(prompts, params, strict=True):
            key = prompt[0]
            text = self.scripts[key].pop(0) if self.scripts[key] else "<eos>"
            ids = list(text.removesuffix("<eos>").encode()) + ([EOS] if text.endswith("<eos>")
                                                             else [])
            out.append(self._cut(ids, p))
        return out

    @staticmethod
    def _cut(ids, p):
        raw = bytes(i for i in ids if i < 256)
        found = [(raw.find(s.encode()) + len(s.encode()), s) for s in p.stop
                 if raw.find(s.encode()) >= 0]
        if found and min(found)[0] <= p.max_new_tokens:  # the earliest stop string, as vLLM
            n, stop = min(found)
            return Generation(ids[:n], [-0.5] * n, "stop", stop)
        if len(ids) > p.max_new_tokens:
            return Generation(ids[: p.max_new_tokens], [-0.5] * p.max_new_tokens, "length")
        reason = "eos" if ids and ids[-1] == EOS else "length"
        return Generation(ids, [-0.5] * len(ids), reason)


class FakeSearch:
    def __init__(self, fail: bool = False):
        self.fail = fail
        self.calls: list[list[str]] = []

    def batch_search(self, queries, k):
        self.calls.append(list(queries))
        if self.fail:
            raise SearchError("search at http://127.0.0.1:1/batch_search failed after 4 attempt(s)")
        return [[Hit(f"{q}-{i}", f'"{q}"\ndoc {i} about {q}', 1.0 / (i + 1)) for i in range(k)]
                for q in queries]


def roll(scripts, search=None, **cfg):
    gen = Scripted(scripts)
    search = search or FakeSearch()
    out = run_rollouts([[k] for k in scripts], gen, search, ByteTokenizer(),
                       RolloutSettings(**{"top_k": 2, **cfg}))
    return out, gen, search


def parts(t):
    """(model text, inserted text) recovered from ids by the mask alone."""
    tok = ByteTokenizer()
    model = tok.decode([i for i, m in zip(t.response_ids, t.loss_mask, strict=True) if m])
    inserted = tok.decode([i for i, m in zip(t.response_ids, t.loss_mask, strict=True) if not m])
    return model, inserted


def test_search_then_answer():
    (t,), gen, search = roll({1: ["<think>hm</think> <search> zhou dynasty </search>",
                                  " <answer> \\boxed{Wu} </answer><eos>"]})
    assert t.finish_reason == "eos" and t.complete
    assert search.calls == [["zhou dynasty"]]
    assert [turn.query for turn in t.turns] == ["zhou dynasty"]
    assert t.turns[0].doc_ids == ["zhou dynasty-0", "zhou dynasty-1"]
    expected_result = protocol.format_result(
        ['"zhou dynasty"\ndoc 0 about zhou dynasty', '"zhou dynasty"\ndoc 1 about zhou dynasty']
    )
    model, inserted = parts(t)
    assert inserted == expected_result
    assert model == ("<think>hm</think> <search> zhou dynasty </search>"
                     " <answer> \\boxed{Wu} </answer>")
    assert t.text == model.split("</search>")[0] + "</search>" + expected_result + \
        " <answer> \\boxed{Wu} </answer>"
    assert len(t.response_ids) == len(t.loss_mask) == len(t.logprobs) == len(t.inserted)
    assert all(lp == 0.0 for lp, m in zip(t.logprobs, t.loss_mask, strict=True) if not m)
    assert all(lp == -0.5 for lp, m in zip(t.logprobs, t.loss_mask, strict=True) if m)


def test_each_turn_generates_from_the_prompt_and_every_earlier_token():
    class Recording(Scripted):
        def generate(self, prompts, params):
            self.inputs = getattr(self, "inputs", []) + [[list(p) for p in prompts]]
            return super().generate(prompts, params)

    gen = Recording({7: ["<search> q </search>", " <answer> \\boxed{x} </answer><eos>"]})
    (t,) = run_rollouts([[7, 1, 2]], gen, FakeSearch(), ByteTokenizer(), RolloutSettings(top_k=1))
    first, second = (call[0] for call in gen.inputs)
    assert first == [7, 1, 2]
    cut = len(b"<search> q </search>")
    block = t.response_ids[cut : len(second) - 3]  # the inserted result, fed back in turn 2
    assert all(t.inserted[cut : cut + len(block)]) and block
    assert second == [7, 1, 2] + t.response_ids[: cut + len(block)]
    assert t.response_ids[len(second) - 3 :] == list(b" <answer> \\boxed{x} </answer>") + [EOS]


def test_every_turn_of_a_batch_runs_inside_the_backends_turns():
    """A backend that keeps KV caches across turns (``turns()``) has every generate call of
    one rollout batch inside one ``turns()`` block, and the block closed when it returns."""
    import contextlib

    class Caching(Scripted):
        inside, opened, inside_calls = False, 0, []

        @contextlib.contextmanager
        def turns(self):
            self.opened += 1
            self.inside = True
            try:
                yield self
            finally:
                self.inside = False

        def generate(self, prompts, params):
            self.inside_calls.append(self.inside)
            return super().generate(prompts, params)

    gen = Caching({1: ["<search> a </search>", " <answer> x </answer><eos>"]})
    (t,) = run_rollouts([[1]], gen, FakeSearch(), ByteTokenizer(), RolloutSettings(top_k=1))
    assert t.finish_reason == "eos" and t.num_searches == 1
    assert gen.opened == 1 and gen.inside_calls == [True, True] and not gen.inside


def test_the_state_machine_is_driven_by_hand_without_a_model_or_a_service():
    state = RolloutState(RolloutSettings(max_response_tokens=200), ByteTokenizer())
    t = Trajectory(index=0, prompt_ids=[9])
    ids, params = state.request(t)
    assert ids == [9] and params.max_new_tokens == 200 and params.stop == ("</search>",)
    asked = list(b"<search> where </search>")
    assert state.absorb(t, Generation(asked, [-1.0] * len(asked), "stop", "</search>")) == "where"
    state.insert(t, "where", SearchOutcome([Hit("d", '"T"\nhere', 1.0)], None, 0.01))
    ids, params = state.request(t)
    assert ids == [9] + t.response_ids and params.max_new_tokens == 200 - len(t.response_ids)
    assert state.absorb(t, Generation([EOS], [-0.1], "eos")) is None
    assert t.finish_reason == "eos" and t.turns[0].doc_ids == ["d"]
    assert state.finish(t).text.startswith("<search> where </search> <result>")


def test_one_rejected_query_fails_alone_and_the_others_get_their_documents():
    from research.retrieval.client import SearchRequestError

    class Picky(FakeSearch):
        def batch_search(self, queries, k):
            if "bad" in queries:
                self.calls.append(list(queries))
                raise SearchRequestError("HTTP 400: query 'bad' is over the length limit")
            return super().batch_search(queries, k)  # records the call

    scripts = {1: ["<search> bad </search>"], 2: ["<search> good </search>"]}
    (bad, good), _, search = roll(scripts, search=Picky())
    assert search.calls[0] == ["bad", "good"]  # one request first, then each query alone
    assert sorted(map(tuple, search.calls[1:])) == [("bad",), ("good",)]
    assert bad.turns[0].failure.startswith("search failed: HTTP 400") and bad.search_failures == 1
    assert good.turns[0].failure is None and good.turns[0].doc_ids == ["good-0", "good-1"]


def test_all_active_sequences_generate_together_and_search_in_one_request():
    scripts = {k: [f"<search> q{k % 2} </search>", "<answer>x</answer><eos>"] for k in range(1, 7)}
    out, gen, search = roll(scripts)
    assert gen.calls == [6, 6]  # two turns, the whole batch each time
    assert search.calls == [["q0", "q1"]]  # one request, duplicate queries sent once
    assert all(t.num_searches == 1 and t.finish_reason == "eos" for t in out)


def test_empty_query_gets_invalid_query_text_without_a_request():
    (t,), _, search = roll({1: ["<search>   </search>", "done<eos>"]})
    assert search.calls == []
    assert t.turns[0].failure == protocol.INVALID_QUERY_TEXT
    assert parts(t)[1] == protocol.format_result_text(protocol.INVALID_QUERY_TEXT)
    assert t.search_failures == 0


def test_failing_service_gives_visible_counted_failure_not_a_crash():
    (t,), _, _ = roll({1: ["<search> a </search>", "<search> b </search>", "end<eos>"]},
                      search=FakeSearch(fail=True))
    assert t.finish_reason == "eos"
    assert t.search_failures == 2
    assert all(turn.failure.startswith("search failed: ") for turn in t.turns)
    inserted = parts(t)[1]
    assert inserted == 2 * protocol.format_result_text(protocol.SEARCH_FAILURE_TEXT)
    assert "None" not in t.text


def test_eos_right_after_search_end_is_a_finished_answerless_trajectory():
    # EOS sampled as the token after </search> belongs to the next turn, which ends at once.
    (t,), _, search = roll({1: ["<search> q </search>", "<eos>"]})
    assert t.finish_reason == "eos" and t.num_searches == 1
    assert t.response_ids[-1] == EOS and t.loss_mask[-1] == 1


def test_unclosed_search_is_not_searched():
    (t,), _, search = roll({1: ["<think>x</think> <search> never closed<eos>"]})
    assert search.calls == [] and t.num_searches == 0 and t.finish_reason == "eos"


def test_nested_search_tags_use_the_last_opening():
    (t,), _, search = roll({1: ["<search> outer <search> inner </search>", "a<eos>"]})
    assert search.calls == [["inner"]]


def test_search_at_the_budget_edge_inserts_nothing():
    text = "<search> q </search>"
    (t,), _, search = roll({1: [text]}, max_response_tokens=len(text))
    assert t.finish_reason == "length" and search.calls == [] and t.num_searches == 0
    assert len(t.response_ids) == len(text)


def test_result_larger_than_the_budget_is_truncated_and_ends_the_trajectory():
    text = "<search> q </search>"
    (t,), _, _ = roll({1: [text, "never generated<eos>"]}, max_response_tokens=len(text) + 10)
    assert t.finish_reason == "length"
    assert len(t.response_ids) == len(text) + 10
    assert sum(1 - m for m in t.loss_mask) == 10 == t.turns[0].inserted_tokens


def test_generation_over_budget_is_length():
    (t,), _, _ = roll({1: ["x" * 50 + "<eos>"]}, max_response_tokens=20)
    assert t.finish_reason == "length" and len(t.response_ids) == 20


def test_max_turns_caps_searches_and_end_reproduces_the_hard_stop():
    script = ["<search> a </search>", "<search> b </search>", "<search> c </search>", "<eos>"]
    (t,), _, search = roll({1: script}, max_turns=2, on_max_turns="end")
    assert t.finish_reason == "turns" and t.num_searches == 2
    assert search.calls == [["a"], ["b"]]
    assert t.turn_limit_notices == 0
    (t0,), _, _ = roll({1: script}, max_turns=0)
    assert t0.finish_reason == "turns" and t0.num_searches == 0


def test_a_search_beyond_the_cap_gets_the_notice_once_and_the_model_answers():
    answer = " <think> enough </think> <answer> \\boxed{b} </answer><eos>"
    script = ["<search> a </search>", "<search> b </search>", "<search> c </search>", answer]
    (t,), gen, search = roll({1: script}, max_turns=2)
    assert search.calls == [["a"], ["b"]]  # the third query is never sent
    assert t.num_searches == 2 and t.turn_limit_notices == 1
    assert t.finish_reason == "eos" and t.complete
    notice = protocol.format_result_text(protocol.TURN_LIMIT_TEXT)
    model, inserted = parts(t)
    assert inserted.endswith(notice) and notice not in model
    assert t.text.endswith("<search> c </search>" + notice + answer.removesuffix("<eos>"))
    # a second search beyond the cap ends the trajectory
    (t2,), _, _ = roll({1: ["<search> a </search>", "<search> b </search>",
                            "<search> c </search>", "<eos>"]}, max_turns=1)
    assert t2.finish_reason == "turns" and t2.turn_limit_notices == 1 and t2.num_searches == 1


def test_stop_at_answer_ends_the_response_at_the_first_answer_end():
    text = "<think> t </think> <answer> \\boxed{x} </answer> User: next? Assistant: <eos>"
    (t,), _, _ = roll({1: [text]}, stop_at_answer=True)
    assert t.finish_reason == "answer" and t.complete
    assert t.text == "<think> t </think> <answer> \\boxed{x} </answer>"
    (full,), _, _ = roll({1: [text]})  # the original: on to EOS
    assert full.finish_reason == "eos" and "User: next?" in full.text


def test_result_token_cap():
    (t,), _, _ = roll({1: ["<search> q </search>", "<eos>"]}, max_result_tokens=7)
    inserted = parts(t)[1]
    head, tail = f" {protocol.RESULT_START}\n", f"\n{protocol.RESULT_END}"
    assert inserted.startswith(head) and inserted.endswith(tail)
    assert len(inserted) == len(head) + 7 + len(tail)


def test_mask_results_false_reproduces_the_first_version():
    (t,), _, _ = roll({1: ["<search> q </search>", "<eos>"]}, mask_results=False)
    assert all(t.loss_mask)
    assert any(t.inserted)


def test_trajectory_serialises():
    (t,), _, _ = roll({1: ["<search> q </search>", "<eos>"]})
    d = t.to_dict()
    assert d["finish_reason"] == "eos" and d["turns"][0]["query"] == "q"


turn_text = st.text(alphabet="abc <>/\\{}xyz", max_size=30)


@st.composite
def scripts(draw):
    n = draw(st.integers(1, 4))
    out = {}
    for k in range(1, n + 1):
        turns = [f"{draw(turn_text)}<search>{draw(turn_text)}</search>"
                 for _ in range(draw(st.integers(0, 3)))]
        turns.append(draw(turn_text) + draw(st.sampled_from(["<eos>", ""])))
        out[k] = turns
    return out


@settings(max_examples=150, deadline=None)
@given(scripts(), st.integers(5, 400), st.booleans())
def test_mask_separates_model_text_from_inserted_text(script, budget, fail):
    """Property: masked-out positions decode to exactly the inserted results, the rest to
    exactly what the model sampled, within the budget, for any script."""
    original = {k: list(v) for k, v in script.items()}
    out, _, _ = roll(script, search=FakeSearch(fail=fail), max_response_tokens=budget)
    for t in out:
        assert len(t.response_ids) == len(t.loss_mask) == len(t.logprobs) <= budget
        assert t.finish_reason in ("eos", "length", "turns")
        model, inserted = parts(t)
        sampled = "".join(s.removesuffix("<eos>") for s in original[t.prompt_ids[0]])
        assert sampled.startswith(model)
        expected = ""
        for turn in t.turns:
            block = protocol.format_result_text(_body(turn))
            expected += block.encode()[: turn.inserted_tokens].decode(errors="replace")
        assert inserted == expected
        # the log-probs line up with the mask: the scripted model's -0.5 on every sampled
        # token, 0.0 on every inserted one
        assert t.logprobs == [-0.5 if m else 0.0 for m in t.loss_mask]


def _body(turn) -> str:
    """The text the rollout must have inserted for a turn, from FakeSearch's fixed answers."""
    if turn.failure == protocol.INVALID_QUERY_TEXT:
        return protocol.INVALID_QUERY_TEXT
    if turn.failure:
        return protocol.SEARCH_FAILURE_TEXT
    return protocol.join_documents([f'"{turn.query}"\ndoc {i} about {turn.query}'
                                    for i in range(2)])


@pytest.mark.parametrize("bad", [dict(max_response_tokens=0), dict(top_k=0),
                                 dict(max_turns=-1), dict(max_result_tokens=0)])
def test_bad_config_is_rejected(bad):
    with pytest.raises(ValueError):
        RolloutSettings(**bad)


def test_vllm_output_mapping():
    """The vLLM backend's mapping of CompletionOutput fields (no GPU needed)."""
    from types import SimpleNamespace as NS

    from research.rollout.backends.vllm import to_generation

    def out(ids, finish, stop_reason):
        return NS(token_ids=ids, finish_reason=finish, stop_reason=stop_reason,
                  logprobs=[{t: NS(logprob=-0.1 * (i + 1))} for i, t in enumerate(ids)])

    g = to_generation(out([5, 6, 7], "stop", "</search>"), frozenset({2}))
    assert (g.finish_reason, g.stop_string, g.token_ids) == ("stop", "</search>", [5, 6, 7])
    assert g.logprobs == pytest.approx([-0.1, -0.2, -0.3])
    assert to_generation(out([5, 2], "stop", None), frozenset({2})).finish_reason == "eos"
    missing_eos = to_generation(out([5], "stop", None), frozenset({2}))  # nothing appended
    assert missing_eos.token_ids == [5] and missing_eos.finish_reason == "eos"
    assert to_generation(out([5, 6], "length", None), frozenset({2})).finish_reason == "length"
