"""Where a new run may be written: one folder inside train.output_dir, never over another run or over files
that are not a run's; the config's name kept whole in the folder's name."""

import json

import pytest

from llm_runs.__main__ import main
from llm_runs.build import run_name
from llm_runs.config import load
from tests.llm_runs.test_trainer import FIXTURES, TINY, finished_run  # noqa: F401  (fixture)


def _train(tmp_path, *overrides):
    return main(["train", "--config", str(TINY), "--no-progress", f"train.output_dir={tmp_path / 'out'}",
                 f"data.train={FIXTURES / 'train.jsonl'}", f"data.test={FIXTURES / 'test.jsonl'}", *overrides])


def _refused(capsys, tmp_path, *overrides) -> str:
    with pytest.raises(SystemExit) as exit_:
        _train(tmp_path, *overrides)
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


@pytest.mark.parametrize("name", ["../escape", "a/b", "..", ".", "/abs"])
def test_a_run_name_is_one_folder_inside_output_dir(capsys, tmp_path, name):
    assert "train.run_name" in _refused(capsys, tmp_path, f"train.run_name={name}")
    assert not (tmp_path / "escape").exists() and not (tmp_path / "out").exists()


def test_a_folder_that_is_not_a_run_is_never_written_over(capsys, tmp_path):
    theirs = tmp_path / "out" / "mine"
    theirs.mkdir(parents=True)
    (theirs / "notes.txt").write_text("someone's work")
    assert "is not a run folder" in _refused(capsys, tmp_path, "train.run_name=mine")
    assert [p.name for p in theirs.iterdir()] == ["notes.txt"]


def test_a_stray_rank_in_the_environment_does_not_skip_the_guard(capsys, tmp_path, monkeypatch):
    run = tmp_path / "out" / "r"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("{}\n")
    (run / "metrics.jsonl").write_text('{"step": 1}\n')
    monkeypatch.setenv("RANK", "1")
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert "already holds a run" in _refused(capsys, tmp_path, "train.run_name=r")
    assert (run / "metrics.jsonl").read_text() == '{"step": 1}\n'


@pytest.mark.parametrize("given", ["qwen3_8b_biology_pgpo_a0.5", "configs/qwen3_8b_biology_pgpo_a0.5.yaml",
                                   "qwen3_8b_biology_pgpo_a0.5.yml"])
def test_the_run_folder_keeps_the_whole_config_name(given):
    assert run_name(load(TINY), given) == "qwen3_8b_biology_pgpo_a0.5-seed0"


def test_resume_with_a_config_is_refused_not_ignored(capsys, tmp_path):
    with pytest.raises(SystemExit):
        main(["train", "--resume", str(tmp_path), "--config", str(TINY)])
    assert "would be ignored" in capsys.readouterr().err


def test_a_run_says_what_it_is_doing_before_its_first_step(tiny_model_dir, tmp_path, capsys):
    from llm_runs.trainer import Trainer
    from tests.llm_runs.test_trainer import config

    Trainer(config(tiny_model_dir, tmp_path), tmp_path / "r", progress=False)
    lines = [x for x in capsys.readouterr().err.splitlines() if x.startswith("[") and "] r: " in x]
    stages = [x.split("] r: ", 1)[1].split(" (")[0] for x in lines]
    assert stages == ["starting on cpu, 1 process; loading the data", f"loading the model {tiny_model_dir}",
                      "starting the rollout engine", "ready: 12 training and 4 test prompts"]
    assert all("s since start)" in x for x in lines)


def test_a_run_that_fails_on_its_input_leaves_no_folder(capsys, tmp_path):
    bad = tmp_path / "train.jsonl"
    bad.write_text("not json\n")
    with pytest.raises(SystemExit):
        _train(tmp_path, "train.run_name=r", f"data.train={bad}")
    assert "error: " in capsys.readouterr().err
    assert not (tmp_path / "out" / "r").exists()


