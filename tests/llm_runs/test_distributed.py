"""Two processes (FSDP2 over gloo, CPU) on the tiny config against one process with the same global batch."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "llm_runs" / "configs" / "tiny_cpu.yaml"
FIXTURES = ROOT / "llm_runs" / "fixtures" / "toy_science"
NUMERIC = ("information", "rho", "loss", "grad_norm", "divergence_teacher_student", "jsd_teacher_student", "entropy", "lr",
           "effective_lr")
EXACT = ("step", "reward_mean", "teacher_fraction", "response_length_mean", "response_length_max", "skipped")


def _train(tmp_path, name, processes, *overrides, resume=False):
    if resume:
        args = ["-m", "llm_runs", "train", "--resume", str(tmp_path / name), "--no-progress", *overrides]
    else:
        args = ["-m", "llm_runs", "train", "--config", str(TINY), "--no-progress", f"train.run_name={name}",
                f"model.path={tmp_path / 'model'}", "model.tiny=false", f"train.output_dir={tmp_path}", "train.steps=3",
                "train.checkpoint_every=0", "train.eval_every=0", f"data.train={FIXTURES / 'train.jsonl'}",
                f"data.test={FIXTURES / 'test.jsonl'}", *overrides]
    if processes > 1:
        args = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}", *args]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return tmp_path / name


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
def test_two_fsdp2_processes_match_one_process(tiny_model_dir, tmp_path):
    (tmp_path / "model").symlink_to(tiny_model_dir, target_is_directory=True)
    # the sharded run also recomputes activations (checkpointing) and takes its loss in chunks from the hidden
    # states and the head's gathered weight (the default), the single process from the logits: none of it may
    # change the numbers. It trains on the single process's recorded rollouts: sampled afresh, a token whose
    # uniform lies within float rounding of a CDF boundary may flip (it does at step 2 under transformers
    # ≥ 5.23), and the runs would then compare different samples, not different trainers
    one = _train(tmp_path, "one", 1, "loss.implementation=plain", "rollout.record=true")
    two = _train(tmp_path, "two", 2, "model.gradient_checkpointing=true", "loss.chunk_size=7",
                 "rollout.engine=replay", f"rollout.replay={one}")
    rows1 = [json.loads(x) for x in (one / "metrics.jsonl").read_text().splitlines()]
    rows2 = [json.loads(x) for x in (two / "metrics.jsonl").read_text().splitlines()]
    assert len(rows1) == len(rows2) == 3
    for a, b in zip(rows1, rows2):
        assert all(a[k] == b[k] for k in EXACT), [(k, a[k], b[k]) for k in EXACT if a[k] != b[k]]
        for k in NUMERIC:
            assert b[k] == pytest.approx(a[k], rel=1e-5, abs=1e-9), k
    assert rows2[0]["rho"] > 1.1  # PGPO is active, so ρ agreement is not trivial
    # every rank used the same ρ at every step, bit for bit
    ranks = [[json.loads(x) for x in (two / "ranks" / f"rank{r}.jsonl").read_text().splitlines()] for r in (0, 1)]
    assert [r["rho"] for r in ranks[0]] == [r["rho"] for r in ranks[1]] == [r["rho"] for r in rows2]
    # the consolidated export of the sharded run holds the same weights
    w1, w2 = load_file(one / "final" / "model.safetensors"), load_file(two / "final" / "model.safetensors")
    assert w1.keys() == w2.keys()
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=1e-4, atol=1e-6)
    moved = max((w1[k] - load_file(tiny_model_dir / "model.safetensors")[k]).abs().max().item() for k in w1)
    assert moved > 1e-3  # the runs trained


def _rows(run):
    timing = ("seconds_", "tokens_per_s", "peak_memory", "timestamp")
    return [{k: v for k, v in json.loads(x).items() if not k.startswith(timing)}
            for x in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
def test_two_process_resume_continues_identically(tiny_model_dir, tmp_path):
    """Sharded checkpoints (torch.distributed.checkpoint) at step 2 of 4, resumed by 2 processes."""
    (tmp_path / "model").symlink_to(tiny_model_dir, target_is_directory=True)
    full = _train(tmp_path, "full", 2, "train.steps=4", "train.checkpoint_every=2")
    _train(tmp_path, "half", 2, "train.steps=2", "train.checkpoint_every=2")
    assert (tmp_path / "half" / "checkpoints" / "step-000002" / "dcp").is_dir()
    half = _train(tmp_path, "half", 2, "train.steps=4", resume=True)
    assert _rows(full) == _rows(half)
    w1, w2 = load_file(full / "final" / "model.safetensors"), load_file(half / "final" / "model.safetensors")
    assert all(torch.equal(w1[k], w2[k]) for k in w1)
    # one process cannot take over a 2-process checkpoint: said plainly
    from llm_runs.config import load
    from llm_runs.trainer import Trainer

    lone = Trainer(load(half / "config.yaml"), half, progress=False)
    with pytest.raises(ValueError, match="written by 2 processes; resume it with the same number"):
        lone.resume()


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
def test_two_processes_on_the_tiny_config_train_on_one_complete_model_folder(tmp_path):
    """The README's way to try the distributed path runs, and leaves one complete model folder and no temporary
    one. (The race it used to lose one time in two is timing-dependent; the rule behind the fix, rank 0 writes
    and the others wait, is checked deterministically in the next test.)"""
    args = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "llm_runs", "train",
            "--config", str(TINY), "--no-progress", "train.run_name=tiny2", f"train.output_dir={tmp_path}",
            "train.steps=1", "train.checkpoint_every=0", "train.eval_every=0",
            f"data.train={FIXTURES / 'train.jsonl'}", f"data.test={FIXTURES / 'test.jsonl'}"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    built = tmp_path / "tiny2" / "base_model"
    assert (built / "config.json").exists() and (built / "model.safetensors").exists()
    assert not list(built.parent.glob(".tmp-*"))


def test_only_rank_zero_builds_the_tiny_model_and_the_others_wait_for_it(tmp_path, monkeypatch):
    """What every rank reads, rank 0 writes: a rank ≠ 0 never builds, it waits at the barrier."""
    from llm_runs import build, parallel, tiny
    from llm_runs.config import load

    config = load(TINY, [f"train.output_dir={tmp_path}"])
    events = []
    monkeypatch.setattr(parallel, "barrier", lambda: events.append("barrier"))
    monkeypatch.setattr(tiny, "build", lambda out, *a, **k: (Path(out).mkdir(), events.append(("build", Path(out).name))))
    monkeypatch.setattr(parallel, "rank", lambda: 1)
    build.model_source(config, tmp_path / "run", ["a corpus"])
    assert events == ["barrier"]
    events.clear()
    monkeypatch.setattr(parallel, "rank", lambda: 0)
    build.model_source(config, tmp_path / "run", ["a corpus"])
    assert events == [("build", ".tmp-base_model"), "barrier"]  # into a temporary folder, renamed when complete
    assert (tmp_path / "run" / "base_model").is_dir() and not (tmp_path / "run" / ".tmp-base_model").exists()
