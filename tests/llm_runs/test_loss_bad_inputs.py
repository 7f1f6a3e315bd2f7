"""Broken input never becomes a finite loss: NaN/inf in logits, masks, weights or sampler log-probabilities reach the
loss, its gradient and the metrics (the trainer skips a step on a non-finite gradient), in the plain and the
chunked implementation alike; padding may still hold anything; meta and complex tensors are refused."""

import itertools
import math

import pytest
import torch

from llm_runs.chunked_loss import chunked_self_distillation_loss
from llm_runs.loss import importance_weights, self_distillation_loss

B, T, V = 2, 3, 9
SUPPORTS = [(3, True), (3, False), (None, True)]  # top-k + tail, the top-k renormalised, the whole vocabulary
BETAS = [0.0, 0.5, 1.0]
IMPLEMENTATIONS = ["plain", "chunked"]


def inputs():
    g = torch.Generator().manual_seed(0)
    student = 2 * torch.randn(B, T, V, generator=g, dtype=torch.float64)
    return dict(student=student, teacher=student + torch.randn(B, T, V, generator=g, dtype=torch.float64),
                response_mask=torch.ones(B, T, dtype=torch.float64), sample_mask=torch.ones(B, dtype=torch.float64),
                response_ids=torch.randint(0, V, (B, T), generator=g),
                sampler_logprobs=-3 * torch.rand(B, T, generator=g, dtype=torch.float64))


def run(implementation, x, beta=0.5, topk=3, add_tail=True, **extra):
    """(loss, the student's gradient, the information numerator) of one implementation."""
    leaf = x["student"].clone().requires_grad_(True)
    options = dict(beta=beta, topk=topk, add_tail=add_tail, response_ids=x["response_ids"], **extra)
    if "is_weights" not in extra:
        options["sampler_logprobs"] = x["sampler_logprobs"]
    if implementation == "plain":
        out = self_distillation_loss(leaf, x["teacher"], x["response_mask"], x["sample_mask"], **options)
    else:
        out = chunked_self_distillation_loss(leaf, None, x["teacher"], None, x["response_mask"], x["sample_mask"],
                                             chunk_size=2, **options)
    out.loss.backward()
    return out.loss.item(), leaf.grad, out.information[0].item()


def kind(v):
    return "nan" if math.isnan(v) else "+inf" if v == math.inf else "-inf" if v == -math.inf else "finite"


def logit_index(x, where):
    """The vocabulary entry at position (0, 1) that lies in the student's top-k ("top") or outside it ("tail")."""
    row = x["student"][0, 1]
    return int(row.argmax() if where == "top" else row.argmin())


@pytest.mark.parametrize("side, where", list(itertools.product(["student", "teacher"], ["top", "tail"])))
@pytest.mark.parametrize("bad", [math.nan, math.inf])
@pytest.mark.parametrize("beta", BETAS)
@pytest.mark.parametrize("support", SUPPORTS)
def test_a_nan_or_inf_logit_gives_a_non_finite_loss_gradient_and_information(side, where, bad, beta, support):
    seen = []
    for implementation in IMPLEMENTATIONS:
        x = inputs()
        x[side][0, 1, logit_index(x, where)] = bad
        # the case: β = 0 with a NaN teacher logit gave a finite loss and gradient (NaN read as zero mass);
        # a teacher's NaN or +inf outside the renormalised top-k was dropped with the tail
        loss, grad, info = run(implementation, x, beta, *support)
        assert not math.isfinite(loss) and not torch.isfinite(grad).all() and not math.isfinite(info), implementation
        seen.append((kind(loss), kind(info)))
    assert seen[0] == seen[1]  # the chunked loss fails exactly as the plain one does


@pytest.mark.parametrize("name", ["response_mask", "sample_mask", "is_weights", "sampler_logprobs"])
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("beta", BETAS)
def test_a_non_finite_mask_weight_or_sampler_log_probability_gives_a_non_finite_loss_and_gradient(name, bad, beta):
    seen = []
    for implementation in IMPLEMENTATIONS:
        x, extra = inputs(), {}
        if name == "is_weights":
            extra["is_weights"] = torch.ones(B, T, dtype=torch.float64)
            extra["is_weights"][0, 1] = bad
        elif name == "sample_mask":
            x[name][0] = bad
        else:
            x[name][0, 1] = bad
        # a sampler log-probability of −inf used to become the cap, +inf a zero weight: a finite loss either way
        loss, grad, info = run(implementation, x, beta, **extra)
        assert not math.isfinite(loss) and not torch.isfinite(grad).all(), implementation
        if name.endswith("mask"):  # the metric pairs are pooled over the masks
            assert not math.isfinite(info)
        seen.append(kind(loss))
    assert seen[0] == seen[1]


