"""The information signal I: a divergence between the student and its feedback-conditioned teacher.

If the student p is the feedback-marginal of the teacher q(· | F), then E_F KL(q ‖ p) = I(Y; F),
the mutual information between the student's prediction and the feedback. The plug-in estimate on a
batch (`docs/method.md` §2) is the token mean over masked-in positions,

    I = Σ_{i,t} m_{i,t} · KL(q_{i,t} ‖ p_{i,t}) / Σ_{i,t} m_{i,t},

computed under no_grad from log-probabilities the loss already has. Options: the reverse KL
KL(p ‖ q), the Jensen–Shannon divergence (bounded by log 2), and a sequence mean instead of a token
mean.
"""

from __future__ import annotations

import numpy as np
import torch

from pgpo.divergence import generalized_jsd, kl

KINDS = ("kl", "reverse_kl", "jsd")
REDUCTIONS = ("token", "sequence", "sum", "sequence_sum")


def divergence(student_logprobs: torch.Tensor, teacher_logprobs: torch.Tensor, kind: str = "kl") -> torch.Tensor:
    """Per-position divergence of `kind`: (..., S), (..., S) → (...)."""
    if kind == "kl":
        return kl(teacher_logprobs, student_logprobs)
    if kind == "reverse_kl":
        return kl(student_logprobs, teacher_logprobs)
    if kind == "jsd":
        return generalized_jsd(student_logprobs, teacher_logprobs, 0.5)
    raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")


