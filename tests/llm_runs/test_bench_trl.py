"""`python -m llm_runs bench --peer trl`: the three arms run on matched settings and the report prints ratios."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("trl")

from llm_runs.config import load  # noqa: E402
from llm_runs.tools.bench_trl import ARMS, trl_arguments  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "llm_runs" / "configs" / "tiny_cpu.yaml"


def test_trl_arguments_match_the_config(tmp_path):
    config = load(TINY, ["loss.micro_batch_size=4", "rollout.top_p=0.9", "loss.beta=0.25"])
    args = trl_arguments(config, tmp_path, steps=3)
    r = config.rollout
    # a step is P·n samples in micro-batches of loss.micro_batch_size, one generation per step
    assert args.per_device_train_batch_size * args.gradient_accumulation_steps == r.prompts_per_step * r.samples_per_prompt
    assert args.per_device_train_batch_size == 4 and args.steps_per_generation == args.gradient_accumulation_steps
    assert (args.num_generations, args.max_completion_length, args.temperature, args.top_p) == \
        (r.samples_per_prompt, r.max_new_tokens, r.temperature, 0.9)
    assert (args.distillation_topk, args.distillation_add_tail, args.distillation_alpha) == (20, True, 0.25)
    assert (args.teacher_model_kind, args.teacher_update_rate) == ("ema", config.teacher.ema_tau)
    assert (args.learning_rate, args.weight_decay, args.max_grad_norm) == \
        (config.optim.lr, config.optim.weight_decay, config.optim.clip_norm)
    assert not args.bf16 and not args.gradient_checkpointing and args.max_steps == 4
    pgpo = trl_arguments(config, tmp_path, steps=3, pgpo=True)
    assert (pgpo.pgpo_alpha, pgpo.pgpo_rho_max) == (config.pgpo.alpha, config.pgpo.rho_max)
    with pytest.raises(ValueError, match="micro_batch_size"):
        trl_arguments(load(TINY, ["loss.micro_batch_size=5"]), tmp_path, steps=3)


def test_bench_peer_trl_prints_ratios_for_every_arm(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "llm_runs", "bench", "--peer", "trl", "--config", str(TINY),
                           "--steps", "1", "--repeats", "1", "rollout.max_new_tokens=6"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert lines[0].startswith("settings: 4 prompts × 4 samples, 6 new tokens, top-k 20 + tail")
    for arm in ARMS:
        row = next(line for line in lines if line.startswith(arm))
        assert "step" in row and "tokens/s" in row
        numbers = [float(x) for x in row[len(arm):].split("step")[0].split()]
        assert len(numbers) == 4 and all(x > 0 for x in numbers), row
    assert next(line for line in lines if line.startswith("TRL SDPO")).endswith("step 1.00, 1.00; tokens/s 1.00, 1.00")
