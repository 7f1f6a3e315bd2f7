"""The self-distillation loss from the final hidden states and the output head, one chunk of positions at a time.

`llm_runs.loss.self_distillation_loss` takes (B, T, V) logits and lets autograd keep what it needs: at
Qwen3-8B's vocabulary (151 936) one 8 192-token response is 4.6 GiB per float32 copy, and that path
holds several (the logits with their gradient, the teacher's, the student's log-softmax for backward,
the entropy's). Here the logits of at most `chunk_size` positions exist at a time:

    for each chunk of positions:  z = h·Wᵀ (student), y = h'·W'ᵀ (teacher), both (n, V) float32
        → the exact support (`llm_runs.loss`), D_β, I, JSD, entropy, log π(sampled token), importance weight
        → ∂L/∂z in closed form (below) → ∂L/∂h = ∂L/∂z · W (n, H),  ∂L/∂W += (∂L/∂z)ᵀ · h (V, H)

The gradient is computed in the forward pass, chunk by chunk, and kept as ∂L/∂h and ∂L/∂W (the sizes
of h and W, not of the logits); backward only scales them by the incoming gradient, so no logits are
recomputed (the loss is a scalar at the end of the graph: its gradient is known once it is computed).

With a = the support's log-masses (top-k logits and the tail's log-sum-exp), log p_s = a_s − log Z,
g_s = ∂L/∂log p_s (autograd on the (n, S) support, which is small) and G = Σ_s g_s:

    ∂L/∂z_v = g_v − G·p_v                        v in the top-k
    ∂L/∂z_v = (g_tail − G·p_tail) · τ_v          v outside it, τ_v = exp(z_v − log Σ_{u ∉ top-k} e^{z_u})

(the top-k renormalised: the first line with the top-k's own p, zero outside; the whole vocabulary:
the first line everywhere). Every factor is computed without cancellation: the support in float64 and
τ from the tail's own exponentials.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch

from llm_runs import loss as exact
from pgpo.divergence import generalized_jsd
from pgpo.information import divergence as divergence_of

CHUNK_BYTES = 1 << 27  # one (n, V) float32 buffer of at most 128 MiB: n = 220 positions at V = 151 936
# On a GPU each chunk also reads and writes the (V, H) float32 weight-gradient total (2.5 GB at Qwen3-8B's head,
# ~1 ms of memory traffic): chunks of 1 GiB of logits (n = 1 765) keep that under a tenth of the chunk's own work.
CHUNK_BYTES_GPU = 1 << 30
HALF = (torch.bfloat16, torch.float16)


def default_chunk_size(vocabulary: int, device: torch.device | str = "cpu") -> int:
    budget = CHUNK_BYTES_GPU if torch.device(device).type == "cuda" else CHUNK_BYTES
    return max(1, budget // (4 * vocabulary))


# ---------------------------------------------------------------------------------------------
# the model's final hidden states instead of its logits


def output_head(model: torch.nn.Module) -> torch.nn.Linear:
    """The model's output head (a transformers model, or a peft one around it), checked to be a plain
    linear map from the final hidden states to the logits."""
    head = model.get_output_embeddings()
    config = getattr(model, "config", None)
    scaled = [k for k in ("final_logit_softcapping", "logit_scale", "output_mult") if getattr(config, k, None)]
    if not isinstance(head, torch.nn.Linear) or scaled:
        raise ValueError(f"loss.implementation=chunked needs logits = hidden · Wᵀ (+ b); this model's head is "
                         f"{type(head).__name__}{' with ' + ', '.join(scaled) if scaled else ''}: use loss.implementation=plain")
    return head


def _passthrough(hidden: torch.Tensor) -> torch.Tensor:
    return hidden.clone()  # not a view: FSDP2's backward hook must see a tensor of its own


@contextmanager
def hidden_states_out(model: torch.nn.Module):
    """Within the block, `model(...)`'s `logits` are the final hidden states (b, L, H); yields the head.

    The head's `forward` is replaced for the block (the module stays where it is: FSDP2 and peft keep
    seeing the model they wrapped)."""
    head = output_head(model)
    head.forward = _passthrough
    try:
        yield head
    finally:
        del head.forward


def response_hidden(model, ids: torch.Tensor, attention: torch.Tensor, length: int):
    """Final hidden states predicting the last `length` tokens and the output head: (b, L) → ((b, length, H), head).

    Under FSDP2 the root module (whose parameters include the head) is unsharded again after its forward,
    so that the loss sees the head's full weight: the student's gradient lands on the unsharded parameter,
    which FSDP2's backward reduce-scatters and reshards as it would have; a teacher without backward is
    resharded by the caller (`llm_runs.parallel.reshard`).
    """
    positions = (attention.cumsum(-1) - 1).clamp(min=0)  # left padding: positions count real tokens only
    with hidden_states_out(model) as head:
        out = model(input_ids=ids, attention_mask=attention, position_ids=positions, logits_to_keep=length + 1,
                    use_cache=False)
    if hasattr(model, "unshard"):  # FSDP2 resharded the root after its forward
        model.unshard()
    return out.logits[:, :-1], head


# ---------------------------------------------------------------------------------------------
# the loss


@dataclass
class _Plan:
    """Everything the chunk loop needs besides the differentiable inputs, and the per-token results."""

    teacher_hidden: torch.Tensor  # (N, H') or (N, V) logits when teacher_weight is None
    teacher_weight: torch.Tensor | None
    teacher_bias: torch.Tensor | None
    response_ids: torch.Tensor | None  # (N,)
    sampler_logprobs: torch.Tensor | None  # (N,)
    is_weights: torch.Tensor | None  # (N,)
    coefficients: torch.Tensor  # (N,) float64: m_i · 1[t ∈ response_i] / (|response_i| · B)
    beta: float
    topk: int | None
    add_tail: bool
    is_cap: float
    divergence: str
    chunk_size: int
    # filled by the forward: (N,) float64 each
    information: torch.Tensor | None = None
    jsd: torch.Tensor | None = None
    entropy: torch.Tensor | None = None
    token_logprobs: torch.Tensor | None = None


def _logits(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None) -> torch.Tensor:
    """(n, H) hidden states → (n, V) float32+ logits (computed in the head's dtype, as the model does); or
    logits given directly, copied (the chunk is worked on in place)."""
    if weight is None:
        return x.to(torch.promote_types(x.dtype, torch.float32), copy=True)
    z = torch.nn.functional.linear(x, weight, bias)
    return z.to(torch.promote_types(z.dtype, torch.float32))


def _chunk(plan: _Plan, rows: slice, z: torch.Tensor, teacher_logits, want_grad: bool):
    """One chunk: the student's logits z (n, V) (overwritten) and a function giving the teacher's (called once
    z's buffers are gone) → (loss contribution 0-d float64, ∂L/∂z (n, V) in z's dtype, or None).
    Writes the chunk's per-token metrics into `plan`."""
    vocabulary, dtype = z.shape[-1], z.dtype
    full = exact.full_vocabulary(plan.topk, vocabulary)
    if full:
        top = None
        shift = exact.row_shift(z.amax(-1)).double()
        a = z.double() - shift[:, None]
        log_z = exact.log_normaliser(a)
    else:
        k = plan.topk
        values, index = z.topk(k + 1, dim=-1)
        top, shift = index[:, :k], exact.row_shift(values[:, 0]).double()
        tail_shift = exact.row_shift(values[:, k])
        tau = (z - tail_shift[:, None]).exp_().scatter_(1, top, 0.0)  # exp(z − max outside the top-k), 0 on it
        tail_sum = tau.sum(-1).double()
        tail = (tail_shift.double() - shift) + tail_sum.log()
        a = torch.cat([values[:, :k].double() - shift[:, None], tail[:, None]], -1)
        log_z = exact.log_normaliser(a)
        if not plan.add_tail:
            a = a[:, :k]
    log_p = exact.normalise(a)
    if plan.response_ids is not None:
        plan.token_logprobs[rows] = exact.token_logprobs_of(z, plan.response_ids[rows], shift, log_z)
    plan.entropy[rows] = _entropy_in_place(z, shift, log_z)  # z is log p from here on
    del z
    log_q = exact.normalise(_teacher_support_in_place(teacher_logits(), top, plan.add_tail))

    weights = plan.is_weights[rows].double() if plan.is_weights is not None else None
    if plan.sampler_logprobs is not None:
        weights = exact.importance_weights(plan.token_logprobs[rows], plan.sampler_logprobs[rows], plan.is_cap)
    coefficients = exact.weigh(plan.coefficients[rows], weights)
    plan.information[rows] = divergence_of(log_p, log_q, plan.divergence)
    plan.jsd[rows] = divergence_of(log_p, log_q, "jsd")
    if not want_grad:
        return exact.weighted_sum(coefficients, generalized_jsd(log_p, log_q, plan.beta)), None
    with torch.enable_grad():
        leaf = log_p.requires_grad_(True)
        contribution = exact.weighted_sum(coefficients, generalized_jsd(leaf, log_q, plan.beta))
        (g,) = torch.autograd.grad(contribution, leaf)
    g = torch.where(coefficients[:, None] != 0, g, torch.zeros_like(g))  # padding and no-teacher rows: none
    p = log_p.exp()
    total = g.sum(-1, keepdim=True)
    if full:
        return contribution.detach(), (g - total * p).to(dtype)
    k = plan.topk
    on_top = g[:, :k] - total * p[:, :k]
    if plan.add_tail:  # outside the top-k: (g_tail − G·p_tail)·τ_v, τ = exp(z − tail shift) / tail sum
        scale = (g[:, k] - total[:, 0] * p[:, k]) / torch.where(tail_sum > 0, tail_sum, torch.ones_like(tail_sum))
        grad = tau.mul_(scale.to(dtype)[:, None])  # no mass outside the top-k: τ = 0 there anyway
    else:
        grad = tau.zero_()
    return contribution.detach(), grad.scatter_(1, top, on_top.to(dtype))


def _entropy_in_place(z: torch.Tensor, shift: torch.Tensor, log_z: torch.Tensor) -> torch.Tensor:
    """`llm_runs.loss.entropy` on a chunk, overwriting z with log p (one (n, V) buffer fewer)."""
    log_p = z.sub_(shift.to(z.dtype)[:, None]).sub_(log_z.to(z.dtype)[:, None])
    log_p.clamp_(min=torch.finfo(z.dtype).min)
    return -log_p.exp().mul_(log_p).sum(-1).double()


def _teacher_support_in_place(y: torch.Tensor, top: torch.Tensor | None, add_tail: bool) -> torch.Tensor:
    """`llm_runs.loss.teacher_support` on a chunk, overwriting y."""
    shift = exact.row_shift(y.amax(-1)).double()
    if top is None:
        return y.double() - shift[:, None]
    gathered = y.gather(1, top).double() - shift[:, None]
    if not add_tail:
        return gathered
    y.scatter_(1, top, exact.NEG_INF)
    tail_shift = exact.row_shift(y.amax(-1))
    tail = (tail_shift.double() - shift) + y.sub_(tail_shift[:, None]).exp_().sum(-1).double().log()
    return torch.cat([gathered, tail[:, None]], -1)


def _add_weight_grad(total: torch.Tensor, grad: torch.Tensor, hidden: torch.Tensor):
    """total (V, H) += gradᵀ·hidden for a chunk's ∂L/∂z (n, V) and hidden states (n, H). With a 16-bit head the
    product runs in 16 bits on the tensor cores (a float32 one runs at a fraction of their rate: on an H200, ~60
    TFLOP/s against ~990) and its (V, H) result is added to the float32 total; the plain path's autograd forms
    the same product in 16 bits, over every position at once."""
    if grad.dtype in HALF:
        total += grad.t() @ hidden.to(grad.dtype)
    else:
        total.addmm_(grad.t(), hidden.to(total.dtype))


class _ChunkedLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, plan: _Plan):
        n_rows = hidden.shape[0]
        want_hidden, want_weight, want_bias = ctx.needs_input_grad[:3]
        want_grad = want_hidden or want_weight or want_bias
        grad_hidden = torch.zeros_like(hidden) if want_hidden else None
        grad_weight = torch.zeros(weight.shape, dtype=torch.promote_types(weight.dtype, torch.float32),
                                  device=weight.device) if want_weight else None
        grad_bias = torch.zeros(bias.shape, dtype=torch.float64, device=bias.device) if want_bias else None
        total = torch.zeros((), dtype=torch.float64, device=hidden.device)
        for start in range(0, n_rows, plan.chunk_size):
            rows = slice(start, min(start + plan.chunk_size, n_rows))
            teacher = lambda: _logits(plan.teacher_hidden[rows], plan.teacher_weight, plan.teacher_bias)  # noqa: E731
            contribution, grad = _chunk(plan, rows, _logits(hidden[rows], weight, bias), teacher, want_grad)
            total += contribution
            if grad is None:
                continue
            if weight is None:  # the inputs were the logits
                grad_hidden[rows] = grad.to(hidden.dtype)
                continue
            if want_bias:
                grad_bias += grad.sum(0, dtype=torch.float64)
            if weight.dtype in HALF:  # products in the head's dtype, as autograd forms the plain path's
                grad = grad.to(weight.dtype)
            if want_hidden:
                grad_hidden[rows] = grad.to(weight.dtype) @ weight
            if want_weight:
                _add_weight_grad(grad_weight, grad, hidden[rows])
        ctx.grads = (grad_hidden, None if grad_weight is None else grad_weight.to(weight.dtype),
                     None if grad_bias is None else grad_bias.to(bias.dtype))
        return total

    @staticmethod
    def backward(ctx, grad_output):
        grads, ctx.grads = ctx.grads, None
        if grads is None:
            raise RuntimeError("the chunked loss's gradient was computed in its forward and handed over once: "
                               "call backward on it only once (no retain_graph)")
        # in place: a scaled copy of ∂L/∂W would hold a second (V, H) tensor at once
        grads = tuple(None if g is None else g.mul_(grad_output.to(g.dtype)) for g in grads)
        return (*grads, None)


