"""A synthetic multiple-choice task in the Science Q&A split format whose answers follow from the question.

    What is 7 + 5?

    A: 13
    B: 12
    C: 2
    D: 11
    Please reason step by step.

Items are generated from a seed; the held-out split holds questions that never occur in training (as
text), so accuracy on it measures whether a rule was learnt, not recall. Options are the answer and
three distractors (off by one, off by ten, the difference), in seeded order; the correct letter is
uniform over A–D, so chance is 25%.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from llm_runs.data import Example

SYSTEM = ("\nGiven a question and four options, please select the right answer. Respond in the following format:\n"
          "<reasoning>\n...\n</reasoning>\n<answer>\n...\n</answer>\n\nFor the answer, only output the letter "
          "corresponding to the correct option (A, B, C, or D), and nothing else.\n")
KINDS = ("addition",)


def _item(a: int, b: int, rng: np.random.Generator) -> tuple[str, list[int], int]:
    """The question, four distinct options, and the index of the correct one."""
    value = a + b
    distractors = []
    for d in (value + 1, value - 1, value + 10, abs(a - b), value + 2, value - 2):
        if d != value and d >= 0 and d not in distractors:
            distractors.append(d)
    options = [value] + distractors[:3]
    order = rng.permutation(4)
    options = [options[i] for i in order]
    return f"What is {a} + {b}?", options, options.index(value)


def make_splits(seed: int = 0, train: int = 200, test: int = 50, low: int = 0, high: int = 20,
                kind: str = "addition") -> tuple[list[Example], list[Example]]:
    """(train, held-out) Examples; every held-out question is absent from training."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    pairs = [(a, b) for a in range(low, high) for b in range(low, high)]
    if train + test > len(pairs):
        raise ValueError(f"{train} + {test} items asked for, but only {len(pairs)} distinct questions in [{low}, {high})")
    rng = np.random.default_rng(seed)
    chosen = [pairs[i] for i in rng.permutation(len(pairs))[: train + test]]
    examples = []
    for idx, (a, b) in enumerate(chosen):
        question, options, correct = _item(a, b, rng)
        prompt = question + "\n\n" + "\n".join(f"{'ABCD'[i]}: {o}" for i, o in enumerate(options))
        examples.append(Example(idx, prompt + "\nPlease reason step by step.", "ABCD"[correct], SYSTEM, f"synthetic:{idx}"))
    return examples[:train], examples[train:]


def write_splits(out: str | Path, **kwargs) -> tuple[Path, Path]:
    """Write train.jsonl and test.jsonl (the split-file format `llm_runs.data.load_split` reads)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, rows in zip(("train", "test"), make_splits(**kwargs)):
        path = out / f"{name}.jsonl"
        path.write_text("".join(json.dumps({"idx": e.idx, "prompt": e.prompt, "answer": e.answer, "system": e.system})
                                + "\n" for e in rows))
        paths.append(path)
    return paths[0], paths[1]
