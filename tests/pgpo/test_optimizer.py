"""modulated_step: the update is exactly ρ times the plain one, and the optimizer state is untouched."""

import math
import warnings

import pytest
import torch

from pgpo import modulated_step, step_method


class AdamWWithDefaults(torch.optim.AdamW):
    """A subclass that only changes defaults (as libraries ship them): still linear in lr."""

    def __init__(self, params, lr=1e-2, weight_decay=0.01):
        super().__init__(params, lr=lr, weight_decay=weight_decay)


class AdamWWithItsOwnStep(torch.optim.AdamW):
    """A subclass with a `step` of its own: what it does with lr is unknown, so the general path."""

    def step(self, closure=None):
        return super().step(closure)

OPTIMIZERS = {
    "sgd-momentum": lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9),
    "sgd-nesterov": lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, nesterov=True),
    "sgd-momentum-wd-foreach": lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, weight_decay=0.1, foreach=True),
    "adam": lambda ps: torch.optim.Adam(ps, lr=1e-2),
    "adam-amsgrad-l2-foreach": lambda ps: torch.optim.Adam(ps, lr=1e-2, amsgrad=True, weight_decay=0.1, foreach=True),
    "adamw": lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.01),
    "adamw-strong-decay": lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.5, betas=(0.8, 0.99)),
    "rmsprop-centered": lambda ps: torch.optim.RMSprop(ps, lr=1e-2, momentum=0.5, centered=True),
    "adagrad": lambda ps: torch.optim.Adagrad(ps, lr=0.1, lr_decay=0.01),
    "nadam": lambda ps: torch.optim.NAdam(ps, lr=1e-2, weight_decay=0.01, decoupled_weight_decay=True),
    "radam": lambda ps: torch.optim.RAdam(ps, lr=1e-2),
    "adamax": lambda ps: torch.optim.Adamax(ps, lr=1e-2),
    "adadelta": lambda ps: torch.optim.Adadelta(ps, lr=1.0),
    "adamw-subclass": lambda ps: AdamWWithDefaults(ps),
    "adamw-subclass-own-step": lambda ps: AdamWWithItsOwnStep(ps, lr=1e-2),
    # not linear in lr: "auto" takes the extrapolation path for these
    "rprop": lambda ps: torch.optim.Rprop(ps, lr=1e-2),
    "asgd": lambda ps: torch.optim.ASGD(ps, lr=1e-2, t0=1),
}
RHOS = [0.5, 1.0, 1.5, 2.0, 3.7]


def make_model(seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 3))
    with torch.no_grad():  # a second group with its own lr exercises per-group restoring
        model[2].bias.mul_(3.0)
    return model.to(dtype)


def param_groups(model):
    return [{"params": list(model[0].parameters())}, {"params": list(model[2].parameters()), "lr": 0.003}]


def backward(model, seed):
    g = torch.Generator().manual_seed(seed)
    dtype = next(model.parameters()).dtype
    x, y = torch.randn(16, 5, generator=g, dtype=dtype), torch.randn(16, 3, generator=g, dtype=dtype)
    model.zero_grad()
    loss = torch.nn.functional.mse_loss(model(x), y)
    loss.backward()
    return loss


def trained_pair(name, dtype=torch.float64):
    """Two identical (model, optimizer) pairs with a few steps of history and the same fresh gradient.

    Built twice from scratch rather than through load_state_dict, which casts some state (NAdam's
    mu_product) to the parameter dtype and so would not give a bit-identical twin.
    """
    pairs = []
    for _ in range(2):
        model = make_model(dtype=dtype)
        optimizer = OPTIMIZERS[name](param_groups(model))
        for k in range(3):
            backward(model, k)
            optimizer.step()
        backward(model, 99)
        pairs.append((model, optimizer))
    return pairs


def assert_same_state(a, b):
    """Every entry of two optimizer states is equal, tensors bit for bit, and no buffer is shared."""
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], dict):
            assert_same_state(a[key], b[key])
        elif isinstance(a[key], torch.Tensor):
            assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key
            assert a[key].data_ptr() != b[key].data_ptr() or a[key].numel() == 0, f"{key} is shared"
        elif isinstance(a[key], list):
            assert len(a[key]) == len(b[key])
            for u, v in zip(a[key], b[key]):
                assert torch.equal(u, v) if isinstance(u, torch.Tensor) else u == v
        else:
            assert a[key] == b[key], key


def states(optimizer):
    return {i: s for i, s in enumerate(optimizer.state[p] for g in optimizer.param_groups for p in g["params"])}


def check_modulated_update(name, rho, method="auto", dtype=torch.float64):
    (model, optimizer), (twin, twin_optimizer) = trained_pair(name, dtype)
    lrs = [g["lr"] for g in twin_optimizer.param_groups]
    before = [p.detach().clone() for p in model.parameters()]
    optimizer.step()
    modulated_step(twin_optimizer, rho, method=method)

    eps = torch.finfo(dtype).eps
    moved = False
    for old, p, q in zip(before, model.parameters(), twin.parameters()):
        plain, scaled = p.detach() - old, q.detach() - old
        moved |= bool(plain.abs().max() > 0)
        if rho == 1.0:
            assert torch.equal(p, q)  # same bits as a plain step
            continue
        # rounding of θ + Δθ and of lr·ρ: a few ulps of the numbers involved, nothing more
        tolerance = 4 * eps * (1 + rho) * (old.abs() + rho * plain.abs())
        assert torch.all((scaled - rho * plain).abs() <= tolerance), (scaled - rho * plain).abs().max()
    assert moved
    assert_same_state(states(optimizer), states(twin_optimizer))
    assert [g["lr"] for g in twin_optimizer.param_groups] == lrs


