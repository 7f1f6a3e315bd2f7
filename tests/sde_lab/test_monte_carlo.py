"""sde_lab with Monte Carlo: coupled, seeded, quick. Slopes are held to 1 ± 0.25 (the rules of docs/weak_order.md)."""

import numpy as np
import pytest

from pgpo import Multiplier
from sde_lab import catalog, weak_error
from sde_lab.sme import SMOOTH, models_and_orders

LADDER = [2.0**-j for j in range(2, 7)]
MODELS = {m.label: m for m in models_and_orders()}  # the SDEs and the orders they claim (sde_lab.sme)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["logistic_regression", "self_distillation"])
@pytest.mark.parametrize("model", [MODELS["SGD/SME"], MODELS["PGPO[state]/SME[scaled]"]], ids=["SGD", "PGPO"])
def test_order_one_against_the_scaled_sme(name, model):
    assert repr(model.kwargs["multiplier"]) in ("None", repr(SMOOTH)) and model.kwargs["sde"] == "scaled"
    r = weak_error(catalog.get(name), LADDER, horizon=1.0, test_fn="norm2", paths=1000, seed=1, **model.kwargs)
    assert model.order == r.claimed_order == 1
    assert abs(r.slope - model.order) < 0.25, (r.slope, r.errors, r.stderr)
    assert r.slope_ci[0] < r.slope < r.slope_ci[1]
    assert np.all(r.diverged == 0)
    # the coupling at work: every point is resolved far above its noise
    assert np.all(np.abs(r.errors) > 5 * r.stderr)


@pytest.mark.slow
@pytest.mark.parametrize("name,kwargs,ladder,paths,seed", [
    ("self_distillation", {}, LADDER[:4], 6000, 2),
    # logistic regression with its default features has so little gradient noise that the paper form's
    # O(η) error (the ρ² gap in variance) hides below 32 000 paths' noise; with features ×2 it shows
    ("logistic_regression", {"feature_scale": 2.0}, [2.0**-j for j in range(3, 7)], 3000, 4),
])
def test_order_one_against_the_papers_sde(name, kwargs, ladder, paths, seed):
    """The paper's SDE keeps Σ while the process moves ρ times further: coupling helps less, so more paths."""
    problem, model = catalog.get(name, **kwargs), MODELS["PGPO[state]/SME[paper]"]
    assert model.kwargs["sde"] == "paper"
    r = weak_error(problem, ladder, horizon=1.0, test_fn="norm2", paths=paths, seed=seed,
                   **{**model.kwargs, "multiplier": Multiplier(4.0, 2.0, form="smooth")})
    assert model.order == r.claimed_order == 1
    assert abs(r.slope - model.order) < 0.25, (r.slope, r.errors, r.stderr)


@pytest.mark.slow
def test_a_minibatch_signal_needs_the_correct_drift():
    """Naive drift −ρ(I(x))∇L: an O(1) error that stays as η → 0. Correct drift −E[ρ(I_γ)∇ℓ_γ]: order 1."""
    problem = catalog.linear_regression(n=8, noise=2.0, dim=1)  # 1-D: real mini-batches couple tightly
    etas = [2.0**-j for j in range(2, 7)]
    naive_sde, correct_sde = MODELS["PGPO[minibatch]/SME[naive drift]"], MODELS["PGPO[minibatch]/SME[correct drift]"]
    assert repr(naive_sde.kwargs["multiplier"]) == repr(correct_sde.kwargs["multiplier"]) == repr(SMOOTH)
    naive = weak_error(problem, etas, 2.0, paths=1000, test_fn="norm2", **naive_sde.kwargs)
    correct = weak_error(problem, etas, 2.0, paths=2000, test_fn="norm2", **correct_sde.kwargs)
    assert naive.claimed_order == naive_sde.order == 0 and naive.verdict() == "no convergence, as claimed"
    assert correct.claimed_order == correct_sde.order == 1
    a_lo, a_hi = naive.poly_fit.ci[0]
    assert a_lo > 0.3  # the plateau
    assert abs(naive.errors[-1] - naive.errors[-2]) < 0.1 * abs(naive.errors[-1])
    assert abs(correct.slope - 1.0) < 0.25 and correct.passed(), (correct.slope, correct.slope_ci)
    c_lo, c_hi = correct.poly_fit.ci[0]
    assert c_lo <= 0.0 <= c_hi
    assert abs(correct.errors[-1]) < 0.05 * abs(naive.errors[-1])


@pytest.mark.slow
def test_verify_quick_bears_out_every_claim(tmp_path):
    """`python -m sde_lab verify --quick` (what `make demo` runs) exits 0 and writes its rows."""
    import json
    import subprocess
    import sys

    out = tmp_path / "verify.json"
    done = subprocess.run([sys.executable, "-m", "sde_lab", "verify", "--quick", "--json", str(out)],
                          capture_output=True, text=True, timeout=900)  # ~50 s alone: a safety net, not a speed test
    assert done.returncode == 0, done.stdout + done.stderr
    rows = json.loads(out.read_text())
    assert len(rows) >= 12 and all(r["ok"] for r in rows if r["must_hold"])
    assert "| problem" in done.stdout and "claims borne out" in done.stdout


def test_uncoupled_gaussian_paths_draw_their_own_normals():
    """coupled=False: the same law (means agree), but g(x) − g(X) no longer shrinks path by path."""
    import torch

    from sde_lab import DiscreteProcess, sme
    from sde_lab.coupling import coupled_paths

    problem, eta, paths = catalog.quadratic(), 2.0**-5, 4000
    process, model = DiscreteProcess(problem, eta), sme(problem, eta)
    spread, means = {}, {}
    for coupled in (True, False):
        x, y, _ = coupled_paths(process, model, 64, paths, gen=torch.Generator().manual_seed(0), coupled=coupled,
                                richardson=False)
        d = problem.loss(x) - problem.loss(y)
        spread[coupled], means[coupled] = d.std().item(), (d.mean().item(), d.std().item() / paths**0.5)
    assert spread[False] > 10 * spread[True]
    (m1, s1), (m2, s2) = means[True], means[False]
    assert abs(m1 - m2) < 4 * np.hypot(s1, s2)