def chunked_self_distillation_loss(student_hidden: torch.Tensor, student_head: torch.nn.Module | None,
                                   teacher_hidden: torch.Tensor, teacher_head: torch.nn.Module | None,
                                   response_mask: torch.Tensor, sample_mask: torch.Tensor, beta: float = 0.5,
                                   topk: int | None = 100, add_tail: bool = True, divergence: str = "kl",
                                   response_ids: torch.Tensor | None = None,
                                   sampler_logprobs: torch.Tensor | None = None, is_cap: float = 2.0,
                                   is_weights: torch.Tensor | None = None,
                                   chunk_size: int | None = None) -> exact.SelfDistillationOutput:
    """`llm_runs.loss.self_distillation_loss`, from the final hidden states and the output heads.

    Args:
        student_hidden: (B, T, H) final hidden states at the response positions (row t predicts response
            token t), with gradient; or the logits (B, T, V) when `student_head` is None.
        student_head: the output head (an `nn.Linear`, V × H; its weight receives the gradient), or None.
        teacher_hidden, teacher_head: the same for the teacher (no gradient).
        response_mask, sample_mask, beta, topk, add_tail, divergence, response_ids, sampler_logprobs, is_cap,
            is_weights: as in `self_distillation_loss`.
        chunk_size: positions per chunk (default: one (n, V) float32 buffer of 128 MiB at most, 1 GiB on a GPU).

    Equal to `self_distillation_loss` on the logits h·Wᵀ (+ b), with at most one chunk of (n, V) float32
    logits alive at a time (a few buffers of that size within the chunk). Non-finite input gives a non-finite
    loss, gradient and metrics as there (NaN in the hidden states or a head's weights is NaN in the logits);
    meta and complex tensors and a bad `is_cap` are refused as there.
    """
    exact.check_tensors(student_hidden=student_hidden, teacher_hidden=teacher_hidden, response_mask=response_mask,
                        sample_mask=sample_mask, response_ids=response_ids, sampler_logprobs=sampler_logprobs,
                        is_weights=is_weights,
                        **{f"{side}_head.{k}": getattr(head, k, None) for side, head in (("student", student_head),
                                                                                         ("teacher", teacher_head))
                           for k in ("weight", "bias")})
    is_cap = exact.check_cap(is_cap)
    if student_hidden.dim() != 3 or teacher_hidden.shape[:2] != student_hidden.shape[:2]:
        raise ValueError(f"student and teacher hidden states must be (B, T, ·) alike, got "
                         f"{tuple(student_hidden.shape)} and {tuple(teacher_hidden.shape)}")
    batch, length = student_hidden.shape[:2]
    exact.check_shapes(batch, length, response_mask, sample_mask, is_weights=is_weights, response_ids=response_ids,
                       sampler_logprobs=sampler_logprobs)
    if sampler_logprobs is not None and (response_ids is None or is_weights is not None):
        raise ValueError("sampler_logprobs needs response_ids, and replaces is_weights")
    weight, bias = (None, None) if student_head is None else (student_head.weight, student_head.bias)
    t_weight, t_bias = (None, None) if teacher_head is None else (teacher_head.weight.detach(),
                                                                  None if teacher_head.bias is None else teacher_head.bias.detach())
    vocabulary = student_hidden.shape[-1] if weight is None else weight.shape[0]
    t_vocabulary = teacher_hidden.shape[-1] if t_weight is None else t_weight.shape[0]
    if vocabulary != t_vocabulary:
        raise ValueError(f"student and teacher vocabularies differ: {vocabulary} and {t_vocabulary}")
    flat = lambda x: None if x is None else x.reshape(batch * length, *x.shape[2:])  # noqa: E731
    n_rows = batch * length
    plan = _Plan(flat(teacher_hidden.detach()), t_weight, t_bias, flat(response_ids), flat(sampler_logprobs),
                 flat(is_weights), flat(exact.token_coefficients(response_mask, sample_mask).to(student_hidden.device)),
                 beta, topk, add_tail, is_cap, divergence,
                 chunk_size or default_chunk_size(vocabulary, student_hidden.device))
    for name in ("information", "jsd", "entropy", "token_logprobs"):
        setattr(plan, name, torch.zeros(n_rows, dtype=torch.float64, device=student_hidden.device))
    loss = _ChunkedLoss.apply(flat(student_hidden), weight, bias, plan)
    dtype = torch.float64 if student_hidden.dtype == torch.float64 else torch.float32
    shaped = lambda x: x.reshape(batch, length)  # noqa: E731
    metrics = exact.pool(shaped(plan.information), shaped(plan.jsd), shaped(plan.entropy), response_mask, sample_mask, dtype)
    return exact.SelfDistillationOutput(loss.to(dtype), **metrics,
                                        token_logprobs=shaped(plan.token_logprobs).to(dtype) if response_ids is not None else None)