@pytest.mark.parametrize("rho", RHOS)
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_update_is_rho_times_the_plain_one_and_state_is_untouched(name, rho):
    check_modulated_update(name, rho)


@pytest.mark.parametrize("name", ["sgd-nesterov", "adam", "adamw"])
@pytest.mark.parametrize("rho", [0.5, 2.0])
def test_both_methods_agree(name, rho):
    check_modulated_update(name, rho, method="lr")
    check_modulated_update(name, rho, method="delta")


@pytest.mark.parametrize("name", ["sgd-momentum", "adamw"])
def test_float32_parameters(name):
    check_modulated_update(name, 1.8, dtype=torch.float32)


def test_the_check_can_fail():
    """Scaling the gradient instead of the step is *not* a modulated Adam step: the test must see it."""
    (model, optimizer), (twin, twin_optimizer) = trained_pair("adamw")
    before = [p.detach().clone() for p in model.parameters()]
    optimizer.step()
    for q in twin.parameters():
        q.grad.mul_(2.0)
    twin_optimizer.step()
    plain = torch.cat([(p.detach() - b).flatten() for p, b in zip(model.parameters(), before)])
    scaled = torch.cat([(q.detach() - b).flatten() for q, b in zip(twin.parameters(), before)])
    assert (scaled - 2.0 * plain).abs().max() > 1e-4


def test_adamw_state_stays_bit_identical_over_many_modulated_steps():
    """With the same gradient sequence, AdamW's moments never see ρ: step after step they match."""
    plain_model, mod_model = make_model(), make_model()
    plain = torch.optim.AdamW(plain_model.parameters(), lr=1e-2, weight_decay=0.01)
    modulated = torch.optim.AdamW(mod_model.parameters(), lr=1e-2, weight_decay=0.01)
    g = torch.Generator().manual_seed(1)
    for rho in [1.0, 1.3, 2.0, 1.0, 1.7, 2.0]:
        for p, q in zip(plain_model.parameters(), mod_model.parameters()):
            p.grad = torch.randn(p.shape, generator=g, dtype=p.dtype)
            q.grad = p.grad.clone()
        plain.step()
        modulated_step(modulated, rho)
        assert_same_state(states(plain), states(modulated))


def test_rho_as_a_tensor():
    (model, optimizer), (twin, twin_optimizer) = trained_pair("adam")
    before = [p.detach().clone() for p in model.parameters()]
    optimizer.step()
    modulated_step(twin_optimizer, torch.tensor(1.5, dtype=torch.float64))
    for old, p, q in zip(before, model.parameters(), twin.parameters()):
        torch.testing.assert_close(q - old, 1.5 * (p - old), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("scheduler", ["lambda-warmup", "exponential"])
def test_schedulers_keep_working(scheduler):
    """The learning-rate sequence with modulated steps is the plain one, without warnings."""
    make = {
        "lambda-warmup": lambda o: torch.optim.lr_scheduler.LambdaLR(o, lambda s: min(1.0, (s + 1) / 4)),
        "exponential": lambda o: torch.optim.lr_scheduler.ExponentialLR(o, gamma=0.9),  # reads group["lr"]
    }[scheduler]
    sequences = []
    for rhos in ([1.0] * 6, [2.0, 1.5, 1.0, 3.0, 2.0, 1.2]):
        model = make_model()
        optimizer = torch.optim.AdamW(param_groups(model), lr=1e-2)
        schedule = make(optimizer)
        seen = []
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            for k, rho in enumerate(rhos):
                backward(model, k)
                modulated_step(optimizer, rho)
                schedule.step()
                seen.append([g["lr"] for g in optimizer.param_groups])
        sequences.append(seen)
    assert sequences[0] == sequences[1]


def test_learning_rates_are_restored_when_the_step_raises():
    model = make_model()
    optimizer = torch.optim.SGD(param_groups(model), lr=0.1, momentum=0.9)
    backward(model, 0)

    def closure():
        raise RuntimeError("loss blew up")

    with pytest.raises(RuntimeError, match="blew up"):
        modulated_step(optimizer, 2.0, closure=closure)
    assert [g["lr"] for g in optimizer.param_groups] == [0.1, 0.003]


def test_closure_optimizer_lbfgs():
    torch.manual_seed(0)
    x, y = torch.randn(20, 5, dtype=torch.float64), torch.randn(20, dtype=torch.float64)
    results = []
    for rho in (1.0, 1.6):
        w = torch.zeros(5, dtype=torch.float64, requires_grad=True)
        optimizer = torch.optim.LBFGS([w], lr=0.5, max_iter=3)

        def closure():
            optimizer.zero_grad()
            loss = ((x @ w - y) ** 2).mean()
            loss.backward()
            return loss

        loss = modulated_step(optimizer, rho, closure=closure)
        assert torch.isfinite(loss)
        results.append(w.detach().clone())
    torch.testing.assert_close(results[1], 1.6 * results[0], rtol=1e-12, atol=1e-15)


def test_a_user_optimizer_takes_the_general_path():
    class SignSGD(torch.optim.Optimizer):
        def __init__(self, params, lr):
            super().__init__(params, {"lr": lr})

        @torch.no_grad()
        def step(self, closure=None):
            for group in self.param_groups:
                for p in group["params"]:
                    self.state[p]["steps"] = self.state[p].get("steps", 0) + 1
                    p.add_(torch.sign(p.grad), alpha=-group["lr"])

    model = make_model()
    backward(model, 0)
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = SignSGD(model.parameters(), lr=0.01)
    modulated_step(optimizer, 2.5)
    for old, p in zip(before, model.parameters()):
        torch.testing.assert_close(p - old, -0.025 * torch.sign(p.grad), rtol=1e-12, atol=1e-15)
        assert optimizer.state[p]["steps"] == 1


@pytest.mark.parametrize("bad", [-0.5, math.nan, math.inf, "2", None, torch.tensor([1.0, 2.0])])
def test_bad_rho_is_named(bad):
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="rho"):
        modulated_step(optimizer, bad)


