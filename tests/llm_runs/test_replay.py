"""Recorded rollouts served again (`rollout.record`, `rollout.engine=replay`): the same samples for an A/B of
the trainer, and every mismatch refused by name."""

import json

import pytest

from llm_runs.config import ConfigError
from llm_runs.rollout.replay import ReplayEngine, forget_after
from llm_runs.trainer import Trainer
from tests.llm_runs.test_trainer import TIMING, config

# a row but the fields that measure the machine
SAME = lambda row: {k: v for k, v in row.items() if not k.startswith(TIMING)}  # noqa: E731


@pytest.fixture(scope="module")
def recorded(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("recorded")
    t = Trainer(config(tiny_model_dir, out, "rollout.record=true"), out / "run", progress=False)
    rows = [t.step() for _ in range(2)]
    return out / "run", rows


def test_a_replay_trains_on_the_recorded_samples_exactly(tiny_model_dir, tmp_path, recorded):
    run, rows = recorded
    lines = [json.loads(x) for x in (run / "rollouts" / "rank0.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1] * 4 + [2] * 4  # one line per prompt: P = 4 prompts a step
    assert all(len(x["samples"]) == 4 for x in lines)
    t = Trainer(config(tiny_model_dir, tmp_path, "rollout.engine=replay", f"rollout.replay={run}"), tmp_path / "b",
                progress=False)
    replayed = [t.step() for _ in range(2)]
    assert [SAME(r) for r in replayed] == [SAME(r) for r in rows]


def test_a_replay_that_would_not_be_the_same_samples_is_refused(tiny_model_dir, tmp_path, recorded):
    run, _ = recorded
    t = Trainer(config(tiny_model_dir, tmp_path, "rollout.engine=replay", f"rollout.replay={run}",
                       "rollout.temperature=0.7"), tmp_path / "hot", progress=False)
    with pytest.raises(ConfigError, match="'temperature': 1.0.*this run asks for n = 4, {'temperature': 0.7"):
        t.step()
    t = Trainer(config(tiny_model_dir, tmp_path, "rollout.engine=replay", f"rollout.replay={run}", "train.seed=1"),
                tmp_path / "seed1", progress=False)
    with pytest.raises(ConfigError, match="no recorded rollouts for the prompt with seed"):
        t.step()
    t = Trainer(config(tiny_model_dir, tmp_path, "rollout.engine=replay", f"rollout.replay={run}"), tmp_path / "long",
                progress=False)
    t.step(), t.step()
    with pytest.raises(ConfigError, match="that run stopped earlier"):  # two steps were recorded, not three
        t.step()


def test_replay_settings_are_checked_before_any_step(tiny_model_dir, tmp_path, recorded):
    run, _ = recorded
    with pytest.raises(ConfigError, match="rollout.engine=replay and rollout.replay=RUN_DIR go together"):
        Trainer(config(tiny_model_dir, tmp_path, "rollout.engine=replay"), tmp_path / "a", progress=False)
    with pytest.raises(ConfigError, match="go together"):
        Trainer(config(tiny_model_dir, tmp_path, f"rollout.replay={run}"), tmp_path / "b", progress=False)
    with pytest.raises(ConfigError, match="no recorded rollouts there"):
        Trainer(config(tiny_model_dir, tmp_path, "rollout.engine=replay", f"rollout.replay={tmp_path}"),
                tmp_path / "c", progress=False)
    broken = tmp_path / "broken" / "rollouts"
    broken.mkdir(parents=True)
    (broken / "rank0.jsonl").write_text('{"seed": 1, "step": 1}\n{"step": 2}\n')
    with pytest.raises(ConfigError, match=r"rank0.jsonl:2: not a rollout record"):
        ReplayEngine(broken.parent)


def test_a_resumed_run_forgets_the_records_of_the_steps_it_redoes(tmp_path):
    folder = tmp_path / "rollouts"
    folder.mkdir()
    (folder / "rank1.jsonl").write_text("".join(json.dumps({"seed": s, "step": s}) + "\n" for s in (1, 2, 3)))
    forget_after(tmp_path, 1, 2)
    assert [json.loads(x)["step"] for x in (folder / "rank1.jsonl").read_text().splitlines()] == [1, 2]
    forget_after(tmp_path, 0, 2)  # a rank that recorded nothing: nothing to do
    assert not (folder / "rank0.jsonl").exists()
