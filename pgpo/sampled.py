"""I from the sampled tokens alone: an unbiased single-sample estimator of the information signal.

Where only the log-probabilities of the token y that was sampled are known (TRL's
`distillation_mode="sampled_token"`, or a teacher served by vLLM), I cannot be summed over a support. It
can be estimated: y was drawn from the student p, so with r = q(y) / p(y) every divergence I uses is an
expectation over y ~ p of a function of r alone (an f-divergence, f convex, f(1) = 0):

    KL(q ‖ p) = E_p[r log r],   KL(p ‖ q) = E_p[−log r],
    JSD(p, q) = E_p[½ (r log(2r / (1 + r)) + log(2 / (1 + r)))].

E_p[r − 1] = 0, so f(r) − c·(r − 1) has the same mean for any c; with c = f'(1) (a control variate) it is
≥ 0 for every r (f convex). `token_estimates` returns per token

    "kl":          r log r − (r − 1)       (control variate on: the lower variance, measured)
    "reverse_kl":  −log r = log p − log q  (control variate off: TRL's own log-ratio, the lower variance)
    "jsd":         ½ (r log(2r / (1 + r)) + log(2 / (1 + r)))   (f'(1) = 0: nothing to add)

The defaults are the measured choice (docs/trl.md: on the tiny model's training batches the control variate
lowers the per-token standard deviation of "kl" by 14% and raises that of "reverse_kl" 3.7-fold);
`control_variate=True/False` forces either.

Unbiased when y ~ p exactly: the student's softmax at the temperature it sampled with, untruncated (no
top-p, top-k, min-p or repetition penalty), and p > 0 wherever q > 0 (always, for finite logits). Tokens
drawn from an older policy p_old are corrected by an importance weight w = p / p_old on each token
(`weight`): E_{p_old}[w·f(r)] = E_p[f(r)].

`estimator_moments` gives, from the full distributions, the exact mean (= the full-support divergence:
the unbiasedness, checked in the tests) and the exact variance of the single-sample estimate at each
position: what one sampled token costs against summing over the vocabulary.
"""

from __future__ import annotations

import math

import torch

from pgpo.information import KINDS, aggregate

LOG2 = math.log(2.0)

__all__ = ["CONTROL_VARIATE", "token_estimates", "sampled_information", "estimator_moments"]


CONTROL_VARIATE = {"kl": True, "reverse_kl": False, "jsd": False}
"""Whether `token_estimates` subtracts f'(1)·(r − 1) by default, per kind: the lower variance, measured."""


