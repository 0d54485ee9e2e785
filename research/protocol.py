"""The ReSearch text protocol: the one place that knows the prompt templates and the tags.

Everything that reads or writes the model's text goes through this module: the prompt
(:func:`build_prompt`), the query the model asks for (:func:`extract_query`), the result block
the rollout inserts (:func:`format_result`) and the final answer (:func:`extract_answer`).

>>> extract_query("<think> Who? </think> <search> Zhou dynasty </search>")
'Zhou dynasty'
>>> format_result(['"Zhou dynasty"\\nThe Zhou dynasty ...', '"King Wu"\\nKing Wu ...'])
' <result>\\n"Zhou dynasty"\\nThe Zhou dynasty ...\\n\\n"King Wu"\\nKing Wu ...\\n</result>'
>>> extract_answer("<think> ok </think> <answer> The answer is \\\\boxed{King Wu} </answer>")
'King Wu'
"""

from __future__ import annotations

from collections.abc import Sequence

from research.errors import ConfigError

THINK_START = "<think>"
THINK_END = "</think>"
SEARCH_START = "<search>"
SEARCH_END = "</search>"
RESULT_START = "<result>"
RESULT_END = "</result>"
ANSWER_START = "<answer>"
ANSWER_END = "</answer>"

BOXED = "\\boxed"
FBOX = "\\fbox"

# The tag and answer-format rules both instructions end with, word for word.
_FORMAT_RULES = (
    "The reasoning process and answer are enclosed within <think> </think> and "
    "<answer> </answer> tags respectively, "
    "and the search query and result are enclosed within <search> </search> and "
    "<result> </result> tags respectively. "
    "For example, <think> This is the reasoning process. </think> "
    "<search> search query here </search> <result> search result here </result> "
    "<think> This is the reasoning process. </think> "
    r"<answer> The final answer is \[ \boxed{answer here} \] </answer>. "
    r"In the last part of the answer, the final exact answer is enclosed within \boxed{} "
    "with latex format."
)

# The instruction of the base-model template, as rendered by ``str.format``. Source:
# Agent-RL/ReSearch (the original), ``verl/verl/utils/dataset/template.py`` (``qa_template``,
# commit 12f6cb1), identical to ``re_search_template`` of the paper version
# (``src/verl/utils/dataset/template.py``, commit c820a43). Both are triple-quoted strings with
# a backslash line continuation at the end of each line, so the lines join with the single
# space that precedes each backslash; ``\\[ \\boxed{{answer here}} \\]`` renders as
# ``\[ \boxed{answer here} \]`` and ``\\boxed{{}}`` as ``\boxed{}``.
BASE_INSTRUCTION = (
    "A conversation between User and Assistant. "
    "The user asks a question, and the assistant solves it. "
    "The assistant first thinks about the reasoning process in the mind and then provides "
    "the user with the answer. "
    "During thinking, the assistant can invoke the wikipedia search tool to search for fact "
    "information about specific topics if needed. "
    + _FORMAT_RULES
)

# The system message of the chat variant, as the paper version's code has it (Agent-RL/ReSearch
# commit c820a43, ``re_search_template_sys``, used as the system turn with the raw question as
# the user turn). It is a reworded instruction ("You are a helpful assistant ..."), not
# BASE_INSTRUCTION; the string is not passed through ``str.format``, so ``\\boxed{}`` renders
# as ``\boxed{}`` like the base form.
CHAT_SYSTEM_PROMPT = (
    "You are a helpful assistant that can solve the given question step by step with the help "
    "of the wikipedia search tool. "
    "Given a question, you need to first think about the reasoning process in the mind and "
    "then provide the answer. "
    "During thinking, you can invoke the wikipedia search tool to search for fact information "
    "about specific topics if needed. "
    + _FORMAT_RULES
)

# The closed-book control (not part of the original protocol): the same instruction without
# the search tool, so GRPO without search can be compared with ReSearch on the same budget.
_CLOSED_BOOK_FORMAT_RULES = (
    "The reasoning process and answer are enclosed within <think> </think> and "
    "<answer> </answer> tags respectively. "
    "For example, <think> This is the reasoning process. </think> "
    r"<answer> The final answer is \[ \boxed{answer here} \] </answer>. "
    r"In the last part of the answer, the final exact answer is enclosed within \boxed{} "
    "with latex format."
)
CLOSED_BOOK_INSTRUCTION = (
    "A conversation between User and Assistant. "
    "The user asks a question, and the assistant solves it. "
    "The assistant first thinks about the reasoning process in the mind and then provides "
    "the user with the answer. "
    + _CLOSED_BOOK_FORMAT_RULES
)
CLOSED_BOOK_SYSTEM_PROMPT = (
    "You are a helpful assistant that can solve the given question step by step. "
    "Given a question, you need to first think about the reasoning process in the mind and "
    "then provide the answer. "
    + _CLOSED_BOOK_FORMAT_RULES
)

