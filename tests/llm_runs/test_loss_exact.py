"""The self-distillation loss at any logit scale, and its chunked form from hidden states (`llm_runs.chunked_loss`).

The reference is written directly in float64 from the definitions: full log-softmax, the tail bucket's
log-mass as a log-sum-exp over the logits outside the top-k minus the full one.
"""

import itertools
import math

import pytest
import torch

from llm_runs.chunked_loss import chunked_self_distillation_loss, default_chunk_size
from llm_runs.loss import self_distillation_loss

B, T, V, K = 2, 4, 3000, 100


def reference(student, teacher, beta, topk, add_tail, kind):
    """Per-position (D_β, information of `kind`, JSD, entropy), each (B, T) float64, differentiable in `student`."""
    z, y = student.double(), teacher.double()
    full_p, full_q = torch.log_softmax(z, -1), torch.log_softmax(y, -1)
    entropy = -(full_p.exp() * full_p).sum(-1)
    if topk is None:
        lp, lq = full_p, full_q
    else:
        top = z.detach().topk(topk, -1).indices
        if add_tail:
            outside = torch.ones_like(z, dtype=torch.bool).scatter(-1, top, False)
            tail = lambda x: (torch.logsumexp(x.masked_fill(~outside, -math.inf), -1, keepdim=True)  # noqa: E731
                              - torch.logsumexp(x, -1, keepdim=True))
            lp = torch.cat([full_p.gather(-1, top), tail(z)], -1)
            lq = torch.cat([full_q.gather(-1, top), tail(y)], -1)
        else:
            lp, lq = torch.log_softmax(z.gather(-1, top), -1), torch.log_softmax(y.gather(-1, top), -1)

    def kl(a, b):
        return torch.where(a > -math.inf, a.exp() * (a - b), torch.zeros_like(a)).sum(-1)

    def d(b_):
        if b_ == 0:
            return kl(lq, lp)
        if b_ == 1:
            return kl(lp, lq)
        lm = torch.logaddexp(lp + math.log(1 - b_), lq + math.log(b_))
        return (1 - b_) * kl(lp, lm) + b_ * kl(lq, lm)

    info = {"kl": kl(lq, lp), "reverse_kl": kl(lp, lq), "jsd": d(0.5)}[kind]
    return d(beta), info, d(0.5), entropy


