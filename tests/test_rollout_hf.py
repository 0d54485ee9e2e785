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
    assert t.finish_reason == "eos" and t.num_searches == 1 and t.num_failures == 0
    assert t.turns[0].query == token(31) and t.turns[0].doc_ids[0] == "doc-31"
    inserted = tok.decode([i for i, m in zip(t.response_ids, t.loss_mask, strict=True) if not m])
    assert inserted.startswith(f" {protocol.RESULT_START}\n\"Title 31\"")
    assert inserted.endswith(f"\n{protocol.RESULT_END}")
    model_text = tok.decode([i for i, m in zip(t.response_ids, t.loss_mask, strict=True) if m])
    assert model_text.startswith("<think> look up </think> <search>")
    assert protocol.extract_answer(t.text) == "done"
    assert all(lp == 0.0 for lp, m in zip(t.logprobs, t.loss_mask, strict=True) if not m)


def test_rollout_command_writes_and_shows_trajectories(tmp_path, service_url):
    import json
    import subprocess
    import sys

    from research.models.tiny import save_tiny_model

    model_dir = save_tiny_model(tmp_path / "tiny")
    out = tmp_path / "r.jsonl"
    result = subprocess.run(
        [sys.executable, "-m", "research.cli", "rollout", "--model", str(model_dir),
         "--data", "squad-open-mini", "--search-url", service_url, "--n", "2", "--limit", "2",
         "--max-response-tokens", "24", "--out", str(out), "--threads", "1", "--color", "always"],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 4
    assert {"question", "golden_answers", "reward", "reason", "response_ids", "loss_mask",
            "finish_reason", "turns"} <= set(rows[0])
    assert rows[0]["question"] == rows[1]["question"] != rows[2]["question"]
    assert "4 trajectories" in result.stdout and "=== " in result.stdout


def test_colourise_marks_tag_spans():
    from research.rollout.commands import colourise

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
