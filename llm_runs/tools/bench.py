"""`python -m llm_runs bench --config PATH [--steps K] [--repeats R] [key=value ...]`: seconds per step by
stage, SDPO against PGPO, from the same seeds, as medians over repeated fresh runs.

Both methods compute the information I (SDPO logs it too), so the PGPO-over-SDPO ratio measures what
PGPO adds on top: the multiplier and the modulated optimizer step.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

from llm_runs.config import load
from llm_runs.metrics import STAGES
from llm_runs.trainer import Trainer


def measure(config_path: str, overrides: list[str], steps: int = 5, repeats: int = 5) -> dict:
    methods = (("SDPO", ["pgpo.enabled=false"]), ("PGPO", ["pgpo.enabled=true"]))
    per_step = {m: [] for m, _ in methods}
    stages = {m: {s: [] for s in STAGES} for m, _ in methods}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(repeats):
            for method, extra in methods:  # interleaved, so drifts in machine speed hit both alike
                config = load(config_path, [*overrides, *extra, f"train.output_dir={tmp}", "train.eval_every=0",
                                            "train.checkpoint_every=0"])
                trainer = Trainer(config, Path(tmp) / f"{method}-{r}", progress=False)
                trainer.step()  # warm-up: first calls allocate
                for _ in range(steps):
                    start = time.perf_counter()
                    row = trainer.step()
                    per_step[method].append(time.perf_counter() - start)
                    for s in STAGES:
                        stages[method][s].append(row.get(f"seconds_{s}", 0.0))
                trainer.close()
    results = {m: {"step": statistics.median(per_step[m]), **{s: statistics.median(v) for s, v in stages[m].items()}}
               for m, _ in methods}
    results["ratio"] = results["PGPO"]["step"] / results["SDPO"]["step"]
    # a stage PGPO does not touch: its ratio shows how far this machine's noise alone moves the numbers
    results["rollout_ratio"] = results["PGPO"]["rollout"] / results["SDPO"]["rollout"]
    results["optimizer"] = optimizer_step_cost(trainer)
    return results


def optimizer_step_cost(trainer, repeats: int = 200) -> dict:
    """Median seconds of AdamW's step and of `modulated_step(ρ = 1.5)` on the run's model and gradients:
    what PGPO adds to a step, isolated from everything else (the weights drift; that is harmless here)."""
    import torch

    from pgpo import modulated_step

    for p in trainer.model.parameters():
        p.grad = torch.full_like(p, 1e-3)
    timings = {"adamw": [], "modulated": []}
    for _ in range(repeats):
        for name, call in (("adamw", trainer.optimizer.step), ("modulated", lambda: modulated_step(trainer.optimizer, 1.5))):
            start = time.perf_counter()
            call()
            timings[name].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in timings.items()}


def report(results: dict) -> str:
    head = f"{'seconds / step (median)':<24}" + "".join(f"{s:>12}" for s in ("step", *STAGES))
    lines = [head]
    for method in ("SDPO", "PGPO"):
        lines.append(f"{method:<24}" + "".join(f"{results[method][s]:>12.4f}" for s in ("step", *STAGES)))
    lines.append(f"PGPO / SDPO per step: {results['ratio']:.3f}   (rollout, which PGPO does not touch: "
                 f"{results['rollout_ratio']:.3f} — the noise floor of this machine)")
    o = results["optimizer"]
    lines.append(f"optimizer step alone: AdamW {o['adamw'] * 1e3:.3f} ms, modulated_step(ρ = 1.5) {o['modulated'] * 1e3:.3f} ms "
                 f"(+{(o['modulated'] - o['adamw']) * 1e3:.3f} ms)")
    return "\n".join(lines)
