"""The CPU experiment end to end at toy size: warm start, SDPO and PGPO runs from it, figure and table."""

import json
import math

import numpy as np
import pytest

from llm_runs.experiment import demo
from llm_runs.data import answer_text
from llm_runs.experiment.synthetic import make_splits
from llm_runs.experiment.warm_start import draw, letters_of

TOY = ["warm_start.steps=120", "train.steps=3", "train.eval_every=3", "train.checkpoint_every=0",
       "rollout.prompts_per_step=8", "rollout.samples_per_prompt=8", "eval.samples=4", "eval.max_questions=12"]


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    return out, demo.run(out, quick=True, overrides=TOY, figure=out / "figure", progress=False)


@pytest.mark.slow
def test_warm_start_teaches_format_and_copying_but_not_the_task(experiment):
    _, data = experiment
    w = data["warm_start"]
    assert w["held_out_format_rate"] > 0.9  # answers in \boxed{}
    assert w["copy_rate"] > 0.9  # follows the "Correct solution" in context: the teacher has something to give
    assert w["held_out_mean_at_k"] < 0.5  # random letters taught nothing about the task (chance is 0.25)


def test_runs_train_on_rewards_and_teachers_and_log_information_and_rho(experiment):
    out, data = experiment
    assert set(data["runs"]) == {"SDPO", "PGPO α=1"}
    for method, alpha in (("SDPO", None), ("PGPO α=1", 1.0)):
        rows = [json.loads(x) for x in (out / "runs" / f"{demo._slug(method)}-seed0" / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in rows] == [1, 2, 3]
        assert sum(r["reward_mean"] for r in rows) > 0
        assert sum(r["teacher_fraction"] for r in rows) > 0
        for r in rows:
            assert math.isfinite(r["information"]) and r["information"] >= 0
            expected = 1.0 if alpha is None else min(1.0 + alpha * r["information"], 2.0)
            assert r["rho"] == pytest.approx(expected, rel=1e-12)
        assert alpha is None or max(r["rho"] for r in rows) > 1.0
        assert "val_mean_at_k" in rows[-1]
    (run,) = data["runs"]["SDPO"]
    assert run["eval_steps"] == [0, 3] and run["eval"][0] == pytest.approx(data["warm_start"]["held_out_mean_at_k"])


def test_figure_and_table_are_written_and_a_second_call_reuses_everything(experiment):
    out, data = experiment
    for ext in ("png", "pdf", "json", "md"):
        assert (out / f"figure.{ext}").stat().st_size > 0
    text = (out / "figure.md").read_text()
    assert "| SDPO |" in text and "| PGPO α=1 |" in text
    before = {p: p.stat().st_mtime_ns for p in (out / "warm_start" / "final").iterdir()}
    again = demo.run(out, quick=True, overrides=TOY, figure=out / "figure", progress=False)
    assert again["runs"] == data["runs"]
    assert {p: p.stat().st_mtime_ns for p in (out / "warm_start" / "final").iterdir()} == before


def test_warm_start_letters_are_random_so_the_question_is_not_taught():
    train, _ = make_splits(seed=0, train=200, test=10, high=30)
    triples = draw(train, 4000, np.random.default_rng(0), 0.5, "boxed")
    guided = [(demo, target) for _, demo, target in triples if demo is not None]
    assert 0.45 < len(guided) / len(triples) < 0.55
    assert all(demo == target for demo, target in guided)  # copy what the context says
    agree = np.mean([target == answer_text(e.answer, "boxed") for e, _, target in triples])
    assert 0.22 < agree < 0.28  # = chance: the target letter carries nothing about the question
    assert letters_of(train[0]) == "ABCD"


def test_a_run_folder_with_other_settings_is_refused(experiment):
    out, _ = experiment
    with pytest.raises(ValueError, match="holds a run with other settings"):
        demo.run(out, quick=True, overrides=[*TOY, "optim.lr=2e-3"], figure=out / "figure2", progress=False)


def test_crossing_interpolates_between_evaluations():
    assert demo.crossing([0, 25, 50], [0.2, 0.4, 0.6]) == pytest.approx(37.5)
    assert demo.crossing([0, 25], [0.6, 0.7]) == 0  # already there at the start
    assert demo.crossing([0, 25], [0.2, 0.3]) is None
