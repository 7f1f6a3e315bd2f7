"""The SDE diagnostics of a training run (`llm_runs.diagnostics`): the gradient-noise scale's estimators against
their definition, and a tiny run's rows against the quantities they are made of."""

import math

import numpy as np
import pytest

from llm_runs.diagnostics import ROW_KEYS, SDEState, noise_estimates, undo_small_batch_scale
from llm_runs.trainer import Trainer
from tests.llm_runs.test_trainer import config


def test_the_estimators_invert_the_expected_squared_norms_exactly():
    g2, trace, b, big = 3.0, 40.0, 8, 64  # E|G_b|² = |G|² + tr Σ / b
    assert noise_estimates(g2 + trace / b, b, g2 + trace / big, big) == pytest.approx((g2, trace), rel=1e-12)


def test_the_estimators_are_unbiased_for_mean_gradients_of_iid_samples():
    """Per-sample gradients g ~ N(G, Σ): the two estimates, averaged over many batches, are |G|² and tr Σ."""
    rng = np.random.default_rng(0)
    d, b, big, reps = 5, 4, 16, 20_000
    mean, scale = rng.normal(size=d), rng.uniform(0.5, 2.0, size=d)  # Σ = diag(scale²)
    samples = mean + scale * rng.normal(size=(reps, big, d))
    first = (samples[:, :b].mean(axis=1) ** 2).sum(axis=1)
    full = (samples.mean(axis=1) ** 2).sum(axis=1)
    g2, trace = np.array([noise_estimates(f, b, g, big) for f, g in zip(first, full)]).T
    for estimate, truth in ((g2, (mean ** 2).sum()), (trace, (scale ** 2).sum())):
        assert abs(estimate.mean() - truth) < 4 * estimate.std() / math.sqrt(reps)


def test_one_batch_size_only_defines_no_noise_scale():
    assert all(math.isnan(x) for x in noise_estimates(1.0, 16, 1.0, 16))
    row = SDEState().update(lr=1e-3, rho=1.5, applied=True, information=0.2, first_sq=1.0, first_sequences=16,
                            full_sq=1.0, sequences=16)
    assert row["noise_scale"] is None and row["grad_noise_trace"] is None and row["sde_time"] == pytest.approx(1.5e-3)


def test_a_skipped_step_adds_no_sde_time_and_a_nonfinite_i_leaves_the_running_mean():
    s = SDEState()
    s.update(lr=0.1, rho=2.0, applied=True, information=0.5, first_sq=1.5, first_sequences=2, full_sq=1.0, sequences=4)
    row = s.update(lr=0.1, rho=2.0, applied=False, information=float("nan"), first_sq=math.inf, first_sequences=2,
                   full_sq=1.0, sequences=4)
    assert row["sde_time"] == pytest.approx(0.2) and row["information_running_mean"] == 0.5
    assert row["noise_scale"] is None and row["noise_scale_ema"] is not None  # the average keeps the first step's


def test_each_row_carries_the_diagnostics_made_of_its_own_numbers(tiny_model_dir, tmp_path):
    t = Trainer(config(tiny_model_dir, tmp_path, "pgpo.alpha=2.0"), tmp_path / "run", progress=False)
    rows = [t.step() for _ in range(3)]
    t.close()
    batch = 16  # tiny_cpu: 4 prompts × 4 samples, micro-batches of 8
    assert all(set(ROW_KEYS) <= set(r) for r in rows)
    assert rows[-1]["sde_time"] == pytest.approx(sum(r["lr"] * r["rho"] for r in rows), rel=1e-12)
    assert rows[-1]["information_running_mean"] == pytest.approx(np.mean([r["information"] for r in rows]))
    for r in rows:
        assert r["temperature"] == pytest.approx(r["lr"] * r["rho"] / batch)
        # the estimates are of one pair of batch sizes (8 and 16): the full batch's is their E|G_16|²
        expected = r["grad_sq_norm_estimate"] + r["grad_noise_trace"] / batch
        assert expected == pytest.approx(r["grad_norm"] ** 2, rel=1e-9)
        if r["noise_scale"] is not None:
            assert r["noise_scale"] == pytest.approx(r["grad_noise_trace"] / r["grad_sq_norm_estimate"])


def test_one_micro_batch_logs_no_noise_scale(tiny_model_dir, tmp_path):
    t = Trainer(config(tiny_model_dir, tmp_path, "loss.micro_batch_size=16"), tmp_path / "run", progress=False)
    row = t.step()
    t.close()
    assert row["noise_scale"] is None and row["grad_noise_trace"] is None and row["sde_time"] > 0


def test_the_first_micro_batchs_squared_norm_is_that_of_its_own_mean_gradient(tiny_model_dir, tmp_path, monkeypatch):
    """B_simple's small batch: after the first micro-batch (8 of the 16 sequences) the accumulated gradient is
    half of that micro-batch's mean gradient (its loss is scaled by its share of the batch), so |G_8|² is its
    squared norm × 4. The same 8 sequences as a whole batch (the first 2 of the 4 prompts, with the same rollout
    seeds) give |G_8|² as their gradient norm²."""
    from llm_runs.metrics import StepMetrics

    seen = []
    original = StepMetrics.first_gradient
    monkeypatch.setattr(StepMetrics, "first_gradient",
                        lambda self, sq, n: (seen.append((float(sq), n)), original(self, sq, n))[1])
    whole = Trainer(config(tiny_model_dir, tmp_path, "train.run_name=whole"), tmp_path / "whole", progress=False)
    whole.step()
    whole.close()
    half = Trainer(config(tiny_model_dir, tmp_path, "rollout.prompts_per_step=2", "train.run_name=half"),
                   tmp_path / "half", progress=False)
    row = half.step()
    half.close()
    (first_sq, sequences), _ = seen
    assert sequences == 8
    assert first_sq == pytest.approx(row["grad_norm"] ** 2, rel=1e-5)


def test_rows_logged_before_the_fix_are_corrected_from_their_own_values():
    """Rows made with |G_b|² (b/B)² too small (no `grad_small_sq_norm` key) give, corrected, the rows the fixed
    estimator gives on the same gradients; rows with the key are left alone."""
    rng = np.random.default_rng(0)
    small, batch = 32, 64
    fixed_state, legacy_state, fixed_rows, legacy_rows = SDEState(), SDEState(), [], []
    for step in range(1, 40):
        small_sq, full_sq = rng.uniform(0.5, 2.0), rng.uniform(0.1, 1.0)
        kw = dict(lr=1e-3, rho=1.0, applied=True, information=0.1, full_sq=full_sq, sequences=batch)
        fixed_rows.append({"step": step, **fixed_state.update(first_sq=small_sq, first_sequences=small, **kw)})
        legacy = legacy_state.update(first_sq=small_sq * (small / batch) ** 2, first_sequences=small, **kw)
        legacy.pop("grad_small_sq_norm")
        legacy_rows.append({"step": step, **legacy})
    corrected = undo_small_batch_scale(legacy_rows, small, batch)
    for got, want in zip(corrected, fixed_rows):
        for key in ("grad_sq_norm_estimate", "grad_noise_trace", "noise_scale", "noise_scale_ema"):
            assert (got[key] is None) == (want[key] is None), key
            if want[key] is not None:
                assert got[key] == pytest.approx(want[key], rel=1e-9, abs=1e-12), key
    assert undo_small_batch_scale(fixed_rows, small, batch) is fixed_rows