def logits(scale, regime, seed=0):
    """(B, T, V) student and teacher logits, float64: the teacher independent of the student, or close to it
    (both confident on the same token at large scales: the divergences are then tiny)."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(B, T, V, generator=g, dtype=torch.float64)
    other = torch.randn(B, T, V, generator=g, dtype=torch.float64)
    teacher = other if regime == "independent" else base + 0.1 * other
    return base * scale, teacher * scale


def relative(a, b):
    return abs(a - b) / abs(b)


def grad_error(grad, want):
    """Largest entry's error relative to the largest entry, with an absolute floor of 1e-15 (the loss's per-token
    weight here is 1/8): a saturated JSD has gradients of ~1e-17 that are rounding noise in the float64
    reference itself."""
    return (grad.double() - want).abs().max().item() / max(want.abs().max().item(), 1e-10)


GRID = list(itertools.product([1.0, 10.0, 40.0, 100.0], ["independent", "close"], [torch.float32, torch.bfloat16],
                              [0.0, 0.5, 1.0], [(K, True), (K, False), (None, True)]))


@pytest.mark.parametrize("implementation", ["plain", "chunked"])
@pytest.mark.parametrize("scale, regime, dtype, beta, support", GRID)
def test_every_quantity_is_exact_at_any_logit_scale(implementation, scale, regime, dtype, beta, support):
    student, teacher = logits(scale, regime)
    student, teacher = student.to(dtype), teacher.to(dtype)  # the inputs; the reference reads the same values
    topk, add_tail = support
    response_ids = torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(1))
    for kind in ("kl", "reverse_kl", "jsd"):
        leaf = student.clone().requires_grad_(True)
        args = (torch.ones(B, T), torch.ones(B))
        options = dict(beta=beta, topk=topk, add_tail=add_tail, divergence=kind, response_ids=response_ids)
        if implementation == "plain":
            out = self_distillation_loss(leaf, teacher, *args, **options)
        else:
            out = chunked_self_distillation_loss(leaf, None, teacher, None, *args, chunk_size=3, **options)
        out.loss.backward()
        want_leaf = student.double().requires_grad_(True)
        d, info, jsd, entropy = reference(want_leaf, teacher, beta, topk, add_tail, kind)
        want = d.mean()  # every sequence masked in and complete: L = mean over positions
        want.backward()
        assert torch.isfinite(leaf.grad).all() and math.isfinite(out.loss.item())
        assert relative(out.loss.item(), want.item()) < 1e-5
        assert relative(out.information[0].item(), info.sum().item()) < 1e-5, kind
        assert relative(out.jsd[0].item(), jsd.sum().item()) < 1e-5
        assert relative(out.entropy[0].item(), entropy.sum().item()) < 1e-5
        token = torch.log_softmax(student.double(), -1).gather(-1, response_ids[..., None])[..., 0]
        torch.testing.assert_close(out.token_logprobs.double(), token, rtol=1e-6, atol=1e-6)
        if dtype == torch.float32:  # bf16 logits get bf16 gradients (8 bits): their values are checked above
            assert grad_error(leaf.grad, want_leaf.grad) < 1e-5


def test_a_saturated_tail_used_to_be_log_zero():
    """Logits × 40 over 3,000 tokens: the top-100 hold all but ~1e-26 of the mass. log(1 − Σ top-k p) in
    float32 is then −inf, NaN or tens of nats off (the loss was inf or NaN, every step skipped); the
    tail's own log-sum-exp is exact."""
    student, teacher = (x.float() for x in logits(40.0, "independent"))
    log_p = torch.log_softmax(student, -1)
    cancelled = torch.log1p(-torch.logsumexp(log_p.topk(K, -1).values, -1).exp())
    z = student.double()
    outside = torch.ones_like(z, dtype=torch.bool).scatter(-1, z.topk(K, -1).indices, False)
    exact = torch.logsumexp(z.masked_fill(~outside, -math.inf), -1) - torch.logsumexp(z, -1)
    assert (exact < -40).all()
    assert (~torch.isfinite(cancelled) | ((cancelled - exact).abs() > 10)).all()
    leaf = student.clone().requires_grad_(True)
    out = self_distillation_loss(leaf, teacher, torch.ones(B, T), torch.ones(B), beta=0.5, topk=K)
    out.loss.backward()
    assert math.isfinite(out.loss.item()) and math.isfinite(out.information[0].item())
    assert torch.isfinite(leaf.grad).all()


# ---------------------------------------------------------------------------------------------
# chunked from hidden states = plain from logits


def _heads(scale=1.0, bias=False, dtype=torch.float32, hidden=16, vocabulary=50, seed=1):
    g = torch.Generator().manual_seed(seed)
    student = torch.nn.Linear(hidden, vocabulary, bias=bias)
    teacher = torch.nn.Linear(hidden, vocabulary, bias=False)
    with torch.no_grad():
        student.weight.copy_(torch.randn(vocabulary, hidden, generator=g) * scale / 4)
        teacher.weight.copy_(student.weight + 0.3 * torch.randn(vocabulary, hidden, generator=g) * scale / 4)
        if bias:
            student.bias.copy_(torch.randn(vocabulary, generator=g))
    return student.to(dtype), teacher.to(dtype)


def _batch(hidden=16, vocabulary=50, batch=3, length=5, dtype=torch.float32, seed=2):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(batch, length, hidden, generator=g).to(dtype)
    h_teacher = torch.randn(batch, length, hidden, generator=g).to(dtype)
    response_mask = torch.ones(batch, length)
    response_mask[0, :2] = 0  # left padding of a shorter response
    sample_mask = torch.tensor([1.0, 0.0, 1.0])[:batch]  # no teacher for the middle sequence
    ids = torch.randint(0, vocabulary, (batch, length), generator=g)
    sampler = -3 * torch.rand(batch, length, generator=g)
    return h, h_teacher, response_mask, sample_mask, ids, sampler


def _both(support, beta, divergence, chunk_size, bias=False, dtype=torch.float32):
    student_head, teacher_head = _heads(bias=bias, dtype=dtype)
    h, h_teacher, response_mask, sample_mask, ids, sampler = _batch(dtype=dtype)
    topk, add_tail = support
    options = dict(beta=beta, topk=topk, add_tail=add_tail, divergence=divergence, response_ids=ids, sampler_logprobs=sampler,
                   is_cap=1.5)
    results = {}
    for implementation in ("plain", "chunked"):
        head = _heads(bias=bias, dtype=dtype)[0]
        x = h.clone().requires_grad_(True)
        if implementation == "plain":
            out = self_distillation_loss(head(x), teacher_head(h_teacher).detach(), response_mask, sample_mask, **options)
        else:
            out = chunked_self_distillation_loss(x, head, h_teacher, teacher_head, response_mask, sample_mask,
                                                 chunk_size=chunk_size, **options)
        out.loss.backward()
        results[implementation] = (out, x.grad, head.weight.grad, head.bias.grad if bias else None)
    return results


