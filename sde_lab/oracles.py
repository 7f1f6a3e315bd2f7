"""Exact moments of SGD and of its SMEs, where the problem has them (no Monte Carlo).

Each oracle answers `discrete(eta, steps, test)` = E g(x_k) of SGD and `sde(eta, t, test, order)`
= E g(X_t) of SGD's order-1 or order-2 SME, or None when it does not cover that test function.
Both are exact to rounding, so weak errors computed from them have no sampling error at all.
`stationary_spread` gives the long-run spread of SGD with a constant ρ on the quadratic and of both SDEs.
`AdaptiveQuadraticOracle` gives E g(θ_t) of the RMSprop and Adam SDEs on the quadratic, and of their Euler–Maruyama
solutions, from linear moment equations, for every gradient-noise law (the SDE sees Σ alone).
"""

from __future__ import annotations

import numpy as np
from scipy import linalg

from sde_lab.observables import cos_direction


class QuadraticOracle:
    """Li–Tai–E quadratic ℓ_γ(x) = ½(x − γ)ᵀH(x − γ) − ½ tr H, γ ~ N(0, s²I): L = ½xᵀHx, Σ = s²H².

    In the eigenbasis u = Qᵀx of H = Q diag(λ) Qᵀ every law here is Gaussian with independent
    coordinates:
        SGD:   E u_k = (1 − ηλ)^k u₀,   Var u_k = s²ηλ (1 − (1 − ηλ)^{2k}) / (2 − ηλ)
        SME:   dU = −a U dt + √η sλ dW,  a = λ (order 1) or λ + ηλ²/2 (order 2):
               E U_t = e^{−at} u₀,      Var U_t = s²ηλ² (1 − e^{−2at}) / (2a)
    so E g is exact for every test function with a Gaussian closed form (L, |x|², x₀, cos(aᵀx), |x|⁴).
    """

    def __init__(self, hessian: np.ndarray, x0: np.ndarray, noise_scale: float = 1.0):
        self.hessian = np.asarray(hessian, dtype=np.float64)
        self.s2 = noise_scale**2  # Σ = s²H² scales every variance by s²
        self.lam, self.q = np.linalg.eigh(self.hessian)
        self.u0 = self.q.T @ np.asarray(x0, dtype=np.float64)

    def discrete(self, eta: float, steps: int, test: str):
        h = eta * self.lam
        mean = np.exp(steps * np.log1p(-h)) * self.u0
        var = self.s2 * h * -np.expm1(2 * steps * np.log1p(-h)) / (2 - h)
        return self._gaussian(mean, var, test)

    def sde(self, eta: float, t: float, test: str, order: int = 1):
        a = self.lam + (0.5 * eta * self.lam**2 if order == 2 else 0.0)
        mean = np.exp(-a * t) * self.u0
        var = self.s2 * eta * self.lam**2 * -np.expm1(-2 * a * t) / (2 * a)
        return self._gaussian(mean, var, test)

    def first_order_constant(self, t: float, test: str):
        """lim_{η→0} (E g(x_{t/η}) − E g(X_t)) / η for SGD against its order-1 SME.

        The covariances of both are O(η) and differ at O(η²); the means differ at first order,
        (1 − ηλ)^{t/η} = e^{−λt}(1 − ηλ²t/2 + O(η²)), so the constant is ∇g(m_t) · (−λ²t/2) m_t
        with m_t = e^{−λt}u₀ the deterministic path (in the eigenbasis).
        """
        m = np.exp(-self.lam * t) * self.u0
        grads = {"loss": self.lam * m, "norm2": 2 * m, "coord0": self.q[0, :]}
        if test not in grads:
            return None
        return float(grads[test] @ (-0.5 * self.lam**2 * t * m))

    def _gaussian(self, mean_u, var_u, test: str):
        m = self.q @ mean_u  # back to x coordinates
        cov = (self.q * var_u) @ self.q.T
        if test == "loss":
            return 0.5 * (mean_u @ (self.lam * mean_u) + var_u @ self.lam)
        if test == "norm2":
            return mean_u @ mean_u + var_u.sum()
        if test == "coord0":
            return m[0]
        if test == "cos":
            a = cos_direction(len(m)).numpy()
            return np.cos(a @ m) * np.exp(-0.5 * a @ cov @ a)
        if test == "norm4":
            s = mean_u @ mean_u + var_u.sum()
            return s**2 + 2 * (var_u**2).sum() + 4 * mean_u @ (var_u * mean_u)
        return None


