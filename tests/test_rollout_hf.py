"""The Hugging Face backend with a tiny random Qwen2 model and a real tokenizer, and a full
rollout against the real retrieval service on loopback."""

from __future__ import annotations

import pytest
import torch

from research import protocol
from research.retrieval.client import SearchClient
from research.rollout.backends.hf import HFGenerator
from research.rollout.engine import run_rollouts
from research.rollout.generation import SamplingParams
from research.rollout.settings import RolloutSettings


def prompts(tokenizer, texts):
    return [tokenizer.encode(t, add_special_tokens=False) for t in texts]


def teacher_forced_logprobs(model, prompt, new, temperature=1.0):
    ids = torch.tensor([prompt + new])
    with torch.no_grad():
        logits = model(ids).logits[0, len(prompt) - 1 : -1].float() / temperature  # [T, V]
    return torch.log_softmax(logits, -1).gather(1, torch.tensor(new)[:, None]).squeeze(1)


@pytest.mark.parametrize("temperature", [0.0, 1.0, 0.7])
def test_logprobs_are_those_of_the_sampling_distribution(tiny, temperature):
    model, tok = tiny
    gen = HFGenerator(model, tok)
    ps = prompts(tok, ["The capital of France is", "Question: who wrote Hamlet?"])
    outs = gen.generate(ps, [SamplingParams(12, temperature=temperature, seed=0)] * 2)
    for p, g in zip(ps, outs, strict=True):
        assert len(g.token_ids) == len(g.logprobs) >= 1
        expected = teacher_forced_logprobs(model, p, g.token_ids, temperature or 1.0)
        torch.testing.assert_close(torch.tensor(g.logprobs), expected, atol=2e-4, rtol=1e-4)


def test_int8_copy_logprobs_are_those_it_sampled_from(tiny):
    """grpo.rollout_int8: the backend on the int8 copy returns the log-probs of the int8
    distribution it sampled from (greedy: the argmax of the int8 model). Its activations are
    quantised per call, with a scale taken from the whole input, so a teacher-forced pass over
    the full sequences agrees within a tolerance, not bit for bit: the log-probs the loss
    corrects by are the sampling call's own."""
    from research.trainers.generation_copy import quantised

    model, tok = tiny
    copy = quantised(model)
    gen = HFGenerator(copy, tok)
    ps = prompts(tok, ["The capital of France is", "Question: who wrote Hamlet?"])
    for temperature in (0.0, 1.0):
        outs = gen.generate(ps, [SamplingParams(12, temperature=temperature, seed=0)] * 2)
        for p, g in zip(ps, outs, strict=True):
            expected = teacher_forced_logprobs(copy, p, g.token_ids, temperature or 1.0)
            torch.testing.assert_close(torch.tensor(g.logprobs), expected, atol=0.05,
                                       rtol=0.0)


def test_batched_greedy_equals_one_at_a_time(tiny):
    model, tok = tiny
    gen = HFGenerator(model, tok)
    ps = prompts(tok, ["a", "a much longer prompt than the first one, padded on the left"])
    batch = gen.generate(ps, [SamplingParams(10, temperature=0)] * 2)
    single = [gen.generate([p], [SamplingParams(10, temperature=0)])[0] for p in ps]
    assert [g.token_ids for g in batch] == [g.token_ids for g in single]


def test_stop_string_and_per_sequence_budgets(tiny):
    model, tok = tiny
    gen = HFGenerator(model, tok)
    p = prompts(tok, ["Once upon a time"])[0]
    free = gen.generate([p], [SamplingParams(20, temperature=0)])[0]
    assert free.finish_reason == "length" and len(free.token_ids) == 20
    stop = tok.decode(free.token_ids[6:8])  # text the greedy run completes at token 8
    first = tok.decode(free.token_ids).find(stop)
    stopped, short = gen.generate([p, p], [SamplingParams(20, temperature=0, stop=(stop,)),
                                           SamplingParams(3, temperature=0)])
    assert stopped.finish_reason == "stop" and stopped.stop_string == stop
    assert stop in tok.decode(stopped.token_ids)
    assert stop not in tok.decode(stopped.token_ids[:-1])  # stopped as soon as it completed
    assert stopped.token_ids == free.token_ids[: len(stopped.token_ids)]
    assert first >= 0
    assert short.finish_reason == "length" and short.token_ids == free.token_ids[:3]