def _norm_relative(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.mark.parametrize("support", [(5, True), (5, False), (None, True)])
@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("chunk_size", [1, 4, None])
def test_chunked_from_hidden_states_equals_the_plain_path(support, beta, chunk_size):
    for divergence, bias in (("kl", False), ("jsd", True)):
        r = _both(support, beta, divergence, chunk_size, bias=bias)
        (plain, *plain_grads), (chunked, *chunked_grads) = r["plain"], r["chunked"]
        assert _norm_relative(chunked.loss, plain.loss) < 1e-6
        for got, want in zip(chunked_grads, plain_grads):
            if want is not None:
                assert _norm_relative(got, want) < 1e-6
        for name in ("information", "information_sequence", "jsd", "entropy"):
            (num, den), (want_num, want_den) = getattr(chunked, name), getattr(plain, name)
            assert _norm_relative(num, want_num) < 1e-6 and den == want_den, name
        assert _norm_relative(chunked.token_logprobs, plain.token_logprobs) < 1e-6
        assert chunked.loss.dtype == plain.loss.dtype == torch.float32


@pytest.mark.parametrize("support", [(5, True), (5, False), (None, True)])
def test_chunked_on_the_same_logits_is_the_plain_path_to_rounding(support):
    """Given the logits themselves (no head), the two differ only in how the gradient is formed."""
    topk, add_tail = support
    g = torch.Generator().manual_seed(3)
    student, teacher = 3 * torch.randn(3, 5, 50, generator=g), 3 * torch.randn(3, 5, 50, generator=g)
    response_mask, sample_mask = torch.ones(3, 5), torch.tensor([1.0, 1.0, 0.0])
    outs, grads = [], []
    for chunked in (False, True):
        leaf = student.clone().requires_grad_(True)
        if chunked:
            out = chunked_self_distillation_loss(leaf, None, teacher, None, response_mask, sample_mask, topk=topk,
                                                 add_tail=add_tail, chunk_size=2)
        else:
            out = self_distillation_loss(leaf, teacher, response_mask, sample_mask, topk=topk, add_tail=add_tail)
        out.loss.backward()
        outs.append(out)
        grads.append(leaf.grad)
    assert outs[1].loss.item() == pytest.approx(outs[0].loss.item(), rel=1e-12)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-6, atol=1e-9)


def test_chunked_in_float64_matches_the_plain_path_tightly():
    r = _both((5, True), 0.5, "kl", 2, bias=True, dtype=torch.float64)
    (plain, *plain_grads), (chunked, *chunked_grads) = r["plain"], r["chunked"]
    assert chunked.loss.dtype == torch.float64
    assert chunked.loss.item() == pytest.approx(plain.loss.item(), rel=1e-12)
    for got, want in zip(chunked_grads, plain_grads):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-14)


def test_chunked_without_gradient_gives_the_same_values():
    student_head, teacher_head = _heads()
    h, h_teacher, response_mask, sample_mask, ids, sampler = _batch()
    with torch.no_grad():
        out = chunked_self_distillation_loss(h, student_head, h_teacher, teacher_head, response_mask, sample_mask,
                                             response_ids=ids, topk=5, chunk_size=4)
    want = self_distillation_loss(student_head(h), teacher_head(h_teacher), response_mask, sample_mask,
                                  response_ids=ids, topk=5)
    assert out.loss.item() == pytest.approx(want.loss.item(), rel=1e-6)
    assert not out.loss.requires_grad


def test_frozen_head_gets_no_gradient_and_the_hidden_states_do():
    student_head, teacher_head = _heads()
    student_head.weight.requires_grad_(False)
    h, h_teacher, response_mask, sample_mask, _, _ = _batch()
    x = h.clone().requires_grad_(True)
    chunked_self_distillation_loss(x, student_head, h_teacher, teacher_head, response_mask, sample_mask,
                                   topk=5).loss.backward()
    assert student_head.weight.grad is None and x.grad.abs().sum() > 0
    assert x.grad[1].abs().max() == 0  # no teacher for sequence 1
    assert x.grad[0, :2].abs().max() == 0  # padding