TEMPLATES = ("base", "chat")

# Characters that end a sentence; the clean base form adds no "." after them.
_SENTENCE_END = ".?!。？！…"

INVALID_QUERY_TEXT = "invalid query"
# The result text of a search asked for beyond the rollout's max_turns (the model can still
# answer; the notice is inserted once, with loss mask 0).
TURN_LIMIT_TEXT = "search limit reached: no more searches are possible, answer now"
SEARCH_FAILURE_TEXT = "search failed"
SEARCH_FAILURE_TEMPLATE = "search failed: {error}"


# Worked examples for small models that do not follow the instruction alone: not part of the
# original protocol, opt-in with ``example=``. Each is a question and the response a model
# should write to it; :func:`base_prompt` renders it as a previous ``User: ... Assistant: ...``
# turn, :func:`chat_messages` as a previous user / assistant exchange.
EXAMPLES: dict[str, tuple[str, str]] = {
    # the original's evaluation case, shortened: two chained searches
    "two-search": (
        "Who was the first king of the longest Chinese dynasty?",
        "<think> I need the longest Chinese dynasty first. </think> "
        "<search> longest Chinese dynasty </search> <result>\n\"Zhou dynasty\"\n"
        "The Zhou dynasty lasted longer than any other dynasty in Chinese history.\n</result> "
        "<think> The Zhou dynasty; now I need its first king. </think> "
        "<search> first king of the Zhou dynasty </search> <result>\n\"King Wu of Zhou\"\n"
        "King Wu of Zhou was the first king of the Zhou dynasty.\n</result> "
        "<think> The first king of the Zhou dynasty was King Wu of Zhou. </think> "
        r"<answer> The final answer is \[ \boxed{King Wu of Zhou} \] </answer>",
    ),
    # one search, a short fact copied into the box (measured: small models pass the format
    # more often with it: benchmarks/probe.py, benchmarks/results/probe.json)
    "one-search": (
        "In which year was the Eiffel Tower completed?",
        "<think> I need the year the Eiffel Tower was completed. </think> "
        "<search> Eiffel Tower completed </search> <result>\n\"Eiffel Tower: History\"\n"
        "The Eiffel Tower was completed in 1889.\n</result> "
        "<think> The result says 1889. </think> "
        r"<answer> The final answer is \[ \boxed{1889} \] </answer>",
    ),
    # two chained searches in another domain: the bridge entity found by the first, named in
    # the second query, and a number copied from the second result into the box
    "bridge": (
        "How many moons does the planet whose largest moon is Titan have?",
        "<think> I need the planet whose largest moon is Titan first. </think> "
        "<search> largest moon is Titan </search> <result>\n\"Saturn: Largest moon\"\n"
        "The largest moon of Saturn is Titan.\n</result> "
        "<think> The planet is Saturn; now I need the number of moons of Saturn. </think> "
        "<search> Saturn number of moons </search> <result>\n\"Saturn: Moons\"\n"
        "Saturn has 146 known moons.\n</result> "
        "<think> The result says 146. </think> "
        r"<answer> The final answer is \[ \boxed{146} \] </answer>",
    ),
}
EXAMPLE_NAMES = tuple(EXAMPLES)
DEFAULT_EXAMPLE = "two-search"

# The worked example of the closed-book prompt: the two-search question answered from memory.
CLOSED_BOOK_EXAMPLE_RESPONSE = (
    "<think> The longest Chinese dynasty was the Zhou dynasty; its first king was King Wu of "
    "Zhou. </think> "
    r"<answer> The final answer is \[ \boxed{King Wu of Zhou} \] </answer>"
)


def example_pair(example: str | None, search: bool = True) -> tuple[str, str] | None:
    """The ``(question, response)`` of the worked example named ``example`` (one of
    :data:`EXAMPLES`; None: no example). The closed-book prompt (``search=False``) has one
    example, answered from memory.

    >>> example_pair("one-search")[0]
    'In which year was the Eiffel Tower completed?'
    >>> example_pair(None) is None
    True
    """
    if example is None:
        return None
    name = example
    if name not in EXAMPLES:
        raise ConfigError(f"unknown worked example {name!r}; valid names: "
                         f"{', '.join(EXAMPLE_NAMES)}")
    if not search:
        return EXAMPLES[DEFAULT_EXAMPLE][0], CLOSED_BOOK_EXAMPLE_RESPONSE
    return EXAMPLES[name]


