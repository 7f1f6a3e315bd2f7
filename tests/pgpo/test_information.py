import math

import numpy as np
import pytest
import torch

from pgpo import generalized_jsd, information, kl

# ---------------------------------------------------------------------------------------------
# direct float64 formulas, in probability space, one position at a time


def direct_kl(a, b):
    """Σ_{a_s > 0} a_s log(a_s / b_s) for probability vectors a, b."""
    total = 0.0
    for a_s, b_s in zip(a, b):
        if a_s > 0:
            total += math.inf if b_s == 0 else a_s * math.log(a_s / b_s)
    return total


def direct(kind, p, q):
    if kind == "kl":
        return direct_kl(q, p)
    if kind == "reverse_kl":
        return direct_kl(p, q)
    m = [(ps + qs) / 2 for ps, qs in zip(p, q)]
    return 0.5 * direct_kl(p, m) + 0.5 * direct_kl(q, m)


def direct_information(kind, reduce, log_p, log_q, mask):
    """Token or sequence mean of the per-position divergence; log_p (N, T, S), mask (N, T)."""
    p, q = np.exp(log_p), np.exp(log_q)
    n, t = mask.shape
    d = np.zeros((n, t))
    for i in range(n):
        for j in range(t):
            if mask[i, j]:
                d[i, j] = direct(kind, p[i, j], q[i, j])
    if reduce in ("token", "sum"):
        num, den = d.sum(), mask.sum()
    else:
        rows = [d[i].sum() / mask[i].sum() for i in range(n) if mask[i].any()]
        num, den = sum(rows), len(rows)
    return (num, den) if reduce.endswith("sum") else (num / den if den else 0.0)


def random_pair(seed, shape=(3, 5, 7), student_zeros=0.0, teacher_zeros=0.0, shared_zeros=0.0):
    """Random normalised log-probabilities with −inf entries: zeros in one or both distributions."""
    rng = np.random.default_rng(seed)
    logits_p = rng.normal(scale=2.0, size=shape)
    logits_q = logits_p + rng.normal(scale=1.0, size=shape)
    shared = rng.random(shape) < shared_zeros
    zp = shared | (rng.random(shape) < student_zeros)
    zq = shared | (rng.random(shape) < teacher_zeros)
    zp[..., 0] = zq[..., 0] = False  # keep each distribution non-empty
    logits_p[zp] = -np.inf
    logits_q[zq] = -np.inf

    def log_softmax(x):
        top = x.max(axis=-1, keepdims=True)
        return x - top - np.log(np.exp(x - top).sum(axis=-1, keepdims=True))

    return log_softmax(logits_p), log_softmax(logits_q)


# teacher zeros keep KL(q‖p) finite; student zeros keep KL(p‖q) finite; JSD is finite with both
ZEROS = {"kl": dict(teacher_zeros=0.3, shared_zeros=0.2), "reverse_kl": dict(student_zeros=0.3, shared_zeros=0.2),
         "jsd": dict(student_zeros=0.3, teacher_zeros=0.3)}