class RandomHessianOracle:
    """Random-Hessian multiplicative noise ℓ_γ = ½ yᵀ(D + diag γ) y, y = Qᵀx, γ ~ N(0, I).

    Each y_i moves alone; its first two moments are exact:
        SGD:   E y_k = (1 − ηd)^k y₀,        E y_k² = y₀² ((1 − ηd)² + η²)^k
        SME:   dy = −c y dt + √η y dW, c = d (order 1) or d + ηd²/2 (order 2):
               E y_t = e^{−ct} y₀,          E y_t² = y₀² e^{(η − 2c)t}
    which covers L = ½ Σ d_i y_i², |x|² = Σ y_i² and x₀ = Σ_i Q₀ᵢ y_i (the law is not Gaussian).
    """

    def __init__(self, diag: np.ndarray, q: np.ndarray, x0: np.ndarray):
        self.d = np.asarray(diag, dtype=np.float64)
        self.q = np.asarray(q, dtype=np.float64)
        self.y0 = self.q.T @ np.asarray(x0, dtype=np.float64)

    def discrete(self, eta: float, steps: int, test: str):
        mean = np.exp(steps * np.log1p(-eta * self.d)) * self.y0
        second = self.y0**2 * np.exp(steps * np.log((1 - eta * self.d) ** 2 + eta**2))
        return self._moments(mean, second, test)

    def sde(self, eta: float, t: float, test: str, order: int = 1):
        c = self.d + (0.5 * eta * self.d**2 if order == 2 else 0.0)
        return self._moments(np.exp(-c * t) * self.y0, self.y0**2 * np.exp((eta - 2 * c) * t), test)

    def _moments(self, mean, second, test: str):
        if test == "loss":
            return 0.5 * self.d @ second
        if test == "norm2":
            return second.sum()
        if test == "coord0":
            return self.q[0, :] @ mean
        return None


def stationary_spread(hessian: np.ndarray, eta: float, rho: float) -> tuple[float, float, float]:
    """tr of the stationary covariance on the quadratic L = ½xᵀHx with Σ = H² and a constant ρ, from the exact
    Lyapunov equations: (SGD with step ηρ, its scaled SDE (diffusion ×ρ), the paper's SDE); hessian is (d, d)."""
    h = np.asarray(hessian, dtype=np.float64)
    a = np.eye(len(h)) - eta * rho * h
    discrete = linalg.solve_discrete_lyapunov(a, (eta * rho) ** 2 * h @ h)
    scaled = linalg.solve_continuous_lyapunov(-rho * h, -eta * rho**2 * h @ h)
    paper = linalg.solve_continuous_lyapunov(-rho * h, -eta * h @ h)
    return np.trace(discrete), np.trace(scaled), np.trace(paper)


