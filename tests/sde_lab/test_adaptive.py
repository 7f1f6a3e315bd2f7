"""RMSprop and Adam (and PGPO on each) as discrete processes in the SDE scaling, checked step for step
against torch's own optimizers, and their SDEs against the formulas."""

import math

import numpy as np
import pytest
import torch

from pgpo import Multiplier, modulated_step
from sde_lab import catalog
from sde_lab.adaptive import Adaptive, AdaptiveProcess, adaptive_sde
from sde_lab.problem import apply_noise, dense_factor
from sde_lab.studies.settings import ADAPTIVE

SMOOTH = Multiplier(2.0, 2.0, form="smooth")


def torch_optimizer(kind, params, hp):
    if kind == "adam":
        return torch.optim.Adam(params, lr=hp["lr"], betas=(hp["beta1"], hp["beta2"]), eps=hp["eps"])
    return torch.optim.RMSprop(params, lr=hp["lr"], alpha=hp["beta2"], eps=hp["eps"])


@pytest.mark.parametrize("kind", ["rmsprop", "adam"])
@pytest.mark.parametrize("multiplier", [None, SMOOTH])
@pytest.mark.parametrize("t0", [0.0, 0.5])
def test_the_discrete_process_takes_torch_optimizers_steps(kind, multiplier, t0):
    """The same gradients (∇L + σ Σ^{1/2} z, z fixed) through torch.optim.Adam / RMSprop (ρ through
    pgpo.modulated_step) and through the process: θ, and the moments in the process's units, agree — from a
    cold start, and from a warm one (t₀ > 0) loaded into torch's optimizer state as a resumed run would be."""
    problem = catalog.get("logistic_regression")
    setting = Adaptive(kind, sigma0=0.7, eps0=0.05, c1=2.0, c2=3.0, t0=t0)
    eta = 0.125
    hp = setting.hyperparameters(eta)
    process = AdaptiveProcess(problem, eta, setting, multiplier)
    parts = setting.blocks(problem.dim)
    gen = torch.Generator().manual_seed(0)
    state = process.initial_state()[None, :].clone()
    theta = torch.nn.Parameter(problem.x0.clone())
    optimizer = torch_optimizer(kind, [theta], hp)
    if t0 > 0:
        point = problem.x0[None, :]
        u0 = -math.expm1(-3.0 * t0) * problem.noise(point).square().sum(-1).reshape(-1)
        assert torch.allclose(state[0, parts["u"]], u0) and state[0, parts["t"]].item() == t0
        resumed = {"step": torch.tensor(float(round(t0 / eta**2)))}
        if kind == "adam":
            m0 = -math.expm1(-2.0 * t0) * problem.grad(point)[0]
            assert torch.allclose(state[0, parts["m"]], m0)
            resumed |= {"exp_avg": m0.clone(), "exp_avg_sq": hp["sigma"] ** 2 * u0}
        else:
            resumed |= {"square_avg": hp["sigma"] ** 2 * u0}
        optimizer.state[theta] = resumed
    for _ in range(12):
        z = torch.randn(1, problem.noise_dim(), generator=gen, dtype=torch.float64)
        with torch.no_grad():
            point = theta.detach()[None, :]
            theta.grad = (problem.grad(point) + hp["sigma"] * apply_noise(problem.noise(point), z))[0]
            rho = 1.0 if multiplier is None else float(multiplier(problem.info(point))[0])
        if multiplier is None:
            optimizer.step()
        else:
            modulated_step(optimizer, rho)
        state = process.step(state, z)
        assert torch.allclose(state[0, parts["theta"]], theta.detach(), rtol=1e-10, atol=1e-12)
        moments = optimizer.state[theta]
        v = moments["exp_avg_sq"] if kind == "adam" else moments["square_avg"]
        assert torch.allclose(state[0, parts["u"]] * hp["sigma"] ** 2, v, rtol=1e-9)
        if kind == "adam":
            assert torch.allclose(state[0, parts["m"]], moments["exp_avg"], rtol=1e-9, atol=1e-12)
    assert state[0, parts["t"]].item() == pytest.approx(t0 + 12 * eta**2)


