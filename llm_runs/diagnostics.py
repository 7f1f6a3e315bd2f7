"""SDE diagnostics of a training run, per step, from what the step already has (`docs/method.md`, "SDE
diagnostics"):

- the SDE time t = Σ lr·ρ over the applied steps (the clock of the continuous process the steps discretise;
  SDPO at lr × c and PGPO at mean ρ = c cover the same t);
- the gradient-noise scale B_simple = tr Σ / |G|² (McCandlish et al., "An Empirical Model of Large-Batch
  Training", 2018, App. A.1), in sequences, from two estimates of the gradient the step computes anyway: the
  first micro-batch's (over every rank: FSDP reduces each micro-batch's gradient) and the whole batch's. With
  |G_b|² the squared norm of a mean gradient over b sequences, E|G_b|² = |G|² + tr Σ / b, so two batch sizes
  b < B give unbiased estimates of |G|² and tr Σ; their ratio is noisy per step, so the ratio of their
  exponential moving averages is logged beside it, as McCandlish et al. do;
- the temperature lr·ρ / B (B: sequences in the global batch), the scale of the SDE's diffusion;
- I's running mean over the steps with a finite I.

The only cost is one squared gradient norm after the first micro-batch (no copy of the gradient, no extra
host sync: it is read with the step's other numbers).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

EMA_DECAY = 0.9  # the moving averages of |G|² and tr Σ: about the last ten steps
# a metrics row's keys for them (None where undefined: one micro-batch gives one batch size only)
ROW_KEYS = ("sde_time", "temperature", "grad_sq_norm_estimate", "grad_noise_trace", "noise_scale", "noise_scale_ema",
            "information_running_mean", "grad_small_sq_norm")


def grad_sq_norm(parameters) -> torch.Tensor:
    """Σ |∂L/∂θ|² over `parameters`' gradients so far, a 0-d tensor on their device (FSDP2: the full norm)."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.zeros((), dtype=torch.float64)
    norm = torch.nn.utils.get_total_norm(grads, norm_type=2.0)
    if hasattr(norm, "full_tensor"):  # FSDP2: a DTensor reduced over the ranks
        norm = norm.full_tensor()
    return norm.double() ** 2


def noise_estimates(first_sq: float, first_sequences: int, full_sq: float, sequences: int) -> tuple[float, float]:
    """(|G|², tr Σ) from |G_b|² = `first_sq` over b = `first_sequences` and |G_B|² = `full_sq` over B = `sequences`
    (McCandlish et al. 2018, eqs. A.2–A.3); NaN where b = B (one micro-batch: one batch size only)."""
    b, big = first_sequences, sequences
    if not 0 < b < big or not (math.isfinite(first_sq) and math.isfinite(full_sq)):
        return math.nan, math.nan
    g2 = (big * full_sq - b * first_sq) / (big - b)
    trace = (first_sq - full_sq) / (1 / b - 1 / big)
    return g2, trace


@dataclass
class SDEState:
    """The diagnostics' running values, kept in the run's checkpoints (a resume continues them)."""

    sde_time: float = 0.0
    information_sum: float = 0.0
    information_count: int = 0
    g2_ema: float | None = None
    trace_ema: float | None = None

    def average(self, g2: float, trace: float) -> None:
        """Move the moving averages of |G|² and tr Σ (decay EMA_DECAY) by one step's finite estimates."""
        if math.isfinite(g2) and math.isfinite(trace):
            d = EMA_DECAY
            self.g2_ema = g2 if self.g2_ema is None else d * self.g2_ema + (1 - d) * g2
            self.trace_ema = trace if self.trace_ema is None else d * self.trace_ema + (1 - d) * trace

    def update(self, *, lr: float, rho: float, applied: bool, information: float, first_sq: float,
               first_sequences: int, full_sq: float, sequences: int) -> dict:
        """One step's diagnostics (the metrics row's keys), the running values moved by it."""
        if applied:
            self.sde_time += lr * rho
        if math.isfinite(information):
            self.information_sum += information
            self.information_count += 1
        g2, trace = noise_estimates(first_sq, first_sequences, full_sq, sequences)
        self.average(g2, trace)
        return {"sde_time": self.sde_time, "temperature": lr * rho / sequences,
                "grad_sq_norm_estimate": _finite(g2), "grad_noise_trace": _finite(trace),
                "noise_scale": _ratio(trace, g2), "noise_scale_ema": _ratio(self.trace_ema, self.g2_ema),
                "information_running_mean": (self.information_sum / self.information_count
                                             if self.information_count else None),
                "grad_small_sq_norm": _finite(first_sq) if 0 < first_sequences < sequences else None}


def undo_small_batch_scale(rows: list[dict], small: int, batch: int) -> list[dict]:
    """Rows logged before 2026-12-07 (without `grad_small_sq_norm`) took |G_b|² (b/B)² too small (the first
    micro-batch's gradient still scaled by its share of the batch): their |G|², tr Σ and B_simple recomputed from
    their own logged values (|G_B|² = |G|² + tr Σ/B and the logged |G_b|² = |G|² + tr Σ/b invert the estimators),
    the moving averages run again. Rows that have the key are returned as they are. small, batch: b and B."""
    if not rows or "grad_small_sq_norm" in rows[0] or not 0 < small < batch:
        return rows
    state, out = SDEState(), []
    for row in rows:
        g2, trace = row.get("grad_sq_norm_estimate"), row.get("grad_noise_trace")
        fixed = dict(row)
        if g2 is not None and trace is not None:
            full_sq, logged_small = g2 + trace / batch, g2 + trace / small
            g2, trace = noise_estimates(logged_small * (batch / small) ** 2, small, full_sq, batch)
            state.average(g2, trace)
            fixed.update(grad_sq_norm_estimate=_finite(g2), grad_noise_trace=_finite(trace), noise_scale=_ratio(trace, g2))
        fixed["noise_scale_ema"] = _ratio(state.trace_ema, state.g2_ema)
        out.append(fixed)
    return out


def _finite(x: float | None) -> float | None:
    """None where a diagnostic is undefined (one micro-batch, a non-finite gradient): JSON null, not NaN."""
    return x if x is not None and math.isfinite(x) else None


def _ratio(trace: float | None, g2: float | None) -> float | None:
    """B_simple = tr Σ / |G|², None unless |G|²'s estimate is positive (it can come out ≤ 0 at small |G|)."""
    return _finite(trace / g2) if _finite(trace) is not None and _finite(g2) is not None and g2 > 0 else None
