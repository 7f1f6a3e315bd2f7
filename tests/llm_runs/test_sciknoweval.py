"""`python -m llm_runs data sciknoweval`: offline, from a hand-made copy of the dataset in the hub's own schema
and layout (filters, formatting, unicode, two-choice rows), and, for the split and the byte format, against
the splits SDPO's authors published (byte for byte)."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from llm_runs import sciknoweval
from llm_runs.data import DataError, load_split
from llm_runs.sciknoweval import load_hub

ROOT = Path(__file__).resolve().parents[2]
PUBLISHED = ROOT.parent / "shared" / "data" / "sciknoweval"  # the published splits, beside the project in CI


def hub_row(question, labels, texts, key, level="L3", kind="mcq-4-choices", domain="Biology"):
    """A row in the dataset's own schema (the fields the cut reads, and some it does not)."""
    return {"question": question, "choices": {"text": texts, "label": labels}, "answerKey": key, "answer": "",
            "type": kind, "domain": domain, "details": {"level": level, "task": "t", "subtask": "s", "source": "x"}}


KEPT = [
    hub_row("Which α-helix residue is 5′→3′ nearest?", ["A", "B", "C", "D"], ["Ala", "Gly/Pro", "µ-Lys", "Ser"], "C"),
    hub_row("Is the membrane permeable to Na+?", ["A", "B"], ["yes", "no"], "B", kind="mcq-2-choices"),
] + [hub_row(f"Question {i}?", ["A", "B", "C", "D"], [f"{i}", f"{i + 1}", f"{i + 2}", f"{i + 3}"], "ABCD"[i % 4])
     for i in range(10)]
DROPPED = [
    hub_row("A level-2 question?", ["A", "B", "C", "D"], ["1", "2", "3", "4"], "A", level="L2"),
    hub_row("True or false?", ["A", "B"], ["True", "False"], "A", kind="true_or_false"),
    hub_row("A chemistry question in the biology file?", ["A", "B", "C", "D"], ["1", "2", "3", "4"], "A",
            domain="Chemistry"),
]


