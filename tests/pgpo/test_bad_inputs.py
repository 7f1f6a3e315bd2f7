"""Bad input never becomes a number: NaN/inf reach I as a non-finite value, absurd ρ is refused before any
parameter changes, meta and complex tensors are refused naming the argument."""

import copy
import math
import re

import numpy as np
import pytest
import torch

from pgpo import Multiplier, generalized_jsd, information, kl, modulated_step

KINDS = ["kl", "reverse_kl", "jsd"]
REDUCES = ["token", "sequence", "sum", "sequence_sum"]


def logits_pair(seed=0, shape=(2, 3, 6)):
    g = torch.Generator().manual_seed(seed)
    student = 2 * torch.randn(shape, generator=g, dtype=torch.float64)
    return student, student + torch.randn(shape, generator=g, dtype=torch.float64)


def value(result):
    """I, or the numerator of a "…sum" pair (the denominator is the mask's, checked on its own)."""
    return (result[0] if isinstance(result, tuple) else result).item()


# ---------------------------------------------------------------------------------------------
# information: NaN and +inf entries make I non-finite, with logits or log-probabilities


@pytest.mark.parametrize("side", ["student", "teacher"])
@pytest.mark.parametrize("bad", [math.nan, math.inf])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("reduce", REDUCES)
def test_a_nan_or_inf_logit_makes_i_non_finite(side, bad, kind, reduce):
    student, teacher = logits_pair()
    (student if side == "student" else teacher)[0, 1, 2] = bad
    # the case: one NaN teacher logit was read as "off the support" and I came out finite
    assert not math.isfinite(value(information(student, teacher, kind=kind, reduce=reduce, from_logits=True)))


@pytest.mark.parametrize("side", ["student", "teacher"])
@pytest.mark.parametrize("bad", [math.nan, math.inf])
@pytest.mark.parametrize("kind", KINDS)
def test_a_nan_or_inf_log_probability_makes_i_non_finite_even_where_the_other_side_has_no_mass(side, bad, kind):
    student, teacher = logits_pair()
    student[0, 1, 2] = teacher[0, 1, 2] = -math.inf  # zero mass on both sides at the entry that goes bad
    log_p, log_q = student.log_softmax(-1), teacher.log_softmax(-1)
    (log_p if side == "student" else log_q)[0, 1, 2] = bad
    result = information(log_p, log_q, kind=kind)
    assert math.isnan(result.item())  # NaN, not the "not log-probabilities" error: a broken input, not a mistake


@pytest.mark.parametrize("kind", KINDS)
def test_an_all_minus_inf_row_of_logits_makes_i_nan(kind):
    student, teacher = logits_pair()
    teacher[1, 0] = -math.inf  # no distribution at all
    assert math.isnan(information(student, teacher, kind=kind, from_logits=True).item())


@pytest.mark.parametrize("kind", KINDS)
def test_minus_inf_logits_are_zero_mass_and_keep_i_finite(kind):
    student, teacher = logits_pair()
    student[..., 4] = teacher[..., 4] = -math.inf  # a masked token on both sides: zero mass, not an error
    assert math.isfinite(information(student, teacher, kind=kind, from_logits=True).item())


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("reduce", REDUCES)
def test_a_non_finite_mask_value_makes_i_non_finite(bad, reduce):
    student, teacher = logits_pair()
    mask = torch.ones(2, 3, dtype=torch.float64)
    mask[0, 1] = bad
    assert not math.isfinite(value(information(student, teacher, mask, reduce=reduce, from_logits=True)))


def test_masked_out_nan_and_inf_still_cannot_poison_i():
    student, teacher = logits_pair()
    mask = torch.ones(2, 3)
    mask[1, 2] = 0
    clean = information(student, teacher, mask, from_logits=True).item()
    student[1, 2, 0], teacher[1, 2, 1] = math.nan, math.inf  # padding garbage
    assert information(student, teacher, mask, from_logits=True).item() == clean
    log_p, log_q = logits_pair()[0].log_softmax(-1), logits_pair()[1].log_softmax(-1)
    clean = information(log_p, log_q, mask).item()
    log_p[1, 2, 0], log_q[1, 2, 1] = math.nan, math.inf
    assert information(log_p, log_q, mask).item() == clean