@pytest.mark.parametrize("kind", ["kl", "reverse_kl", "jsd"])
@pytest.mark.parametrize("reduce", ["token", "sequence", "sum", "sequence_sum"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_each_kind_matches_the_direct_formula(kind, reduce, seed):
    log_p, log_q = random_pair(seed, **ZEROS[kind])
    assert np.isinf(log_p).any() or np.isinf(log_q).any()
    mask = np.random.default_rng(100 + seed).random(log_p.shape[:-1]) < 0.6
    mask[0] = False  # one sequence entirely masked out
    mask[1, 0] = True
    got = information(torch.from_numpy(log_p), torch.from_numpy(log_q), torch.from_numpy(mask), kind=kind, reduce=reduce)
    want = direct_information(kind, reduce, log_p, log_q, mask)
    if reduce.endswith("sum"):
        assert got[0].dtype == torch.float64
        assert got[0].item() == pytest.approx(want[0], rel=1e-12, abs=1e-15)
        assert got[1].item() == want[1]
    else:
        assert got.dtype == torch.float64 and got.shape == ()
        assert got.item() == pytest.approx(want, rel=1e-12, abs=1e-15)
        assert got.item() > 0


def test_no_mask_means_every_position():
    log_p, log_q = random_pair(5)
    ones = np.ones(log_p.shape[:-1], dtype=bool)
    want = direct_information("kl", "token", log_p, log_q, ones)
    assert information(torch.from_numpy(log_p), torch.from_numpy(log_q)).item() == pytest.approx(want, rel=1e-12)


def test_jsd_is_bounded_by_log_two_even_for_disjoint_supports():
    log_p = torch.tensor([[0.0, -math.inf], [math.log(0.5), math.log(0.5)]], dtype=torch.float64)
    log_q = torch.tensor([[-math.inf, 0.0], [math.log(0.5), math.log(0.5)]], dtype=torch.float64)
    per_position = [information(log_p[i], log_q[i], kind="jsd").item() for i in range(2)]
    assert per_position[0] == pytest.approx(math.log(2), rel=1e-15)
    assert per_position[1] == 0.0


def test_an_infinite_kl_is_inf_not_nan():
    log_p = torch.tensor([0.0, -math.inf], dtype=torch.float64)
    log_q = torch.tensor([math.log(0.5), math.log(0.5)], dtype=torch.float64)
    assert information(log_p, log_q, kind="kl").item() == math.inf  # q has mass where p has none
    assert information(log_p, log_q, kind="reverse_kl").item() == pytest.approx(math.log(2))


def test_identical_distributions_carry_no_information():
    log_p, _ = random_pair(3, shared_zeros=0.3)
    t = torch.from_numpy(log_p)
    for kind in ("kl", "reverse_kl", "jsd"):
        assert information(t, t.clone(), kind=kind).item() == pytest.approx(0.0, abs=1e-15)


@pytest.mark.parametrize("reduce", ["token", "sequence"])
def test_empty_mask_gives_zero_and_says_so_in_the_denominator(reduce):
    log_p, log_q = (torch.from_numpy(x) for x in random_pair(0))
    mask = torch.zeros(log_p.shape[:-1], dtype=torch.bool)
    value = information(log_p, log_q, mask, reduce=reduce)
    assert value.item() == 0.0 and not torch.isnan(value)
    num, den = information(log_p, log_q, mask, reduce="sum" if reduce == "token" else "sequence_sum")
    assert num.item() == 0.0 and den.item() == 0.0


def test_masked_out_positions_cannot_poison_the_signal():
    log_p, log_q = (torch.from_numpy(x) for x in random_pair(4))
    mask = torch.ones(log_p.shape[:-1], dtype=torch.bool)
    mask[:, -1] = False
    clean = information(log_p, log_q, mask)
    log_p[:, -1] = math.nan  # padding garbage
    log_q[:, -1, 0] = math.inf
    assert information(log_p, log_q, mask).item() == clean.item()


def test_numeric_mask_weights_positions():
    log_p, log_q = (torch.from_numpy(x) for x in random_pair(6, shape=(2, 4, 5)))
    weights = torch.tensor([[1.0, 2.0, 0.0, 1.0], [0.5, 0.0, 0.0, 3.0]], dtype=torch.float64)
    d = torch.tensor([[information(log_p[i, j], log_q[i, j]).item() for j in range(4)] for i in range(2)], dtype=torch.float64)
    num, den = information(log_p, log_q, weights, reduce="sum")
    assert num.item() == pytest.approx((weights * d).sum().item(), rel=1e-12)
    assert den.item() == weights.sum().item()


def test_no_gradient_flows():
    log_p = torch.randn(2, 3, 6, dtype=torch.float64, requires_grad=True)
    log_q = torch.randn(2, 3, 6, dtype=torch.float64, requires_grad=True)
    value = information(log_p.log_softmax(-1), log_q.log_softmax(-1))
    assert not value.requires_grad and value.grad_fn is None


def test_precision_follows_the_input():
    log_p, log_q = (torch.from_numpy(x) for x in random_pair(7))
    exact = information(log_p, log_q).item()
    single = information(log_p.float(), log_q.float())
    assert single.dtype == torch.float32 and single.item() == pytest.approx(exact, rel=1e-5)
    half = information(log_p.to(torch.bfloat16), log_q.to(torch.bfloat16))
    assert half.dtype == torch.float32  # accumulated in float32, not in 8 mantissa bits
    assert half.item() == pytest.approx(exact, rel=0.1)


def test_peaked_distributions_stay_finite():
    logits = torch.tensor([[800.0, 0.0, -800.0], [0.0, 0.0, 1e4]], dtype=torch.float64)
    log_p, log_q = logits.log_softmax(-1), (logits.flip(-1)).log_softmax(-1)
    for kind in ("kl", "reverse_kl", "jsd"):
        assert torch.isfinite(information(log_p, log_q, kind=kind))


def test_numpy_in_numpy_out():
    log_p, log_q = random_pair(8)
    value = information(log_p, log_q, kind="jsd")
    assert isinstance(value, np.floating)
    assert float(value) == pytest.approx(information(torch.from_numpy(log_p), torch.from_numpy(log_q), kind="jsd").item())
    num, den = information(log_p, log_q, reduce="sum")
    assert isinstance(num, np.floating) and den == log_p.shape[0] * log_p.shape[1]


@pytest.mark.parametrize(
    "call,name",
    [
        (lambda p, q: information(p, q[..., :-1]), "same shape"),
        (lambda p, q: information(p, q, torch.ones(3)), "mask"),
        (lambda p, q: information(p, q, kind="kl2"), "kind"),
        (lambda p, q: information(p, q, reduce="mean"), "reduce"),
        (lambda p, q: information(p[0, 0], q[0, 0], reduce="sequence"), "sequence axis"),
        (lambda p, q: information(p.tolist(), q), "student_logprobs"),
    ],
)
def test_bad_input_is_named(call, name):
    log_p, log_q = (torch.from_numpy(x) for x in random_pair(0))
    with pytest.raises((ValueError, TypeError), match=name):
        call(log_p, log_q)


# ---------------------------------------------------------------------------------------------
# the differentiable divergences that the SDPO loss builds on


@pytest.mark.parametrize("beta", [0.0, 0.25, 0.5, 1.0])
def test_generalized_jsd_endpoints_and_direct_formula(beta):
    log_p, log_q = random_pair(9, shape=(4, 6), student_zeros=0.2, teacher_zeros=0.2)
    got = generalized_jsd(torch.from_numpy(log_p), torch.from_numpy(log_q), beta)
    p, q = np.exp(log_p), np.exp(log_q)
    for row in range(4):
        if beta == 0.0:
            want = direct_kl(q[row], p[row])
        elif beta == 1.0:
            want = direct_kl(p[row], q[row])
        else:
            m = (1 - beta) * p[row] + beta * q[row]
            want = (1 - beta) * direct_kl(p[row], m) + beta * direct_kl(q[row], m)
        if math.isinf(want):
            assert got[row].item() == math.inf
        else:
            assert got[row].item() == pytest.approx(want, rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_divergence_gradients_are_right_and_finite_with_zero_mass(beta):
    log_p, log_q = (torch.from_numpy(x) for x in random_pair(10, shape=(3, 5), shared_zeros=0.3))
    logits = log_p.clone().requires_grad_(True)
    value = generalized_jsd(logits.log_softmax(-1), log_q, beta).sum()
    value.backward()
    assert torch.isfinite(logits.grad).all()
    # and the gradient is the true one where the distributions are smooth
    smooth_p = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    smooth_q = torch.randn(3, 5, dtype=torch.float64).log_softmax(-1)
    assert torch.autograd.gradcheck(lambda x: generalized_jsd(x.log_softmax(-1), smooth_q, beta), (smooth_p,))


def test_generalized_jsd_rejects_beta_outside_the_unit_interval():
    """β outside [0, 1] is an error naming beta; KL of a distribution with itself is exactly 0."""
    with pytest.raises(ValueError, match="beta"):
        generalized_jsd(torch.zeros(2), torch.zeros(2), 1.5)
    assert kl(torch.zeros(1), torch.zeros(1)).item() == 0.0


def test_logits_taken_for_log_probabilities_are_refused_and_from_logits_normalises_them():
    g = torch.Generator().manual_seed(0)
    student, teacher = 3 * torch.randn(2, 5, 7, generator=g), 3 * torch.randn(2, 5, 7, generator=g)
    want = information(torch.log_softmax(student, -1), torch.log_softmax(teacher, -1))
    with pytest.raises(ValueError, match="student_logprobs are not log-probabilities.*from_logits"):
        information(student, torch.log_softmax(teacher, -1))
    with pytest.raises(ValueError, match="teacher_logprobs"):
        information(torch.log_softmax(student, -1), teacher)
    assert information(student, teacher, from_logits=True).item() == pytest.approx(want.item(), rel=1e-6)
    # masked-out positions may hold anything (padding), bf16 log-probabilities pass with their rounding
    mask = torch.ones(2, 5)
    mask[1, 3:] = 0
    padded = torch.log_softmax(student, -1).clone()
    padded[1, 3:] = 123.0
    information(padded, torch.log_softmax(teacher, -1), mask)
    information(torch.log_softmax(student, -1).bfloat16(), torch.log_softmax(teacher, -1).bfloat16())