def test_every_eos_id_of_the_generation_config_ends_a_sequence(tiny):
    """A model whose generation config lists two end-of-text ids stops at either (the
    prepared Qwen2.5 lists <|im_end|> and <|endoftext|>)."""
    model, tok = tiny
    p = prompts(tok, ["Once upon a time"])[0]
    free = HFGenerator(model, tok).generate([p], [SamplingParams(12, temperature=0)])[0]
    second = free.token_ids[4]  # a token greedy decoding reaches: make it an EOS too
    old = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = [tok.eos_token_id, second]
    try:
        gen = HFGenerator(model, tok)
        out = gen.generate([p], [SamplingParams(12, temperature=0)])[0]
    finally:
        model.generation_config.eos_token_id = old
    assert gen.eos_token_ids == {tok.eos_token_id, second}
    cut = free.token_ids.index(second) + 1
    assert out.finish_reason == "eos" and out.token_ids == free.token_ids[:cut]


class ForceText:
    """A logits processor that makes the model write given texts, one per turn, then EOS."""

    def __init__(self, tokenizer, turns: list[str]):
        self.plan = [tokenizer.encode(t, add_special_tokens=False) for t in turns]
        self.eos = tokenizer.eos_token_id
        self.turn, self.pos, self.expected_width = -1, 0, None

    def __call__(self, input_ids, scores):
        width = input_ids.shape[1]
        if width != self.expected_width:  # the first step of a new generate call: next turn
            self.turn, self.pos = self.turn + 1, 0
        self.expected_width = width + 1
        plan = self.plan[self.turn] if self.turn < len(self.plan) else []
        forced = plan[self.pos] if self.pos < len(plan) else self.eos
        self.pos += 1
        out = torch.full_like(scores, -1e9)
        out[:, forced] = 0.0
        return out


def test_full_rollout_with_real_service(tiny, service_url):
    from conftest import token

    model, tok = tiny
    force = ForceText(tok, [f"<think> look up </think> <search> {token(31)} </search>",
                            " <answer> \\boxed{done} </answer>"])
    gen = HFGenerator(model, tok, logits_processors=[force])
    with SearchClient(service_url) as client:
        (t,) = run_rollouts(prompts(tok, ["Question: what is doc 31?"]), gen, client, tok,
                            RolloutSettings(max_response_tokens=2048, top_k=2, temperature=1.0))
    assert t.finish_reason == "eos" and t.num_searches == 1 and t.search_failures == 0
    assert t.turns[0].query == token(31) and t.turns[0].doc_ids[0] == "doc-31"
    inserted = tok.decode([i for i, m in zip(t.response_ids, t.loss_mask, strict=True) if not m])
    assert inserted.startswith(f" {protocol.RESULT_START}\n\"Title 31\"")
    assert inserted.endswith(f"\n{protocol.RESULT_END}")
    model_text = tok.decode([i for i, m in zip(t.response_ids, t.loss_mask, strict=True) if m])
    assert model_text.startswith("<think> look up </think> <search>")
    assert protocol.extract_answer(t.text) == "done"
    assert all(lp == 0.0 for lp, m in zip(t.logprobs, t.loss_mask, strict=True) if not m)


