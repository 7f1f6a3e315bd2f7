"""The synthetic tasks: seeded, answers computable from the question, held-out questions unseen in training."""

import re
from collections import Counter

import pytest

from llm_runs.data import load_split
from llm_runs.reward import score
from llm_runs.experiment.synthetic import make_splits, write_splits


def _solve(prompt: str) -> str:
    options = {k: int(v) for k, v in re.findall(r"^([ABCD]): (\d+)$", prompt, flags=re.M)}
    if m := re.match(r"What is (\d+) \+ (\d+)\?", prompt):
        target = int(m[1]) + int(m[2])
    else:
        target = (max if "largest" in prompt.split("\n")[0] else min)(options.values())
    (letter,) = [k for k, v in options.items() if v == target]
    return letter


@pytest.mark.parametrize("kind", ["largest", "compare", "addition"])
def test_answers_follow_from_the_question_and_splits_are_disjoint(kind):
    train, test = make_splits(seed=3, train=300, test=60, kind=kind, high=30)
    assert len(train) == 300 and len(test) == 60
    for e in train + test:
        assert e.answer == _solve(e.prompt)
        assert len(set(re.findall(r"^[ABCD]: (\d+)$", e.prompt, flags=re.M))) == 4  # distinct options
    assert not {e.prompt for e in train} & {e.prompt for e in test}
    letters = Counter(e.answer for e in train)
    assert set(letters) == set("ABCD") and min(letters.values()) > 50  # chance is 25%
    if kind == "compare":
        assert {e.prompt.split("\n")[0] for e in train} == {"Which of these values is the largest?",
                                                             "Which of these values is the smallest?"}


def test_addition_options_do_not_give_the_answer_away():
    # the old off-by-one distractors made the answer the middle of a run of three; now the sum is not
    # the median of the options any more often than a random option would be
    train, _ = make_splits(seed=0, train=400, test=10, kind="addition", high=20)
    median_hits = 0
    for e in train:
        values = sorted(int(v) for v in re.findall(r"^[ABCD]: (\d+)$", e.prompt, flags=re.M))
        answer = int(re.search(rf"^{e.answer}: (\d+)$", e.prompt, flags=re.M)[1])
        median_hits += answer in values[1:3]
    assert 0.4 < median_hits / len(train) < 0.6  # as for a random option: one of the middle two half of the time


def test_seeded_and_written_in_the_split_format(tmp_path):
    assert make_splits(seed=1, train=10, test=5) == make_splits(seed=1, train=10, test=5)
    assert make_splits(seed=1, train=10, test=5) != make_splits(seed=2, train=10, test=5)
    train_path, test_path = write_splits(tmp_path, seed=1, train=10, test=5)
    rows = load_split(train_path)
    assert [r.prompt for r in rows] == [e.prompt for e in make_splits(seed=1, train=10, test=5)[0]]
    assert score(f"so \\boxed{{{rows[0].answer}}}", rows[0].answer) == 1.0
    assert "<answer>" in rows[0].system  # SDPO's format is available too
    assert len(load_split(test_path)) == 5


def test_bad_requests_are_refused():
    with pytest.raises(ValueError, match="distinct questions"):
        make_splits(train=300, test=200, kind="largest", high=5)  # 120 distinct texts
    with pytest.raises(ValueError, match="kind must be one of"):
        make_splits(kind="subtraction")
    with pytest.raises(ValueError, match="too narrow"):
        make_splits(kind="largest", low=0, high=3)
