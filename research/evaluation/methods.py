"""The evaluation methods: ReSearch and the RAG baselines, in one registry.

Every method answers a batch of questions together: one ``generate`` call per step for the
whole batch (the Hugging Face backend batches it; the OpenAI-compatible backend sends its
requests concurrently) and one ``batch_search`` per step. A method returns, per question, an
:class:`Answer`: the prediction, the trajectory (every retrieval and generation step), the
number of searches and of generated tokens.

Prompts and settings are FlashRAG's standard ones (``flashrag/prompt/base_prompt.py``,
``flashrag/pipeline/{pipeline,active_pipeline}.py``, ``examples/methods/run_exp.py``):

* ``direct`` (FlashRAG's naive generation, the original's ``zero-shot``): the question alone.
* ``naive-rag`` (standard RAG, the original's ``naive``): the top-k documents of the question in
  the system prompt.
* ``iter-retgen``: 3 rounds; round i > 0 retrieves with the question plus round i-1's output;
  the prediction is the last round's output.
* ``flare``: up to 5 rounds or 256 counted tokens; each round generates a look-ahead of at most
  64 tokens (honoured here: the original's remote generator ignored it); when a token of the
  look-ahead's first sentence has probability <= 0.2 (from the generator's log-probs), the
  sentence without those tokens is the query and the sentence is generated again with the
  documents. Unlike FlashRAG, a round whose generation ends with the end-of-sequence token
  ends the answer (FlashRAG kept generating after it).
* ``ircot``: one reasoning sentence per step with the one-shot IRCoT prompt (plain text, no
  chat template), up to 5 steps; each new thought retrieves more documents into the item's
  pool (best score kept, best last); stops at "So the answer is:", the text after it is the
  prediction.
* ``research``: the ReSearch rollout, greedy (:mod:`research.evaluation.research_pipeline`).

Baselines use the tokenizer's chat template when it has one (``method.chat=auto``), else the
system and user texts joined by a blank line. FlashRAG decides by the model's name ("chat" or
"instruct" in it); base models whose tokenizer carries a chat template (Qwen2.5's do) need
``method.chat=off`` to match it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

from research import protocol
from research.errors import ConfigError
from research.evaluation.config import MethodSection
from research.retrieval.base import Hit
from research.rollout.generation import Generation, Generator, SamplingParams
from research.rollout.settings import RolloutSettings

# --- FlashRAG's standard prompts (verbatim; "document.Only" has no space in FlashRAG's code) ---

RAG_SYSTEM = ("Answer the question based on the given document."
              "Only give me the answer and do not output any other words."
              "\nThe following are given documents.\n\n{reference}")
DIRECT_SYSTEM = ("Answer the question based on your own knowledge. Only give me the answer and "
                 "do not output any other words.")
USER = "Question: {question}"

IRCOT_INSTRUCTION = (
    "You serve as an intelligent assistant, adept at facilitating users through complex, "
    "multi-hop reasoning across multiple documents. This task is illustrated through "
    "demonstrations, each consisting of a document set paired with a relevant question and its "
    "multi-hop reasoning thoughts. Your task is to generate one thought for current step, "
    "DON'T generate the whole thoughts at once! If you reach what you believe to be the final "
    'step, start with "So the answer is:".'
)
IRCOT_EXAMPLE = (
    "Wikipedia Title: Kurram Garhi\nKurram Garhi is a small village located near the city of "
    "Bannu, which is the part of Khyber Pakhtunkhwa province of Pakistan. Its population is "
    "approximately 35000. Barren hills are near this village. This village is on the border of "
    "Kurram Agency. Other nearby villages are Peppal, Surwangi and Amandi Kala.\n\n"
    "Wikipedia Title: 2001–02 UEFA Champions League second group stage\nEight winners and "
    "eight runners- up from the first group stage were drawn into four groups of four teams, "
    "each containing two group winners and two runners- up. Teams from the same country or "
    "from the same first round group could not be drawn together. The top two teams in each "
    "group advanced to the quarter- finals.\n\n"
    "Wikipedia Title: Satellite tournament\nA satellite tournament is either a minor "
    "tournament or event on a competitive sporting tour or one of a group of such tournaments "
    "that form a series played in the same country or region.\n\n"
    "Wikipedia Title: Trojkrsti\nTrojkrsti is a village in Municipality of Prilep, Republic of "
    "Macedonia.\n\n"
    "Wikipedia Title: Telephone numbers in Ascension Island\nCountry Code:+ 247< br> "
    "International Call Prefix: 00 Ascension Island does not share the same country code( "
    "+290) with the rest of St Helena.\n\n"
    "Question: Are both Kurram Garhi and Trojkrsti located in the same country?\n"
    "Thought: Kurram Garhi is located in the country of Pakistan. Trojkrsti is located in the "
    "country of Republic of Macedonia. Thus, they are not in the same country. So the answer "
    "is: no.\n\n"
)
IRCOT_ANSWER = "So the answer is:"
FLARE_STOPS = ("!", "@", "#", "$", "%", "^", "&", "*", "(", ")", "\n")
_SENTENCE_END = re.compile(r"(?<=[^A-Z].[.?]) +")  # FlashRAG's FLARE sentence split


@dataclass
class Context:
    """What a method runs with: the generator, its tokenizer, the retrieval client; and,
    for a method that can tell (``research``), a progress line and ``on_answer(i, answer)``
    called as soon as question ``i`` of the batch is answered."""

    generator: Generator
    tokenizer: object
    searcher: object | None  # a BatchSearcher; None when only ``direct`` runs
    method: MethodSection = field(default_factory=MethodSection)  # the baselines' knobs
    rollout: RolloutSettings = field(default_factory=RolloutSettings)  # ReSearch's (greedy)
    progress: bool = False
    on_answer: Callable[[int, Answer], None] | None = None


@dataclass
class Answer:
    prediction: str
    trajectory: list[dict] = field(default_factory=list)  # steps: retrievals and generations
    searches: int = 0
    search_failures: int = 0
    generated_tokens: int = 0
    response: str = ""  # the whole generated text (ReSearch: the response with results)


Method = Callable[[Sequence[dict], Context], list[Answer]]
METHODS: dict[str, Method] = {}
ALIASES = {"zero-shot": "direct", "naive": "naive-rag", "iterretgen": "iter-retgen",
           "naive-generation": "direct", "standard-rag": "naive-rag"}
RETRIEVAL_FREE = {"direct"}
MODEL_FREE = {"one-search-rule", "oracle-chain"}  # scripted policies (scripted.py)


def register(name: str):
    def add(fn: Method) -> Method:
        METHODS[name] = fn
        return fn
    return add


def resolve(name: str) -> str:
    """The registry name of ``name`` (the original's names are aliases), or a clear error."""
    key = ALIASES.get(name, name)
    if key not in METHODS:
        raise ConfigError(f"unknown method {name!r}; valid: {', '.join(METHODS)} (aliases: "
                         f"{', '.join(f'{a}={b}' for a, b in ALIASES.items())})")
    return key


# --- shared pieces ---------------------------------------------------------------------------


def split_title(contents: str) -> tuple[str, str]:
    """FlashRAG's convention: the first line of ``contents`` is the title, the rest the text."""
    title, _, text = contents.partition("\n")
    return title, text


def format_reference(hits: Sequence[Hit]) -> str:
    """FlashRAG's default reference block: ``Doc i(Title: t) text`` per line.

    >>> format_reference([Hit("d1", '"Lima"\\nLima is the capital of Peru.', 1.0)])
    'Doc 1(Title: "Lima") Lima is the capital of Peru.\\n'
    """
    return "".join(f"Doc {i + 1}(Title: {t}) {x}\n"
                   for i, (t, x) in enumerate(split_title(h.contents) for h in hits))


def prompt_ids(ctx: Context, system: str, user: str, previous: str = "") -> list[int]:
    """The baselines' prompt: chat template (instruct models) or ``system\\n\\nuser``; the
    text generated so far (``previous``) continues the assistant turn."""
    tok = ctx.tokenizer
    use_chat = {"on": True, "off": False}.get(ctx.method.chat,
                                              bool(getattr(tok, "chat_template", None)))
    if use_chat:
        if not getattr(tok, "chat_template", None):
            raise ConfigError("method.chat=on needs a tokenizer with a chat template; this one "
                             "has none: use method.chat=auto or off")
        messages = [{"role": "system", "content": system}] if system else []
        ids = list(tok.apply_chat_template(messages + [{"role": "user", "content": user}],
                                           add_generation_prompt=True, tokenize=True,
                                           return_dict=False))
    else:
        ids = tok.encode("\n\n".join(p for p in (system, user) if p))
    return ids + (tok.encode(previous, add_special_tokens=False) if previous else [])


def generate(ctx: Context, prompts: list[list[int]], max_new_tokens: int,
             stop: tuple[str, ...] = ()) -> list[Generation]:
    params = [SamplingParams(max_new_tokens, temperature=0.0, stop=stop)] * len(prompts)
    return ctx.generator.generate(prompts, params) if prompts else []


def text_of(ctx: Context, g: Generation) -> str:
    return ctx.tokenizer.decode(g.token_ids, skip_special_tokens=True)


def search(ctx: Context, queries: Sequence[str], answers: Sequence[Answer]) -> list[list[Hit]]:
    """The documents of each query, by the rollout's search policy
    (:func:`research.rollout.engine.search_queries`: one request for the distinct real
    queries; a blank query is not sent and gets "invalid query"; a failed request gives its
    queries "search failed: <why>", never a crash). Each query is recorded in its answer's
    trajectory as the rollout's :class:`~research.rollout.engine.Turn` (no tokens inserted);
    sent queries count as searches, failed ones as failures too."""
    from research.rollout.engine import Turn, search_queries

    outcomes = search_queries(ctx.searcher, queries, ctx.method.top_k)
    results = []
    for query, answer in zip(queries, answers, strict=True):
        o = outcomes[query]
        sent = o.failure != protocol.INVALID_QUERY_TEXT
        answer.searches += sent
        answer.search_failures += sent and o.failure is not None
        answer.trajectory.append(asdict(Turn(query, [h.id for h in o.hits], o.latency_s,
                                             o.failure, inserted_tokens=0)))
        results.append(o.hits)
    return results


def record_generation(ctx: Context, answer: Answer, g: Generation, text: str | None = None
                      ) -> str:
    text = text_of(ctx, g) if text is None else text
    answer.generated_tokens += len(g.token_ids)
    answer.trajectory.append({"output": text, "tokens": len(g.token_ids)})
    return text


# --- the methods -----------------------------------------------------------------------------


@register("direct")
def direct(items: Sequence[dict], ctx: Context) -> list[Answer]:
    answers = [Answer("") for _ in items]
    prompts = [prompt_ids(ctx, DIRECT_SYSTEM, USER.format(question=it["question"]))
               for it in items]
    for a, g in zip(answers, generate(ctx, prompts, ctx.method.answer_tokens), strict=True):
        a.prediction = a.response = record_generation(ctx, a, g).strip()
    return answers


def _rag_round(ctx: Context, items: Sequence[dict], answers: list[Answer],
               queries: list[str]) -> list[str]:
    docs = search(ctx, queries, answers)
    prompts = [prompt_ids(ctx, RAG_SYSTEM.format(reference=format_reference(hits)),
                          USER.format(question=it["question"]))
               for it, hits in zip(items, docs, strict=True)]
    gens = generate(ctx, prompts, ctx.method.answer_tokens)
    return [record_generation(ctx, a, g) for a, g in zip(answers, gens, strict=True)]


@register("naive-rag")
def naive_rag(items: Sequence[dict], ctx: Context) -> list[Answer]:
    answers = [Answer("") for _ in items]
    outputs = _rag_round(ctx, items, answers, [it["question"] for it in items])
    for a, out in zip(answers, outputs, strict=True):
        a.prediction = a.response = out.strip()
    return answers


@register("iter-retgen")
def iter_retgen(items: Sequence[dict], ctx: Context) -> list[Answer]:
    answers = [Answer("") for _ in items]
    outputs: list[str] = []
    for i in range(ctx.method.iter_retgen_iterations):
        queries = [it["question"] if i == 0 else f"{it['question']} {out}"
                   for it, out in zip(items, outputs or [""] * len(items), strict=True)]
        outputs = _rag_round(ctx, items, answers, queries)
    for a, out in zip(answers, outputs, strict=True):
        a.prediction = a.response = out.strip()
    return answers


def first_sentence(ctx: Context, g: Generation) -> tuple[str, list[int], list[float]]:
    """The first sentence of a generation (FlashRAG's split) with its tokens and their
    probabilities: the shortest token prefix whose text covers the sentence."""
    text = text_of(ctx, g)
    sentence = _SENTENCE_END.split(text)[0]
    n = len(g.token_ids)
    for k in range(1, len(g.token_ids) + 1):
        if len(ctx.tokenizer.decode(g.token_ids[:k], skip_special_tokens=True)) >= len(sentence):
            n = k
            break
    return sentence, list(g.token_ids[:n]), [math.exp(lp) for lp in g.logprobs[:n]]


@register("flare")
def flare(items: Sequence[dict], ctx: Context) -> list[Answer]:
    s = ctx.method
    answers = [Answer("") for _ in items]
    finals = [""] * len(items)
    counted = [0] * len(items)
    rounds = [0] * len(items)
    active = list(range(len(items)))
    system = RAG_SYSTEM.format(reference="")
    while active:
        prompts = [prompt_ids(ctx, system, USER.format(question=items[i]["question"]), finals[i])
                   for i in active]
        looks = generate(ctx, prompts, s.flare_look_ahead, FLARE_STOPS)
        sentences, retrieve = {}, {}
        for i, g in zip(active, looks, strict=True):
            answers[i].generated_tokens += len(g.token_ids)
            sentence, ids, probs = first_sentence(ctx, g)
            sentences[i] = (sentence, len(ids), g)
            if any(p <= s.flare_threshold for p in probs):
                kept = [t for t, p in zip(ids, probs, strict=True) if p > s.flare_threshold]
                query = ctx.tokenizer.decode(kept, skip_special_tokens=True).strip()
                if query:
                    retrieve[i] = query
            answers[i].trajectory.append({"look_ahead": text_of(ctx, g),
                                          "tokens": len(g.token_ids),
                                          "min_prob": round(min(probs), 4) if probs else None})
        if retrieve:
            order = list(retrieve)
            docs = search(ctx, [retrieve[i] for i in order], [answers[i] for i in order])
            prompts = [prompt_ids(ctx, RAG_SYSTEM.format(reference=format_reference(hits)),
                                  USER.format(question=items[i]["question"]), finals[i])
                       for i, hits in zip(order, docs, strict=True)]
            for i, g in zip(order, generate(ctx, prompts, s.flare_look_ahead, FLARE_STOPS),
                            strict=True):
                answers[i].generated_tokens += len(g.token_ids)
                sentence, _, _ = first_sentence(ctx, g)
                sentences[i] = (sentence, sentences[i][1], g)
                answers[i].trajectory.append({"output": sentence, "tokens": len(g.token_ids)})
        still = []
        for i in active:
            sentence, n_counted, g = sentences[i]
            finals[i] += sentence
            counted[i] += n_counted
            rounds[i] += 1
            ended = g.finish_reason == "eos" and sentence == text_of(ctx, g)
            if not ended and counted[i] < s.flare_max_tokens and rounds[i] < s.flare_max_iterations:
                still.append(i)
        active = still
    for a, final in zip(answers, finals, strict=True):
        a.prediction, a.response = final.strip(), final
    return answers


def ircot_prompt(ctx: Context, question: str, hits: Sequence[Hit], thoughts: list[str]
                 ) -> list[int]:
    reference = "".join("Wikipedia Title: {}\n{}\n\n".format(*split_title(h.contents))
                        for h in hits)
    text = (f"{IRCOT_INSTRUCTION}\n\n{IRCOT_EXAMPLE}\n\n{reference}Question: {question}\n"
            f"Thought:{' '.join(thoughts)}")
    return ctx.tokenizer.encode(text)


def ircot_prediction(text: str) -> str:
    """The text after the last "So the answer is:" (the whole text when it never says so).

    >>> ircot_prediction("X is in Peru. So the answer is: Lima.")
    'Lima.'
    """
    return text.split(IRCOT_ANSWER)[-1].strip() if IRCOT_ANSWER in text else text.strip()


@register("ircot")
def ircot(items: Sequence[dict], ctx: Context) -> list[Answer]:
    s = ctx.method
    answers = [Answer("") for _ in items]
    thoughts: list[list[str]] = [[] for _ in items]
    first = search(ctx, [it["question"] for it in items], answers)
    pools: list[dict[str, tuple[float, Hit]]] = [{h.id: (h.score, h) for h in hits}
                                                  for hits in first]
    docs = [list(hits) for hits in first]
    active = list(range(len(items)))
    for _ in range(s.ircot_max_iterations):
        if not active:
            break
        prompts = [ircot_prompt(ctx, items[i]["question"], docs[i], thoughts[i]) for i in active]
        gens = generate(ctx, prompts, s.ircot_thought_tokens, (".", "\n"))
        searching = []
        for i, g in zip(active, gens, strict=True):
            thought = record_generation(ctx, answers[i], g)
            thoughts[i].append(thought)
            if IRCOT_ANSWER not in thought:
                searching.append(i)
        if searching:
            found = search(ctx, [thoughts[i][-1] for i in searching],
                           [answers[i] for i in searching])
            for i, hits in zip(searching, found, strict=True):
                for h in hits:
                    old = pools[i].get(h.id)
                    pools[i][h.id] = (h.score if old is None else max(old[0], h.score), h)
                docs[i] = [h for _, h in sorted(pools[i].values(), key=lambda p: p[0])]
        active = searching
    for a, ts in zip(answers, thoughts, strict=True):
        a.response = " ".join(ts)
        a.prediction = ircot_prediction(a.response)
    return answers


@register("research")
def research(items: Sequence[dict], ctx: Context) -> list[Answer]:
    from research.evaluation.research_pipeline import evaluate

    def answer(r: dict) -> Answer:
        return Answer(r["prediction"], trajectory=r["turns"], searches=r["searches"],
                      search_failures=r["search_failures"], generated_tokens=r["generated_tokens"],
                      response=r["response"])

    on_record = None if ctx.on_answer is None else (lambda i, r: ctx.on_answer(i, answer(r)))
    _, records = evaluate(items, ctx.generator, ctx.tokenizer, ctx.searcher,
                          ctx.rollout, batch_size=max(1, len(items)),
                          progress=ctx.progress, on_record=on_record)
    return [answer(r) for r in records]


from research.evaluation import scripted  # noqa: E402, F401  (registers the scripted policies)
