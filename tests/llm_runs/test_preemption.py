"""A run told to stop (SIGTERM, SIGUSR1) or near its job's end checkpoints at the step boundary and exits 75;
resumed, it equals the run that was never stopped. Real signals to real processes."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from llm_runs.preemption import PREEMPTED, Preempted
from llm_runs.trainer import Trainer
from tests.llm_runs.test_trainer import FIXTURES, ROOT, TINY, config, run_rows

ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}


def _args(model_dir, out, name, *overrides):
    return ["-m", "llm_runs", "train", "--config", str(TINY), "--no-progress", f"model.path={model_dir}",
            "model.tiny=false", f"train.run_name={name}", f"train.output_dir={out}", "train.checkpoint_every=0",
            "train.eval_every=0", f"data.train={FIXTURES / 'train.jsonl'}", f"data.test={FIXTURES / 'test.jsonl'}",
            *overrides]


def _rows_written(run: Path) -> int:
    path = run / "metrics.jsonl"
    return path.read_text().count("\n") if path.exists() else 0


def _wait_for_rows(process, run, n, deadline=300):
    end = time.time() + deadline
    while _rows_written(run) < n:
        assert process.poll() is None and time.time() < end, process.communicate()[1][-2000:]
        time.sleep(0.05)


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(x) for x in (task / "children").read_text().split()]
    return found


@pytest.mark.slow
def test_sigterm_checkpoints_at_the_step_boundary_and_the_resumed_run_equals_an_unstopped_one(tiny_model_dir,
                                                                                             tmp_path):
    steps = "train.steps=20"
    whole = subprocess.run([sys.executable, *_args(tiny_model_dir, tmp_path, "whole", steps)], cwd=ROOT, env=ENV,
                           capture_output=True, text=True, timeout=600)
    assert whole.returncode == 0, whole.stderr[-2000:]
    run = tmp_path / "stopped"
    live = subprocess.Popen([sys.executable, *_args(tiny_model_dir, tmp_path, "stopped", steps)], cwd=ROOT, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_rows(live, run, 3)
    live.send_signal(signal.SIGTERM)
    _, err = live.communicate(timeout=300)
    assert live.returncode == PREEMPTED, err[-2000:]
    done = _rows_written(run)
    assert 3 <= done < 20  # stopped early, and no step lost: the checkpoint is the last logged step
    assert (run / "checkpoints" / "latest").read_text().strip() == f"step-{done:06d}"
    assert f"stopped at step {done} (SIGTERM)" in err
    assert json.loads((run / "preempted.json").read_text()) == {"step": done, "reason": "SIGTERM", "exit_code": 75}
    resumed = subprocess.run([sys.executable, "-m", "llm_runs", "train", "--resume", str(run), "--no-progress"],
                             cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert run_rows(run / "metrics.jsonl") == run_rows(tmp_path / "whole" / "metrics.jsonl")
    assert not (run / "preempted.json").exists()


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
def test_a_signal_to_one_rank_stops_both_together_with_one_checkpoint(tiny_model_dir, tmp_path):
    """SIGUSR1 (sbatch --signal=USR1@N) to rank 1 alone: the ranks agree at the step boundary, write one
    sharded checkpoint together and both exit 75 (a flag seen by one rank alone would deadlock FSDP)."""
    run = tmp_path / "two"
    launcher = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                                 *_args(tiny_model_dir, tmp_path, "two", "train.steps=30")], cwd=ROOT, env=ENV,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_rows(launcher, run, 2)
    workers = _children(launcher.pid)
    assert len(workers) == 2
    ranks = {int(dict(x.split("=", 1) for x in Path(f"/proc/{w}/environ").read_text().split("\0") if "=" in x)["RANK"]): w
             for w in workers}
    os.kill(ranks[1], signal.SIGUSR1)
    _, err = launcher.communicate(timeout=300)
    assert launcher.returncode != 0  # torchrun reports its workers' exit code 75 as a failure
    assert err.count("(SIGUSR1)") + err.count("(a signal to another rank)") == 2, err[-3000:]
    done = _rows_written(run)
    assert 2 <= done < 30
    latest = run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip()
    assert latest.name == f"step-{done:06d}" and (latest / "dcp").is_dir()
    assert json.loads((run / "preempted.json").read_text())["step"] == done
    rank_rows = [[json.loads(x)["step"] for x in (run / "ranks" / f"rank{r}.jsonl").read_text().splitlines()]
                 for r in (0, 1)]
    assert rank_rows[0] == rank_rows[1] == list(range(1, done + 1))


def test_a_clock_cadence_checkpoints_without_a_step_cadence(tiny_model_dir, tmp_path):
    t = Trainer(config(tiny_model_dir, tmp_path, "train.steps=3", "train.checkpoint_minutes=1e-6"), tmp_path / "r",
                progress=False)
    t.train()
    assert (tmp_path / "r" / "checkpoints" / "latest").read_text().strip() == "step-000002"  # step 3 is the end


def test_the_job_end_near_stops_with_a_checkpoint(tiny_model_dir, tmp_path):
    end = time.time() + 30  # nearer than one step + one checkpoint + a 60 s margin
    t = Trainer(config(tiny_model_dir, tmp_path, "train.steps=5", f"train.end_time={end}", "train.end_margin_s=60"),
                tmp_path / "r", progress=False)
    with pytest.raises(Preempted, match=r"stopped at step 1 \(the job's end is near\)"):
        t.train()
    assert (tmp_path / "r" / "checkpoints" / "latest").read_text().strip() == "step-000001"
    assert run_rows(tmp_path / "r" / "metrics.jsonl")[-1]["step"] == 1


def test_the_schedulers_end_time_is_read_where_it_is_set(monkeypatch):
    from llm_runs.preemption import job_end_time

    monkeypatch.setenv("SLURM_JOB_END_TIME", "1900000000")
    assert job_end_time(None) == 1.9e9 and job_end_time(5.0) == 5.0
    monkeypatch.setenv("SLURM_JOB_END_TIME", "")
    assert job_end_time(None) is None
