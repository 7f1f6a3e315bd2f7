"""Science Q&A split files from the hub dataset `hicai-zju/SciKnowEval`, as SDPO's authors cut them.

    python -m llm_runs data sciknoweval --out data/sciknoweval [--domains chemistry,physics] [--source DIR]

Per domain (biology, chemistry, material, physics), from the dataset's `test` split:
1. keep the rows whose `domain` is the capitalised name ("Biology", …), then `details.level == "L3"`, then
   `type` in {"mcq-4-choices", "mcq-2-choices"}, in the hub's order; idx = 0 … n−1 in that order;
2. format each: prompt = question + "\\n\\n" + one "label: text" line per choice + "\\nPlease reason step by
   step."; answer = `answerKey`; the SDPO system prompt; kind "mcq", dataset "sciknoweval", elo 1500,
   description = question + " The solution will be evaluated in a mcq environment.", tests "-", embedding [];
3. split 90/10 with seed 42, as `datasets`' `train_test_split(test_size=0.1, seed=42)` does: a permutation
   from numpy's `default_rng(42)`, the first ⌈0.1·n⌉ rows of it the test split, the rest the train split,
   each in permuted order;
4. write `<out>/<domain>/{train,test}.json`: JSON lines, compact separators, ASCII escapes, "/" written "\\/".

This reproduces the split files published with SDPO (lasgroup/SDPO, `datasets/sciknoweval/`) byte for byte;
the published counts are in `PUBLISHED`. `--source` reads a local copy of the dataset in its own layout
(`data/<Domain>/sciknoweval_<domain>_test.jsonl`, e.g. a snapshot download) instead of the hub.
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path

import numpy as np

from llm_runs.data import DataError, Example

HUB_ID = "hicai-zju/SciKnowEval"
DOMAINS = ("biology", "chemistry", "material", "physics")
TYPES = ("mcq-4-choices", "mcq-2-choices")
LEVEL = "L3"
PUBLISHED = {"biology": (450, 50), "chemistry": (1890, 210), "material": (841, 94), "physics": (720, 80)}  # train, test
TEST_FRACTION, SEED = 0.1, 42
# SDPO's system prompt for these rows (the same text in every row of the published splits)
SYSTEM = ("\nGiven a question and four options, please select the right answer. Respond in the following format:\n"
          "<reasoning>\n...\n</reasoning>\n<answer>\n...\n</answer>\n\nFor the answer, only output the letter "
          "corresponding to the correct option (A, B, C, or D), and nothing else. Do not restate the answer text. "
          "For example, if the answer is \"A\", just output:\n<answer>\nA\n</answer>\n")


class SourceError(DataError):
    """The dataset copy is missing or a row lacks a field; the message names the file, line and field."""


def hub_rows(domain: str, source: str | Path | None = None) -> list[dict]:
    """The `test` split's rows of one domain's file, in the dataset's order: from `source` (a local copy in the
    dataset's layout) or from the hub (the `hub` extra, and internet)."""
    name = _check_domain(domain).capitalize()
    if source is not None:
        path = Path(source) / "data" / name / f"sciknoweval_{domain}_test.jsonl"
        if not path.is_file():
            raise SourceError(f"{path} does not exist: --source must be a copy of {HUB_ID} in its own layout "
                              f"(data/<Domain>/sciknoweval_<domain>_test.jsonl)")
        rows = []
        with path.open(encoding="utf-8") as f:
            for number, line in enumerate(f, start=1):
                if line.strip():
                    try:
                        rows.append(dict(json.loads(line), _where=f"{path}:{number}"))
                    except json.JSONDecodeError as err:
                        raise SourceError(f"{path}:{number}: not valid JSON ({err.msg})") from None
        return rows
    try:
        import datasets
    except ImportError as err:
        raise SourceError("reading the hub needs the `hub` extra (pip install 'pgpo-toolkit[hub]'), "
                          "or --source DIR with a local copy of the dataset") from err
    try:
        hub = datasets.load_dataset(HUB_ID, name, split="test")
    except OSError as err:  # no internet, HF_HUB_OFFLINE, the dataset gone: one line, not datasets' traceback
        raise SourceError(f"{HUB_ID} could not be read from the hub ({type(err).__name__}: "
                          f"{' '.join(str(err).split())}); with no internet here, pass --source DIR with a copy "
                          f"of the dataset made where there is (`hf download {HUB_ID} --repo-type dataset "
                          f"--local-dir DIR`)") from None
    return [dict(row, _where=f"{HUB_ID}/{name}:test:{i}") for i, row in enumerate(hub)]


def select(rows: list[dict], domain: str) -> list[dict]:
    """The rows SDPO trains on: this domain, level L3, four- or two-choice multiple choice (order kept)."""
    name = _check_domain(domain).capitalize()
    return [r for r in rows if _get(r, "domain") == name and _get(_get(r, "details"), "level", r) == LEVEL
            and _get(r, "type") in TYPES]