def test_chunked_shapes_and_vocabularies_are_checked():
    student_head, teacher_head = _heads()
    h, h_teacher, response_mask, sample_mask, _, _ = _batch()
    with pytest.raises(ValueError, match="response_mask"):
        chunked_self_distillation_loss(h, student_head, h_teacher, teacher_head, response_mask[:, :2], sample_mask)
    with pytest.raises(ValueError, match="vocabularies"):
        chunked_self_distillation_loss(h, student_head, h_teacher, torch.nn.Linear(16, 7), response_mask, sample_mask)
    with pytest.raises(ValueError, match="topk"):
        chunked_self_distillation_loss(h, student_head, h_teacher, teacher_head, response_mask, sample_mask, topk=0)


def test_default_chunk_is_an_eighth_of_a_gibibyte_of_float32_logits():
    assert default_chunk_size(151_936) == 220
    assert default_chunk_size(151_936) * 151_936 * 4 <= 2**27
    assert default_chunk_size(10) > 10**6  # a small vocabulary: one chunk


@pytest.mark.slow
def test_bench_loss_measures_one_chunk_against_several_full_copies_of_the_logits():
    """`python -m llm_runs bench-loss` at a small shape: each case in its own process, peak resident memory."""
    from llm_runs.tools.bench_loss import measure, report

    vocabulary, length = 50_000, 1024
    rows = measure([length], vocabulary=vocabulary, hidden=64, chunk_size=64, progress=lambda line: None)
    plain, chunked = rows
    assert "error" not in plain and "error" not in chunked, rows
    full_logits = length * vocabulary * 4  # one float32 copy of the micro-batch's logits: 205 MB
    assert plain["loss_bytes"] > 3 * full_logits  # the plain path holds several
    assert chunked["loss_bytes"] < full_logits  # the chunked one not even one
    assert plain["loss_bytes"] / chunked["loss_bytes"] > 4
    for key in ("loss", "information", "jsd", "entropy", "grad_hidden_norm", "grad_head_norm"):
        assert chunked[key] == pytest.approx(plain[key], rel=1e-6), key
    table = report(rows)
    assert "| 1,024 |" in table and "×" in table


def test_the_supports_log_probabilities_are_normalised_and_exact_in_the_tail():
    """What `self_distillation_loss` computes p and q on: `student_support` and `teacher_support`, normalised."""
    from llm_runs.loss import normalise, student_support, teacher_support

    student, teacher = (x.float() for x in logits(40.0, "independent"))
    top, a, _, _ = student_support(student, K, add_tail=True)
    log_p, log_q = normalise(a), normalise(teacher_support(teacher, top, add_tail=True))
    assert log_p.shape == log_q.shape == (B, T, K + 1) and log_p.dtype == log_q.dtype == torch.float64
    for log in (log_p, log_q):
        torch.testing.assert_close(log.exp().sum(-1), torch.ones(B, T, dtype=torch.float64))
    for x, log in ((student, log_p), (teacher, log_q)):  # the teacher read at the student's top-k
        z = x.double()
        outside = torch.ones_like(z, dtype=torch.bool).scatter(-1, top, False)
        tail = torch.logsumexp(z.masked_fill(~outside, -math.inf), -1) - torch.logsumexp(z, -1)
        torch.testing.assert_close(log[..., -1], tail, rtol=1e-6, atol=1e-12)
    top, a, _, _ = student_support(student, None, add_tail=True)
    assert top is None and normalise(a).shape == normalise(teacher_support(teacher, top, True)).shape == (B, T, V)


