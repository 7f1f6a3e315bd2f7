"""Built-in problems (`docs/weak_order.md`): two with exact moments, four that need Monte Carlo.

Each returns a `Problem` in float64. Where a problem has no natural information signal, its state
signal is the smooth bounded I(x) = |∇L|² / (1 + |∇L|²), and its mini-batch signal is the same
function of the sampled gradient.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from sde_lab.oracles import QuadraticOracle, RandomHessianOracle
from sde_lab.problem import FromGradient, Problem, SampleDeviations, last_call_cached, once_per_device


def check_sizes(problem: str, square: str | None = None, **sizes) -> None:
    """Refuse, before any allocation, a size that is not a positive int (naming it), and a `square` size whose
    d × d float64 matrix (the curvature these problems compute) would not fit in half this machine's memory."""
    for name, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{problem}: {name} must be a positive int, got {value!r}")
    if square is not None:
        d = int(sizes[square])
        try:
            memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):  # not a POSIX system: no bound known
            return
        if 8 * d * d > memory / 2:
            raise ValueError(f"{problem}: {square} = {d} needs a {d} × {d} float64 matrix ({8 * d * d / 2**30:.3g} GiB), "
                             f"more than half of this machine's {memory / 2**30:.3g} GiB")


def gradient_signal(g: torch.Tensor) -> torch.Tensor:
    """I = |g|² / (1 + |g|²), a smooth signal in [0, 1): (M, d) → (M,)."""
    s = (g * g).sum(dim=-1)
    return s / (1.0 + s)


# ---------------------------------------------------------------------------------------------
# exact


def quadratic(hessian=(0.5, 1.0, 2.0), x0=(2.0, -1.0, 1.0), noise_scale=1.0) -> Problem:
    """Li–Tai–E: ℓ_γ(x) = ½(x − γ)ᵀH(x − γ) − ½ tr H, γ ~ N(0, s²I); L = ½xᵀHx, Σ = s²H² (additive).

    `hessian` is the diagonal of H or a symmetric (d, d) matrix. The stochastic gradient
    Hx − Hγ is Gaussian, so the default sampler (∇L + Σ^{1/2}z) is the real one.
    """
    h = np.asarray(hessian, dtype=np.float64)
    h = np.diag(h) if h.ndim == 1 else h
    H = torch.from_numpy(h)
    if np.count_nonzero(h - np.diag(np.diag(h))) == 0:  # diagonal: a product per entry, not an (M, d) × (d, d) one
        diagonal = H.diagonal().clone()
        grad = lambda x: x * diagonal.to(x)  # noqa: E731
    else:
        grad = lambda x: x @ H.to(x)  # noqa: E731  (H symmetric)
    return Problem(
        dim=len(h), x0=x0, grad=grad, noise_sqrt=noise_scale * H.clone(), name="quadratic",
        info=FromGradient(grad, gradient_signal),
        loss=lambda x: 0.5 * (grad(x) * x).sum(dim=-1),
        lambda_max=float(np.linalg.eigvalsh(h).max()),
        oracle=QuadraticOracle(h, np.asarray(x0, dtype=np.float64), noise_scale),
    )


def random_hessian(diag=(0.5, 1.0, 2.0), x0=(1.0, -1.0, 0.5), rotation_seed=0) -> Problem:
    """Multiplicative noise: ℓ_γ = ½ yᵀ(D + diag γ) y, y = Qᵀx, γ ~ N(0, I); Σ(x) = Q diag(y²) Qᵀ.

    Q is a random rotation (seeded); the noise vanishes at the optimum.
    """
    d = np.asarray(diag, dtype=np.float64)
    q, _ = np.linalg.qr(np.random.default_rng(rotation_seed).normal(size=(len(d), len(d))))
    Q, D = torch.from_numpy(q), torch.from_numpy(d)

    def grad(x):
        return ((x @ Q.to(x)) * D.to(x)) @ Q.to(x).T

    def noise_sqrt(x):  # Q diag(y): (M, d, d)
        return Q.to(x)[None, :, :] * (x @ Q.to(x))[:, None, :]

    return Problem(
        dim=len(d), x0=x0, grad=grad, noise_sqrt=noise_sqrt, name="random_hessian",
        info=FromGradient(grad, gradient_signal),
        loss=lambda x: 0.5 * ((x @ Q.to(x)) ** 2 * D.to(x)).sum(dim=-1),
        lambda_max=float(d.max()),
        oracle=RandomHessianOracle(d, q, np.asarray(x0, dtype=np.float64)),
    )


# ---------------------------------------------------------------------------------------------
# finite sums with real mini-batches (batch size 1, sampled uniformly)


