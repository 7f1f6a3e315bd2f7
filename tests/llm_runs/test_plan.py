"""`python -m llm_runs plan`: the arithmetic it states, checkpoint sizes against a real checkpoint, the grid."""

import json

import pytest

from llm_runs.__main__ import main
from llm_runs.tools.plan import Assumptions, grid, plan
from tests.llm_runs.test_trainer import FIXTURES, TINY, finished_run  # noqa: F401  (fixture)


def test_a_paper_run_costs_what_the_stated_assumptions_say():
    p = plan("qwen3_8b_chemistry_pgpo_a1", a=Assumptions(gpus=8, generation_tokens_per_s=1000, training_tokens_per_s=4000,
                                                         response_tokens=2048, test_questions=100))
    assert p["parameters"] == 8_190_735_360
    t = p["assumed"]
    assert t["tokens_per_step"] == 32 * 8 * 2048
    assert t["seconds_per_step"] == pytest.approx(32 * 8 * 2048 / 8000 + 32 * 8 * 2048 / 32000)
    eval_s = 100 * 16 * 8192 / 8000  # mean@16 of 100 questions, 8192 tokens each at most
    assert t["hours"] == pytest.approx((500 * t["seconds_per_step"] + 21 * eval_s) / 3600)
    assert t["gpu_hours"] == pytest.approx(8 * t["hours"])
    d = p["disk"]  # fp32 weights, AdamW's m and v, the EMA teacher; one kept, best and final
    assert d["weights"] == 4 * 8_190_735_360 and d["checkpoint"] == 4 * d["weights"]
    assert d["run"] == d["checkpoint"] + 2 * d["weights"]


def test_twice_the_gpus_halve_the_hours_not_the_gpu_hours():
    one, two = (plan("qwen3_8b_physics_sdpo", a=Assumptions(gpus=g, test_questions=50))["assumed"] for g in (8, 16))
    assert two["hours"] == pytest.approx(one["hours"] / 2) and two["gpu_hours"] == pytest.approx(one["gpu_hours"])


def test_the_checkpoint_size_is_a_real_checkpoints(finished_run):
    """The tiny run's step-2 checkpoint on disk, against the plan of its config (the tokenizer's files aside)."""
    folder = finished_run / "checkpoints" / "step-000002"
    on_disk = sum(f.stat().st_size for f in folder.iterdir() if not f.name.startswith("tokenizer"))
    planned = plan(str(finished_run / "config.yaml"))["disk"]["checkpoint"]
    assert planned == pytest.approx(on_disk, rel=0.05)


def test_a_run_folder_gives_measured_hours(finished_run):
    p = plan(str(finished_run / "config.yaml"), run_dir=str(finished_run))
    m = p["measured"]
    rows = [json.loads(x) for x in (finished_run / "metrics.jsonl").read_text().splitlines()]
    assert m["measured_steps"] == len(rows) == 2 and m["processes"] == 1
    assert m["seconds_per_step"] == rows[1]["seconds_step"]  # the first step (warm-up) left out
    assert m["hours"] == pytest.approx(2 * rows[1]["seconds_step"] / 3600) and m["hours_left"] == 0


def test_the_grid_is_the_sum_of_its_48_runs(capsys, tmp_path):
    g = grid(3, Assumptions(test_questions=10))
    assert len(g["configs"]) == 16 and g["total"]["runs"] == 48
    assert g["total"]["gpu_hours"] == pytest.approx(3 * sum(r["assumed"]["gpu_hours"] for r in g["configs"]))
    assert main(["plan", "--grid", "--test-questions", "10", "--json", str(tmp_path / "grid.json")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1].startswith("grid: 16 configs × 3 seeds = 48 runs: ")
    assert json.loads((tmp_path / "grid.json").read_text())["total"]["runs"] == 48


def test_plan_without_a_config_says_so(capsys):
    with pytest.raises(SystemExit):
        main(["plan"])
    assert capsys.readouterr().err.strip().startswith("error: plan needs --config NAME")