@torch.no_grad()
def information(student_logprobs, teacher_logprobs, mask=None, kind: str = "kl", reduce: str = "token",
                from_logits: bool = False):
    """The information signal of a batch.

    Args:
        student_logprobs: log p, shape (..., S), normalised over the last axis (S: the support, e.g.
            the vocabulary or the student's top-k plus a tail bucket); −inf entries allowed.
        teacher_logprobs: log q on the same support, same shape.
        mask: shape (...) selecting positions (bool, or 0/1 numbers; other values act as weights).
            None selects every position.
        kind: "kl" = KL(teacher ‖ student) (default), "reverse_kl" = KL(student ‖ teacher),
            "jsd" = Jensen–Shannon divergence.
        reduce: "token" — mean over masked positions;
            "sequence" — mean within each sequence (the last-but-one axis), then over the sequences
            that have at least one masked position; needs shape (..., T, S);
            "sum" — the pair (Σ m·D, Σ m) of the token mean, to be summed across micro-batches and
            ranks before dividing (see `pgpo.all_reduce_information`);
            "sequence_sum" — the pair (Σ_seq mean_t D, number of non-empty sequences).
        from_logits: the inputs are logits (unnormalised); they are log-softmaxed here. Without it,
            inputs that are not normalised over the last axis (at a masked-in position) are an error:
            logits taken for log-probabilities give a wrong number, not a crash.

    Returns:
        A 0-d tensor (a numpy float for numpy input), or for the "…sum" reductions a pair of them.
        An empty mask gives I = 0 (denominator 0), never NaN. No gradient flows. Float64 input is
        computed in float64; half-precision input is computed in float32.

    Non-finite input: a NaN or +inf entry at a masked-in position (in either input, logits or
    log-probabilities), or a NaN or ±inf mask value, makes I NaN (or ±inf), never a finite number: a
    broken forward must reach the caller, whose non-finite guard (ρ = 1, a skipped step) then acts.
    −inf entries are zero mass, as always (a KL toward zero mass is +inf); masked-out positions may hold
    anything. Meta and complex tensors, and log-probabilities that are not floating point, are refused.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if reduce not in REDUCTIONS:
        raise ValueError(f"reduce must be one of {REDUCTIONS}, got {reduce!r}")
    from_numpy = isinstance(student_logprobs, np.ndarray)
    log_p, log_q = _as_tensor(student_logprobs, "student_logprobs"), _as_tensor(teacher_logprobs, "teacher_logprobs")
    if log_p.shape != log_q.shape:
        raise ValueError(
            f"student_logprobs and teacher_logprobs must have the same shape, got {tuple(log_p.shape)} and {tuple(log_q.shape)}"
        )
    if log_p.dim() < 1:
        raise ValueError("student_logprobs must have a support axis: shape (..., S)")
    dtype = torch.promote_types(log_p.dtype, log_q.dtype)
    half = dtype in (torch.float16, torch.bfloat16)
    if half:
        dtype = torch.float32  # a KL summed over ~10^5 entries loses its digits in 8 mantissa bits
    log_p, log_q = log_p.to(dtype), log_q.to(dtype)
    if from_logits:
        log_p, log_q = torch.log_softmax(log_p, -1), torch.log_softmax(log_q, -1)

    positions = log_p.shape[:-1]
    if mask is None:
        weight = torch.ones(positions, dtype=dtype, device=log_p.device)
    else:
        weight = _as_tensor(mask, "mask", floating=False).to(device=log_p.device, dtype=dtype)
        if weight.shape != positions:
            raise ValueError(f"mask must have shape {tuple(positions)} (the inputs without their last axis), got {tuple(weight.shape)}")

    values = divergence(log_p, log_q, kind)
    if not from_logits:  # (from logits, log_softmax has already spread a NaN or +inf over its whole row)
        broken = [_check_normalised(name, x, weight, tolerance=0.1 if half else 1e-3)
                  for name, x in (("student_logprobs", log_p), ("teacher_logprobs", log_q))]
        # a NaN or +inf entry can sit where the other distribution has no mass, out of the divergence's reach
        values = torch.where(broken[0] | broken[1], torch.full_like(values, float("nan")), values)
    result = aggregate(values, weight, reduce)
    if from_numpy:
        return tuple(r.cpu().numpy()[()] for r in result) if isinstance(result, tuple) else result.cpu().numpy()[()]
    return result


def aggregate(values: torch.Tensor, weight: torch.Tensor, reduce: str = "token"):
    """Pool per-position values (a divergence already computed, shape (...)) with `weight` (same shape) as
    `information` does (see its `reduce`): a 0-d tensor, or a (numerator, denominator) pair for the
    "…sum" reductions. Masked-out positions may hold anything, even NaN or inf."""
    if reduce not in REDUCTIONS:
        raise ValueError(f"reduce must be one of {REDUCTIONS}, got {reduce!r}")
    if values.shape != weight.shape:
        raise ValueError(f"values and weight must have the same shape, got {tuple(values.shape)} and {tuple(weight.shape)}")
    weight = weight.to(values.dtype)
    # masked-out positions may hold anything (padding): they must not turn the sum into NaN
    d = torch.where(weight != 0, values, torch.zeros_like(values)) * weight
    if reduce in ("token", "sum"):
        numerator, denominator = d.sum(), weight.sum()
    else:
        if d.dim() < 1:
            raise ValueError(f"reduce={reduce!r} needs a sequence axis: shape (..., T, S)")
        tokens = weight.sum(dim=-1)
        per_sequence = d.sum(dim=-1) / torch.where(tokens != 0, tokens, torch.ones_like(tokens))
        numerator, denominator = per_sequence.sum(), (tokens != 0).sum().to(values.dtype)
    return (numerator, denominator) if reduce.endswith("sum") else ratio(numerator, denominator)


def ratio(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """numerator / denominator, and 0 where the denominator is 0 (an empty mask carries no signal)."""
    empty = denominator == 0
    return torch.where(empty, torch.zeros_like(numerator), numerator / torch.where(empty, torch.ones_like(denominator), denominator))


def _check_normalised(name: str, log_probs: torch.Tensor, weight: torch.Tensor, tolerance: float) -> torch.Tensor:
    """log Σ_s exp(x_s) = 0 at every masked-in position (to `tolerance`: 16-bit inputs carry ~1% per entry).

    Positions holding a NaN or +inf entry are not checked: they are returned (a bool tensor of shape (...)) to
    be made NaN, since a broken input is not the mistake of logits taken for log-probabilities."""
    total = torch.logsumexp(log_probs, -1)
    broken = torch.isnan(total) | (total == float("inf"))
    off = (weight != 0) & ~broken & ~(total.abs() <= tolerance)
    if off.any():
        at = tuple(int(j) for j in off.nonzero()[0])
        raise ValueError(f"{name} are not log-probabilities: log Σ exp over the last axis is {total[at].item():.4g} at "
                         f"position {at} (should be 0); pass normalised log-probabilities, or from_logits=True")
    return broken


def _as_tensor(x, name: str, floating: bool = True) -> torch.Tensor:
    """`x` as a tensor of real numbers (floating point where `floating`), or an error naming `name`."""
    if isinstance(x, torch.Tensor):
        x = x.detach()
    elif isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    else:
        raise TypeError(f"{name} must be a torch tensor or a numpy array, got {type(x).__name__}")
    if x.is_meta:  # no values: the result would be a meta tensor, not a number
        raise ValueError(f"{name} is a meta tensor (a shape without values); pass a tensor that holds data")
    if x.is_complex():  # no divergence between complex numbers; a cast would drop the imaginary part silently
        raise TypeError(f"{name} must hold real numbers, got {x.dtype}")
    if floating and not x.is_floating_point():
        raise TypeError(f"{name} must hold floating-point numbers, got {x.dtype}")
    return x
