"""The sbatch files in cluster/: they parse, the torchrun command lines they build are the documented ones, the
array index maps to the right config and seed, a run is resumed or left alone as its folder says, and a run
stopped early is requeued. SLURM is not here: `srun`, `scontrol` and `torchrun` are stand-ins on PATH that
record what they were given (the real torchrun is checked to accept the options, below)."""

import itertools
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "cluster"
CONFIGS = sorted(p.stem for p in (ROOT / "llm_runs" / "configs").glob("qwen3_8b_*.yaml"))
HANDLED = ["--signals-to-handle", "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1", "--shutdown-timeout", "900"]

STAND_INS = {
    # srun OPTIONS... COMMAND ARGS...: run the command once (one node here)
    "srun": 'while [ "${1#--}" != "$1" ]; do shift; done; exec "$@"\n',
    "scontrol": 'if [ "$1 $2" = "show hostnames" ]; then printf "node-a\\nnode-b\\n"; else echo "scontrol $*" >> "$RECORD"; fi\n',
    # torchrun: record its arguments one per line; PREEMPTED=RUN_DIR plays a run stopped early (as torchrun
    # reports a worker's exit code 75: 1)
    "torchrun": 'printf "%s\\n" "$@" > "$RECORD.torchrun"\n'
                'if [ -n "${PREEMPTED:-}" ]; then mkdir -p "$PREEMPTED"; echo "{}" > "$PREEMPTED/preempted.json"; exit 1; fi\n',
}


@pytest.fixture
def slurm(tmp_path):
    """Run an sbatch file as SLURM would (from the submit directory, with its variables), with stand-ins."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in STAND_INS.items():
        (bin_dir / name).write_text("#!/bin/bash\n" + body)
        (bin_dir / name).chmod(0o755)
    record = tmp_path / "record"

    def run(script, **env):
        full = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "RECORD": str(record), "SLURM_SUBMIT_DIR": str(ROOT),
                "SLURM_JOB_ID": "4242", "OUTPUT_DIR": str(tmp_path / "runs"), **env}
        done = subprocess.run(["bash", str(CLUSTER / script)], cwd=tmp_path, env=full, capture_output=True,
                              text=True, timeout=60)
        torchrun = Path(f"{record}.torchrun")
        args = torchrun.read_text().splitlines() if torchrun.exists() else None
        torchrun.unlink(missing_ok=True)
        calls = record.read_text().splitlines() if record.exists() else []
        return done, args, calls

    return run


@pytest.mark.parametrize("script", sorted(p.name for p in CLUSTER.iterdir()))
def test_every_file_parses(script):
    assert subprocess.run(["bash", "-n", str(CLUSTER / script)], capture_output=True).returncode == 0


def test_the_array_covers_the_grid_once_config_by_seed(slurm):
    seen = []
    for i in range(48):
        done, args, _ = slurm("grid.sbatch", SLURM_ARRAY_TASK_ID=str(i), SLURM_ARRAY_JOB_ID="77")
        assert done.returncode == 0, done.stderr
        config, seed = args[args.index("--config") + 1], args[args.index("--config") + 2]
        assert (config, seed) == (CONFIGS[i % 16], f"train.seed={i // 16}")
        seen.append((config, seed))
    assert sorted(seen) == sorted(itertools.product(CONFIGS, [f"train.seed={s}" for s in range(3)]))
    assert "qwen3_8b_biology_pgpo_a0.5" in CONFIGS  # the α = 0.5 configs keep their name


def test_one_node_builds_the_documented_command_line(slurm, tmp_path):
    done, args, _ = slurm("one_node.sbatch", CONFIG="qwen3_8b_chemistry_pgpo_a1", SEED="2")
    assert done.returncode == 0, done.stderr
    assert args == ["--standalone", "--nproc-per-node", "8", *HANDLED, "-m", "llm_runs", "train",
                    "--config", "qwen3_8b_chemistry_pgpo_a1", "train.seed=2", f"train.output_dir={tmp_path / 'runs'}",
                    "--no-progress", "train.checkpoint_minutes=30"]
    documented = (ROOT / "docs" / "cluster.md").read_text()
    assert ("torchrun --standalone --nproc-per-node 8 " + " ".join(HANDLED) + " -m llm_runs train --config "
            "qwen3_8b_chemistry_pgpo_a1 train.seed=2 train.output_dir=runs --no-progress train.checkpoint_minutes=30"
            ) in documented


def test_several_nodes_meet_at_the_first_node(slurm, tmp_path):
    done, args, _ = slurm("multi_node.sbatch", SLURM_NNODES="2", SLURM_JOB_NODELIST="node-[a-b]")
    assert done.returncode == 0, done.stderr
    assert args[:8] == ["--nnodes", "2", "--rdzv-backend", "c10d", "--rdzv-endpoint", "node-a:29500",
                        "--rdzv-id", "4242"]
    documented = (ROOT / "docs" / "cluster.md").read_text()
    assert "torchrun --nnodes 2 --rdzv-backend c10d --rdzv-endpoint node-a:29500 --rdzv-id 4242 " in documented


def test_a_run_with_a_folder_is_resumed_and_a_finished_one_left_alone(slurm, tmp_path):
    run = tmp_path / "runs" / "qwen3_8b_physics_sdpo-seed0"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("{}\n")
    _, args, _ = slurm("one_node.sbatch", CONFIG="qwen3_8b_physics_sdpo", SEED="0")
    assert args[args.index("train") + 1:args.index("train") + 3] == ["--resume", str(run)]
    (run / "summary.json").write_text("{}\n")
    done, args, _ = slurm("one_node.sbatch", CONFIG="qwen3_8b_physics_sdpo", SEED="0")
    assert done.returncode == 0 and args is None and "is finished" in done.stdout


def test_a_run_stopped_early_is_requeued_and_a_failed_one_is_not(slurm, tmp_path):
    run = tmp_path / "runs" / f"{CONFIGS[5]}-seed0"
    done, _, calls = slurm("grid.sbatch", SLURM_ARRAY_TASK_ID="5", SLURM_ARRAY_JOB_ID="77", PREEMPTED=str(run))
    assert done.returncode == 0 and calls == ["scontrol requeue 77_5"]
    (run / "preempted.json").unlink()
    (tmp_path / "record").unlink()
    failing = tmp_path / "bin" / "torchrun"
    failing.write_text("#!/bin/bash\nexit 3\n")
    done, _, calls = slurm("one_node.sbatch", CONFIG="qwen3_8b_physics_sdpo", SEED="1")
    assert done.returncode == 3 and calls == []


def test_the_real_torchrun_accepts_the_options(tmp_path):
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1",
                           *HANDLED, "-m", "llm_runs", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0 and "usage: python -m llm_runs" in done.stdout, done.stderr[-2000:]