def write_copy(root: Path) -> Path:
    """The dataset's layout: data/<Domain>/sciknoweval_<domain>_test.jsonl, dropped rows interleaved."""
    rows = [KEPT[0], DROPPED[0], KEPT[1], DROPPED[1], *KEPT[2:7], DROPPED[2], *KEPT[7:]]
    path = root / "data" / "Biology" / "sciknoweval_biology_test.jsonl"
    path.parent.mkdir(parents=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return root


def run(*args):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "llm_runs", "data", "sciknoweval", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_the_command_cuts_a_local_copy(tmp_path):
    source = write_copy(tmp_path / "copy")
    done = run("--out", str(tmp_path / "out"), "--domains", "biology", "--source", str(source))
    assert done.returncode == 0, done.stderr
    # 12 rows pass: ⌈1.2⌉ = 2 test rows, 10 train rows; the published counts are printed beside
    assert "biology: 12 rows → train 10 / test 2 (published: 450 / 50 — differs)" in done.stdout
    raw = {name: (tmp_path / "out" / "biology" / f"{name}.json").read_bytes() for name in ("train", "test")}
    rows = {name: [json.loads(line) for line in data.decode("ascii").splitlines()] for name, data in raw.items()}
    assert len(rows["train"]) == 10 and len(rows["test"]) == 2
    everything = sorted(rows["train"] + rows["test"], key=lambda r: r["idx"])
    assert [r["idx"] for r in everything] == list(range(12))  # idx in the dataset's order, after the filters
    assert [r["answer"] for r in everything] == [row["answerKey"] for row in KEPT]
    first, second = everything[0], everything[1]
    assert first == {"idx": 0, "kind": "mcq", "dataset": "sciknoweval", "answer": "C", "elo": 1500,
                     "prompt": "Which α-helix residue is 5′→3′ nearest?\n\nA: Ala\nB: Gly/Pro\nC: µ-Lys\nD: Ser\n"
                               "Please reason step by step.",
                     "description": "Which α-helix residue is 5′→3′ nearest? The solution will be evaluated in a mcq "
                                    "environment.",
                     "tests": "-", "embedding": [], "system": sciknoweval.SYSTEM}
    assert second["prompt"] == "Is the membrane permeable to Na+?\n\nA: yes\nB: no\nPlease reason step by step."
    # the byte format: compact, ASCII escapes, "/" escaped
    line = next(x for x in b"".join(raw.values()).splitlines() if b'"idx":0,' in x)
    assert b'\\u03b1-helix' in line and b'Gly\\/Pro' in line and b'"tests":"-","embedding":[],' in line
    # the split is the seeded permutation: its first ⌈0.1·n⌉ rows are the test split
    train, test = sciknoweval.split(list(range(12)))
    assert [r["idx"] for r in rows["test"]] == test and [r["idx"] for r in rows["train"]] == train
    # the files load as split files
    assert [e.answer for e in load_split(tmp_path / "out" / "biology" / "test.json")] == [r["answer"] for r in rows["test"]]


@pytest.mark.skipif(not PUBLISHED.is_dir(), reason="the published splits are not beside the project")
@pytest.mark.parametrize("domain", sciknoweval.DOMAINS)
def test_the_split_and_byte_format_reproduce_the_published_files(domain, tmp_path):
    published = {name: (PUBLISHED / domain / f"{name}.json").read_bytes() for name in ("train", "test")}
    rows = sorted((json.loads(line) for data in published.values() for line in data.decode().splitlines()),
                  key=lambda r: r["idx"])
    assert [r["idx"] for r in rows] == list(range(len(rows)))
    cut = math.ceil(0.1 * len(rows))
    assert (len(rows) - cut, cut) == sciknoweval.PUBLISHED[domain]
    train, test = sciknoweval.split(rows)
    for name, part in (("train", train), ("test", test)):
        assert "".join(sciknoweval.dumps(r) + "\n" for r in part).encode() == published[name], name
    # every published row is what format_row makes of its question and choices
    assert {r["system"] for r in rows} == {sciknoweval.SYSTEM}
    for r in rows[:50]:
        question, _, rest = r["prompt"].rpartition("\n\n")
        labels, texts = zip(*(line.split(": ", 1) for line in rest.removesuffix("\nPlease reason step by step.").split("\n")))
        made = sciknoweval.format_row(hub_row(question, list(labels), list(texts), r["answer"]), r["idx"])
        assert sciknoweval.dumps(made) == sciknoweval.dumps(r)


def test_bad_input_is_named(tmp_path):
    done = run("--out", str(tmp_path / "out"), "--source", str(tmp_path / "nowhere"), "--domains", "physics")
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert "sciknoweval_physics_test.jsonl does not exist" in done.stderr and "Traceback" not in done.stderr
    done = run("--out", str(tmp_path / "out"), "--domains", "astronomy")
    assert done.returncode == 2 and "--domains: unknown ['astronomy']" in done.stderr
    broken = tmp_path / "broken" / "data" / "Biology" / "sciknoweval_biology_test.jsonl"
    broken.parent.mkdir(parents=True)
    broken.write_text(json.dumps({"question": "q?", "domain": "Biology", "type": "mcq-4-choices"}) + "\n")
    done = run("--out", str(tmp_path / "out"), "--domains", "biology", "--source", str(tmp_path / "broken"))
    assert done.returncode == 2 and f"{broken}:1: field 'details' is missing" in done.stderr


def test_a_missing_split_file_names_the_command(tmp_path):
    with pytest.raises(DataError, match=r"python -m llm_runs data sciknoweval --out .*data/sciknoweval"):
        load_split(tmp_path / "data" / "sciknoweval" / "chemistry" / "train.json")
    with pytest.raises(DataError, match="only 'hicai-zju/SciKnowEval' is understood"):
        load_hub("someone/else", "chemistry")
