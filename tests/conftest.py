"""Shared fixtures: a tiny random Qwen3 and its locally trained tokenizer, built once per session."""

from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parent.parent / "llm_runs" / "fixtures" / "toy_science"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    from llm_runs import tiny
    from llm_runs.data import load_split

    corpus = [e.prompt for e in load_split(FIXTURES / "train.jsonl") + load_split(FIXTURES / "test.jsonl")]
    return tiny.build(tmp_path_factory.mktemp("tiny_qwen3"), corpus, seed=0)
