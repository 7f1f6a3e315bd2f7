"""The synthetic task: seeded, answers computable from the question, held-out questions unseen in training."""

import re
from collections import Counter

import pytest

from llm_runs.data import load_split
from llm_runs.reward import score
from llm_runs.synthetic import make_splits, write_splits


def _solve(prompt: str) -> str:
    a, b = map(int, re.match(r"What is (\d+) \+ (\d+)\?", prompt).groups())
    options = dict(re.findall(r"^([ABCD]): (\d+)$", prompt, flags=re.M))
    (letter,) = [k for k, v in options.items() if int(v) == a + b]
    return letter


def test_answers_follow_from_the_question_and_splits_are_disjoint():
    train, test = make_splits(seed=3, train=120, test=40)
    assert len(train) == 120 and len(test) == 40
    for e in train + test:
        assert e.answer == _solve(e.prompt)
        assert len(set(re.findall(r"^[ABCD]: (\d+)$", e.prompt, flags=re.M))) == 4  # distinct options
    questions = lambda rows: {e.prompt.split("\n")[0] for e in rows}  # noqa: E731
    assert not questions(train) & questions(test)
    letters = Counter(e.answer for e in train)
    assert set(letters) == set("ABCD") and min(letters.values()) > 15  # chance is 25%


def test_seeded_and_written_in_the_split_format(tmp_path):
    assert make_splits(seed=1, train=10, test=5) == make_splits(seed=1, train=10, test=5)
    assert make_splits(seed=1, train=10, test=5) != make_splits(seed=2, train=10, test=5)
    train_path, test_path = write_splits(tmp_path, seed=1, train=10, test=5)
    rows = load_split(train_path)
    assert [r.prompt for r in rows] == [e.prompt for e in make_splits(seed=1, train=10, test=5)[0]]
    assert score(f"so \\boxed{{{rows[0].answer}}}", rows[0].answer) == 1.0
    assert "<answer>" in rows[0].system  # SDPO's format is available too
    assert len(load_split(test_path)) == 5


def test_too_many_items_is_refused():
    with pytest.raises(ValueError, match="distinct questions"):
        make_splits(train=300, test=200, high=20)
