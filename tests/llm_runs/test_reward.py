"""The 0/1 reward: last \\boxed{} with nested braces, or the last <answer> tag; nasty strings never raise."""

import pytest

from llm_runs.reward import extract_boxed, score


@pytest.mark.parametrize("text, answer, expected", [
    ("so the answer is \\boxed{B}", "B", 1.0),
    ("\\boxed{ B }", "B", 1.0),  # whitespace stripped
    ("\\boxed {C}", "C", 1.0),
    ("first \\boxed{A}, on reflection \\boxed{C}", "C", 1.0),  # the last box decides
    ("first \\boxed{A}, on reflection \\boxed{C}", "A", 0.0),
    ("\\boxed{\\text{B}}", "B", 0.0),  # exact match only
    ("\\boxed{b}", "B", 0.0),  # case matters
    ("\\boxed{A} then truncated \\boxed{B", "A", 0.0),  # the last box never closes: no final answer
    ("\\boxed{}", "", 0.0),  # an empty answer is never right
    ("", "A", 0.0),
    ("\\boxed", "A", 0.0),
    ("\\boxedA", "A", 0.0),
    ("}}}{{{\\boxed{A}", "A", 1.0),
    ("\\boxed{A}}}}", "A", 1.0),
    ("ÄÖÜ 数学 \\boxed{D} ✓", "D", 1.0),
    ("\\boxed{\ud800}", "A", 0.0),  # a lone surrogate
])
def test_boxed(text, answer, expected):
    assert score(text, answer) == expected


def test_nested_braces():
    assert extract_boxed("x \\boxed{\\frac{1}{2}} y") == "\\frac{1}{2}"
    assert extract_boxed("\\boxed{{A}}") == "{A}"
    assert extract_boxed("\\boxed{a{b}c") is None


@pytest.mark.parametrize("text, expected", [
    ("<reasoning>because</reasoning><answer>B</answer>", 1.0),
    ("<answer> B \n</answer>", 1.0),
    ("<answer>A</answer> no wait <answer>B</answer>", 1.0),
    ("<answer>B</answer> no wait <answer>A</answer>", 0.0),
    ("<answer>B", 0.0),  # unclosed
    ("</answer>B<answer>", 0.0),
    ("\\boxed{B}", 0.0),  # the other format does not count
])
def test_answer_tag(text, expected):
    assert score(text, "B", fmt="answer_tag") == expected


def test_enormous_text_is_linear_time():
    text = "{" * 1_000_000 + "\\boxed{" + "{" * 1_000_000  # unbalanced: every brace scanned once
    assert score(text, "A") == 0.0
    assert score("x" * 5_000_000 + "\\boxed{A}", "A") == 1.0


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="fmt"):
        score("\\boxed{A}", "A", fmt="latex")
    with pytest.raises(TypeError, match="text must be a str"):
        score(None, "A")