def test_numpy_input_gives_a_numpy_nan():
    student, teacher = (x.numpy() for x in logits_pair())
    teacher[0, 0, 0] = np.nan
    result = information(student, teacher, from_logits=True)
    assert isinstance(result, np.floating) and np.isnan(result)


@pytest.mark.parametrize("beta", [0.0, 0.3, 0.5, 1.0])
@pytest.mark.parametrize("side", ["p", "q"])
def test_divergences_carry_a_nan_entry_instead_of_reading_it_as_zero_mass(beta, side):
    log_p, log_q = (x.log_softmax(-1) for x in logits_pair(shape=(6,)))
    (log_p if side == "p" else log_q)[2] = math.nan
    assert math.isnan(generalized_jsd(log_p, log_q, beta).item())
    assert math.isnan(kl(log_q, log_p).item()) and math.isnan(kl(log_p, log_q).item())


# ---------------------------------------------------------------------------------------------
# information: tensors without values, complex values, integers


def meta_like(x):
    return torch.empty(x.shape, dtype=x.dtype, device="meta")


@pytest.mark.parametrize("position", ["student_logprobs", "teacher_logprobs", "mask"])
def test_meta_tensors_are_refused_naming_the_argument(position):
    student, teacher = logits_pair()
    args = {"student_logprobs": student, "teacher_logprobs": teacher, "mask": torch.ones(2, 3)}
    args[position] = meta_like(args[position])
    with pytest.raises(ValueError, match=f"{position} is a meta tensor"):
        information(args["student_logprobs"], args["teacher_logprobs"], args["mask"], from_logits=True)


@pytest.mark.parametrize("position", ["student_logprobs", "teacher_logprobs", "mask"])
@pytest.mark.parametrize("library", ["torch", "numpy"])
def test_complex_inputs_are_refused_naming_the_argument(position, library):
    student, teacher = logits_pair()
    args = {"student_logprobs": student, "teacher_logprobs": teacher, "mask": torch.ones(2, 3, dtype=torch.float64)}
    args[position] = args[position].to(torch.complex128)
    if library == "numpy":
        args = {k: v.numpy() for k, v in args.items()}
    with pytest.raises(TypeError, match=f"{position} must hold real numbers"):
        information(args["student_logprobs"], args["teacher_logprobs"], args["mask"], from_logits=True)


def test_integer_logits_are_refused_naming_the_argument():
    student, teacher = logits_pair()
    with pytest.raises(TypeError, match="teacher_logprobs must hold floating-point numbers"):
        information(student, teacher.long(), from_logits=True)
    information(student, teacher, torch.ones(2, 3, dtype=torch.long), from_logits=True)  # an integer mask is fine


# ---------------------------------------------------------------------------------------------
# the multiplier: no meta or complex I


def test_the_multiplier_refuses_meta_and_complex_information():
    m = Multiplier(alpha=1.0, rho_max=3.0)
    with pytest.raises(ValueError, match="information is a meta tensor"):
        m(torch.empty(3, device="meta"))
    with pytest.raises(TypeError, match="information must hold real numbers"):
        m(torch.tensor([0.5 + 1j]))
    with pytest.raises(TypeError, match="information must hold real numbers"):
        m.viscosity(np.array([0.5 + 1j]))
    with pytest.raises(TypeError, match="information"):
        m(0.5 + 1j)


# ---------------------------------------------------------------------------------------------
# modulated_step: an absurd ρ is refused before the parameters or the optimizer state change

OPTIMIZERS = {
    "sgd": lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9),
    "adam": lambda ps: torch.optim.Adam(ps, lr=0.1),
    "adamw": lambda ps: torch.optim.AdamW(ps, lr=0.1, weight_decay=0.1),  # decays every parameter first
    "rprop": lambda ps: torch.optim.Rprop(ps, lr=0.1),  # the extrapolation ("delta") path
}


def stepped(name, dtype=torch.float32):
    """Two parameters and their optimizer after two plain steps, with a fresh gradient."""
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(4, dtype=dtype)), torch.nn.Parameter(torch.randn(3, dtype=dtype))]
    optimizer = OPTIMIZERS[name](params)
    for k in range(3):
        optimizer.zero_grad()
        sum((p.float() ** 2).sum() for p in params).backward()
        if k < 2:  # the third gradient is left for the step under test
            optimizer.step()
    return params, optimizer