def test_rollout_command_writes_and_shows_trajectories(tmp_path, service_url):
    """``research rollout`` reads the evaluation's config: --config, then key=value."""
    import json
    import subprocess
    import sys

    from research.models.tiny import save_tiny_model

    model_dir = save_tiny_model(tmp_path / "tiny")
    out = tmp_path / "r.jsonl"
    result = subprocess.run(
        [sys.executable, "-m", "research.cli", "rollout", "--config", "cpu",
         f"generator.model={model_dir}", "generator.dtype=float32", "generator.threads=1",
         "data.dataset_name=squad-open-mini", f"retrieval.search_url={service_url}",
         "rollout.max_response_tokens=24", "--n", "2", "--limit", "2", "--out", str(out),
         "--color", "always"],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "older flag" not in result.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 4
    assert {"question", "golden_answers", "reward", "reason", "response_ids", "loss_mask",
            "finish_reason", "turns"} <= set(rows[0])
    assert rows[0]["question"] == rows[1]["question"] != rows[2]["question"]
    assert "4 trajectories" in result.stdout and "=== " in result.stdout
    # the cpu preset's rollout settings and the override reached the rollout: its worked
    # example in the prompt, at most 2 searches, 24 sampled tokens
    from transformers import AutoTokenizer

    from research.evaluation.config import load_config

    settings = load_config("cpu").rollout
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    assert rows[0]["prompt_ids"] == settings.encode_prompt(tokenizer, rows[0]["question"])
    assert settings.example == "two-search" and settings.max_turns == 2
    assert all(len(r["turns"]) <= 2 and sum(r["loss_mask"]) <= 24 for r in rows)


def test_rollout_command_reads_the_older_flags_as_keys(caplog):
    from research.cli import build_parser
    from research.evaluation.config import load_config
    from research.evaluation.inspect_rollouts import overrides_of

    args = build_parser().parse_args(["rollout", "--model", "m", "--example", "--max-turns",
                                      "2", "--stop-at-answer", "rollout.max_turns=3"])
    with caplog.at_level("WARNING", logger="research.evaluation.inspect_rollouts"):
        overrides = overrides_of(args)
    assert overrides == ["generator.model=m", "rollout.example=two-search",
                         "rollout.max_turns=2", "rollout.stop_at_answer=true",
                         "rollout.max_turns=3"]
    assert "--max-turns is an older flag of research rollout, read as rollout.max_turns=2" in \
        caplog.text
    config = load_config("cpu", overrides)
    assert config.rollout.max_turns == 3 and config.rollout.example == "two-search"
    assert config.generator.model == "m"


def test_colourise_marks_tag_spans():
    from research.evaluation.inspect_rollouts import colourise

    text = "<think>a</think><search>q</search><result>r</result><answer>x</answer>"
    coloured = colourise(text)
    assert "\x1b[33mq\x1b[0m" in coloured and "\x1b[32mx\x1b[0m" in coloured
    assert colourise(text, enabled=False) == text


def test_finished_sequences_leave_the_batch(tiny):
    """After a sequence ends, the model runs on the remaining ones only."""
    model, tok = tiny
    sizes = []
    hook = model.register_forward_hook(lambda m, args, kwargs, out: sizes.append(
        kwargs["input_ids"].shape[0]), with_kwargs=True)
    try:
        short, long = HFGenerator(model, tok).generate(
            prompts(tok, ["one", "two"]), [SamplingParams(2, temperature=0),
                                           SamplingParams(6, temperature=0)])
    finally:
        hook.remove()
    assert (len(short.token_ids), len(long.token_ids)) == (2, 6)
    assert sizes == [2, 2, 1, 1, 1, 1]  # prefill, step with both, then the long one alone


def test_shared_prompt_prefix_is_computed_once_with_identical_results(tiny):
    """A group sharing a long prefix (an instruction, or GRPO's n samples) is prefilled once;
    outputs and log-probs equal those of each prompt alone."""
    model, tok = tiny
    instruction = "You answer questions with care and search when you need facts. " * 3
    ps = prompts(tok, [instruction + "Who wrote Hamlet?", instruction + "Capital of Peru?",
                       instruction + "Who wrote Hamlet?"])
    sizes = []
    hook = model.register_forward_hook(lambda m, args, kwargs, out: sizes.append(
        tuple(kwargs["input_ids"].shape)), with_kwargs=True)
    try:
        batch = HFGenerator(model, tok).generate(ps, [SamplingParams(8, temperature=0)] * 3)
    finally:
        hook.remove()
    assert sizes[0][0] == 1 and sizes[0][1] >= 16  # the shared prefix, once
    assert sizes[1][0] == 3  # then the three suffixes
    for p, g in zip(ps, batch, strict=True):
        alone = HFGenerator(model, tok).generate([p], [SamplingParams(8, temperature=0)])[0]
        assert g.token_ids == alone.token_ids
        torch.testing.assert_close(torch.tensor(g.logprobs),
                                   teacher_forced_logprobs(model, p, g.token_ids),
                                   atol=2e-4, rtol=1e-4)


def _forward_sizes(model):
    """Record ``input_ids`` shapes of every forward; returns (list, hook)."""
    sizes = []
    hook = model.register_forward_hook(lambda m, args, kwargs, out: sizes.append(
        tuple(kwargs["input_ids"].shape)), with_kwargs=True)
    return sizes, hook


def test_kept_cache_continues_exactly_like_a_fresh_prefill(tiny):
    """Three turns of three sequences, as the rollout loop runs them: each turn stops at a
    stop string, a result block is inserted, and the next turn continues. Inside ``turns()``
    the continuing rows prefill only what was inserted (plus the token sampled last); the
    tokens (greedy) and log-probs equal those of a fresh prefill of the whole sequence, and
    a row with nothing kept (a new prompt) is prefilled whole in the same batch."""
    model, tok = tiny
    fresh = HFGenerator(model, tok, keep_cache=False)
    inserted = tok.encode(" <result>\nParis is the capital of France.\n</result>",
                          add_special_tokens=False)
    seqs = prompts(tok, ["The capital of France is", "Question: who wrote Hamlet? Answer:",
                         "Once upon a time"])

    def stop_of(seq):  # text the greedy continuation completes at its 6th token
        free = fresh.generate([seq], [SamplingParams(12, temperature=0)])[0]
        return (tok.decode(free.token_ids[4:6]),)

    cached = HFGenerator(model, tok)
    with cached.turns():
        current = [list(s) for s in seqs]
        for turn in range(3):
            params = [SamplingParams(12, temperature=0, stop=stop_of(s) if turn < 2 else ())
                      for s in current]
            if turn == 2:  # a new prompt joins the last turn: nothing kept for it
                current.append(prompts(tok, ["A new question with nothing kept"])[0])
                params.append(SamplingParams(12, temperature=0))
            before = cached.prefilled
            sizes, hook = _forward_sizes(model)
            try:
                outs = cached.generate(current, params)
            finally:
                hook.remove()
            refs = [fresh.generate([s], [p])[0] for s, p in zip(current, params, strict=True)]
            for s, g, ref in zip(current, outs, refs, strict=True):
                assert g.token_ids == ref.token_ids
                assert g.finish_reason == ref.finish_reason
                torch.testing.assert_close(torch.tensor(g.logprobs), torch.tensor(ref.logprobs),
                                           atol=2e-4, rtol=1e-4)
                torch.testing.assert_close(torch.tensor(g.logprobs),
                                           teacher_forced_logprobs(model, s, g.token_ids),
                                           atol=2e-4, rtol=1e-4)
            if turn == 0:
                assert all(g.finish_reason == "stop" for g in outs)
            else:  # each continuing row ran only its last sampled token and the block
                new = [len(inserted) + 1] * 3 + ([len(current[3])] if turn == 2 else [])
                assert cached.prefilled - before == sum(new)
                assert sizes[0] == (len(current), max(new))
            current = [s + g.token_ids + inserted for s, g in zip(current, outs, strict=True)]
    assert cached._kept is None  # everything kept is dropped on leaving turns()


def test_cache_is_kept_only_inside_turns_and_only_for_extending_prompts(tiny):
    """Outside ``turns()`` nothing is kept; inside, a prompt that does not extend the kept
    sequence (it differs inside the kept tokens) is prefilled whole, with the same result."""
    model, tok = tiny
    p = prompts(tok, ["Once upon a time"])[0]
    free = HFGenerator(model, tok).generate([p], [SamplingParams(12, temperature=0)])[0]
    stop = (tok.decode(free.token_ids[4:6]),)
    gen = HFGenerator(model, tok)
    first = gen.generate([p], [SamplingParams(12, temperature=0, stop=stop)])[0]
    assert first.finish_reason == "stop" and gen._kept is None
    with gen.turns():
        first = gen.generate([p], [SamplingParams(12, temperature=0, stop=stop)])[0]
        assert len(gen._kept) == 1
        assert len(first.token_ids) >= 2  # so the kept tokens run past the prompt
        # differs from the kept tokens right after the prompt: not an extension of them
        other = p + [first.token_ids[0] + 1] + first.token_ids[1:]
        before = gen.prefilled
        out = gen.generate([other], [SamplingParams(6, temperature=0)])[0]
        assert gen.prefilled - before == len(other)  # nothing kept matched: whole prefill
        assert gen._kept == []  # the unused cache was dropped with the call
    alone = HFGenerator(model, tok).generate([other], [SamplingParams(6, temperature=0)])[0]
    assert out.token_ids == alone.token_ids


# --- continuous batching across turns ---------------------------------------------------------


def no_repeat(input_ids, scores):
    """A logits processor that bans each row's last four tokens (the tiny random model
    repeats one token forever otherwise); it reads only the row, as every mode must allow."""
    return scores.scatter(1, input_ids[:, -4:], float("-inf"))


def test_continuous_turns_continue_exactly_like_a_fresh_prefill(tiny):
    """Three sequences whose turns end at different steps (each stops at text its own greedy
    run completes at a different token): each one's next turn (what it holds plus an
    inserted block) joins the running batch while the others are still decoding, prefills
    only its last sampled token and the block, and gives the tokens (greedy) and log-probs of
    a fresh prefill of the whole sequence."""
    model, tok = tiny
    fresh = HFGenerator(model, tok, logits_processors=[no_repeat])
    inserted = tok.encode(" <result>\nParis is the capital of France.\n</result>",
                          add_special_tokens=False)
    seqs = prompts(tok, ["The capital of France is", "Question: who wrote Hamlet? Answer:",
                         "Once upon a time"])

    probing = []

    def stop_after(seq, n):  # text the greedy continuation of seq first completes at token n
        probing.append(True)
        free = fresh.generate([seq], [SamplingParams(16, temperature=0)])[0]
        for m in range(n, 17):  # (the first n at which the text is new, to be exact)
            stop = (tok.decode(free.token_ids[m - 2:m]),)
            g = fresh.generate([seq], [SamplingParams(16, temperature=0, stop=stop)])[0]
            if len(g.token_ids) == m:
                probing.pop()
                return stop
        raise AssertionError("no stop text found")  # pragma: no cover

    holds = {i: list(s) for i, s in enumerate(seqs)}
    turn = dict.fromkeys(holds, 0)
    params = {i: SamplingParams(16, temperature=0, stop=stop_after(s, 3 + 4 * i))
              for i, s in enumerate(seqs)}
    first = dict(params)
    events, got = [], []

    def next_turn(done):
        out = []
        for i, g in done:
            events.append(("ended", i, turn[i]))
            got.append((list(holds[i]), params[i], g))
            turn[i] += 1
            if turn[i] == 3 or g.finish_reason != "stop":
                out.append(None)
                continue
            holds[i] += g.token_ids + inserted
            params[i] = SamplingParams(16, temperature=0, stop=stop_after(holds[i], 3)
                                       if turn[i] < 2 else ())
            out.append((holds[i], params[i]))
        return out

    gen = HFGenerator(model, tok, logits_processors=[no_repeat])
    def record(module, args, kwargs, out):
        if not probing:  # the reference generations inside next_turn are not counted
            events.append(("forward", tuple(kwargs["input_ids"].shape)))

    hook = model.register_forward_hook(record, with_kwargs=True)
    try:
        gen.generate_continuous(seqs, [first[i] for i in range(3)], next_turn)
    finally:
        hook.remove()
    assert len(got) == 9  # three turns of each sequence
    for seq, p, g in got:
        ref = fresh.generate([seq], [p])[0]
        assert g.token_ids == ref.token_ids and g.finish_reason == ref.finish_reason
        torch.testing.assert_close(torch.tensor(g.logprobs), torch.tensor(ref.logprobs),
                                   atol=2e-4, rtol=1e-4)
    # sequence 0 ended its first turn and rejoined (one row prefilling its last sampled
    # token and the block) before sequence 2 ended its first turn
    rejoin = events.index(("forward", (1, len(inserted) + 1)))
    assert events.index(("ended", 0, 0)) < rejoin < events.index(("ended", 2, 0))
    assert gen.prefilled == sum(map(len, seqs)) + 6 * (len(inserted) + 1)


def test_continuous_with_max_batch_admits_waiting_prompts_as_rows_finish(tiny):
    """At most ``max_batch`` rows decode at once; a waiting prompt joins as soon as a row
    finishes, and every output equals the sequence generated alone."""
    model, tok = tiny
    ps = prompts(tok, ["one", "two words", "three words here", "four", "five and more"])
    budgets = [3, 9, 5, 7, 4]
    params = [SamplingParams(n, temperature=0) for n in budgets]
    outs = {}
    sizes, hook = _forward_sizes(model)
    try:
        HFGenerator(model, tok, max_batch=2).generate_continuous(
            ps, params, lambda done: [outs.__setitem__(i, g) for i, g in done] and
            [None] * len(done))
    finally:
        hook.remove()
    assert max(b for b, _ in sizes) == 2
    assert sum(1 for b, w in sizes if w == 1) < sum(budgets) - len(ps)  # rows decoded together
    for p, q, i in zip(ps, params, range(5), strict=True):
        alone = HFGenerator(model, tok).generate([p], [q])[0]
        assert outs[i].token_ids == alone.token_ids and len(alone.token_ids) == budgets[i]


def test_continuous_next_turn_that_does_not_extend_is_prefilled_whole(tiny):
    """A next turn that rewrites what the sequence holds cannot use its cache: it is
    prefilled whole, with the result of a fresh generation."""
    model, tok = tiny
    p = prompts(tok, ["Once upon a time"])[0]
    free = HFGenerator(model, tok).generate([p], [SamplingParams(12, temperature=0)])[0]
    stop = (tok.decode(free.token_ids[4:6]),)
    other = p + [free.token_ids[0] + 1]
    got = []

    def next_turn(done):
        got.extend(g for _, g in done)
        return [(other, SamplingParams(6, temperature=0))] if len(got) == 1 else [None]

    gen = HFGenerator(model, tok)
    gen.generate_continuous([p], [SamplingParams(12, temperature=0, stop=stop)], next_turn)
    assert got[0].finish_reason == "stop" and gen.prefilled == len(p) + len(other)
    alone = HFGenerator(model, tok).generate([other], [SamplingParams(6, temperature=0)])[0]
    assert got[1].token_ids == alone.token_ids


class ForcePlan:
    """A logits processor that makes each row write its own search, then (after the result
    the rollout inserts) its own answer, then EOS; it reads only the row's tokens, so it forces
    the same text whether rows run turn by turn or continuously."""

    def __init__(self, tokenizer, prompts, searches, answers):
        enc = lambda text: tokenizer.encode(text, add_special_tokens=False)  # noqa: E731
        self.prompts = [list(p) for p in prompts]
        self.plans = [(enc(s), enc(a)) for s, a in zip(searches, answers, strict=True)]
        self.end = enc(f"\n{protocol.RESULT_END}")
        self.pad, self.eos = tokenizer.pad_token_id, tokenizer.eos_token_id

    def _next(self, row: list[int]) -> int:
        i, start = next((k, s + len(p)) for k, p in enumerate(self.prompts)
                        for s in range(len(row) - len(p) + 1) if row[s:s + len(p)] == p)
        response = row[start:]
        search, answer = self.plans[i]
        if len(response) < len(search):
            return search[len(response)]
        n = len(self.end)
        ends = [e for e in range(n, len(response) + 1) if response[e - n:e] == self.end]
        k = len(response) - ends[-1] if ends else len(answer)
        return answer[k] if k < len(answer) else self.eos

    def __call__(self, input_ids, scores):
        out = torch.full_like(scores, -1e9)
        for r, row in enumerate(input_ids.tolist()):
            out[r, self._next(row)] = 0.0
        return out


def test_continuous_rollouts_equal_turn_by_turn_ones_with_fewer_decode_steps(tiny,
                                                                            service_url):
    """Against the real service: rows whose searches differ in length give the same
    trajectories (tokens, masks, log-probs, turns) continuously as turn by turn, and the
    continuous run decodes fewer steps, since no row waits for the longest of its turn."""
    from conftest import token

    model, tok = tiny
    ps = prompts(tok, ["Question: what is doc 31?", "Question: tell me about doc 7 please?",
                       "Question: doc 12?"])
    searches = [f"<think> a </think> <search> {token(31)} </search>",
                f"<think> this one thinks for much longer before it searches </think> "
                f"<search> {token(7)} </search>",
                f"<think> b </think> <search> {token(12)} </search>"]
    answers = [" <answer> \\boxed{x} </answer>",
               " <answer> \\boxed{y} </answer>",
               " <think> now a long answer after the result </think> <answer> \\boxed{z} "
               "</answer>"]
    settings = RolloutSettings(max_response_tokens=1024, top_k=1, temperature=0)
    runs = {}
    for continuous in (False, True):
        force = ForcePlan(tok, ps, searches, answers)
        gen = HFGenerator(model, tok, logits_processors=[force], continuous=continuous)
        sizes, hook = _forward_sizes(model)
        try:
            with SearchClient(service_url) as client:
                runs[continuous] = run_rollouts(ps, gen, client, tok, settings)
        finally:
            hook.remove()
        runs[continuous, "steps"] = sum(1 for _, w in sizes if w == 1)
    for a, b in zip(runs[False], runs[True], strict=True):
        assert a.finish_reason == b.finish_reason == "eos" and b.num_searches == 1
        assert a.response_ids == b.response_ids and a.loss_mask == b.loss_mask
        assert [t.doc_ids for t in a.turns] == [t.doc_ids for t in b.turns]
        torch.testing.assert_close(torch.tensor(a.logprobs), torch.tensor(b.logprobs),
                                   atol=2e-4, rtol=1e-4)
    assert runs[True][1].turns[0].doc_ids == ["doc-7"]
    assert runs[True, "steps"] < runs[False, "steps"]


def test_the_backends_declare_their_abilities(tiny):
    """The rollout loop finds a backend's optional abilities through declared protocols, not
    attribute probing: continuous batching, KV caches kept across turns, per-step reports."""
    from research.rollout.backends.openai_http import OpenAIGenerator
    from research.rollout.generation import (
        ContinuousGenerator,
        Generator,
        KeepsTurns,
        ReportsSteps,
        runs_continuously,
    )

    model, tok = tiny
    hf = HFGenerator(model, tok)
    assert isinstance(hf, Generator) and isinstance(hf, ContinuousGenerator)
    assert isinstance(hf, KeepsTurns) and isinstance(hf, ReportsSteps)
    assert runs_continuously(hf) and not runs_continuously(HFGenerator(model, tok,
                                                                       continuous=False))
    with OpenAIGenerator("http://127.0.0.1:9", "m", tok,
                         eos_token_ids=[tok.eos_token_id]) as remote:
        assert runs_continuously(remote) and not isinstance(remote, KeepsTurns)

    class Plain:
        eos_token_ids = frozenset({0})

        def generate(self, prompts, params):
            return []

    assert isinstance(Plain(), Generator) and not runs_continuously(Plain())
    assert not isinstance(Plain(), (KeepsTurns, ReportsSteps))