def _finite_sum(name, dim, x0, coefficients, features, loss, lambda_max, common=None, info_of=gradient_signal,
                per_sample_info=None):
    """A finite-sum problem whose per-sample gradients are g_i(x) = Σ_k C_ki(x) F_ki + r(x): `coefficients(x)`
    C (M, K, n), `features` F (K, n, d), `common(x)` r (M, d) or None for 0.

    Σ is the covariance of one uniformly drawn sample's gradient; its factor is the per-sample deviations
    scaled by 1/√n (m = n), kept in that structure (`SampleDeviations`: S z never forms (M, d, n)). The
    mini-batch signal is `per_sample_info(x)` (M, n) if given, else `info_of` applied to the sampled gradient.
    """

    coefficients = last_call_cached(coefficients)
    flat = features.flatten(0, 1)  # (Kn, d)
    n = features.shape[1]

    def per_sample(x):  # (M, n, d)
        g = torch.einsum("pkn,knd->pnd", coefficients(x), features.to(x))
        return g if common is None else g + common(x)[:, None, :]

    def grad(x):
        mean = (coefficients(x).flatten(1) @ flat.to(x)).div_(n)
        return mean if common is None else mean.add_(common(x))

    def infos(x, grads):
        return per_sample_info(x) if per_sample_info is not None else info_of(grads)

    @once_per_device
    def uniform(x):  # the samples' probabilities: (n,)
        return torch.full((n,), 1.0 / n, dtype=x.dtype, device=x.device)

    def noise_sqrt(x):
        return SampleDeviations(coefficients(x), features.to(x), uniform(x))

    def sample_grad(x, gen):
        pick = torch.randint(n, (x.shape[0],), generator=gen, device=x.device)
        rows = torch.arange(x.shape[0], device=x.device)
        g = torch.einsum("pk,pkd->pd", coefficients(x)[rows, :, pick], features.to(x)[:, pick].transpose(0, 1))
        g = g if common is None else g + common(x)
        if per_sample_info is not None:
            return g, per_sample_info(x)[rows, pick]
        return g, info_of(g)

    def batches(x):
        g = per_sample(x)
        return g, infos(x, g), uniform(x)

    def state_info(x):
        return per_sample_info(x).mean(dim=1) if per_sample_info is not None else info_of(grad(x))

    return Problem(dim=dim, x0=x0, grad=grad, noise_sqrt=noise_sqrt, info=state_info, sample_grad=sample_grad,
                   name=name, loss=loss, lambda_max=lambda_max, batches=batches)


def linear_regression(n=16, dim=2, noise=0.5, x0=None, seed=0) -> Problem:
    """ℓ_i(w) = ½(a_iᵀw − b_i)², i = 1…n, with Gaussian features and label noise `noise`.

    Σ(w) = (1/n) Σ r_i² a_i a_iᵀ − ∇L∇Lᵀ with r_i = a_iᵀw − b_i; with noise = 0 the data are
    realizable and the gradient noise vanishes at the optimum.
    """
    check_sizes("linear_regression", "dim", n=n, dim=dim)
    rng = np.random.default_rng(seed)
    A = torch.from_numpy(rng.normal(size=(n, dim)))
    b = A @ torch.from_numpy(rng.normal(size=dim)) + noise * torch.from_numpy(rng.normal(size=n))

    def residuals(w):  # ∇ℓ_i = r_i a_i: (M, 1, n)
        return (w @ A.to(w).T - b.to(w))[:, None, :]

    def loss(w):
        return 0.5 * ((w @ A.to(w).T - b.to(w)) ** 2).mean(dim=1)

    x0 = np.zeros(dim) if x0 is None else x0
    lam = float(np.linalg.eigvalsh((A.T @ A / n).numpy()).max())
    return _finite_sum("linear_regression", dim, x0, residuals, A[None], loss, lam)


def logistic_regression(n=16, dim=2, l2=0.1, feature_scale=1.0, x0=None, seed=0) -> Problem:
    """ℓ_i(w) = log(1 + exp(−y_i a_iᵀw)) + (l2/2)|w|², labels ±1 from a noisy linear teacher.

    Features a_i ~ N(0, feature_scale²·I); a larger scale means larger gradient noise (and curvature).
    Smooth with bounded derivatives of every order: the setting of the weak-approximation theorems.
    """
    check_sizes("logistic_regression", "dim", n=n, dim=dim)
    rng = np.random.default_rng(seed)
    A = feature_scale * torch.from_numpy(rng.normal(size=(n, dim)))
    margin = A @ torch.from_numpy(rng.normal(size=dim)) + 0.5 * feature_scale * torch.from_numpy(rng.normal(size=n))
    y = torch.where(margin >= 0, 1.0, -1.0).to(torch.float64)

    def slopes(w):  # ∇ℓ_i = −σ(−y_i a_iᵀw) y_i a_i + l2·w: the coefficient of a_i, (M, 1, n)
        return (torch.sigmoid(-(w @ A.to(w).T) * y.to(w)) * -y.to(w))[:, None, :]

    def weight_decay(w):
        return l2 * w

    def loss(w):
        return torch.nn.functional.softplus(-(w @ A.to(w).T) * y.to(w)).mean(dim=1) + 0.5 * l2 * (w * w).sum(dim=1)

    x0 = np.resize([2.0, -2.0], dim) if x0 is None else x0
    lam = float(np.linalg.eigvalsh((A.T @ A / n).numpy()).max()) / 4 + l2
    return _finite_sum("logistic_regression", dim, x0, slopes, A[None], loss, lam, common=weight_decay)