def test_overrides_may_follow_an_option_and_a_local_config_wins_over_a_shipped_name(tmp_path, monkeypatch, capsys):
    from llm_runs import paths
    from llm_runs.__main__ import main as cli

    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny_cpu.yaml").write_text("train:\n  steps: 1\n")
    assert paths.config_file("tiny_cpu").resolve() == (tmp_path / "tiny_cpu.yaml").resolve()
    with pytest.raises(SystemExit) as exit_:  # the override after --no-progress is read, and checked
        cli(["train", "--config", "tiny_cpu", "--no-progress", "train.nonsense=1"])
    assert exit_.value.code == 2 and "unknown key 'train.nonsense'" in capsys.readouterr().err


def test_eval_writes_into_a_folder_it_makes_first(finished_run, tmp_path, capsys):
    out = tmp_path / "not" / "yet" / "there.json"
    assert main(["eval", "--checkpoint", str(finished_run / "final"), "--no-progress", "--out", str(out),
                 "eval.samples=1"]) == 0
    assert json.loads(out.read_text())["k"] == 1
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    with pytest.raises(SystemExit):  # refused before the evaluation, not after it
        main(["eval", "--checkpoint", str(finished_run / "final"), "--out", str(blocked / "x.json")])
    assert "its folder cannot be made" in capsys.readouterr().err


def test_the_epoch_column_is_the_epoch_the_steps_prompts_came_from(tiny_model_dir, tmp_path):
    """12 training prompts, 4 a step: steps 1–3 are epoch 0, steps 4–6 epoch 1 (step 4 used to say 0)."""
    from llm_runs.trainer import Trainer
    from tests.llm_runs.test_trainer import config

    t = Trainer(config(tiny_model_dir, tmp_path, "rollout.max_new_tokens=2"), tmp_path / "r", progress=False)
    assert [t.step()["epoch"] for _ in range(6)] == [0, 0, 0, 1, 1, 1]


def test_every_command_line_option_says_what_it_does():
    import argparse

    from llm_runs.__main__ import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    silent = [f"{name} {'/'.join(a.option_strings) or a.dest}" for name, p in sub.choices.items() for a in p._actions
              if not isinstance(a, argparse._HelpAction) and not a.help]
    assert not silent


def test_a_gpu_config_on_a_cpu_says_what_it_will_cost_before_loading(tmp_path, capsys, monkeypatch):
    """The paper's config where no GPU is seen: the warning comes before the load (stopped here: no hub)."""
    from llm_runs import parts, trainer
    from tests.llm_runs.test_trainer import config

    def no_hub(*args):
        raise RuntimeError("the load would start here")

    monkeypatch.setattr(parts, "model_source", no_hub)
    with pytest.raises(RuntimeError, match="the load would start here"):
        trainer.Trainer(config("Qwen/Qwen3-8B", tmp_path, "train.device=cpu"), tmp_path / "r", progress=False)
    assert "warning: 8.2 B parameters on the CPU" in capsys.readouterr().err


@pytest.fixture
def read_only_mount(tmp_path):
    """A real file system mounted read-only (a tmpfs): what a run meets on a scratch space remounted read-only.
    `make_run_folder()` writes a run's config.yaml there first (the mount is then made read-only)."""
    import subprocess
    import yaml

    where = tmp_path / "ro"
    where.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(where)], capture_output=True).returncode:
        pytest.skip("cannot mount a file system here (needs root, as in CI)")

    def read_only(run: str | None = None):
        if run is not None:
            (where / run).mkdir()
            (where / run / "config.yaml").write_text(yaml.safe_dump(load("tiny_cpu").to_dict()))
        subprocess.run(["mount", "-o", "remount,ro", str(where)], check=True)
        return where

    yield read_only
    subprocess.run(["umount", str(where)], check=True)


@pytest.mark.parametrize("resume", [False, True])
def test_a_read_only_run_folder_is_one_error_line_before_any_loading(read_only_mount, capsys, resume):
    where = read_only_mount("run" if resume else None)
    args = ["train", "--resume", str(where / "run")] if resume else ["train", "--config", "tiny_cpu",
                                                                      f"train.output_dir={where}"]
    with pytest.raises(SystemExit) as stop:
        main([*args, "--no-progress"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "Traceback" not in err
    assert err.count("error:") == 1 and "cannot be written (Read-only file system)" in err
    assert "loading" not in err  # refused before the data or the model
