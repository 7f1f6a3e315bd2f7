"""SDPO's self-distillation loss and PGPO's information signal from the same forwards (`docs/method.md` §1–2).

    L = (1 / B) · Σ_i m_i · mean_{t ∈ response_i} [ w_{i,t} · D_β(p_{i,t}, q_{i,t}) ]

p is the student's next-token distribution (with gradient), q the teacher's (no gradient), both read
at the response positions. The support is the student's top-k tokens plus one tail bucket holding
the rest of each distribution's mass (`add_tail`), or the top-k alone renormalised (decision: a
divergence needs two distributions), or the full vocabulary (`topk=None`). The information signal is
KL(q ‖ p) on the same support, as a (numerator, denominator) pair over the tokens of masked-in
sequences, so that it can be summed over micro-batches and ranks before dividing.

Exact at any logit scale. The tail bucket's log-mass is a log-sum-exp over the logits outside the
top-k, shifted by their own maximum — never log(1 − Σ_top-k p), which rounds to log 0 (and the loss
to inf or NaN) once the top-k hold all but ~1e-7 of the mass, as they do on a confident token. The
support's log-probabilities, the divergences and the sampled tokens' log-probabilities are computed
in float64 from the logits (the support has k + 1 entries: this costs nothing next to the vocabulary);
the only reductions over the vocabulary in float32 are the tail's sum of exponentials and the
entropy's sum of non-negative terms, neither of which cancels.

Non-finite input propagates: a NaN or +inf logit anywhere in a row (student's or teacher's, in the top-k or
in the tail, also where the top-k alone are kept), or a NaN or ±inf in a mask, an importance weight or a
sampler log-probability, at a position that counts, makes the loss, its gradient and the metric pairs NaN
(or ±inf), never a finite number: the trainer's non-finite guard must see a broken forward. It is carried
by the arithmetic (`row_shift`, NaN-aware supports in `pgpo.divergence`), with no host sync. −inf logits
are zero mass (a masked vocabulary), as always; positions that do not count (padding, sequences without a
teacher) may hold anything.

Two implementations share this arithmetic: `self_distillation_loss` below takes the logits and lets
autograd differentiate it (the reference); `llm_runs.chunked_loss` takes the final hidden states and the
output head, never holds more than one chunk of logits, and is what the trainer uses by default.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import torch

from pgpo.divergence import generalized_jsd
from pgpo.information import aggregate
from pgpo.information import divergence as divergence_of

NEG_INF = float("-inf")
NAN = float("nan")


@dataclass
class SelfDistillationOutput:
    """`loss` (0-d, differentiable in the student's inputs); pairs (numerator, denominator), 0-d each,
    no gradient: `information` = KL(q ‖ p) (or the chosen `divergence`) and `jsd` = D_½(p, q) on the
    support, over the tokens of masked-in sequences; `entropy` = H(p) over the full vocabulary, over
    every response token. `token_logprobs`: (B, T) log π_train of the sampled tokens, detached (None
    without `response_ids`)."""

    loss: torch.Tensor
    information: tuple[torch.Tensor, torch.Tensor]
    information_sequence: tuple[torch.Tensor, torch.Tensor]  # the sequence-mean's pair (pgpo reduce="sequence_sum")
    jsd: tuple[torch.Tensor, torch.Tensor]
    entropy: tuple[torch.Tensor, torch.Tensor]
    token_logprobs: torch.Tensor | None = None
    information_per_sequence: torch.Tensor | None = None  # (B,) each sequence's token-mean I (0: no teacher)


# ---------------------------------------------------------------------------------------------
# the support, exactly


def full_vocabulary(topk: int | None, vocabulary: int) -> bool:
    if topk is not None and (isinstance(topk, bool) or not isinstance(topk, int) or topk < 1):
        raise ValueError(f"topk must be a positive integer or None, got {topk!r}")
    return topk is None or topk >= vocabulary


def row_shift(x: torch.Tensor) -> torch.Tensor:
    """A shift for exp() from a row's maximum `x`: 0 for a row whose entries are all −inf (no maximum to subtract),
    NaN for a NaN or +inf maximum (a row holding one is no distribution: its NaN must reach the loss, even from
    an entry that the support leaves out)."""
    return torch.where(torch.isfinite(x), x, torch.where(x == NEG_INF, torch.zeros_like(x), torch.full_like(x, NAN)))


def tail_logsumexp(logits: torch.Tensor, top: torch.Tensor, shift: torch.Tensor, relative_to: torch.Tensor) -> torch.Tensor:
    """log Σ_{v ∉ top} exp(logits_v) − relative_to: (..., V), (..., k), (...), (...) → (...) float64,
    differentiable in `logits`.

    `shift` is the largest logit outside `top`: exp never under- or overflows where it matters, and
    (shift − relative_to) + log Σ exp(logits − shift) keeps its digits at any magnitude.
    """
    shift = row_shift(shift.detach())
    total = (logits.scatter(-1, top, NEG_INF) - shift[..., None]).exp().sum(-1).double()
    # no mass outside the top-k (−inf logits, a masked vocabulary): log 0 = −inf, and no 0/0 in backward
    empty = total == 0
    log_total = torch.where(empty, torch.full_like(total, NEG_INF), torch.where(empty, torch.ones_like(total), total).log())
    return (shift.double() - relative_to) + log_total


def log_normaliser(a: torch.Tensor) -> torch.Tensor:
    """log Σ_s exp(a_s) over the last axis, (..., S) → (...), differentiable, exact where one entry dominates:
    with a* the largest entry, a* + log1p(Σ_{s ≠ s*} exp(a_s − a*)) — log1p keeps the digits that
    log(1 + tiny) rounds away (log p* of a confident token), and the shift is gathered at the argmax so
    that its gradient goes to that entry alone, even at ties. A row with no mass (all −inf) gives −inf, so that
    normalising it gives NaN (no distribution), not an empty one."""
    top = a.detach().argmax(-1, keepdim=True)
    largest = a.gather(-1, top)
    rest = (a - row_shift(largest)).exp().scatter(-1, top, 0.0).sum(-1, keepdim=True)
    return (largest + torch.log1p(rest))[..., 0]


def normalise(a: torch.Tensor) -> torch.Tensor:
    """Log-masses → log-probabilities over the last axis (float64 in, float64 out)."""
    return a - log_normaliser(a)[..., None]


def student_support(logits: torch.Tensor, topk: int | None, add_tail: bool):
    """The student's side of the support: (..., V) → (top, a, shift, log Z).

    top: (..., k) the student's top-k tokens, or None for the whole vocabulary. a: (..., S) float64,
    unnormalised log-masses on the support relative to `shift` (the largest logit, (...) float64): the
    top-k logits, then the tail's log-sum-exp when `add_tail` (the whole vocabulary when `top` is None);
    differentiable in `logits`. log Z: (...) float64, the log-normaliser over the whole vocabulary,
    relative to `shift` (for the entropy and the sampled tokens' log-probabilities). Relative values keep
    their digits where absolute logits of a few hundred would lose them.
    """
    if full_vocabulary(topk, logits.shape[-1]):
        shift = row_shift(logits.detach().amax(-1)).double()
        a = logits.double() - shift[..., None]
        return None, a, shift, log_normaliser(a)
    values, index = logits.detach().topk(topk + 1, dim=-1)
    top, shift = index[..., :topk], row_shift(values[..., 0]).double()
    tail = tail_logsumexp(logits, top, values[..., topk], shift)
    a = torch.cat([logits.gather(-1, top).double() - shift[..., None], tail[..., None]], -1)
    log_z = log_normaliser(a)
    return top, (a if add_tail else a[..., :topk]), shift, log_z


def teacher_support(logits: torch.Tensor, top: torch.Tensor | None, add_tail: bool) -> torch.Tensor:
    """The teacher's unnormalised log-masses on the student's support: (..., V) → (..., S) float64,
    relative to the teacher's largest logit."""
    shift = row_shift(logits.amax(-1)).double()[..., None]
    if top is None:
        return logits.double() - shift
    gathered = logits.gather(-1, top).double() - shift
    if not add_tail:
        return gathered
    tail = tail_logsumexp(logits, top, logits.scatter(-1, top, NEG_INF).amax(-1), shift[..., 0])
    return torch.cat([gathered, tail[..., None]], -1)


def token_logprobs_of(logits: torch.Tensor, ids: torch.Tensor, shift: torch.Tensor, log_z: torch.Tensor) -> torch.Tensor:
    """log p of the tokens `ids` (...) from the logits (..., V) and `student_support`'s shift and log Z → (...) float64."""
    return (logits.detach().gather(-1, ids[..., None].long())[..., 0].double() - shift) - log_z.detach()


@torch.no_grad()
def entropy(logits: torch.Tensor, shift: torch.Tensor, log_z: torch.Tensor) -> torch.Tensor:
    """H(p) over the vocabulary from the logits (..., V) and `student_support`'s shift and log Z → (...) float64.

    log p = (z − shift) − log Z: both parts small, so log p keeps its digits where p ≈ 1, and the sum
    is of non-negative terms.
    """
    log_p = (logits - shift.to(logits.dtype)[..., None]) - log_z.to(logits.dtype)[..., None]
    log_p = log_p.clamp(min=torch.finfo(log_p.dtype).min)  # −inf logits: 0·log 0 = 0, not NaN
    return -(log_p.exp() * log_p).sum(-1).double()


# ---------------------------------------------------------------------------------------------
# weights and the pooled metrics, shared with the chunked implementation


def importance_weights(trainer_logprobs: torch.Tensor, sampler_logprobs: torch.Tensor, cap: float = 2.0) -> torch.Tensor:
    """w = min(exp(log π_train − log π_sampler), cap), detached: (B, T) ×2 → (B, T).

    NaN where either log-probability is NaN or ±inf: the sampler drew the token, so its log-probability is finite,
    and a broken one must not become the cap (−inf) or a zero weight (+inf) that hides it."""
    sampler = sampler_logprobs.detach().to(trainer_logprobs.dtype)
    w = torch.exp(trainer_logprobs.detach() - sampler).clamp(max=cap)
    return torch.where(torch.isfinite(sampler), w, torch.full_like(w, NAN))


def check_shapes(batch: int, length: int, response_mask, sample_mask, **per_token) -> None:
    if response_mask.shape != (batch, length) or sample_mask.shape != (batch,):
        raise ValueError(f"response_mask must be ({batch}, {length}) and sample_mask ({batch},), got "
                         f"{tuple(response_mask.shape)} and {tuple(sample_mask.shape)}")
    for name, value in per_token.items():
        if value is not None and value.shape != (batch, length):
            raise ValueError(f"{name} must be ({batch}, {length}) like response_mask, got {tuple(value.shape)}")


def check_tensors(**named) -> None:
    """Refuse, naming the argument, a tensor that has no values (meta) or complex ones; None is skipped."""
    for name, value in named.items():
        if value is None:
            continue
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{name} must be a torch tensor, got {type(value).__name__}")
        if value.is_meta:  # a shape without values: the loss would be a meta tensor, not a number
            raise ValueError(f"{name} is a meta tensor (a shape without values); pass a tensor that holds data")
        if value.is_complex():  # logits, masks and weights are real; a cast would drop the imaginary part silently
            raise TypeError(f"{name} must hold real numbers, got {value.dtype}")


def check_cap(is_cap) -> float:
    """The importance weights' cap: a real number > 0 (+inf: no cap); NaN or ≤ 0 would hide every weight."""
    if isinstance(is_cap, bool) or not isinstance(is_cap, numbers.Real) or not is_cap > 0:
        raise ValueError(f"is_cap must be a number > 0, got {is_cap!r}")
    return float(is_cap)


def weigh(coefficients: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """c·w, and 0 where c = 0 whatever w holds there (padding, no teacher): a NaN weight counts only where its
    token does."""
    if weights is None:
        return coefficients
    weighted = coefficients * weights.detach().to(coefficients.dtype)
    return torch.where(coefficients != 0, weighted, torch.zeros_like(weighted))


def token_coefficients(response_mask: torch.Tensor, sample_mask: torch.Tensor) -> torch.Tensor:
    """c_{i,t} = m_i · 1[t ∈ response_i] / (|response_i| · B), so that L = Σ_{i,t} c_{i,t} w_{i,t} D_{i,t}: (B, T) float64."""
    tokens = response_mask.double()
    per_sequence = sample_mask.double() / (tokens.sum(1).clamp(min=1.0) * response_mask.shape[0])
    return tokens * per_sequence[:, None]


def weighted_sum(coefficients: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Σ c·v where positions with c = 0 contribute 0 even if v is inf or NaN there (padding, no teacher)."""
    return torch.where(coefficients != 0, coefficients * values, torch.zeros_like(values)).sum()


def pool(information: torch.Tensor, jsd: torch.Tensor, entropy_: torch.Tensor, response_mask: torch.Tensor,
         sample_mask: torch.Tensor, dtype: torch.dtype) -> dict:
    """The metric pairs from per-token values (B, T) (no gradient), in `dtype`."""
    tokens = response_mask.to(information.dtype)
    used = tokens * sample_mask.to(tokens.dtype)[:, None]  # only sequences with a teacher
    cast = lambda pair: tuple(x.to(dtype) for x in pair)  # noqa: E731
    return {"information": cast(aggregate(information, used, "sum")),
            "information_sequence": cast(aggregate(information, used, "sequence_sum")),
            "jsd": cast(aggregate(jsd, used, "sum")),
            "entropy": cast(aggregate(entropy_, tokens, "sum")),
            "information_per_sequence": per_sequence_mean(information, used).to(dtype)}


def per_sequence_mean(values: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """(B, T) values, (B, T) weights → (B,) each row's weighted mean, 0 where a row has no weight (no teacher)."""
    w = weight.to(values.dtype)
    total = torch.where(w != 0, values, torch.zeros_like(values)).mul(w).sum(-1)
    count = w.sum(-1)
    return torch.where(count != 0, total / torch.where(count != 0, count, torch.ones_like(count)), torch.zeros_like(total))


# ---------------------------------------------------------------------------------------------
# the loss from logits (autograd)


def self_distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, response_mask: torch.Tensor,
                           sample_mask: torch.Tensor, beta: float = 0.5, topk: int | None = 100, add_tail: bool = True,
                           is_weights: torch.Tensor | None = None, divergence: str = "kl",
                           response_ids: torch.Tensor | None = None, sampler_logprobs: torch.Tensor | None = None,
                           is_cap: float = 2.0) -> SelfDistillationOutput:
    """The loss and the information pair for one micro-batch.

    Args:
        student_logits: (B, T, V) at the response positions (row t predicts response token t).
        teacher_logits: (B, T, V), the teacher's at the same response tokens; detached here.
        response_mask: (B, T), 1 on real response tokens (0 on padding).
        sample_mask: (B,), m_i: 1 where the sequence has a teacher; masked sequences still count in B.
        beta: D_β's mixing weight (0: KL(q‖p), ½: JSD, 1: KL(p‖q)).
        topk, add_tail: the support: the student's top-k tokens plus a tail bucket, the top-k renormalised
            (`add_tail=False`), or the whole vocabulary (`topk=None`).
        is_weights: (B, T) importance weights w (see `importance_weights`), detached; None = 1.
        divergence: the one the information signal is computed with, a `pgpo.information` kind: "kl" = KL(q ‖ p)
            (`docs/method.md` §2), "reverse_kl", "jsd".
        response_ids: (B, T) the sampled tokens; gives `token_logprobs`.
        sampler_logprobs: (B, T) the rollout engine's log-probabilities of them; with `response_ids`, the
            importance weights are computed here (capped at `is_cap`) instead of being passed in.

    Non-finite input (a NaN or +inf logit, a NaN or ±inf mask, weight or sampler log-probability at a position
    that counts) gives a NaN (or ±inf) loss, gradient and metrics, never a finite number (the module docstring);
    −inf logits are zero mass. Meta and complex tensors are refused (ValueError, TypeError), as is an `is_cap`
    that is not a number > 0.
    """
    check_tensors(student_logits=student_logits, teacher_logits=teacher_logits, response_mask=response_mask,
                  sample_mask=sample_mask, is_weights=is_weights, response_ids=response_ids,
                  sampler_logprobs=sampler_logprobs)
    is_cap = check_cap(is_cap)
    if student_logits.shape != teacher_logits.shape or student_logits.dim() != 3:
        raise ValueError(f"student and teacher logits must both be (B, T, V), got {tuple(student_logits.shape)} "
                         f"and {tuple(teacher_logits.shape)}")
    batch, length = student_logits.shape[:2]
    check_shapes(batch, length, response_mask, sample_mask, is_weights=is_weights, response_ids=response_ids,
                 sampler_logprobs=sampler_logprobs)
    if sampler_logprobs is not None and (response_ids is None or is_weights is not None):
        raise ValueError("sampler_logprobs needs response_ids, and replaces is_weights")
    dtype = torch.promote_types(student_logits.dtype, torch.float32)  # of the vocabulary-wide arithmetic
    z, y = student_logits.to(dtype), teacher_logits.detach().to(dtype)
    top, a, shift, log_z = student_support(z, topk, add_tail)
    log_p, log_q = normalise(a), normalise(teacher_support(y, top, add_tail))

    token_logprobs = None
    if response_ids is not None:
        token_logprobs = token_logprobs_of(z, response_ids, shift, log_z)
        if sampler_logprobs is not None:
            is_weights = importance_weights(token_logprobs, sampler_logprobs, is_cap)
    coefficients = token_coefficients(response_mask, sample_mask)
    # where nothing counts (padding, no teacher) the teacher may be garbage: read it as the student there, or a NaN
    # would reach the student's gradient through the zero weight (0·NaN); values there are masked out anyway
    log_q = torch.where((coefficients != 0)[..., None], log_q, log_p.detach())
    per_token = weigh(coefficients, is_weights)
    loss = weighted_sum(per_token, generalized_jsd(log_p, log_q, beta))
    with torch.no_grad():
        lp = log_p.detach()
        metrics = pool(divergence_of(lp, log_q, divergence), divergence_of(lp, log_q, "jsd"),
                       entropy(z.detach(), shift, log_z.detach()),
                       response_mask, sample_mask, dtype)
    return SelfDistillationOutput(loss.to(dtype), **metrics,
                                  token_logprobs=None if token_logprobs is None else token_logprobs.to(dtype))
