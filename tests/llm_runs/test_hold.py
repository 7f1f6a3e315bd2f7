"""A live run holds its folder: a second process is refused, naming the holder; a stale hold is taken over
and said so. Real processes, real locks."""

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from llm_runs.hold import HOLD, STALE_S, HeldError, RunHold
from tests.llm_runs.test_trainer import FIXTURES, ROOT, TINY


def _dead_pid() -> int:
    done = subprocess.Popen([sys.executable, "-c", "pass"])
    done.wait()
    return done.pid


def _plant(run_dir, host, pid, age_s=0.0):
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / HOLD).write_text(json.dumps({"host": host, "pid": pid, "started": time.time() - age_s,
                                            "command": "python -m llm_runs train ..."}))
    os.utime(run_dir / HOLD, (time.time() - age_s,) * 2)


def test_a_second_holder_is_refused_naming_the_first_and_the_folder_is_free_after(tmp_path):
    with RunHold(tmp_path):
        record = json.loads((tmp_path / HOLD).read_text())
        assert record["pid"] == os.getpid() and record["host"] == socket.gethostname()
        with pytest.raises(HeldError, match=rf"held by a live run \(pid {os.getpid()} on "):
            RunHold(tmp_path).acquire()
    assert (tmp_path / HOLD).read_text() == ""  # released: free, and the file (its inode) kept
    said = []
    with RunHold(tmp_path, say=said.append):
        pass
    assert said == []  # a released hold is no one's: nothing to take over


def test_the_hold_of_a_dead_process_on_this_host_is_taken_over_and_said(tmp_path):
    pid = _dead_pid()
    _plant(tmp_path, socket.gethostname(), pid)
    said = []
    with RunHold(tmp_path, say=said.append):
        assert json.loads((tmp_path / HOLD).read_text())["pid"] == os.getpid()
    assert len(said) == 1 and f"pid {pid}" in said[0] and "no longer running" in said[0]


def test_another_hosts_hold_is_refused_while_fresh_and_taken_over_when_stale(tmp_path):
    _plant(tmp_path, "node-0417", 12345, age_s=10)
    with pytest.raises(HeldError, match="held by a run on another host .*pid 12345 on node-0417.*refreshed 1[0-9] s ago"):
        RunHold(tmp_path).acquire()
    _plant(tmp_path, "node-0417", 12345, age_s=STALE_S + 60)
    said = []
    with RunHold(tmp_path, say=said.append):
        pass
    assert len(said) == 1 and "stale hold" in said[0] and "node-0417" in said[0]


@pytest.mark.slow
def test_resuming_a_run_that_is_still_training_is_refused_and_the_live_run_is_untouched(tiny_model_dir, tmp_path):
    """The report's case: `--resume` of a live run used to train beside it (426 rows for a 400-step run)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    common = [sys.executable, "-m", "llm_runs", "train", "--no-progress"]
    live = subprocess.Popen(
        [*common, "--config", str(TINY), f"model.path={tiny_model_dir}", "model.tiny=false", "train.run_name=r",
         f"train.output_dir={tmp_path}", "train.steps=40", "train.checkpoint_every=5", "train.eval_every=0",
         f"data.train={FIXTURES / 'train.jsonl'}", f"data.test={FIXTURES / 'test.jsonl'}"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run = tmp_path / "r"
    deadline = time.time() + 300
    while not ((run / "metrics.jsonl").exists() and (run / "metrics.jsonl").read_text().count("\n") >= 6):
        assert live.poll() is None and time.time() < deadline, live.communicate()[1][-2000:]
        time.sleep(0.2)
    second = subprocess.run([*common, "--resume", str(run)], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=300)
    out, err = live.communicate(timeout=600)
    assert second.returncode == 2
    last = second.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and f"held by a live run (pid {live.pid} on" in last
    assert live.returncode == 0, err[-2000:]
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 41))
    assert (run / HOLD).read_text() == ""