def format_row(row: dict, idx: int) -> dict:
    """One hub row → one split-file row (fields in the published order)."""
    question, choices = _get(row, "question"), _get(row, "choices")
    labels, texts = _get(choices, "label", row), _get(choices, "text", row)
    if len(labels) != len(texts):
        raise SourceError(f"{row.get('_where', 'row')}: choices have {len(labels)} labels and {len(texts)} texts")
    options = "\n".join(f"{label}: {text}" for label, text in zip(labels, texts))
    return {"idx": idx, "kind": "mcq", "dataset": "sciknoweval", "answer": _get(row, "answerKey"), "elo": 1500,
            "prompt": f"{question}\n\n{options}\nPlease reason step by step.",
            "description": f"{question} The solution will be evaluated in a mcq environment.",
            "tests": "-", "embedding": [], "system": SYSTEM}


def split(rows: list, test_fraction: float = TEST_FRACTION, seed: int = SEED) -> tuple[list, list]:
    """(train, test): `datasets`' train_test_split(test_size=test_fraction, seed=seed), rows in permuted order."""
    order = np.random.default_rng(seed).permutation(len(rows))
    cut = math.ceil(test_fraction * len(rows))
    return [rows[i] for i in order[cut:]], [rows[i] for i in order[:cut]]


def dumps(row: dict) -> str:
    """One line of a split file, byte for byte as published."""
    return json.dumps(row, separators=(",", ":"), ensure_ascii=True).replace("/", "\\/")


def build(out: str | Path, domains=DOMAINS, source: str | Path | None = None, report=print) -> dict:
    """Write `<out>/<domain>/{train,test}.json` for each domain; returns {domain: (train, test) counts} and
    reports each against the published counts."""
    counts = {}
    for domain in domains:
        parts = splits(domain, source)
        train, test = parts["train"], parts["test"]
        folder = Path(out) / domain
        folder.mkdir(parents=True, exist_ok=True)
        for name, part in (("train", train), ("test", test)):
            (folder / f"{name}.json").write_text("".join(dumps(r) + "\n" for r in part), encoding="ascii")
        counts[domain] = (len(train), len(test))
        expected = PUBLISHED[domain]
        note = "as published" if counts[domain] == expected else f"published: {expected[0]} / {expected[1]} — differs"
        report(f"{domain}: {len(train) + len(test)} rows → train {len(train)} / test {len(test)} ({note}) → {folder}")
    return counts


@functools.lru_cache(maxsize=4)  # `data.hub` asks for the train split, then the test split: one read
def splits(domain: str, source: str | Path | None = None) -> dict[str, list[dict]]:
    """{"train": rows, "test": rows} of one domain (filtered, formatted, split), in memory."""
    rows = [format_row(r, i) for i, r in enumerate(select(hub_rows(domain, source), domain))]
    if not rows:
        raise SourceError(f"{domain}: no rows pass the filters (domain {domain.capitalize()!r}, level {LEVEL}, "
                          f"type in {TYPES})")
    train, test = split(rows)
    return {"train": train, "test": test}


def _check_domain(domain: str) -> str:
    if domain not in DOMAINS:
        raise ValueError(f"domain must be one of {DOMAINS}, got {domain!r}")
    return domain


def _get(mapping, key: str, row: dict | None = None):
    where = (row if row is not None else mapping if isinstance(mapping, dict) else {}).get("_where", "row")
    if not isinstance(mapping, dict) or key not in mapping:
        raise SourceError(f"{where}: field {key!r} is missing (is this {HUB_ID}'s schema?)")
    return mapping[key]


def load_hub(name: str, domain: str | None = None, split: str = "train") -> list[Example]:
    """A split cut from the hub, in memory: `hicai-zju/SciKnowEval` and a domain, cut as SDPO's authors did
    (needs the `hub` extra and internet). `python -m llm_runs data sciknoweval`
    writes the same splits to files once, which is what the configs read."""
    if name != HUB_ID:
        raise DataError(f"data.hub: only {HUB_ID!r} is understood, got {name!r}; for another dataset "
                        f"write split files (JSON lines with idx, prompt, answer, system) and set data.train / data.test")
    if domain not in DOMAINS:
        raise DataError(f"data.hub_domain must be one of {DOMAINS}, got {domain!r}")
    if split not in ("train", "test"):
        raise DataError(f"split must be 'train' or 'test', got {split!r}")
    rows = splits(domain)[split]
    return [Example(r["idx"], r["prompt"], r["answer"], r["system"], f"{name}/{domain}/{split}:{i}")
            for i, r in enumerate(rows)]
