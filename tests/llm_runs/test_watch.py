"""Watching a run: TensorBoard event files (read back with TensorBoard's own reader, across a crash and a
resume), W&B, trackio and MLflow offline (read back with their own readers), plain progress lines without a terminal, the bar's numbers, the rows' clock and token count, the
completions kept per validation, and `train.report_to`'s errors."""

import importlib.util
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from llm_runs.config import ConfigError, load
from llm_runs.reward import score
from llm_runs.trainer import Trainer
from llm_runs import watch
from llm_runs.watch import Console, tag, trackers
from tests.llm_runs.test_trainer import config as tiny_config

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "llm_runs" / "configs" / "tiny_cpu.yaml"
FIXTURES = ROOT / "llm_runs" / "fixtures" / "toy_science"


def config(model_dir, out, *overrides):
    """test_trainer's tiny config, validated and checkpointed every 2 of 4 steps (later overrides win)."""
    return tiny_config(model_dir, out, "train.eval_every=2", "train.checkpoint_every=2", "train.keep_checkpoints=null",
                       "eval.samples=2", "eval.keep_samples=3", "train.steps=4", *overrides)


def rows(run_dir):
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def crashed_and_resumed(tiny_model_dir, tmp_path_factory):
    """A 4-step run killed right after logging step 3 (its checkpoint is step 2, written before that step's
    validation, which the resume redoes), then resumed to the end: (run folder, the first attempt's rows)."""
    out = tmp_path_factory.mktemp("watched")
    c = config(tiny_model_dir, out, "train.run_name=r", "train.report_to=tensorboard")
    first = Trainer(c, out / "r", progress=False)
    log = first.life._log

    def log_then_die(row):
        log(row)
        if row["step"] == 3:
            raise RuntimeError("killed")

    first.life._log = log_then_die
    with pytest.raises(RuntimeError, match="killed"):
        first.train()
    before = rows(out / "r")
    resumed = Trainer(load(out / "r" / "config.yaml"), out / "r", progress=False)
    assert resumed.resume()
    resumed.train()
    return out / "r", before


def test_tensorboard_holds_each_step_once_after_a_crash_and_a_resume(crashed_and_resumed):
    # the accumulator TensorBoard's own plugins read through (every summary a tensor)
    from tensorboard.backend.event_processing.plugin_event_accumulator import EventAccumulator
    from tensorboard.util.tensor_util import make_ndarray

    run, before = crashed_and_resumed
    assert [r["step"] for r in before] == [1, 2, 3]
    logged = rows(run)
    assert [r["step"] for r in logged] == [1, 2, 3, 4]
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"tensors": 0})
    events.Reload()
    for key in ("loss", "rho", "information", "reward_mean", "tokens_total", "seconds_step"):
        scalars = events.Tensors(tag(key))
        # steps 2 and 3 of the first attempt dropped (the purge step), redone by the resume
        assert [s.step for s in scalars] == [1, 2, 3, 4], key
        assert [float(make_ndarray(s.tensor_proto)) for s in scalars] == pytest.approx([r[key] for r in logged],
                                                                                        rel=1e-6), key
        assert [s.wall_time for s in scalars] == pytest.approx([r["timestamp"] for r in logged], abs=1e-3)
    val = events.Tensors("val/mean_at_k")
    assert [(s.step, float(make_ndarray(s.tensor_proto))) for s in val] == [
        (2, pytest.approx(logged[1]["val_mean_at_k"])), (4, pytest.approx(logged[3]["val_mean_at_k"]))]
    samples = events.Tensors("val/samples/text_summary")
    assert [s.step for s in samples] == [2, 4]
    text = make_ndarray(samples[-1].tensor_proto).item().decode()
    assert "| idx | reward |" in text and len(text.splitlines()) == 2 + 3  # header, rule, 3 kept completions


def test_rows_carry_a_clock_step_seconds_and_tokens_that_add_up_across_the_resume(crashed_and_resumed):
    run, before = crashed_and_resumed
    logged = rows(run)
    c = load(run / "config.yaml")
    batch = c.rollout.prompts_per_step * c.rollout.samples_per_prompt
    total = 0
    for r in logged:
        assert r["tokens_generated"] == round(r["response_length_mean"] * batch)
        total += r["tokens_generated"]
        assert r["tokens_total"] == total  # step 3 and 4 counted once, on top of the step-2 checkpoint's count
        stages = sum(v for k, v in r.items() if k.startswith("seconds_") and k not in ("seconds_step", "seconds_eval"))
        assert stages <= r["seconds_step"] < stages + 5.0
    stamps = [r["timestamp"] for r in logged]
    assert stamps == sorted(stamps) and stamps[2] > before[2]["timestamp"]  # step 3 redone after the crash
    assert json.loads((run / "summary.json").read_text())["tokens_total"] == total