def test_a_warm_start_must_be_a_whole_number_of_steps():
    problem = catalog.get("quadratic")
    with pytest.raises(ValueError, match="t0 must be a finite number"):
        Adaptive("adam", t0=-1.0)
    with pytest.raises(ValueError, match="not a whole number of steps"):
        AdaptiveProcess(problem, 0.3, Adaptive("adam", t0=1.0))
    with pytest.raises(ValueError, match="needs the problem"):
        Adaptive("adam", t0=1.0).initial_state(problem.x0)


def test_the_sde_is_the_formula():
    problem = catalog.get("logistic_regression")
    d = problem.dim
    for kind in ("rmsprop", "adam"):
        setting = Adaptive(kind, sigma0=0.7, eps0=0.05, c1=2.0, c2=3.0)
        parts = setting.blocks(d)
        state = setting.initial_state(problem.x0)[None, :].repeat(3, 1)
        state[:, parts["u"]] = torch.tensor([0.2, 0.5, 1.0], dtype=torch.float64)[:, None]
        state[:, parts["t"]] = 0.3
        if kind == "adam":
            state[:, parts["m"]] = 0.1
        for multiplier, rho_in in ((None, "drift"), (SMOOTH, "drift"), (SMOOTH, "both")):
            model = adaptive_sde(problem, setting, multiplier, rho_in)
            theta, u = state[:, parts["theta"]], state[:, parts["u"]]
            rho = torch.ones(3, 1, dtype=torch.float64) if multiplier is None else multiplier(problem.info(theta))[:, None]
            g1 = 1.0 if kind == "rmsprop" else 1 - math.exp(-2.0 * 0.3)
            g2 = 1.0 if kind == "rmsprop" else 1 - math.exp(-3.0 * 0.3)
            p = 0.7 * u.sqrt() + 0.05 * math.sqrt(g2)
            sigma = problem.noise(theta)
            sigma = sigma if sigma.dim() == 3 else sigma.expand(3, -1, -1)
            drift, factor = model.drift(state), model.diffusion(state)
            diffusion = dense_factor(factor, 3)  # (M, D, m)
            dw = torch.randn(3, model.noise_dim, dtype=torch.float64)  # the block form applies as the dense matrix
            assert torch.allclose(apply_noise(factor, dw), torch.einsum("pdm,pm->pd", diffusion, dw))
            assert torch.allclose(drift[:, parts["u"]], 3.0 * (sigma.square().sum(2) - u))
            assert torch.equal(drift[:, parts["t"]], torch.ones(3, 1, dtype=torch.float64))
            if kind == "rmsprop":
                assert torch.allclose(drift[:, parts["theta"]], -rho * problem.grad(theta) / p)
                noise_scale = rho if rho_in == "both" else torch.ones_like(rho)
                assert torch.allclose(diffusion[:, parts["theta"]], (noise_scale * 0.7 / p)[:, :, None] * sigma)
            else:
                m = state[:, parts["m"]]
                assert torch.allclose(drift[:, parts["theta"]], -rho * (m / g1) * math.sqrt(g2) / p)
                assert torch.allclose(drift[:, parts["m"]], 2.0 * (problem.grad(theta) - m))
                noise_scale = rho if rho_in == "both" else torch.ones_like(rho)
                assert torch.allclose(diffusion[:, parts["m"]].abs(), (2.0 * 0.7 * noise_scale)[:, :, None] * sigma.abs())
                assert not diffusion[:, parts["theta"]].any()  # θ has no noise of its own in Adam's SDE
            assert not diffusion[:, parts["u"]].any() and not diffusion[:, parts["t"]].any()


