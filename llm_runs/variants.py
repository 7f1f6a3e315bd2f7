"""The study's variants of the step-size rule (`docs/results.md`; keys in `llm_runs.schema.PGPOConfig`):
`pgpo.replay_rho` (SDPO with another run's ρ_t, or its mean, as a learning-rate multiplier),
`pgpo.normalize_information` (ρ = g(I / running mean of I)); `pgpo.per_sequence` is in the trainer's loss.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from llm_runs.config import RunConfig
from llm_runs.schema import ConfigError


def normalised_information(information: float, sde: dict) -> float:
    """I / Ī, Ī the mean of I over the earlier steps with a finite I (the SDE diagnostics' running sums, read
    before this step adds to them); 1 at the first step, or while Ī ≤ 0 (nothing to normalise by). A non-finite
    I stays as it is (the multiplier then gives ρ = 1)."""
    count, total = sde.get("information_count", 0), sde.get("information_sum", 0.0)
    if not math.isfinite(information):
        return information
    if count == 0 or not total > 0:
        return 1.0
    return information / (total / count)


def replayed_rho(run_dir: str | Path, steps: int, mode: str = "schedule") -> list[float]:
    """(steps,) the ρ_t that run logged at steps 1…steps (the last row of a step, after a resume redid it), or
    `steps` copies of their mean (mode "mean"). ConfigError naming `pgpo.replay_rho` for a missing or short run."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise ConfigError(f"pgpo.replay_rho: {path} does not exist (the run folder whose ρ_t is replayed)")
    logged = {}
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a torn last line, from a kill mid-write
            continue
        if "rho" in row and "step" in row:
            logged[int(row["step"])] = float(row["rho"])
    missing = [t for t in range(1, steps + 1) if t not in logged]
    if missing:
        have = max(logged, default=0)
        raise ConfigError(f"pgpo.replay_rho: {run_dir} logged ρ for {len(logged)} steps (last {have}), this run has "
                          f"train.steps={steps}: a run shorter than this one cannot be replayed (first missing step "
                          f"{missing[0]})")
    schedule = [logged[t] for t in range(1, steps + 1)]
    return [float(np.mean(schedule))] * steps if mode == "mean" else schedule


def check_variants(config: RunConfig) -> list[float] | None:
    """The study's variants checked against `pgpo.enabled` (ConfigError naming the keys); the replayed ρ_t, if any."""
    p = config.pgpo
    if p.replay_rho is not None and p.enabled:
        raise ConfigError("pgpo.replay_rho replaces the multiplier, so it needs pgpo.enabled=false "
                          "(SDPO with another run's ρ_t)")
    for key in ("per_sequence", "normalize_information"):
        if getattr(p, key) and not p.enabled:
            raise ConfigError(f"pgpo.{key}=true needs pgpo.enabled=true (it changes how ρ is computed)")
    if p.per_sequence and p.normalize_information:
        raise ConfigError("pgpo.per_sequence and pgpo.normalize_information are separate variants: set one")
    return None if p.replay_rho is None else replayed_rho(p.replay_rho, config.train.steps, p.replay_rho_mode)