def _example_turn(example: str | None, search: bool) -> str | None:
    pair = example_pair(example, search)
    return None if pair is None else f"User: {pair[0]}. Assistant: {pair[1]}"


# The default worked example and the closed-book one, as the base prompt renders them.
WORKED_EXAMPLE = _example_turn(DEFAULT_EXAMPLE, True)
CLOSED_BOOK_EXAMPLE = _example_turn(DEFAULT_EXAMPLE, False)


def base_prompt(question: str, clean: bool = False, example: str | None = None,
                search: bool = True) -> str:
    """The base-model prompt: the instruction, then ``User: {question}. Assistant:``.

    The faithful form appends "." even after a "?", as the original code did when it trained
    and evaluated the model. ``clean=True`` strips the question and adds the "." only when it
    does not already end a sentence.

    >>> base_prompt("Who?").endswith("User: Who?. Assistant:")
    True
    >>> base_prompt("Who?", clean=True).endswith("User: Who? Assistant:")
    True

    ``example`` (a name of :data:`EXAMPLES`, e.g. ``"two-search"``, which gives
    :data:`WORKED_EXAMPLE`) puts that worked example between the instruction and the question
    (a project option for small models; the original had no example).

    ``search=False`` gives the closed-book control: the instruction without the search tool
    (:data:`CLOSED_BOOK_INSTRUCTION`) and, with ``example``, :data:`CLOSED_BOOK_EXAMPLE`.

    >>> "search" in base_prompt("Who?", search=False)
    False
    """
    if clean:
        question = question.strip()
        if not question.endswith(tuple(_SENTENCE_END)):
            question += "."
    else:
        question += "."
    instruction = BASE_INSTRUCTION if search else CLOSED_BOOK_INSTRUCTION
    turn = _example_turn(example, search)
    shot = f" {turn}\n" if turn else " "
    return f"{instruction}{shot}User: {question} Assistant:"


def chat_messages(question: str, search: bool = True, example: str | None = None
                  ) -> list[dict[str, str]]:
    """The chat variant for instruct models: the system instruction and the question as user
    (``search=False``: the closed-book system prompt). ``example`` puts a worked example
    before the question as a previous user / assistant exchange.

    >>> [m["role"] for m in chat_messages("Who?")]
    ['system', 'user']
    >>> [m["role"] for m in chat_messages("Who?", example="one-search")]
    ['system', 'user', 'assistant', 'user']
    """
    messages = [{"role": "system",
                 "content": CHAT_SYSTEM_PROMPT if search else CLOSED_BOOK_SYSTEM_PROMPT}]
    pair = example_pair(example, search)
    if pair is not None:
        messages += [{"role": "user", "content": pair[0]},
                     {"role": "assistant", "content": pair[1]}]
    return messages + [{"role": "user", "content": question}]


def build_prompt(
    question: str, template: str = "base", clean: bool = False, example: str | None = None,
    search: bool = True,
) -> str | list[dict[str, str]]:
    """The prompt of one question: a string (``"base"``) or chat messages (``"chat"``).

    ``clean`` only affects the base form (the chat form passes the question unchanged);
    ``example`` (a name of :data:`EXAMPLES`) adds that worked example to either form;
    ``search=False`` is the closed-book control (no search tool in the prompt).

    >>> build_prompt("Who?", template="chat")[1]
    {'role': 'user', 'content': 'Who?'}
    """
    if template == "base":
        return base_prompt(question, clean=clean, example=example, search=search)
    if template == "chat":
        return chat_messages(question, search=search, example=example)
    raise ConfigError(f"unknown prompt template {template!r}; valid names: {', '.join(TEMPLATES)}")


def format_result_text(text: str) -> str:
    """The block the rollout appends after ``</search>``: ``' <result>\\n{text}\\n</result>'``.

    >>> format_result_text(INVALID_QUERY_TEXT)
    ' <result>\\ninvalid query\\n</result>'
    """
    return f" {RESULT_START}\n{text}\n{RESULT_END}"


def join_documents(docs_contents: Sequence[str]) -> str:
    """Document contents joined by a blank line, the whole stripped (as the original did).

    >>> join_documents(["a", "b"])
    'a\\n\\nb'
    """
    return "\n\n".join(docs_contents).strip()


def format_result(docs_contents: Sequence[str]) -> str:
    """The result block of retrieved documents (their ``contents``, best first).

    >>> format_result(["doc one", "doc two"])
    ' <result>\\ndoc one\\n\\ndoc two\\n</result>'
    """
    return format_result_text(join_documents(docs_contents))