class AdaptiveQuadraticOracle:
    """Exact moments of the RMSprop and Adam SDEs (`sde_lab.adaptive`, without PGPO) on a quadratic L = ½θᵀHθ with
    a constant noise factor S (Σ = SSᵀ), and of their Euler–Maruyama solutions, from the optimizer's `initial_state`.

    With Σ constant, u solves du = c₂(diag Σ − u)dt alone, so P(t) = σ₀√u + ε₀√γ₂ is a known function of time and
    the SDE is linear in y = θ (RMSprop) or y = (θ, m) (Adam), dy = A(t)y dt + B(t)dW:

        RMSprop:  A = −P⁻¹H,                       B = −σ₀P⁻¹S
        Adam:     A = [[0, −(√γ₂/γ₁)P⁻¹], [c₁H, −c₁I]],   B = [[0], [c₁σ₀S]]

    Its mean μ and covariance C solve μ' = Aμ, C' = AC + CAᵀ + BBᵀ (scipy's DOP853, tolerances 1e-12). θ is
    Gaussian, so every test function with a Gaussian closed form is exact: |θ|², L, θ₀, cos(aᵀθ), |θ|⁴
    (`TESTS`). Euler–Maruyama at step dt (u and t stepped by the same scheme) is Gaussian too, with exact moments
    μ ← (I + A dt)μ, C ← (I + A dt)C(I + A dt)ᵀ + BBᵀ dt, so a Monte Carlo reference's own bias is known exactly.
    The SDE is the same for every gradient-noise law of the process (it sees Σ alone), so the oracle is too; it
    refuses the SDEs that are not linear (v-noise makes u random, the ballistic regime puts ∇L² in u's drift).
    Adam needs a warm start (t₀ > 0): at t = 0 its drift m/γ₁ is 0/0.
    """

    TESTS = ("norm2", "loss", "coord0", "cos", "norm4")

    def __init__(self, hessian, factor, x0, setting):
        self.h = np.asarray(hessian, dtype=np.float64)
        self.s = np.asarray(factor, dtype=np.float64)
        self.setting = setting
        if setting.kind == "adam" and setting.t0 <= 0:
            raise ValueError("the Adam oracle needs a warm start (t0 > 0): its drift m/γ₁ is 0/0 at t = 0")
        if getattr(setting, "regime", "diffusive") != "diffusive" or getattr(setting, "v_noise", False):
            raise ValueError("the adaptive oracle covers the diffusive regime's SDEs without v-noise: the others are "
                             "not linear (random u, or ∇L² in u's drift)")
        d = len(self.h)
        self.d, self.sigma = d, self.s @ self.s.T  # Σ, constant: made once, not at every step of the moments
        self.variances = np.diag(self.sigma).copy()  # diag Σ
        c1, c2, t0 = setting.c1, setting.c2, setting.t0
        x0 = np.asarray(x0, dtype=np.float64)
        # Adaptive.initial_state: the moments of t₀ spent at x₀
        self.u0 = -np.expm1(-c2 * t0) * self.variances
        self.y0 = x0 if setting.kind == "rmsprop" else np.concatenate([x0, -np.expm1(-c1 * t0) * (self.h @ x0)])

    @classmethod
    def of(cls, problem, setting) -> "AdaptiveQuadraticOracle":
        """The oracle of `setting`'s optimizer on a quadratic `problem` (`sde_lab.catalog.quadratic`)."""
        if not isinstance(problem.oracle, QuadraticOracle) or problem.noise_sqrt.dim() != 2:
            raise ValueError(f"the adaptive oracle needs a quadratic with a constant noise factor, not {problem.name!r}")
        return cls(problem.oracle.hessian, problem.noise_sqrt.numpy(), problem.x0.numpy(), setting)

    def _coefficients(self, t: float, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """A (n, n) and B Bᵀ (n, n) at SDE time t with second moment u (d,)."""
        s, d = self.setting, self.d
        root_g2 = 1.0 if s.kind == "rmsprop" else np.sqrt(-np.expm1(-s.c2 * t))
        p_inv = 1.0 / (s.sigma0 * np.sqrt(np.maximum(u, 0.0)) + s.eps0 * root_g2)  # P⁻¹, diagonal (d,)
        if s.kind == "rmsprop":
            return -p_inv[:, None] * self.h, s.sigma0**2 * p_inv[:, None] * self.sigma * p_inv[None, :]
        g1 = -np.expm1(-s.c1 * t)
        a, bb = np.zeros((2 * d, 2 * d)), np.zeros((2 * d, 2 * d))
        a[:d, d:] = -np.diag(root_g2 / g1 * p_inv)
        a[d:, :d] = s.c1 * self.h
        a[range(d, 2 * d), range(d, 2 * d)] = -s.c1
        bb[d:, d:] = (s.c1 * s.sigma0) ** 2 * self.sigma
        return a, bb

    def _u(self, t: float) -> np.ndarray:
        """u at SDE time t: the exact solution of du = c₂(diag Σ − u)dt from u₀ at t₀."""
        return self.variances + (self.u0 - self.variances) * np.exp(-self.setting.c2 * (t - self.setting.t0))

    def _test(self, mean: np.ndarray, cov: np.ndarray, test: str):
        """E g(θ) for θ ~ N(mean, cov) (the first d entries of the state's), or None for a g not in `TESTS`."""
        m, c = mean[:self.d], cov[:self.d, :self.d]
        if test == "norm2":
            return float(m @ m + np.trace(c))
        if test == "loss":
            return float(0.5 * (m @ self.h @ m + np.trace(self.h @ c)))
        if test == "coord0":
            return float(m[0])
        if test == "cos":
            a = cos_direction(self.d).numpy()
            return float(np.cos(a @ m) * np.exp(-0.5 * a @ c @ a))
        if test == "norm4":  # E|θ|⁴ = (|m|² + tr C)² + 2 tr C² + 4 mᵀCm for a Gaussian
            second = m @ m + np.trace(c)
            return float(second**2 + 2.0 * np.trace(c @ c) + 4.0 * m @ c @ m)
        return None

    def _times(self, horizon: float, times) -> np.ndarray:
        """The SDE times from t₀ to answer at: `times` (increasing, in (0, horizon]) or just the horizon."""
        times = np.array([horizon] if times is None else times, dtype=np.float64)
        if np.any(np.diff(times) <= 0) or times[0] <= 0 or times[-1] > horizon * (1 + 1e-12):
            raise ValueError(f"times must increase within (0, horizon = {horizon:g}], got {times.tolist()}")
        return times

    def sde(self, horizon: float, test: str = "norm2", times=None):
        """E g(θ) of the SDE after `horizon` of SDE time from t₀ (g one of `TESTS`; None for others); with `times`
        (n,) increasing in (0, horizon], the values at each of them as an (n,) array."""
        from scipy.integrate import solve_ivp

        if test not in self.TESTS:
            return None
        at = self._times(horizon, times)
        n = len(self.y0)

        def moments(t, flat):
            mean, cov = flat[:n], flat[n:].reshape(n, n)
            a, bb = self._coefficients(t, self._u(t))
            return np.concatenate([a @ mean, (a @ cov + cov @ a.T + bb).ravel()])

        t0 = self.setting.t0
        start = np.concatenate([self.y0, np.zeros(n * n)])
        done = solve_ivp(moments, (t0, t0 + at[-1]), start, method="DOP853", t_eval=t0 + at, rtol=1e-12, atol=1e-14)
        if not done.success:
            raise RuntimeError(f"the moment equations did not solve: {done.message}")
        values = np.array([self._test(y[:n], y[n:].reshape(n, n), test) for y in done.y.T])
        return float(values[-1]) if times is None else values

    def euler_maruyama(self, horizon: float, dt: float, test: str = "norm2", times=None):
        """E g(θ) of the SDE's Euler–Maruyama solution at step dt after `horizon` (a whole number of steps); with
        `times` (each a whole number of steps), the values at each of them as an (n,) array."""
        steps = int(round(horizon / dt))
        if abs(steps * dt - horizon) > 1e-9 * horizon:
            raise ValueError(f"dt = {dt:g} does not divide horizon = {horizon:g}")
        if test not in self.TESTS:
            return None
        at = self._times(horizon, times)
        marks = np.round(at / dt).astype(int)
        if np.any(np.abs(marks * dt - at) > 1e-9 * horizon):
            raise ValueError(f"dt = {dt:g} does not divide the times {at.tolist()}")
        s = self.setting
        mean, cov = self.y0.copy(), np.zeros((len(self.y0), len(self.y0)))
        u, t = self.u0.copy(), float(s.t0)
        eye = np.eye(len(mean))
        values = []
        for k in range(1, marks[-1] + 1):
            a, bb = self._coefficients(t, u)
            step = eye + dt * a
            mean, cov = step @ mean, step @ cov @ step.T + dt * bb
            u, t = u + dt * s.c2 * (self.variances - u), t + dt
            if k in marks:
                values.append(self._test(mean, cov, test))
        return float(values[-1]) if times is None else np.array(values)
