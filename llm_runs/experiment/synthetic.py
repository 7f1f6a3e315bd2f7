"""Synthetic multiple-choice tasks in the Science Q&A split format whose answers follow from the question.

    Which of these values is the largest?

    A: 21
    B: 44
    C: 93
    D: 10
    Please reason step by step.

Kinds:
- "largest": four distinct integers in [low, high); the answer is the largest. A 2-layer, 64-wide
  Qwen3 learns this rule from labels in ~500 supervised steps of 32 (measured while designing the demo).
- "compare": "largest" or "smallest", said in the question, so the question's words matter too (~1000 steps).
- "addition": "What is a + b?" among the sum and three other values from a window of seven around it,
  placed at random, so the options alone do not give the answer away (the sum is no likelier the middle one). The tiny model did not learn it in 1000 supervised steps (held-out
  accuracy stayed at chance): a task for a larger model.

Items are generated from a seed; the held-out split holds questions (whole texts, options included)
that never occur in training, so accuracy on it measures whether a rule was learnt, not recall. The
correct letter is uniform over A–D, so chance is 25%.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from llm_runs.data import Example

SYSTEM = ("\nGiven a question and four options, please select the right answer. Respond in the following format:\n"
          "<reasoning>\n...\n</reasoning>\n<answer>\n...\n</answer>\n\nFor the answer, only output the letter "
          "corresponding to the correct option (A, B, C, or D), and nothing else.\n")
KINDS = ("largest", "compare", "addition")


def _item(kind: str, low: int, high: int, rng: np.random.Generator) -> tuple[str, list[int], int]:
    """The question, four distinct options in seeded order, and the index of the correct one."""
    if kind == "addition":
        a, b = (int(x) for x in rng.integers(low, high, 2))
        value = a + b
        start = max(0, value - int(rng.integers(0, 7)))  # a window of 7 placed at random: the sum's rank is uniform
        near = [v for v in range(start, start + 7) if v != value and v >= 0]
        options = [value] + [int(v) for v in rng.choice(near, 3, replace=False)]
        question = f"What is {a} + {b}?"
    else:
        options = [int(v) for v in rng.choice(np.arange(low, high), 4, replace=False)]
        largest = kind == "largest" or rng.random() < 0.5
        value = max(options) if largest else min(options)
        question = f"Which of these values is the {'largest' if largest else 'smallest'}?"
    options = [options[i] for i in rng.permutation(4)]
    return question, options, options.index(value)


def make_splits(seed: int = 0, train: int = 2000, test: int = 200, kind: str = "largest", low: int = 0,
                high: int = 100) -> tuple[list[Example], list[Example]]:
    """(train, held-out) Examples with distinct question texts; no held-out question occurs in training."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if high - low < (1 if kind == "addition" else 4):
        raise ValueError(f"[low, high) = [{low}, {high}) is too narrow for {kind!r} items")
    rng = np.random.default_rng(seed)
    prompts: dict[str, str] = {}
    for _ in range(20 * (train + test) + 100):  # distinct texts; give up on a range too small for the ask
        if len(prompts) == train + test:
            break
        question, options, correct = _item(kind, low, high, rng)
        text = question + "\n\n" + "\n".join(f"{'ABCD'[i]}: {o}" for i, o in enumerate(options))
        prompts.setdefault(text + "\nPlease reason step by step.", "ABCD"[correct])
    if len(prompts) < train + test:
        raise ValueError(f"{train} + {test} items asked for, but only {len(prompts)} distinct questions were "
                         f"drawn for {kind!r} in [{low}, {high})")
    examples = [Example(i, p, a, SYSTEM, f"synthetic:{kind}:{i}") for i, (p, a) in enumerate(prompts.items())]
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