@pytest.mark.parametrize("name", list(OPTIMIZERS))
@pytest.mark.parametrize("rho", [1e30, 1e300, math.inf, -math.inf, math.nan, -1.0, 1e7])
def test_an_absurd_rho_is_refused_before_anything_changes(name, rho):
    params, optimizer = stepped(name)
    values, state = [p.detach().clone() for p in params], copy.deepcopy(optimizer.state_dict())
    with pytest.raises(ValueError, match="rho"):
        modulated_step(optimizer, rho)
    # 1e300 used to raise from inside the step, after AdamW's decay had moved the first parameter
    assert all(torch.equal(p.detach(), v) for p, v in zip(params, values))
    after = optimizer.state_dict()
    assert after["param_groups"] == state["param_groups"]
    for k, entry in state["state"].items():
        assert all(torch.equal(torch.as_tensor(entry[key]), torch.as_tensor(after["state"][k][key])) for key in entry)


@pytest.mark.parametrize(("dtype", "largest"), [(torch.float16, 1024.0), (torch.bfloat16, 128.0),
                                                 (torch.float32, 2.0**23), (torch.float64, 2.0**52)])
def test_the_bound_on_rho_is_one_over_epsilon_of_the_parameters_type(dtype, largest):
    params, optimizer = stepped("sgd", dtype)
    before = [p.detach().clone() for p in params]
    with pytest.raises(ValueError, match=re.escape(f"rho = {largest * 1.01:g} is above 1/eps = {largest:g}")):
        modulated_step(optimizer, largest * 1.01)
    assert all(torch.equal(p.detach(), v) for p, v in zip(params, before))
    modulated_step(optimizer, largest)  # the bound itself is allowed: still a parameter-wise finite step here
    assert all(torch.isfinite(p).all() for p in params)


def test_the_bound_is_the_coarsest_parameter_types():
    fine = torch.nn.Parameter(torch.ones(2, dtype=torch.float64))
    coarse = torch.nn.Parameter(torch.ones(2, dtype=torch.bfloat16))
    optimizer = torch.optim.SGD([fine, coarse], lr=0.1)
    fine.grad, coarse.grad = torch.ones_like(fine), torch.ones_like(coarse)
    with pytest.raises(ValueError, match="torch.bfloat16"):
        modulated_step(optimizer, 1000.0)  # fine for the float64 parameter, not for the bfloat16 one
    assert torch.equal(fine.detach(), torch.ones(2, dtype=torch.float64))


class AddOne(torch.optim.Optimizer):
    """A user optimizer (so the "delta" path) whose plain step is finite: θ ← θ + step."""

    def __init__(self, params, step):
        super().__init__(params, {"lr": 1.0, "step": step})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                self.state[p]["n"] = self.state[p].get("n", 0) + 1
                p.add_(group["step"])


def test_the_extrapolation_is_checked_before_it_is_kept():
    ok = torch.nn.Parameter(torch.zeros(2))
    near = torch.nn.Parameter(torch.full((3,), 1e38))
    optimizer = AddOne([ok, near], step=1e38)  # θ_new = 2e38 is finite, θ_old + 3·1e38 = 4e38 is not (float32)
    with pytest.raises(ValueError, match=r"rho = 3 makes parameter 1 \(torch.float32, shape \(3,\)\) non-finite"):
        modulated_step(optimizer, 3.0)
    assert torch.equal(ok.detach(), torch.zeros(2)) and torch.equal(near.detach(), torch.full((3,), 1e38))
    modulated_step(optimizer, 1.5)  # 1e38 + 1.5e38 fits: kept
    torch.testing.assert_close(near.detach(), torch.full((3,), 2.5e38))


@pytest.mark.parametrize("rho", [torch.tensor(1.5, device="meta"), torch.tensor(1.5 + 0j), np.array(1.5 + 0j),
                                 1.5 + 0j])
def test_meta_and_complex_rho_are_refused_naming_rho(rho):
    params, optimizer = stepped("sgd")
    before = [p.detach().clone() for p in params]
    with pytest.raises(ValueError, match="rho"):
        modulated_step(optimizer, rho)
    assert all(torch.equal(p.detach(), v) for p, v in zip(params, before))