def test_bad_method_is_named():
    optimizer = torch.optim.SGD(make_model().parameters(), lr=0.1)
    with pytest.raises(ValueError, match="method"):
        modulated_step(optimizer, 2.0, method="loss")


def test_a_zero_dimensional_numpy_rho_is_read():
    import numpy as np

    p = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.SGD([p], lr=0.1)
    p.grad = torch.ones(3)
    modulated_step(optimizer, np.array(1.5))
    torch.testing.assert_close(p.detach(), torch.full((3,), 1 - 0.15))
    with pytest.raises(ValueError, match="single number"):
        modulated_step(optimizer, np.array([1.5, 2.0]))


@pytest.mark.parametrize("not_an_optimizer", [None, [torch.nn.Parameter(torch.ones(2))], torch.nn.Linear(2, 2)])
def test_something_that_is_not_an_optimizer_is_named(not_an_optimizer):
    with pytest.raises(TypeError, match="optimizer must be a torch optimizer"):
        modulated_step(not_an_optimizer, 2.0)


@pytest.mark.parametrize(("name", "method"), [("adamw", "lr"), ("sgd-nesterov", "lr"), ("adamw-subclass", "lr"),
                                              ("adamw-subclass-own-step", "delta"), ("rprop", "delta"),
                                              ("asgd", "delta")])
def test_the_method_that_runs_is_reported(name, method):
    (model, optimizer), _ = trained_pair(name)
    assert step_method(optimizer) == method
    result, ran = modulated_step(optimizer, 1.5, return_method=True)
    assert result is None and ran == method


@pytest.mark.parametrize("name", ["rprop", "asgd", "adamw-subclass-own-step"])
def test_the_lr_method_is_refused_where_it_would_be_silently_wrong(name):
    (model, optimizer), _ = trained_pair(name)
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError, match="method='lr'.*use method='delta'"):
        modulated_step(optimizer, 2.0, method="lr")
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters()))  # refused before any step
    assert step_method(optimizer, "delta") == "delta"


def test_accelerates_wrapper_is_looked_through_and_its_own_step_still_runs():
    """accelerate's AcceleratedOptimizer (what Trainer and TRL hand out): the AdamW inside picks the exact "lr"
    path, the update is ρ times the plain one, and the wrapper's step still skips accumulation micro-steps."""
    accelerate = pytest.importorskip("accelerate")
    from accelerate.state import AcceleratorState, GradientState

    try:
        results = []
        for rho in (1.0, 2.5):
            accelerator = accelerate.Accelerator(cpu=True, gradient_accumulation_steps=2)
            model = make_model(dtype=torch.float32)
            model, optimizer = accelerator.prepare(model, torch.optim.AdamW(param_groups(model), lr=1e-2))
            assert type(optimizer).__name__ == "AcceleratedOptimizer" and step_method(optimizer) == "lr"
            before = [p.detach().clone() for p in model.parameters()]
            with accelerator.accumulate(model):  # the first of two micro-steps: no optimizer step
                backward(model, 0)
                assert modulated_step(optimizer, rho, return_method=True)[1] == "lr"
            assert all(torch.equal(a, p) for a, p in zip(before, model.parameters()))
            with accelerator.accumulate(model):
                backward(model, 1)
                modulated_step(optimizer, rho)
            results.append([p.detach() - a for a, p in zip(before, model.parameters())])
            AcceleratorState._reset_state(reset_partial_state=True)
            GradientState._reset_state()
        for plain, scaled in zip(*results):
            assert plain.abs().max() > 0
            torch.testing.assert_close(scaled, 2.5 * plain, rtol=1e-5, atol=1e-7)
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
