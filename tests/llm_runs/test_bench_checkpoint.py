"""`bench-checkpoint`: both ways of writing a sharded run's checkpoint, measured in one run (a GPU's numbers go in
docs/scaling.md; here the tiny shape on the CPU, one process and two)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from llm_runs.__main__ import main

ROOT = Path(__file__).resolve().parents[2]


def test_one_process_writes_both_checkpoints_and_prints_the_ratios(capsys, tmp_path):
    assert main(["bench-checkpoint", "--shape", "tiny", "--device", "cpu", "--repeats", "2", "--out",
                 str(tmp_path)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["processes"] == 1 and result["parameters"] == 164_288
    for way in ("dcp", "gather"):
        assert result[way]["seconds"] > 0 and result[way]["host_peak_gib"] > 0
        # bf16 weights and AdamW's two moments in their dtype: at least 6 bytes a parameter on disk, either way
        assert result[way]["disk_gib"] * 2**30 > 6 * 164_288
    ratios = result["gather_over_dcp"]
    assert ratios["seconds"] == pytest.approx(result["gather"]["seconds"] / result["dcp"]["seconds"])
    assert not list(tmp_path.iterdir())  # nothing left behind


def test_the_real_shape_without_cuda_is_one_error_line(capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    with pytest.raises(SystemExit) as stop:
        main(["bench-checkpoint", "--shape", "qwen3-8b"])
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(err) == 1 and "no CUDA device is visible" in err[0]


@pytest.mark.slow
def test_two_processes_agree_on_one_folder(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "llm_runs",
                           "bench-checkpoint", "--shape", "tiny", "--device", "cpu", "--repeats", "1", "--out",
                           str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)  # printed once, by rank 0
    assert result["processes"] == 2 and result["dcp"]["disk_gib"] > 0
    assert not list(tmp_path.iterdir())