def test_each_validation_keeps_a_few_completions_with_their_rewards(crashed_and_resumed):
    from llm_runs.data import load_split

    run, _ = crashed_and_resumed
    questions = {e.idx: e for e in load_split(FIXTURES / "test.jsonl")}
    for step in (2, 4):
        result = json.loads((run / "eval" / f"step-{step:06d}.json").read_text())
        kept = result["samples"]
        assert [s["idx"] for s in kept] == [q["idx"] for q in result["per_question"][:3]]
        for s in kept:
            e = questions[s["idx"]]
            assert s["question"] == e.prompt and s["answer"] == e.answer and isinstance(s["completion"], str)
            assert s["reward"] == score(s["completion"], e.answer, "boxed")


def test_without_a_terminal_plain_lines_come_at_the_interval_validations_and_the_end(tiny_model_dir, tmp_path, capsys):
    t = Trainer(config(tiny_model_dir, tmp_path, "train.run_name=lines", "train.report_to=none",
                       "train.log_interval=3600", "train.checkpoint_every=0"), tmp_path / "lines", progress=True)
    t.train()  # progress asked for, but pytest's stderr is no terminal
    lines = [line for line in capsys.readouterr().err.splitlines() if " lines step " in line]
    assert [int(re.search(r"step (\d+)/4", line).group(1)) for line in lines] == [1, 2, 4]  # first, validations
    assert re.match(r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\] lines step 2/4 ", lines[1])
    for key in ("reward", "I", "rho", "loss", "lr", "s/step", "left ~"):
        assert f"{key} " in lines[1] or key in lines[1]
    assert "val " in lines[1] and "val " not in lines[0]
    assert not (tmp_path / "lines" / "tensorboard").exists()  # report_to=none


def test_a_zero_interval_gives_one_line_per_step(tiny_model_dir, tmp_path, capsys):
    Trainer(config(tiny_model_dir, tmp_path, "train.run_name=each", "train.report_to=none", "train.log_interval=0",
                   "train.eval_every=0", "train.checkpoint_every=0"), tmp_path / "each", progress=False).train()
    lines = [line for line in capsys.readouterr().err.splitlines() if " each step " in line]
    assert [int(re.search(r"step (\d+)/4", line).group(1)) for line in lines] == [1, 2, 3, 4]


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_on_a_terminal_the_bar_shows_validation_accuracy_and_lr():
    stream = Terminal()
    console = Console("run", total=4, start=0, bar=True, interval=60, stream=stream)
    row = {"step": 1, "reward_mean": 0.5, "information": 0.1, "rho": 1.1, "loss": 0.2, "lr": 3e-6}
    console.update(row)
    assert "lr=3.0e-06" in stream.getvalue() and "val=" not in stream.getvalue()
    console.update({**row, "step": 2, "val_mean_at_k": 0.625})
    console.update({**row, "step": 3})  # the last validation stays on the bar
    console.close()
    assert re.search(r"3/4 .*val=0\.625", stream.getvalue())


def test_report_to_names_are_checked_before_anything_loads(tmp_path, monkeypatch):
    assert trackers("none") == [] and trackers("") == []
    assert trackers("auto") == (["tensorboard"] if importlib.util.find_spec("tensorboard") else [])
    assert trackers("tensorboard") == ["tensorboard"]
    with pytest.raises(ConfigError, match=r"train\.report_to: unknown neptune"):
        trackers("tensorboard,neptune")
    for name in ("wandb", "trackio", "mlflow"):
        # as if the tracker were not installed (the test extra installs all three)
        monkeypatch.setitem(watch.TRACKERS, name, f"{name}_absent_for_this_test")
        with pytest.raises(ConfigError, match=rf"train\.report_to: {name} is not installed \(pip install {name}\)"):
            Trainer(load(TINY, [f"train.report_to=tensorboard,{name}", "model.path=/nowhere"]), tmp_path / "r")
        assert not (tmp_path / "r").exists()  # refused before the run folder is made


def test_a_tracker_that_cannot_start_is_one_error_naming_it(tiny_model_dir, tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)  # MLflow 3 refuses a folder store without it
    t = Trainer(config(tiny_model_dir, tmp_path, "train.report_to=tensorboard,mlflow"), tmp_path / "r", progress=False)
    with pytest.raises(ConfigError, match=r"^train\.report_to: mlflow did not start: MlflowException: "):
        t.train()
    assert not (tmp_path / "r" / "metrics.jsonl").exists()  # before the first step


def test_tracker_names_group_the_metrics():
    assert [tag(k) for k in ("val_mean_at_k", "rho", "seconds_rollout", "tokens_total", "loss")] == [
        "val/mean_at_k", "pgpo/rho", "time/seconds_rollout", "time/tokens_total", "train/loss"]