def test_importance_weights_are_nan_where_the_sampler_log_probability_is_not_finite():
    sampler = torch.tensor([-1.0, math.nan, math.inf, -math.inf])
    w = importance_weights(torch.full((4,), -0.5), sampler, cap=2.0)
    assert w[0].item() == pytest.approx(math.exp(0.5)) and torch.isnan(w[1:]).all()


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("beta", BETAS)
@pytest.mark.parametrize("support", SUPPORTS)
def test_padding_may_still_hold_anything(implementation, beta, support):
    x = inputs()
    x["response_mask"][1, 2] = 0  # padding
    x["sample_mask"][0] = 0  # a sequence without a teacher (its garbage teacher is what it gets)
    weights = torch.ones(B, T, dtype=torch.float64)
    clean_loss, clean_grad, clean_info = run(implementation, x, beta, *support, is_weights=weights)
    x["teacher"][1, 2] = math.nan
    x["teacher"][0, :, 0] = math.inf
    weights[1, 2] = weights[0, 1] = math.nan
    loss, grad, info = run(implementation, x, beta, *support, is_weights=weights)
    # a NaN weight or teacher where nothing counts used to reach the loss (0·NaN) or the gradient
    assert loss == clean_loss and info == clean_info and torch.equal(grad, clean_grad)
    clean_loss = run(implementation, x, beta, *support)[0]  # the weights from the sampler's log-probabilities
    x["sampler_logprobs"][1, 2] = -math.inf
    assert run(implementation, x, beta, *support)[0] == clean_loss


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("beta", BETAS)
@pytest.mark.parametrize("support", SUPPORTS)
def test_minus_inf_logits_are_zero_mass_not_an_error(implementation, beta, support):
    x = inputs()
    x["student"][..., 5] = x["teacher"][..., 5] = -math.inf  # a token both mask out
    loss, grad, info = run(implementation, x, beta, *support)
    assert math.isfinite(loss) and torch.isfinite(grad).all() and math.isfinite(info)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_a_row_with_no_mass_at_all_gives_nan(implementation):
    x = inputs()
    x["teacher"][0, 1] = -math.inf  # no distribution: not a masked token
    loss, grad, info = run(implementation, x, 0.0)
    assert math.isnan(loss) and not torch.isfinite(grad).all() and math.isnan(info)


def test_chunked_from_hidden_states_carries_a_nan_in_the_hidden_states_or_the_head():
    g = torch.Generator().manual_seed(1)
    h, h_teacher = torch.randn(B, T, 4, generator=g), torch.randn(B, T, 4, generator=g)
    masks = (torch.ones(B, T), torch.ones(B))
    for broken in ("teacher_hidden", "teacher_head", "student_head"):
        student_head, teacher_head = torch.nn.Linear(4, V, bias=False), torch.nn.Linear(4, V, bias=False)
        teacher_h = h_teacher.clone()
        with torch.no_grad():
            if broken == "teacher_hidden":
                teacher_h[1, 0, 2] = math.nan
            else:
                (teacher_head if broken == "teacher_head" else student_head).weight[3, 1] = math.nan
        x = h.clone().requires_grad_(True)
        out = chunked_self_distillation_loss(x, student_head, teacher_h, teacher_head, *masks, beta=0.0, topk=3)
        out.loss.backward()
        assert math.isnan(out.loss.item()) and not torch.isfinite(x.grad).all(), broken


# ---------------------------------------------------------------------------------------------
# refused: tensors without values, complex values, a cap that is not a number > 0

TENSORS = ["student", "teacher", "response_mask", "sample_mask", "response_ids", "sampler_logprobs"]
NAMES = {"plain": {"student": "student_logits", "teacher": "teacher_logits"},
         "chunked": {"student": "student_hidden", "teacher": "teacher_hidden"}}


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("position", TENSORS)
def test_meta_tensors_are_refused_naming_the_argument(implementation, position):
    x = inputs()
    x[position] = torch.empty(x[position].shape, dtype=x[position].dtype, device="meta")
    name = NAMES[implementation].get(position, position)
    with pytest.raises(ValueError, match=f"{name} is a meta tensor"):
        run(implementation, x)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("position", [p for p in TENSORS if p != "response_ids"])
def test_complex_tensors_are_refused_naming_the_argument(implementation, position):
    x = inputs()
    x[position] = x[position].to(torch.complex128)
    name = NAMES[implementation].get(position, position)
    with pytest.raises(TypeError, match=f"{name} must hold real numbers"):
        run(implementation, x)


def test_complex_or_meta_heads_are_refused_naming_them():
    h = torch.randn(B, T, 4)
    masks = (torch.ones(B, T), torch.ones(B))
    complex_head = torch.nn.Linear(4, V, bias=False, dtype=torch.complex64)
    with pytest.raises(TypeError, match="student_head.weight must hold real numbers"):
        chunked_self_distillation_loss(h, complex_head, h, torch.nn.Linear(4, V), *masks)
    half_meta = torch.nn.Linear(4, V)
    half_meta.bias = torch.nn.Parameter(torch.empty(V, device="meta"))  # a weight with data, a bias without
    with pytest.raises(ValueError, match="teacher_head.bias is a meta tensor"):
        chunked_self_distillation_loss(h, torch.nn.Linear(4, V, bias=False), h, half_meta, *masks)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("cap", [math.nan, 0.0, -1.0, "2", True])
def test_a_cap_that_is_not_a_positive_number_is_refused(implementation, cap):
    # a NaN cap made every weight NaN without a word, a cap of 0 every weight 0
    with pytest.raises(ValueError, match="is_cap"):
        run(implementation, inputs(), is_cap=cap)