def test_adams_sde_starts_finite_where_its_bias_corrections_are_zero_over_zero():
    """At t = 0, m = u = 0 and γ₁ = γ₂ = 0: θ's drift is taken as 0 (not NaN), and one Euler step later it is
    finite and points down the gradient on average."""
    problem = catalog.get("quadratic")
    setting = Adaptive("adam", sigma0=1.0, eps0=0.1)
    model = adaptive_sde(problem, setting, SMOOTH)
    start = setting.initial_state(problem.x0)[None, :].repeat(4000, 1)
    drift = model.drift(start)
    assert torch.isfinite(drift).all() and not drift[:, :problem.dim].any()
    gen = torch.Generator().manual_seed(0)
    dt = 1e-3
    state = start
    for _ in range(3):
        dw = torch.randn(4000, model.noise_dim, generator=gen, dtype=torch.float64) * dt**0.5
        state = state + model.drift(state) * dt + apply_noise(model.diffusion(state), dw)
    step = model.drift(state)[:, :problem.dim]
    assert torch.isfinite(step).all()
    assert (step.mean(0) * problem.grad(problem.x0[None, :])[0] < 0).all()  # descent, coordinate by coordinate


def test_every_adaptive_sde_declares_the_order_its_rho_placement_earns():
    """ρ where the discrete step carries it (RMSprop: θ's drift and diffusion; Adam: θ's drift) claims order 1;
    anywhere else, order 0; without PGPO both SDEs claim 1."""
    problem = catalog.get("quadratic")
    claims = {(kind, rho_in, pgpo): adaptive_sde(problem, Adaptive(kind), SMOOTH if pgpo else None, rho_in).claimed_order
              for kind in ("rmsprop", "adam") for rho_in in ("drift", "both") for pgpo in (False, True)}
    assert claims == {("rmsprop", "drift", False): 1, ("rmsprop", "both", False): 1, ("adam", "drift", False): 1,
                      ("adam", "both", False): 1, ("rmsprop", "both", True): 1, ("rmsprop", "drift", True): 0,
                      ("adam", "drift", True): 1, ("adam", "both", True): 0}


def test_bad_settings_are_refused_by_name():
    with pytest.raises(ValueError, match="kind must be one of"):
        Adaptive("sgd")
    with pytest.raises(ValueError, match="eps0 must be a positive finite number"):
        Adaptive("adam", eps0=0.0)
    from sde_lab.adaptive import family_named

    with pytest.raises(ValueError, match="no adaptive SDE named 'Adam'"):
        family_named("Adam")
    with pytest.raises(ValueError, match="rho_in must be"):
        adaptive_sde(catalog.get("logistic_regression"), Adaptive(), SMOOTH, "nowhere")


def test_weak_error_runs_an_adaptive_process_on_its_own_clock_and_tells_the_rho_placements_apart():
    """PGPO on RMSprop, coupled to its SDE: a step is h = η² of SDE time, and ρ must scale θ's diffusion with its
    drift — with ρ in the drift alone the error stays O(1) at every η (measured ≈ 2.2 on this problem)."""
    from sde_lab.weak_error import weak_error

    problem, setting, etas = catalog.get("quadratic"), Adaptive("rmsprop", sigma0=1.0, eps0=0.1), [0.25, 0.125]
    results = {rho_in: weak_error(problem, etas, 1.0, SMOOTH, paths=1000, adaptive=setting, rho_in=rho_in,
                                  test_fn="norm2") for rho_in in ("both", "drift")}
    both, drift = results["both"], results["drift"]
    assert both.process == "PGPO-RMSprop[state]" and drift.sde == "PGPO-RMSprop-SDE[ρ in θ's drift only]"
    assert (both.claimed_order, drift.claimed_order) == (1, 0) and both.fit_in == "h = η²"
    assert both.fit_steps.tolist() == [0.0625, 0.015625]
    assert both.checkpoint_times.tolist() == pytest.approx([0.0625 * k for k in range(1, 17)])  # T/η² = 16 steps
    assert any("SGD's, not an adaptive optimizer's" in note for note in both.notes)
    assert all(abs(e) < 0.3 for e in both.errors) and all(e > 1.5 for e in drift.errors)
    assert all(e > 10 * s for e, s in zip(drift.errors, drift.stderr))