def search_failure_text(error: object = None) -> str:
    """The visible result text for a search that failed after its retries (never "None").

    >>> search_failure_text(TimeoutError("read timed out"))
    'search failed: read timed out'
    >>> search_failure_text()
    'search failed'
    """
    detail = "" if error is None else str(error).strip()
    if not detail or detail == "None":
        return SEARCH_FAILURE_TEXT
    return SEARCH_FAILURE_TEMPLATE.format(error=detail)


def extract_query(text: str) -> str | None:
    """The query between the last ``<search>`` and the ``</search>`` after it, stripped.

    None when the last ``<search>`` has no ``</search>`` after it (or there is none). An empty
    query gives ``""``; the rollout answers it with :data:`INVALID_QUERY_TEXT`.

    >>> extract_query("<search> a </search> <result> r </result> <search>  b  </search>")
    'b'
    >>> extract_query("<search> a </search> <search> b") is None
    True
    """
    start = text.rfind(SEARCH_START)
    if start < 0:
        return None
    end = text.find(SEARCH_END, start + len(SEARCH_START))
    if end < 0:
        return None
    return text[start + len(SEARCH_START) : end].strip()


def answer_span(text: str) -> str | None:
    """The text inside the last ``<answer> ... </answer>`` pair, or None.

    >>> answer_span("<answer> x </answer> <answer> y </answer>")
    ' y '
    """
    end = text.rfind(ANSWER_END)
    if end < 0:
        return None
    start = text.rfind(ANSWER_START, 0, end)
    if start < 0:
        return None
    return text[start + len(ANSWER_START) : end]


def _matching_brace(s: str, open_idx: int) -> int | None:
    """Index of the ``}`` closing the ``{`` at ``open_idx``, or None when unbalanced."""
    depth = 0
    for i in range(open_idx, len(s)):
        if s[i] == "{":
            depth += 1
        elif s[i] == "}":
            depth -= 1
            if depth == 0:
                return i
    return None


def last_boxed_only_string(s: str) -> str | None:
    """The last ``\\boxed{...}`` / ``\\fbox{...}`` (brace-matched) or ``\\boxed x`` of ``s``.

    The last ``\\boxed`` decides (``\\fbox`` only when there is no ``\\boxed``, as in the
    original); None when there is none or it is malformed (unbalanced braces, neither ``{``
    nor a space after ``\\boxed``). The space form runs to the next ``$`` or the end.

    >>> last_boxed_only_string(r"\\boxed{1} then \\boxed{\\frac{a}{b}} done")
    '\\\\boxed{\\\\frac{a}{b}}'
    >>> last_boxed_only_string(r"so \\boxed 42$ ok")
    '\\\\boxed 42'
    """
    name, idx = BOXED, s.rfind(BOXED)
    if idx < 0:
        name, idx = FBOX, s.rfind(FBOX)
    if idx < 0:
        return None
    after = idx + len(name)
    if s.startswith("{", after):
        close = _matching_brace(s, after)
        return None if close is None else s[idx : close + 1]
    if name == BOXED and s.startswith(" ", after):
        return BOXED + " " + s[after + 1 :].split("$")[0]
    return None


def remove_boxed(s: str) -> str:
    """The content of a box string from :func:`last_boxed_only_string`.

    The brace form returns the content verbatim; the space form returns it stripped.
    Raises ValueError when ``s`` is not a box string.

    >>> remove_boxed(r"\\boxed{King Wu}")
    'King Wu'
    >>> remove_boxed(r"\\boxed  42 ")
    '42'
    """
    for name in (BOXED, FBOX):
        if s.startswith(name + "{") and s.endswith("}"):
            return s[len(name) + 1 : -1]
    if s.startswith(BOXED + " "):
        return s[len(BOXED) + 1 :].strip()
    raise ValueError(f"not a \\boxed{{}} or \\fbox{{}} string: {s[:50]!r}")


def extract_answer(text: str) -> str | None:
    """The final answer: the last box inside the last ``<answer> ... </answer>`` span.

    None when there is no answer span or no well-formed box in it.

    >>> extract_answer(r"<answer> The final answer is \\[ \\boxed{ {a}b } \\] </answer>")
    ' {a}b '
    >>> extract_answer("<answer> King Wu </answer>") is None
    True
    """
    span = answer_span(text)
    if span is None:
        return None
    boxed = last_boxed_only_string(span)
    return None if boxed is None else remove_boxed(boxed)
