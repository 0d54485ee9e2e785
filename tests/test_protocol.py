"""Tests of the text protocol: templates, result blocks, query and answer extraction."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from research import protocol
from research.protocol import (
    ANSWER_END,
    ANSWER_START,
    BASE_INSTRUCTION,
    CHAT_SYSTEM_PROMPT,
    INVALID_QUERY_TEXT,
    SEARCH_END,
    SEARCH_START,
    base_prompt,
    build_prompt,
    chat_messages,
    extract_answer,
    extract_query,
    format_result,
    format_result_text,
    join_documents,
    last_boxed_only_string,
    remove_boxed,
    search_failure_text,
)

SEED_QUESTION = "Who was the first king of the longest Chinese dynasty?"

# The rendered instruction of the original code (Agent-RL/ReSearch ``qa_template`` /
# ``re_search_template`` after ``str.format``), written out as one golden value.
EXPECTED_INSTRUCTION = (
    "A conversation between User and Assistant. The user asks a question, and the assistant "
    "solves it. The assistant first thinks about the reasoning process in the mind and then "
    "provides the user with the answer. During thinking, the assistant can invoke the "
    "wikipedia search tool to search for fact information about specific topics if needed. "
    "The reasoning process and answer are enclosed within <think> </think> and <answer> "
    "</answer> tags respectively, and the search query and result are enclosed within "
    "<search> </search> and <result> </result> tags respectively. For example, <think> This "
    "is the reasoning process. </think> <search> search query here </search> <result> search "
    "result here </result> <think> This is the reasoning process. </think> <answer> The final "
    "answer is \\[ \\boxed{answer here} \\] </answer>. In the last part of the answer, the "
    "final exact answer is enclosed within \\boxed{} with latex format."
)



# --- templates ---------------------------------------------------------------------------


def test_base_instruction_is_the_rendered_original() -> None:
    assert BASE_INSTRUCTION == EXPECTED_INSTRUCTION
    assert "  " not in BASE_INSTRUCTION
    assert "{{" not in BASE_INSTRUCTION and "\\\\" not in BASE_INSTRUCTION


def test_faithful_base_prompt_keeps_the_dot_after_question_mark() -> None:
    expected = f"{EXPECTED_INSTRUCTION} User: {SEED_QUESTION}. Assistant:"
    assert base_prompt(SEED_QUESTION) == expected
    assert build_prompt(SEED_QUESTION) == expected
    assert expected.endswith("dynasty?. Assistant:")


def test_clean_base_prompt_matches_the_seed_display() -> None:
    expected = f"{EXPECTED_INSTRUCTION} User: {SEED_QUESTION} Assistant:"
    assert build_prompt(SEED_QUESTION, clean=True) == expected


@pytest.mark.parametrize(
    ("question", "faithful_tail", "clean_tail"),
    [
        ("Who?", "User: Who?. Assistant:", "User: Who? Assistant:"),
        ("Name it", "User: Name it. Assistant:", "User: Name it. Assistant:"),
        ("Name it.", "User: Name it.. Assistant:", "User: Name it. Assistant:"),
        ("Wow!", "User: Wow!. Assistant:", "User: Wow! Assistant:"),
        ("  Who?  ", "User:   Who?  . Assistant:", "User: Who? Assistant:"),
        ("谁？", "User: 谁？. Assistant:", "User: 谁？ Assistant:"),
    ],
)
def test_question_punctuation(question: str, faithful_tail: str, clean_tail: str) -> None:
    assert base_prompt(question).endswith(faithful_tail)
    assert base_prompt(question, clean=True).endswith(clean_tail)


def test_chat_template_messages() -> None:
    messages = build_prompt(SEED_QUESTION, template="chat")
    assert messages == [
        {"role": "system", "content": CHAT_SYSTEM_PROMPT},
        {"role": "user", "content": SEED_QUESTION},
    ]
    assert build_prompt(SEED_QUESTION, template="chat", clean=True) == messages
    assert chat_messages(SEED_QUESTION) == messages


def test_chat_system_prompt_is_the_paper_version() -> None:
    assert CHAT_SYSTEM_PROMPT.startswith(
        "You are a helpful assistant that can solve the given question step by step with the "
        "help of the wikipedia search tool. Given a question, you need to first think"
    )
    assert CHAT_SYSTEM_PROMPT.endswith(
        "<answer> The final answer is \\[ \\boxed{answer here} \\] </answer>. In the last part "
        "of the answer, the final exact answer is enclosed within \\boxed{} with latex format."
    )
    assert "  " not in CHAT_SYSTEM_PROMPT


def test_chat_messages_are_fresh_lists() -> None:
    first = chat_messages("a")
    first[0]["content"] = "changed"
    assert chat_messages("a")[0]["content"] == CHAT_SYSTEM_PROMPT


@pytest.mark.parametrize("name", ["", "Base", "sys", "re_search_template"])
def test_unknown_template_name(name: str) -> None:
    with pytest.raises(ValueError, match="valid names: base, chat"):
        build_prompt("q", template=name)


# --- result blocks -----------------------------------------------------------------------


def test_format_result_joins_documents_with_a_blank_line() -> None:
    docs = ['"Zhou dynasty"\nThe Zhou dynasty ...', '"King Wu of Zhou"\nKing Wu ...']
    assert format_result(docs) == (
        ' <result>\n"Zhou dynasty"\nThe Zhou dynasty ...\n\n"King Wu of Zhou"\nKing Wu ...'
        "\n</result>"
    )


@pytest.mark.parametrize(
    ("docs", "joined"),
    [
        ([], ""),
        (["one"], "one"),
        (["  one\n", "two  "], "one\n\n\ntwo"),
        (["a", "", "b"], "a\n\n\n\nb"),
    ],
)
def test_join_documents_strips_the_whole(docs: list[str], joined: str) -> None:
    assert join_documents(docs) == joined


def test_format_result_text_special_texts() -> None:
    assert format_result_text(INVALID_QUERY_TEXT) == " <result>\ninvalid query\n</result>"
    failed = format_result_text(search_failure_text(ConnectionError("refused")))
    assert failed == " <result>\nsearch failed: refused\n</result>"


@pytest.mark.parametrize(
    ("error", "text"),
    [
        (None, "search failed"),
        ("", "search failed"),
        ("None", "search failed"),
        (ValueError(), "search failed"),
        (TimeoutError("timed out after 3 tries"), "search failed: timed out after 3 tries"),
    ],
)
def test_search_failure_text_is_never_none(error: object, text: str) -> None:
    assert search_failure_text(error) == text


# --- queries -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "query"),
    [
        ("<search> Zhou dynasty </search>", "Zhou dynasty"),
        ("<think> t </think>\n<search>\n  a b \n</search>", "a b"),
        ("<search> a </search> <result> r </result> <search> b </search>", "b"),
        ("<search> a <search> b </search>", "b"),
        ("<search>   </search>", ""),
        ("<search></search>", ""),
        ("no tags at all", None),
        ("<search> unfinished", None),
        ("<search> a </search> <search> b", None),
        ("</search> <search>", None),
        ("<search> a </search> trailing", "a"),
    ],
)
def test_extract_query(text: str, query: str | None) -> None:
    assert extract_query(text) == query


_NO_QUERY_TAGS = st.text().filter(lambda s: SEARCH_START not in s and SEARCH_END not in s)


@given(prefix=_NO_QUERY_TAGS, query=_NO_QUERY_TAGS)
def test_extract_query_inverts_wrapping(prefix: str, query: str) -> None:
    text = f"{prefix}{SEARCH_START}{query}{SEARCH_END}"
    assert extract_query(text) == query.strip()


@given(earlier=_NO_QUERY_TAGS, query=_NO_QUERY_TAGS)
def test_extract_query_takes_the_last_search(earlier: str, query: str) -> None:
    text = f"<search>{earlier}</search> <result>r</result> <search>{query}</search>"
    assert extract_query(text) == query.strip()


# --- answers -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "answer"),
    [
        ("<answer> \\boxed{King Wu of Zhou} </answer>", "King Wu of Zhou"),
        ("<answer> The final answer is \\[ \\boxed{Paris} \\] </answer>", "Paris"),
        ("<answer>\\boxed{ spaced }</answer>", " spaced "),
        ("<answer> \\boxed{} </answer>", ""),
        ("<answer> \\boxed{\\frac{1}{2}} </answer>", "\\frac{1}{2}"),
        ("<answer> \\boxed{a{b{c}}d} </answer>", "a{b{c}}d"),
        ("<answer> \\boxed{1} or \\boxed{2} </answer>", "2"),
        ("<answer> \\fbox{x} </answer>", "x"),
        ("<answer> \\fbox{x} \\boxed{y} </answer>", "y"),
        ("<answer> \\boxed{y} \\fbox{x} </answer>", "y"),
        ("<answer> \\boxed 42 </answer>", "42"),
        ("<answer> $\\boxed 42$ more </answer>", "42"),
        ("<answer> \\boxed{a} \\boxed b </answer>", "b"),
        ("<answer> \\boxed{1} </answer> <answer> \\boxed{2} </answer>", "2"),
        ("<answer> \\boxed{1} </answer> <answer> no box </answer>", None),
        ("<think> \\boxed{x} </think> <answer> none </answer>", None),
        ("\\boxed{x}", None),
        ("<answer> \\boxed{x}", None),
        ("\\boxed{x} </answer>", None),
        ("</answer> \\boxed{x} <answer>", None),
        ("<answer> \\boxed{unbalanced </answer>", None),
        ("<answer> \\boxed{a} \\boxed{unbalanced </answer>", None),
        ("<answer> \\boxedx{a} </answer>", None),
        ("<answer> \\boxed{x}} </answer>", "x"),
        ("<answer> King Wu </answer>", None),
        ("", None),
    ],
)
def test_extract_answer(text: str, answer: str | None) -> None:
    assert extract_answer(text) == answer


def _balanced(atoms: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """Strings whose braces balance, built from brace-free atoms and nested groups."""
    return st.recursive(
        atoms,
        lambda inner: st.lists(inner | inner.map(lambda s: "{" + s + "}"), max_size=4).map("".join),
        max_leaves=20,
    )


_ATOMS = st.text(alphabet=st.characters(exclude_characters="{}\\<"), max_size=8)
_BALANCED = _balanced(_ATOMS)
_PLAIN = st.text(alphabet=st.characters(exclude_characters="\\<"), max_size=20)


@given(_BALANCED)
def test_boxed_answer_roundtrip(s: str) -> None:
    assert extract_answer(f"<answer> \\boxed{{{s}}} </answer>") == s


@given(s=_BALANCED, before=_PLAIN, after=_PLAIN)
def test_boxed_answer_roundtrip_with_surrounding_text(s: str, before: str, after: str) -> None:
    text = f"<think> t </think> <answer> {before}\\boxed{{{s}}}{after} </answer>"
    assert extract_answer(text) == s


@given(_BALANCED)
def test_last_boxed_then_remove_boxed_roundtrip(s: str) -> None:
    boxed = last_boxed_only_string(f"x \\boxed{{{s}}} y")
    assert boxed == f"\\boxed{{{s}}}"
    assert remove_boxed(boxed) == s


@given(st.text(alphabet=st.characters(exclude_characters="\\<>"), max_size=30))
def test_no_box_gives_none(s: str) -> None:
    assert extract_answer(f"{ANSWER_START}{s}{ANSWER_END}") is None
    assert last_boxed_only_string(s) is None


@pytest.mark.parametrize(
    ("s", "boxed"),
    [
        ("\\boxed{a}", "\\boxed{a}"),
        ("pre \\boxed{a} post", "\\boxed{a}"),
        ("\\boxed{a}\\boxed{b}", "\\boxed{b}"),
        ("\\fbox{a}", "\\fbox{a}"),
        ("\\boxed a$b", "\\boxed a"),
        ("\\boxed a", "\\boxed a"),
        ("\\boxed{a", None),
        ("\\boxed", None),
        ("nothing", None),
    ],
)
def test_last_boxed_only_string(s: str, boxed: str | None) -> None:
    assert last_boxed_only_string(s) == boxed


@pytest.mark.parametrize("s", ["", "boxed{a}", "\\boxed{a", "\\fbox a", "{a}"])
def test_remove_boxed_rejects_non_box_strings(s: str) -> None:
    with pytest.raises(ValueError, match="not a"):
        remove_boxed(s)


def test_worked_example_is_opt_in_and_sits_before_the_question():
    from research.protocol import WORKED_EXAMPLE, base_prompt, build_prompt

    plain = base_prompt("Who?")
    shot = build_prompt("Who?", example="two-search")
    assert WORKED_EXAMPLE not in plain
    assert shot.startswith(plain.split(" User: Who?")[0])
    assert shot.endswith(f"{WORKED_EXAMPLE}\nUser: Who?. Assistant:")
    assert "<search> first king of the Zhou dynasty </search>" in WORKED_EXAMPLE


@pytest.mark.parametrize("example", [None, "two-search"])
def test_closed_book_prompt_keeps_the_answer_format_without_the_search_tool(example):
    closed = protocol.build_prompt("Who?", example=example, search=False)
    assert "search" not in closed and "<result>" not in closed
    assert "<think> </think> and <answer> </answer> tags" in closed
    assert closed.endswith("User: Who?. Assistant:")
    if example:
        assert protocol.extract_answer(protocol.CLOSED_BOOK_EXAMPLE) == "King Wu of Zhou"
    messages = protocol.build_prompt("Who?", template="chat", search=False)
    assert "search" not in messages[0]["content"] and messages[1]["content"] == "Who?"