def test_the_trainer_writes_events_by_default_where_tensorboard_is_installed(tiny_model_dir, tmp_path):
    pytest.importorskip("tensorboard")
    c = config(tiny_model_dir, tmp_path, "train.steps=1", "train.eval_every=0", "train.checkpoint_every=0")
    assert c.train.report_to == "auto"
    Trainer(c, tmp_path / "d", progress=False).train()
    assert list((tmp_path / "d" / "tensorboard").glob("events.out.tfevents.*"))


READ_TRACKERS = """
import json, sys
import mlflow
from trackio.sqlite_storage import SQLiteStorage
ids = json.load(open(sys.argv[1]))
client = mlflow.tracking.MlflowClient()
print(json.dumps({
    "mlflow_loss": [(m.step, m.value) for m in client.get_metric_history(ids["mlflow"], "train.loss")],
    "mlflow_val": [(m.step, m.value) for m in client.get_metric_history(ids["mlflow"], "val.mean_at_k")],
    "mlflow_params": client.get_run(ids["mlflow"]).data.params,
    "trackio_runs": SQLiteStorage.get_runs("pgpo"),
    "trackio_loss": [(r["step"], r.get("train/loss")) for r in SQLiteStorage.get_logs("pgpo", sys.argv[2])],
}))
"""


@pytest.mark.slow
def test_wandb_trackio_and_mlflow_get_every_row_and_a_resume_continues_their_runs(tiny_model_dir, tmp_path):
    """The real trackers, offline (W&B's offline mode, trackio's local database, MLflow's file store): a
    2-step run, then `--resume … train.steps=4`; each tracker's own reader gives back the rows."""
    for name in ("wandb", "trackio", "mlflow"):
        pytest.importorskip(name)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "offline", "WANDB_SILENT": "true",
           "TRACKIO_DIR": str(tmp_path / "trackio"), "MLFLOW_TRACKING_URI": (tmp_path / "mlruns").as_uri(),
           "MLFLOW_ALLOW_FILE_STORE": "true"}

    def cli(*args):
        done = subprocess.run([sys.executable, "-m", "llm_runs", *args], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]

    run = tmp_path / "runs" / "r"
    cli("train", "--config", str(TINY), "--no-progress", f"model.path={tiny_model_dir}", "model.tiny=false",
        f"train.output_dir={tmp_path / 'runs'}", "train.run_name=r", f"data.train={FIXTURES / 'train.jsonl'}",
        f"data.test={FIXTURES / 'test.jsonl'}", "train.steps=2", "train.eval_every=2", "train.checkpoint_every=2",
        "eval.samples=2", "train.report_to=wandb,trackio,mlflow")
    ids = json.loads((run / "trackers.json").read_text())
    cli("train", "--resume", str(run), "--no-progress", "train.steps=4")
    assert json.loads((run / "trackers.json").read_text()) == ids  # the same tracker runs, continued
    logged = {r["step"]: r for r in rows(run)}
    assert sorted(logged) == [1, 2, 3, 4]

    read = subprocess.run([sys.executable, "-c", READ_TRACKERS, str(run / "trackers.json"), "r"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert read.returncode == 0, read.stderr[-3000:]
    got = json.loads(read.stdout.strip().splitlines()[-1])
    for points in (got["mlflow_loss"], got["trackio_loss"]):
        # step 2 was checkpointed before its validation, so the resume redid it: these trackers keep both points
        assert sorted({step for step, _ in points}) == [1, 2, 3, 4]
        last = dict(points)  # the later point of a step wins
        assert [last[s] for s in range(1, 5)] == pytest.approx([logged[s]["loss"] for s in range(1, 5)], rel=1e-12)
    assert dict(got["mlflow_val"]) == pytest.approx({2: logged[2]["val_mean_at_k"], 4: logged[4]["val_mean_at_k"]})
    assert got["mlflow_params"]["pgpo.alpha"] == "1.0" and got["trackio_runs"] == ["r"]

    attempts = sorted((run / "wandb").glob(f"offline-run-*-{ids['wandb']}"))
    assert len(attempts) == 2  # the first run and its resume, under one W&B id
    assert all((a / f"run-{ids['wandb']}.wandb").stat().st_size > 0 for a in attempts)
    tables = sorted((run / "wandb").glob("offline-run-*/files/media/table/val/samples_*.table.json"))
    kept = json.loads((run / "eval" / "step-000004.json").read_text())["samples"]
    last = json.loads(tables[-1].read_text())
    assert last["columns"] == ["idx", "reward", "answer", "question", "completion"]
    assert [row[0] for row in last["data"]] == [s["idx"] for s in kept]
    assert [row[4] for row in last["data"]] == [s["completion"] for s in kept]