@pytest.mark.parametrize("implementation", ["plain", "chunked"])
@pytest.mark.parametrize("support", [(5, True), (5, False), (None, True)])
def test_a_masked_vocabulary_gives_finite_values_and_gradients(implementation, support):
    """−inf logits (tokens a model masks out) carry zero mass and never give NaN, also where the top-k reach into
    them and the tail is empty. With the same mask on both sides every divergence is finite; where the teacher
    alone masks tokens, the JSD still is (a KL toward zero mass is +inf, as it should be)."""
    topk, add_tail = support
    g = torch.Generator().manual_seed(4)
    student, teacher = torch.randn(2, 3, 12, generator=g), torch.randn(2, 3, 12, generator=g)
    student[0, :, 3:] = teacher[0, :, 3:] = -math.inf  # three tokens left: the top-5 hold two masked ones
    student[1, :, 8:] = teacher[1, :, 8:] = -math.inf
    args = (torch.ones(2, 3), torch.ones(2))
    cases = [(teacher, beta) for beta in (0.0, 0.5, 1.0)]
    other = teacher.clone()
    other[1, :, 6:] = -math.inf
    cases.append((other, 0.5))
    for teacher_logits, beta in cases:
        leaf = student.clone().requires_grad_(True)
        options = dict(beta=beta, topk=topk, add_tail=add_tail, divergence="jsd",
                       response_ids=torch.zeros(2, 3, dtype=torch.long))
        if implementation == "plain":
            out = self_distillation_loss(leaf, teacher_logits, *args, **options)
        else:
            out = chunked_self_distillation_loss(leaf, None, teacher_logits, None, *args, chunk_size=2, **options)
        out.loss.backward()
        assert math.isfinite(out.loss.item()) and torch.isfinite(leaf.grad).all(), beta
        assert all(math.isfinite(getattr(out, k)[0].item()) for k in ("information", "jsd", "entropy"))
        assert (leaf.grad[0, :, 3:] == 0).all()  # a masked token gets no gradient


def test_bench_loss_reports_a_failed_case_by_its_last_error_line():
    from llm_runs.tools.bench_loss import _last_error

    oom = ("Traceback (most recent call last):\n  File ...\ntorch.OutOfMemoryError: CUDA out of memory. Tried to "
           "allocate 18.55 GiB. GPU 0 has a total capacity of 139.80 GiB of which 6.22 GiB is free. Including ...")
    assert _last_error(oom) == "CUDA out of memory (tried to allocate 18.55 GiB)"
    assert _last_error("Traceback\n  x\nValueError: bad shape\n") == "ValueError: bad shape"
    assert _last_error("") == "no output"


def test_a_16_bit_head_gets_the_plain_paths_gradient_from_16_bit_products():
    """With a bfloat16 head the chunked path forms ∂L/∂h and ∂L/∂W in bfloat16, as autograd does for the plain
    path (on a GPU a float32 product of that size runs at a fraction of the tensor cores' rate): per chunk, each
    product added in float32. Its gradients stay as close to a float64 reference on the same bf16 inputs as the
    plain path's are, at any chunk size."""

    def gradients(implementation, dtype, chunk_size=None):
        student, teacher = _heads(scale=4.0, hidden=64, vocabulary=300)
        student, teacher = student.to(dtype), teacher.to(dtype)
        h, h_teacher, response_mask, sample_mask, ids, _ = _batch(hidden=64, vocabulary=300, length=40)
        x = h.to(torch.bfloat16).to(dtype).requires_grad_(True)  # the same bf16 values in every precision
        h_teacher = h_teacher.to(torch.bfloat16).to(dtype)
        student.weight.data = student.weight.data.to(torch.bfloat16).to(dtype)
        teacher.weight.data = teacher.weight.data.to(torch.bfloat16).to(dtype)
        options = dict(beta=0.5, topk=20, add_tail=True, response_ids=ids)
        if implementation == "plain":
            out = self_distillation_loss(student(x), teacher(h_teacher).detach(), response_mask, sample_mask, **options)
        else:
            out = chunked_self_distillation_loss(x, student, h_teacher, teacher, response_mask, sample_mask,
                                                 chunk_size=chunk_size, **options)
        out.loss.backward()
        assert student.weight.grad.dtype == x.grad.dtype == dtype
        return x.grad.double(), student.weight.grad.double()

    reference = gradients("plain", torch.float64)
    plain = gradients("plain", torch.bfloat16)
    plain_error = [_norm_relative(got, want) for got, want in zip(plain, reference)]
    for chunk_size in (1, 7, None):
        chunked = gradients("chunked", torch.bfloat16, chunk_size)
        for got, want, plain_got, bound in zip(chunked, reference, plain, plain_error):
            assert _norm_relative(got, want) <= 1.01 * bound
            assert _norm_relative(got, plain_got) < 2**-8  # within one bf16 rounding of the plain path's


def test_a_gpu_chunk_holds_a_gibibyte_of_logits():
    assert default_chunk_size(151_936, "cuda") * 151_936 * 4 <= 2**30 < (default_chunk_size(151_936, "cuda") + 1) * 151_936 * 4
    assert default_chunk_size(151_936, torch.device("cpu")) == 220