def self_distillation(prompts=8, answers=4, dim=3, bonus=2.0, feature_scale=0.5, x0=(1.5, -1.5, 1.5), seed=0) -> Problem:
    """A toy of SDPO: a softmax student over K answers, its feedback-shifted self-teacher, stop-gradient.

    Prompt i has features F_i (K, d), entries N(0, feature_scale²); the student's logits are F_i θ, p_i = softmax(F_i θ). The
    teacher sees the feedback (which answer c_i is correct): q_i = softmax(F_i θ + bonus·e_{c_i}),
    held fixed in the gradient (stop-gradient), so the per-prompt update direction is
    ∇_θ KL(q_i ‖ p_θ)|_{q fixed} = F_iᵀ(p_i − q_i) — a vector field, not the gradient of one loss.
    Information: I(θ) = mean_i KL(q_i ‖ p_i), and the mini-batch signal is KL(q_γ ‖ p_γ) of the
    sampled prompt. `loss` (the default test function) is I(θ) itself.
    """
    check_sizes("self_distillation", "dim", prompts=prompts, answers=answers, dim=dim)
    rng = np.random.default_rng(seed)
    F = torch.from_numpy(rng.normal(scale=feature_scale, size=(prompts, answers, dim)))
    correct = torch.from_numpy(rng.integers(answers, size=prompts))
    shift = torch.zeros(prompts, answers, dtype=torch.float64)
    shift[torch.arange(prompts), correct] = bonus

    features = F.transpose(0, 1).contiguous()  # (K, n, d): answers first, as the logits below hold them
    flat = features.flatten(0, 1)  # (Kn, d)
    shift = shift.T.contiguous()  # (K, n)
    tilt = shift.exp()  # the teacher is the student tilted by e^{shift}: q ∝ p·e^{shift}

    @last_call_cached
    def student_teacher(theta):  # p, q (M, K, n), normalised over the answers (dim 1), and Z = Σ_k p_k e^{shift_k} (M, 1, n)
        # one softmax: q = p·e^{shift}/Z is the softmax of the shifted logits (torch reduces a short axis of K
        # fastest when it is not the last)
        p = (theta @ flat.to(theta).T).view(-1, answers, prompts).softmax(1)
        tilted = p * tilt.to(theta)
        z = tilted.sum(dim=1, keepdim=True)
        return p, tilted / z, z

    def residuals(theta):  # the per-prompt field F_iᵀ(p_i − q_i), as its coefficients p_i − q_i: (M, K, n)
        p, q, _ = student_teacher(theta)
        return p - q

    def per_sample_info(theta):  # KL(q_i ‖ p_i): (M, n)
        # log q − log p = shift − log Z, so the KL is Σ_k q_k shift_k − log Z: no logarithm of p is taken
        _, q, z = student_teacher(theta)
        return (q * shift.to(theta)).sum(dim=1) - z[:, 0].log()

    def information(theta):
        return per_sample_info(theta).mean(dim=1)

    x0 = np.zeros(dim) if x0 is None else x0
    # |J| ≤ ½ max_i ‖F_i‖² for each softmax Jacobian; the field is a difference of two of them
    lam = 0.5 * float(max(np.linalg.norm(F[i].numpy(), 2) ** 2 for i in range(prompts)))
    return _finite_sum("self_distillation", dim, x0, residuals, features, information, lam,
                       per_sample_info=per_sample_info)


def double_well(sigma=1.0, x0=0.5) -> Problem:
    """L = ¼(x² − 1)² in one dimension with additive noise σ: non-convex, not globally Lipschitz.

    Only small η and a bounded start are safe; no λ_max is declared (the curvature is unbounded).
    """

    def grad(x):
        return x**3 - x

    return Problem(
        dim=1, x0=[x0], grad=grad, noise_sqrt=torch.tensor([[sigma]], dtype=torch.float64), name="double_well",
        info=FromGradient(grad, gradient_signal), loss=lambda x: 0.25 * (x[:, 0] ** 2 - 1.0) ** 2,
    )


BUILTINS = {
    "quadratic": quadratic,
    "random_hessian": random_hessian,
    "linear_regression": linear_regression,
    "logistic_regression": logistic_regression,
    "self_distillation": self_distillation,
    "double_well": double_well,
}


def get(name: str, **kwargs) -> Problem:
    """A built-in problem by name."""
    if name not in BUILTINS:
        raise ValueError(f"unknown problem {name!r}; built-ins are {sorted(BUILTINS)}")
    return BUILTINS[name](**kwargs)

