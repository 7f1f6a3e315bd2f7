"""SDPO's self-distillation loss and PGPO's information signal from the same forwards (`docs/method.md` §1–2).

    L = (1 / B) · Σ_i m_i · mean_{t ∈ response_i} [ w_{i,t} · D_β(p_{i,t}, q_{i,t}) ]

p is the student's next-token distribution (with gradient), q the teacher's (no gradient), both read
at the response positions. The support is the student's top-k tokens plus one tail bucket holding
the rest of each distribution's mass (`add_tail`), or the top-k alone renormalised (decision: a
divergence needs two distributions), or the full vocabulary (`topk=None`). The information signal is
KL(q ‖ p) on the same support, as a (numerator, denominator) pair over the tokens of masked-in
sequences, so that it can be summed over micro-batches and ranks before dividing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pgpo import generalized_jsd, information


@dataclass
class SelfDistillationOutput:
    """`loss` (0-d, differentiable in the student logits); pairs (numerator, denominator), 0-d each,
    no gradient: `information` = KL(q ‖ p) (or the chosen `signal`) and `jsd` = D_½(p, q) on the support, over the tokens of
    masked-in sequences; `entropy` = H(p) over the full vocabulary, over every response token."""

    loss: torch.Tensor
    information: tuple[torch.Tensor, torch.Tensor]
    information_sequence: tuple[torch.Tensor, torch.Tensor]  # the sequence-mean's pair (pgpo reduce="sequence_sum")
    jsd: tuple[torch.Tensor, torch.Tensor]
    entropy: tuple[torch.Tensor, torch.Tensor]


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 − eˣ) for x ≤ 0, accurate at both ends (Mächler's switch at −log 2)."""
    x = x.clamp(max=0.0)
    return torch.where(x > -0.6931471805599453, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def support_logprobs(student_logits: torch.Tensor, teacher_logits: torch.Tensor, topk: int | None = 100,
                     add_tail: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Student and teacher log-probabilities on the common support: (B, T, V) ×2 → (B, T, S) ×2.

    S = V (topk None), k + 1 (top-k of the student + tail), or k (top-k renormalised). Computed in
    float32 at least; the teacher's are detached.
    """
    return restrict(*full_logprobs(student_logits, teacher_logits), topk, add_tail)


def full_logprobs(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Vocabulary log-probabilities in float32 at least, the teacher's detached: (B, T, V) ×2 → same."""
    dtype = torch.promote_types(student_logits.dtype, torch.float32)
    return (torch.log_softmax(student_logits.to(dtype), dim=-1),
            torch.log_softmax(teacher_logits.detach().to(dtype), dim=-1))


def restrict(log_p: torch.Tensor, log_q: torch.Tensor, topk: int | None = 100,
             add_tail: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Full log-probabilities (B, T, V) → the support's (B, T, S); see `support_logprobs`."""
    if topk is None or topk >= log_p.shape[-1]:
        return log_p, log_q
    if topk < 1:
        raise ValueError(f"topk must be a positive integer or None, got {topk!r}")
    index = log_p.detach().topk(topk, dim=-1).indices
    top_p, top_q = log_p.gather(-1, index), log_q.gather(-1, index)
    if not add_tail:
        return torch.log_softmax(top_p, dim=-1), torch.log_softmax(top_q, dim=-1)
    tail_p = _log1mexp(torch.logsumexp(top_p, dim=-1, keepdim=True))
    tail_q = _log1mexp(torch.logsumexp(top_q, dim=-1, keepdim=True))
    return torch.cat([top_p, tail_p], dim=-1), torch.cat([top_q, tail_q], dim=-1)


def importance_weights(trainer_logprobs: torch.Tensor, sampler_logprobs: torch.Tensor, cap: float = 2.0) -> torch.Tensor:
    """w = min(exp(log π_train − log π_sampler), cap), detached: (B, T) ×2 → (B, T)."""
    return torch.exp(trainer_logprobs.detach() - sampler_logprobs.detach()).clamp(max=cap)


def self_distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, response_mask: torch.Tensor,
                           sample_mask: torch.Tensor, beta: float = 0.5, topk: int | None = 100, add_tail: bool = True,
                           is_weights: torch.Tensor | None = None, signal: str = "kl") -> SelfDistillationOutput:
    """The loss and the information pair for one micro-batch.

    Args:
        student_logits: (B, T, V) at the response positions (row t predicts response token t).
        teacher_logits: (B, T, V), the teacher's at the same response tokens; detached here.
        response_mask: (B, T), 1 on real response tokens (0 on padding).
        sample_mask: (B,), m_i: 1 where the sequence has a teacher; masked sequences still count in B.
        beta: D_β's mixing weight (0: KL(q‖p), ½: JSD, 1: KL(p‖q)).
        topk, add_tail: the support (see `support_logprobs`).
        is_weights: (B, T) importance weights w (see `importance_weights`), detached; None = 1.
        signal: the information's divergence, a `pgpo.information` kind: "kl" = KL(q ‖ p) (`docs/method.md` §2),
            "reverse_kl", "jsd".
    """
    if student_logits.shape != teacher_logits.shape or student_logits.dim() != 3:
        raise ValueError(f"student and teacher logits must both be (B, T, V), got {tuple(student_logits.shape)} "
                         f"and {tuple(teacher_logits.shape)}")
    batch, length = student_logits.shape[:2]
    if response_mask.shape != (batch, length) or sample_mask.shape != (batch,):
        raise ValueError(f"response_mask must be ({batch}, {length}) and sample_mask ({batch},), got "
                         f"{tuple(response_mask.shape)} and {tuple(sample_mask.shape)}")
    full_p, full_q = full_logprobs(student_logits, teacher_logits)  # once: the support and the entropy share it
    log_p, log_q = restrict(full_p, full_q, topk, add_tail)
    divergence = generalized_jsd(log_p, log_q, beta)  # (B, T)
    tokens = response_mask.to(divergence.dtype)
    if is_weights is not None:
        divergence = divergence * is_weights.detach().to(divergence.dtype)
    per_sequence = (divergence * tokens).sum(dim=1) / tokens.sum(dim=1).clamp(min=1.0)
    loss = (sample_mask.to(per_sequence.dtype) * per_sequence).sum() / batch
    with torch.no_grad():
        used = tokens * sample_mask.to(tokens.dtype)[:, None]
        kl_pair = information(log_p.detach(), log_q, used, kind=signal, reduce="sum")
        kl_sequence = information(log_p.detach(), log_q, used, kind=signal, reduce="sequence_sum")
        jsd_pair = information(log_p.detach(), log_q, used, kind="jsd", reduce="sum")
        full = full_p.detach()  # entropy over the whole vocabulary
        entropy = -(full.exp() * torch.nan_to_num(full, neginf=0.0)).sum(-1)
        entropy_pair = ((entropy * tokens).sum(), tokens.sum())
    return SelfDistillationOutput(loss, kl_pair, kl_sequence, jsd_pair, entropy_pair)