def test_every_factor_form_adds_its_noise_in_place_as_the_dense_matrix_does():
    """The solvers' fused step (add_noise) against the dense (M, D, m) product, for each form a diffusion takes."""
    from sde_lab.problem import BlockFactor, ScaledFactor, add_noise

    gen = torch.Generator().manual_seed(0)
    draw = lambda *shape: torch.randn(*shape, generator=gen, dtype=torch.float64)  # noqa: E731
    z, y = draw(5, 3), draw(5, 7)
    forms = [draw(7, 3), draw(5, 7, 3), ScaledFactor(draw(5), draw(7, 3)), ScaledFactor(draw(5, 7), draw(5, 7, 3)),
             BlockFactor(7, slice(2, 6), draw(4, 3)), BlockFactor(7, slice(4, 7), ScaledFactor(draw(5), draw(5, 3, 3)))]
    for factor in forms:
        before, normals = y.clone(), z.clone()
        expected = y + torch.einsum("pdm,pm->pd", dense_factor(factor, 5), z)
        assert torch.allclose(add_noise(y.clone(), factor, z), expected)
        assert torch.equal(y, before) and torch.equal(z, normals)  # the shared increments are never written


def test_verify_measures_every_adaptive_sde_against_the_order_it_claims():
    from sde_lab.adaptive import ADAPTIVE_FAMILIES
    from sde_lab.studies.verify import claims

    measured = {c.adaptive for c in claims() if c.adaptive is not None}
    assert measured == {f.name for f in ADAPTIVE_FAMILIES}
    quick = {c.adaptive for c in claims() if c.adaptive is not None and c.quick}
    assert any("ρ also on m's noise" in name for name in quick)  # the failing placement shows in the quick run too


# ---------------------------------------------------------------------------------------------
# the exact oracle on the quadratic: linear moment equations, and the exact moments of Euler–Maruyama


def _full_quadratic():
    """A quadratic whose Hessian (and so noise factor) is not diagonal: every entry of A and B Bᵀ is exercised."""
    hessian = [[1.0, 0.3, 0.0], [0.3, 0.8, 0.2], [0.0, 0.2, 1.5]]
    return catalog.quadratic(hessian=hessian, x0=(1.0, -1.0, 0.5), noise_scale=0.8)


@pytest.mark.parametrize("kind", ["rmsprop", "adam"])
def test_the_solvers_monte_carlo_mean_is_the_exact_mean_of_euler_maruyama(kind):
    """adaptive_sde solved by the coupled simulation at dt and 2dt, against the oracle's exact moments of that scheme."""
    from sde_lab.coupling import coupled_paths
    from sde_lab.oracles import AdaptiveQuadraticOracle

    problem, eta, horizon, paths = _full_quadratic(), 0.25, 0.5, 20000
    setting = Adaptive(kind, t0=0.5, **ADAPTIVE)
    oracle = AdaptiveQuadraticOracle.of(problem, setting)
    h = eta**2
    _, fine, coarse = coupled_paths(AdaptiveProcess(problem, eta, setting), adaptive_sde(problem, setting),
                                    int(round(horizon / h)), paths, refine=2, gen=torch.Generator().manual_seed(0))
    for states, dt in ((fine, h / 4), (coarse, h / 2)):
        theta = states[:, :3]
        for test, g in (("norm2", theta.square().sum(dim=1)), ("loss", problem.loss(theta))):
            exact = oracle.euler_maruyama(horizon, dt, test)
            assert abs(g.mean().item() - exact) < 4 * g.std().item() / paths**0.5, (kind, dt, test)
        assert oracle.euler_maruyama(horizon, dt) != pytest.approx(oracle.sde(horizon), abs=1e-3)  # dt's bias shows