def token_estimates(student_token_logprobs: torch.Tensor, teacher_token_logprobs: torch.Tensor, kind: str = "kl",
                    control_variate: bool | None = None) -> torch.Tensor:
    """The single-sample estimate of the divergence `kind` at each position, from log p(y) and log q(y) of the
    token y ~ p that was sampled there (shape (...) each; float64 out).

    log q(y) = −inf (the teacher rules the token out) is allowed: "kl" gives 1 there (r log r → 0), "jsd"
    gives ½ log 2, "reverse_kl" gives +inf (KL(p ‖ q) is infinite). log p(y) must be finite (y was drawn
    from p); positions that are not (padding) give NaN, which `aggregate` ignores where masked out.
    `control_variate`: subtract f'(1)·(r − 1) (None: `CONTROL_VARIATE[kind]`).
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    log_p = _as_float64(student_token_logprobs, "student_token_logprobs")
    log_q = _as_float64(teacher_token_logprobs, "teacher_token_logprobs")
    if log_p.shape != log_q.shape:
        raise ValueError(f"student_token_logprobs and teacher_token_logprobs must have the same shape, "
                         f"got {tuple(log_p.shape)} and {tuple(log_q.shape)}")
    return _f(log_q - log_p, kind, control_variate)


@torch.no_grad()
def sampled_information(student_token_logprobs: torch.Tensor, teacher_token_logprobs: torch.Tensor, mask=None,
                        kind: str = "kl", weight: torch.Tensor | None = None, reduce: str = "token",
                        control_variate: bool | None = None):
    """I estimated from the sampled tokens: Σ m·w·f̂ / Σ m (`reduce` as in `pgpo.information`: "token",
    "sequence", or the pairs "sum" / "sequence_sum" to pool over micro-batches and ranks).

    Args:
        student_token_logprobs, teacher_token_logprobs: log p(y_t), log q(y_t) of the sampled tokens, (..., T).
        mask: the loss's mask, same shape (None: every position).
        weight: the importance weight of each token (p / p_old, detached; clipped as the loss clips it), same
            shape, or None (the tokens were drawn from p itself). It multiplies the estimate, not the mask:
            the denominator stays Σ m, which keeps the estimate unbiased.
    """
    values = token_estimates(student_token_logprobs, teacher_token_logprobs, kind, control_variate)
    if weight is not None:
        weight = _as_float64(weight, "weight").to(values.device)
        if weight.shape != values.shape:
            raise ValueError(f"weight must have shape {tuple(values.shape)}, got {tuple(weight.shape)}")
        values = values * weight
    m = torch.ones_like(values) if mask is None else _as_float64(mask, "mask").to(values.device)
    if m.shape != values.shape:
        raise ValueError(f"mask must have shape {tuple(values.shape)}, got {tuple(m.shape)}")
    return aggregate(values, m, reduce)


@torch.no_grad()
def estimator_moments(student_logprobs: torch.Tensor, teacher_logprobs: torch.Tensor, kind: str = "kl",
                      control_variate: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact mean and variance, over y ~ p, of `token_estimates` at each position, from the full distributions
    log p, log q (..., S), normalised over S. The mean is the full-support divergence `kind`; the variance is
    what estimating it from one sampled token adds. Returns two float64 tensors of shape (...)."""
    log_p = _as_float64(student_logprobs, "student_logprobs")
    log_q = _as_float64(teacher_logprobs, "teacher_logprobs")
    if log_p.shape != log_q.shape:
        raise ValueError(f"student_logprobs and teacher_logprobs must have the same shape, "
                         f"got {tuple(log_p.shape)} and {tuple(log_q.shape)}")
    p = log_p.exp()
    values = _f(log_q - log_p, kind, control_variate)
    values = torch.where(p > 0, values, torch.zeros_like(values))  # never drawn: no weight, even if inf
    mean = (p * values).sum(-1)
    variance = (p * (values - mean.unsqueeze(-1)) ** 2).sum(-1)
    return mean, variance


def _f(delta: torch.Tensor, kind: str, control_variate: bool | None) -> torch.Tensor:
    """f(r) − [control_variate]·f'(1)·(r − 1) as a function of Δ = log r = log q − log p, stable near Δ = 0
    and at Δ = −inf."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if control_variate is None:
        control_variate = CONTROL_VARIATE[kind]
    r = delta.exp()
    ruled_out = delta == float("-inf")
    if kind == "kl":
        value = torch.where(ruled_out, torch.zeros_like(delta), r * delta)  # r log r
        return value - torch.expm1(delta) if control_variate else value
    if kind == "reverse_kl":
        return torch.expm1(delta) - delta if control_variate else -delta
    # jsd: ½ (r log(2r / (1 + r)) + log(2 / (1 + r))) = ¼ (1 + r)·(Δ·tanh(Δ/2) − 2 log cosh(Δ/2)): two terms of
    # order Δ² near Δ = 0 (the first form subtracts terms of order 1), ½ log 2 in the limit Δ → −inf
    half = delta.abs() / 2
    small = half < 20  # log cosh x = log1p(2 sinh²(x/2)) there, |x| − log 2 + log1p(e^(−2|x|)) beyond
    log_cosh = torch.where(small, torch.log1p(2 * torch.sinh(torch.where(small, half, 0.0) / 2) ** 2),
                           half - LOG2 + torch.log1p(torch.exp(-2 * half)))
    value = 0.25 * (1 + r) * (delta * torch.tanh(delta / 2) - 2 * log_cosh)
    return torch.where(ruled_out, torch.full_like(delta, 0.5 * LOG2), value)


def _as_float64(x, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch tensor, got {type(x).__name__}")
    return x.detach().to(torch.float64)
