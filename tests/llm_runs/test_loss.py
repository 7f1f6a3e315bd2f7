"""SDPO's loss and PGPO's information pair against a direct float64 formula (`docs/method.md` §1–2)."""

import itertools

import numpy as np
import pytest
import torch

from llm_runs.loss import importance_weights, self_distillation_loss

B, T, V = 3, 5, 11


def reference(student, teacher, response_mask, sample_mask, beta, topk, add_tail, w):
    """The formula written out token by token in float64 (torch only for autograd)."""
    student = student.double()
    teacher = teacher.double()
    loss = torch.zeros((), dtype=torch.float64)
    kl_num = 0.0
    kl_den = 0.0
    for i in range(B):
        terms = []
        for t in range(T):
            p, q = torch.softmax(student[i, t], -1), torch.softmax(teacher[i, t], -1)
            if topk is not None:
                idx = torch.argsort(p.detach(), descending=True)[:topk]
                if add_tail:
                    p = torch.cat([p[idx], (1 - p[idx].sum()).reshape(1)])
                    q = torch.cat([q[idx], (1 - q[idx].sum()).reshape(1)])
                else:
                    p, q = p[idx] / p[idx].sum(), q[idx] / q[idx].sum()
            m = (1 - beta) * p + beta * q
            kl = lambda a, b: (a * (torch.log(a) - torch.log(b))).sum()  # noqa: E731 (no zeros here)
            # docs/method.md's endpoints: β = 0 is KL(q ‖ p), β = 1 is KL(p ‖ q) (the mixture formula degenerates there)
            d = kl(q, p) if beta == 0 else kl(p, q) if beta == 1 else (1 - beta) * kl(p, m) + beta * kl(q, m)
            if response_mask[i, t]:
                terms.append(w[i, t] * d)
                if sample_mask[i]:
                    kl_num += kl(q, p).item()
                    kl_den += 1.0
        mean = torch.stack(terms).mean() if terms else torch.zeros((), dtype=torch.float64)
        loss = loss + float(sample_mask[i]) * mean
    return loss / B, kl_num, kl_den


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    student = torch.randn(B, T, V, generator=g, dtype=torch.float64) * 2
    teacher = student + torch.randn(B, T, V, generator=g, dtype=torch.float64)
    response_mask = torch.ones(B, T)
    response_mask[0, 3:] = 0  # padding
    response_mask[2, 1:] = 0
    sample_mask = torch.tensor([1.0, 0.0, 1.0])  # the middle sequence has no teacher, but counts in B
    w = 0.5 + torch.rand(B, T, generator=g, dtype=torch.float64)
    return student, teacher, response_mask, sample_mask, w


@pytest.mark.parametrize("beta, support, weighted", list(itertools.product(
    [0.0, 0.5, 1.0], [("top-k+tail", 4, True), ("top-k", 4, False), ("full", None, True)], [False, True])))
def test_loss_and_information_match_the_formula(batch, beta, support, weighted):
    student, teacher, response_mask, sample_mask, w = batch
    _, topk, add_tail = support
    weights = w if weighted else torch.ones(B, T, dtype=torch.float64)
    s1 = student.clone().requires_grad_(True)
    s2 = student.clone().requires_grad_(True)
    out = self_distillation_loss(s1, teacher, response_mask, sample_mask, beta=beta, topk=topk, add_tail=add_tail,
                                 is_weights=weights if weighted else None)
    want, kl_num, kl_den = reference(s2, teacher, response_mask, sample_mask, beta, topk, add_tail, weights)
    assert out.loss.item() == pytest.approx(want.item(), rel=1e-10, abs=1e-14)
    num, den = out.information
    assert num.item() == pytest.approx(kl_num, rel=1e-10) and den.item() == kl_den
    out.loss.backward()
    want.backward()
    torch.testing.assert_close(s1.grad, s2.grad, rtol=1e-8, atol=1e-12)


def test_gradient_flows_to_the_student_only(batch):
    student, teacher, response_mask, sample_mask, _ = batch
    student = student.float().requires_grad_(True)
    teacher = teacher.float().requires_grad_(True)
    out = self_distillation_loss(student, teacher, response_mask, sample_mask)
    out.loss.backward()
    assert teacher.grad is None
    assert student.grad.abs().sum() > 0
    assert student.grad[1].abs().max() == 0  # no teacher for sequence 1: no gradient either
    assert student.grad[0, 3:].abs().max() == 0  # padding
    assert not out.information[0].requires_grad


def test_identical_teacher_gives_zero_and_masked_batch_gives_zero_information(batch):
    student, _, response_mask, sample_mask, _ = batch
    out = self_distillation_loss(student, student.clone(), response_mask, sample_mask)
    assert abs(out.loss.item()) < 1e-12 and abs(out.information[0].item()) < 1e-12
    empty = self_distillation_loss(student, student + 1.0, response_mask, torch.zeros(B))
    assert empty.loss.item() == 0.0 and empty.information[1].item() == 0.0


def test_bf16_logits_are_computed_in_float32(batch):
    student, teacher, response_mask, sample_mask, _ = batch
    exact = self_distillation_loss(student, teacher, response_mask, sample_mask).loss.item()
    half = self_distillation_loss(student.bfloat16(), teacher.bfloat16(), response_mask, sample_mask)
    assert half.loss.dtype == torch.float32
    assert half.loss.item() == pytest.approx(exact, rel=0.05)


def test_importance_weights_are_capped_and_detached():
    train = torch.tensor([[0.0, -1.0, -0.1]], requires_grad=True)
    sampler = torch.tensor([[-1.0, -1.0, 0.0]])
    w = importance_weights(train, sampler)
    torch.testing.assert_close(w, torch.tensor([[2.0, 1.0, float(np.exp(-0.1))]]))
    assert not w.requires_grad


def test_shapes_are_checked(batch):
    student, teacher, response_mask, sample_mask, _ = batch
    with pytest.raises(ValueError, match="response_mask"):
        self_distillation_loss(student, teacher, response_mask[:, :2], sample_mask)
    with pytest.raises(ValueError, match="logits"):
        self_distillation_loss(student, teacher[:, :2], response_mask, sample_mask)


def test_jsd_and_entropy_pairs_match_the_formula(batch):
    student, teacher, response_mask, sample_mask, _ = batch
    out = self_distillation_loss(student, teacher, response_mask, sample_mask, topk=None)
    p, q = torch.softmax(student, -1), torch.softmax(teacher, -1)
    entropy = -(p * p.log()).sum(-1)  # over the whole vocabulary, every response token
    assert out.entropy[0].item() == pytest.approx((entropy * response_mask).sum().item(), rel=1e-12)
    assert out.entropy[1].item() == response_mask.sum().item()
    m = 0.5 * (p + q)
    jsd = 0.5 * (p * (p / m).log()).sum(-1) + 0.5 * (q * (q / m).log()).sum(-1)
    used = response_mask * sample_mask[:, None]  # only sequences with a teacher
    assert out.jsd[0].item() == pytest.approx((jsd * used).sum().item(), rel=1e-10)
    assert out.jsd[1].item() == used.sum().item()