@pytest.mark.parametrize("kind", ["rmsprop", "adam"])
def test_the_oracles_euler_maruyama_converges_to_its_moment_equations_at_order_one(kind):
    from sde_lab.oracles import AdaptiveQuadraticOracle

    oracle = AdaptiveQuadraticOracle.of(_full_quadratic(), Adaptive(kind, t0=1.0, **ADAPTIVE))
    exact = oracle.sde(1.0)
    errors = [oracle.euler_maruyama(1.0, 2.0**-k) - exact for k in (10, 11, 12)]
    assert all(abs(a / b - 2.0) < 0.15 for a, b in zip(errors, errors[1:])), errors


def test_the_moment_equations_give_the_ornstein_uhlenbeck_law_once_u_has_settled():
    """RMSprop long past its start: u = diag Σ, P constant, so θ is an OU process with a closed-form law."""
    from scipy import linalg

    from sde_lab.oracles import AdaptiveQuadraticOracle

    problem = _full_quadratic()
    setting = Adaptive("rmsprop", t0=60.0, **ADAPTIVE)  # u₀ = (1 − e⁻⁶⁰) diag Σ
    oracle = AdaptiveQuadraticOracle.of(problem, setting)
    hessian, factor = problem.oracle.hessian, problem.noise_sqrt.numpy()
    p_inv = 1.0 / (setting.sigma0 * np.sqrt((factor**2).sum(axis=1)) + setting.eps0)
    a = -p_inv[:, None] * hessian
    b = -setting.sigma0 * p_inv[:, None] * factor
    stationary = linalg.solve_continuous_lyapunov(a, -b @ b.T)
    for t in (0.3, 2.0):
        decay = linalg.expm(a * t)
        mean = decay @ problem.x0.numpy()
        cov = stationary - decay @ stationary @ decay.T
        assert oracle.sde(t) == pytest.approx(mean @ mean + np.trace(cov), rel=1e-9)
        assert oracle.sde(t, "loss") == pytest.approx(0.5 * (mean @ hessian @ mean + np.trace(hessian @ cov)), rel=1e-9)


def test_the_reference_of_the_verify_rows_is_exact_to_far_within_their_intervals():
    """The quadratic Adam row's reference, Euler–Maruyama at h/16 with Richardson: its bias, known exactly here, is
    under 1% of the 95% half-width of every measured error."""
    from sde_lab.oracles import AdaptiveQuadraticOracle
    from sde_lab.studies.settings import ladder
    from sde_lab.weak_error import weak_error

    problem, setting = catalog.quadratic(), Adaptive("adam", t0=1.0, **ADAPTIVE)
    oracle = AdaptiveQuadraticOracle.of(problem, setting)
    r = weak_error(problem, ladder(1, 3), 1.0, adaptive=setting, paths=2000, test_fn="norm2")
    for eta, stderr in zip(r.etas, r.stderr):
        dt = eta**2 / 16
        bias = 2 * oracle.euler_maruyama(1.0, dt) - oracle.euler_maruyama(1.0, 2 * dt) - oracle.sde(1.0)
        assert abs(bias) < 0.01 * 1.96 * stderr, (eta, bias, stderr)


def test_the_oracle_refuses_what_it_cannot_answer():
    from sde_lab.oracles import AdaptiveQuadraticOracle

    with pytest.raises(ValueError, match="warm start"):
        AdaptiveQuadraticOracle.of(catalog.quadratic(), Adaptive("adam", **ADAPTIVE))
    with pytest.raises(ValueError, match="quadratic with a constant noise factor"):
        AdaptiveQuadraticOracle.of(catalog.logistic_regression(), Adaptive("rmsprop", **ADAPTIVE))
    oracle = AdaptiveQuadraticOracle.of(catalog.quadratic(), Adaptive("rmsprop", **ADAPTIVE))  # no singular start
    assert oracle.sde(1.0, "custom") is None and oracle.euler_maruyama(1.0, 0.25, "custom") is None  # not Gaussian-closed
    with pytest.raises(ValueError, match="does not divide"):
        oracle.euler_maruyama(1.0, 0.3)
