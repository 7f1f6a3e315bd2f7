"""`python -m sde_lab figures [--quick] [--out DIR] [--replot] [--only NAME]`: the theory figures.

Each figure is a function that computes its data (a JSON-able dict) and a function that draws it, so a
replot (`--replot`) reads the JSON saved next to the PNG and PDF and computes nothing. Every figure
here comes from this command; none is edited by hand.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from pgpo import PAPER_STYLE, Multiplier
from sde_lab import catalog
from sde_lab.adaptive import adaptive_weak_error, family_named, one_step_mismatch
from sde_lab.density import sde_law
from sde_lab.discrete import DiscreteProcess
from sde_lab.oracles import stationary_spread
from sde_lab.sme import KINKED, SMOOTH, sme
from sde_lab.studies.parallel import in_worker, run_all
from sde_lab.studies.settings import ADAPTIVE, ADAPTIVE_PROBLEMS, MINIBATCH, Q1D, SPREAD_HESSIAN, ladder
from sde_lab.weak_error import weak_error


@dataclass
class Figure:
    name: str
    caption: str
    compute: Callable[[bool], dict]  # quick → data
    draw: Callable[[dict], "object"]  # data → matplotlib Figure
    long: bool = False  # among the longest to compute: started first when figures are computed side by side


# ---------------------------------------------------------------------------------------------
# the multiplier and its viscosity


def _multiplier_data(quick: bool) -> dict:
    info = np.linspace(0.0, 3.0, 301)
    curves = []
    for alpha, rho_max in [(0.5, 2.0), (1.0, 2.0), (2.0, 2.0), (2.0, 3.0)]:
        for form in ("linear", "smooth"):
            m = Multiplier(alpha, rho_max, form=form)
            curves.append({"alpha": alpha, "rho_max": rho_max, "form": form, "rho": m(info).tolist(),
                           "viscosity": m.viscosity(info).tolist()})
    return {"information": info.tolist(), "curves": curves}


def _multiplier_draw(data: dict):
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(6.5, 2.6))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    keys = sorted({(c["alpha"], c["rho_max"]) for c in data["curves"]})
    for c in data["curves"]:
        color = colors[keys.index((c["alpha"], c["rho_max"]))]
        style = "-" if c["form"] == "linear" else "--"
        label = f"α={c['alpha']:g}, ρ_max={c['rho_max']:g}" if c["form"] == "linear" else None
        left.plot(data["information"], c["rho"], style, color=color)
        right.plot(data["information"], c["viscosity"], style, color=color, label=label)
    left.set(xlabel="information I (nats)", ylabel="step multiplier ρ", title="ρ = min(1 + αI, ρ_max) (—), smooth cap (--)")
    right.set(xlabel="information I (nats)", ylabel="viscosity ν = 1/ρ", title="viscosity reading")
    right.legend(loc="upper right")  # the empty corner: ν has settled near 1/ρ_max there
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------
# weak error on the exact problems (no Monte Carlo)


def _exact_orders_data(quick: bool) -> dict:
    etas = ladder(2, 12 if quick else 14)
    panels = []
    for name in ("quadratic", "random_hessian"):
        for order in (1, 2):
            r = weak_error(catalog.get(name), etas, 2.0, order=order)
            panels.append({"problem": name, "order": order, "etas": r.etas.tolist(), "errors": r.errors.tolist(),
                           "slope": r.slope, "slope_ci": list(r.slope_ci),
                           "used": [float(r.etas[i]) for i in r.slope_fit.used]})
    return {"horizon": 2.0, "test_fn": "loss", "panels": panels}


def _exact_orders_draw(data: dict):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(6.8, 3.0), sharey=True)
    for ax, name in zip(axes, ("quadratic", "random_hessian")):
        for p in (p for p in data["panels"] if p["problem"] == name):
            eta, err = np.array(p["etas"]), np.abs(np.array(p["errors"]))
            lo, hi = p["slope_ci"]
            ax.loglog(eta, err, "o-" if p["order"] == 1 else "s-", ms=3,
                      label=f"vs order-{p['order']} SME: slope {p['slope']:.2f} [{lo:.2f}, {hi:.2f}]")
            # a reference slope through the finest point of the series it belongs to
            ax.loglog(eta, err[-1] * (eta / eta[-1]) ** p["order"], ":" if p["order"] == 1 else "-.", color="gray",
                      lw=0.8, label=f"slope {p['order']}")
        _eta_ticks(ax, eta)
        ax.set(xlabel="learning rate η", title=f"SGD on {name} (exact, g = L, T = {data['horizon']:g})")
        ax.legend(loc="lower right", fontsize=6.5, framealpha=0.9)
    axes[0].set_ylabel(r"$|\,\mathbb{E}\,g(x_{T/\eta}) - \mathbb{E}\,g(X_T)\,|$")
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------
# shared: one measured ladder as JSON, and its drawing on log–log axes


def _series(r, label: str) -> dict:
    return {"label": label, "etas": r.etas.tolist(), "errors": r.errors.tolist(), "stderr": r.stderr.tolist(),
            "slope": r.slope, "slope_ci": list(r.slope_ci), "claimed_order": r.claimed_order,
            "plateau": r.poly_fit.coefficients[0] if r.claimed_order == 0 else None, "diverged": r.diverged.tolist()}


def _draw_series(ax, s: dict) -> None:
    """|e| with its 95% interval (the lower bar stops at |e|/10 where the interval crosses 0); open
    markers are negative signed errors."""
    eta, e, se = np.array(s["etas"]), np.array(s["errors"]), np.array(s["stderr"])
    lo, hi = s["slope_ci"]
    slope = f"{s['slope']:.2f} [{lo:.2f}, {hi:.2f}]" if np.isfinite(s["slope"]) else "n/a"
    low = np.minimum(1.96 * se, 0.9 * np.abs(e))
    bars = ax.errorbar(eta, np.abs(e), yerr=[low, 1.96 * se], fmt="-", lw=1, capsize=2, label=f"{s['label']}: {slope}")
    color = bars[0].get_color()
    positive = e > 0
    ax.plot(eta[positive], e[positive], "o", ms=3.5, color=color, zorder=3)
    ax.plot(eta[~positive], -e[~positive], "o", ms=3.5, mfc="white", color=color, zorder=3)
    ax.set_xscale("log")
    ax.set_yscale("log")
    _eta_ticks(ax, eta)


def _eta_ticks(ax, etas) -> None:
    """Major ticks at the ladder's η, labelled 2⁻ʲ; no minor labels (they collide on short ladders)."""
    from matplotlib.ticker import FixedLocator, NullFormatter

    etas = sorted(set(float(e) for e in etas))
    step = max(1, len(etas) // 6)
    ax.xaxis.set_major_locator(FixedLocator(etas[::-1][::step]))
    ax.xaxis.set_major_formatter(lambda v, _: f"$2^{{{round(np.log2(v))}}}$")
    ax.xaxis.set_minor_formatter(NullFormatter())


def _reference_slopes(ax, eta, anchor, orders=(1, 2)) -> None:
    eta = np.asarray(eta)
    for order, style in zip(orders, (":", "-.")):
        ax.plot(eta, anchor * (eta / eta[-1]) ** order, style, color="gray", lw=0.8, label=f"slope {order}")


def _ladder_panel(ax, series: list[dict], anchor: dict, title: str, orders=(1, 2)) -> None:
    """Several measured ladders on one log–log panel, reference slopes through `anchor`'s finest point."""
    for s in series:
        _draw_series(ax, s)
        if s.get("plateau") is not None:
            ax.axhline(abs(s["plateau"]), color="gray", lw=0.8, ls="--", label=f"fitted plateau {abs(s['plateau']):.3f}")
    _reference_slopes(ax, anchor["etas"], abs(anchor["errors"][-1]), orders)
    ax.set(xlabel="learning rate η", ylabel="|weak error|, 95% CI", title=title)
    ax.title.set_fontsize(7.5)
    ax.legend(fontsize=6, loc="lower right", framealpha=0.9)


# ---------------------------------------------------------------------------------------------
# weak error against η on every built-in problem: SGD and PGPO under both SDE forms (Monte Carlo)

PANELS = [  # (problem, its keyword arguments, horizon, test function)
    ("quadratic", {}, 1.0, "loss"),
    ("random_hessian", {}, 1.0, "loss"),
    ("linear_regression", {}, 1.0, "loss"),
    ("logistic_regression", {"feature_scale": 2.0}, 1.0, "norm2"),
    ("self_distillation", {}, 1.0, "norm2"),
    ("double_well", {}, 1.0, "norm2"),
]
PROCESSES = [("SGD", None, "scaled"), ("PGPO, scaled SDE", SMOOTH, "scaled"), ("PGPO, paper's SDE", SMOOTH, "paper")]


def _weak_error_data(quick: bool) -> dict:
    paths = 300 if quick else 4000
    panels = []
    for name, kwargs, horizon, test_fn in tqdm(PANELS, desc="weak error panels", leave=False, disable=in_worker()):
        problem = catalog.get(name, **kwargs)
        first = 2 if problem.lambda_max is None else max(2, int(np.ceil(np.log2(2.0 * 2.0 * problem.lambda_max))))
        etas = ladder(first, first + (3 if quick else 4))  # the finest rung costs most
        series = []
        for label, multiplier, sde in PROCESSES:
            r = weak_error(problem, etas, horizon, multiplier=multiplier, sde=sde, test_fn=test_fn, paths=paths,
                           seed=7, reference="em")
            series.append(_series(r, label))
        panels.append({"problem": problem.name + (" (features ×2)" if kwargs else ""), "horizon": horizon,
                       "test_fn": test_fn, "series": series})
    return {"paths": paths, "multiplier": "smooth cap, α = 2, ρ_max = 2", "panels": panels}


def _weak_error_draw(data: dict):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(7.2, 5.2))
    for ax, panel in zip(axes.flat, data["panels"]):
        for s in panel["series"]:
            _draw_series(ax, s)
        eta = np.array(panel["series"][0]["etas"])
        anchor = abs(panel["series"][0]["errors"][-1])
        ax.plot(eta, anchor * (eta / eta[-1]), ":", color="gray", lw=0.8)  # plot, not loglog: keeps the η ticks
        ax.plot(eta, anchor * (eta / eta[-1]) ** 2, "-.", color="gray", lw=0.8)
        ax.set_title(f"{panel['problem']}\ng = {panel['test_fn']}, T = {panel['horizon']:g}", fontsize=7.5)
        low, high = ax.get_ylim()
        ax.set_ylim(low, high * (high / low) ** 0.5)  # head-room: the legend sits above the data
        ax.legend(fontsize=5.5, loc="upper left", framealpha=0.85)
        ax.set_xlabel("learning rate η")
    for ax in axes[:, 0]:
        ax.set_ylabel("|weak error|, 95% CI")
    fig.suptitle(f"Weak error vs η, {data['paths']} coupled paths per η (slope [95% CI] in the legends); PGPO: "
                 f"{data['multiplier']}.\nGray: slopes 1 (dotted) and 2 (dash-dot). Open markers: negative signed error.",
                 fontsize=7.5)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------
# order 2: SGD and PGPO against the order-2 SME; the paper's diffusion cannot reach it

def _order_two_data(quick: bool) -> dict:
    problem = catalog.quadratic(**Q1D)
    etas = ladder(2, 5 if quick else 7)
    paths = 2000 if quick else 16000
    runs = [("SGD vs SME-2", None, "scaled", 2), ("PGPO vs SME-1 (scaled)", SMOOTH, "scaled", 1),
            ("PGPO vs SME-2 (scaled)", SMOOTH, "scaled", 2), ("PGPO vs SME-2 drift, paper's diffusion", SMOOTH, "paper", 2)]
    series = []
    for label, multiplier, sde, order in tqdm(runs, desc="order-2 ladders", leave=False, disable=in_worker()):
        r = weak_error(problem, etas, 1.0, multiplier=multiplier, sde=sde, order=order, test_fn="norm2",
                       paths=paths, seed=3, reference="em")
        series.append(_series(r, label))
    return {"problem": "1-D quadratic, λ = 2, σ = 0.5, x₀ = 1.5", "horizon": 1.0, "test_fn": "|x|²", "paths": paths,
            "multiplier": "smooth cap, α = 2, ρ_max = 2", "series": series}


def _order_two_draw(data: dict):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.6, 3.4))
    _ladder_panel(ax, data["series"], data["series"][0],
                  f"Order 2 — {data['problem']}\ng = {data['test_fn']}, T = {data['horizon']:g}, {data['paths']} coupled "
                  f"paths; PGPO: {data['multiplier']}")
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------
# a mini-batch signal: the naive drift plateaus, the correct one converges

def _minibatch_data(quick: bool) -> dict:
    problem = catalog.linear_regression(**MINIBATCH)
    etas = ladder(2, 6)
    paths = 1000 if quick else 4000
    series = []
    for drift, label in tqdm([("naive", "naive drift ρ(I(x))∇L"), ("correct", "correct drift E[ρ(I_γ)∇ℓ_γ]")],
                             desc="mini-batch ladders", leave=False, disable=in_worker()):
        r = weak_error(problem, etas, 2.0, multiplier=SMOOTH, signal="minibatch", drift=drift, test_fn="norm2",
                       paths=paths, seed=4)
        series.append(_series(r, label))
    return {"problem": "1-D linear regression, n = 8, label noise 2", "horizon": 2.0, "test_fn": "|x|²",
            "paths": paths, "multiplier": "smooth cap, α = 2, ρ_max = 2", "series": series}


def _minibatch_draw(data: dict):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.6, 3.2))
    _ladder_panel(ax, data["series"], data["series"][-1],
                  f"PGPO with the mini-batch's own signal — {data['problem']}\ng = {data['test_fn']}, T = "
                  f"{data['horizon']:g}, {data['paths']} quantile-coupled paths; {data['multiplier']}", orders=(1,))
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------
# RMSprop, Adam and PGPO on Adam against their SDEs (Malladi et al.'s scaling), in the SDE's step h = η²

ADAPTIVE_RUNS = [  # (label, the family's name in ADAPTIVE_FAMILIES, t₀)
    ("Adam, warm start t₀ = 1", "Adam-SDE", 1.0),
    ("PGPO-Adam, ρ in θ's drift, warm", "PGPO-Adam-SDE[ρ in θ's drift only]", 1.0),
    ("Adam, cold start", "Adam-SDE", 0.0),
    ("RMSprop, cold start", "RMSprop-SDE", 0.0),
]
ADAPTIVE_WRONG = [  # the placements of ρ that miss the discrete step, beside the right ones, on the quadratic
    ("PGPO-RMSprop, ρ in θ's drift and diffusion", "PGPO-RMSprop-SDE[ρ in θ's drift and diffusion]"),
    ("PGPO-RMSprop, ρ in θ's drift only", "PGPO-RMSprop-SDE[ρ in θ's drift only]"),
    ("PGPO-Adam, ρ in θ's drift", "PGPO-Adam-SDE[ρ in θ's drift only]"),
    ("PGPO-Adam, ρ also on m's noise", "PGPO-Adam-SDE[ρ also on m's noise]"),
]


def _adaptive_series(problem, name: str, label: str, etas, paths: int, seed: int, t0: float = 0.0) -> dict:
    r = weak_error(problem, etas, 1.0, test_fn="norm2", paths=paths, seed=seed,
                   **family_named(name).measured_with(SMOOTH, t0=t0, **ADAPTIVE))
    series = _series(r, label)
    series["etas"] = r.fit_steps.tolist()  # drawn against h = η², the step its order is claimed in
    return series


def _adaptive_data(quick: bool) -> dict:
    paths = 400 if quick else 8000
    panels = []
    for name, kwargs, finest, seed in tqdm(ADAPTIVE_PROBLEMS, desc="adaptive panels", leave=False, disable=in_worker()):
        problem = catalog.get(name, **kwargs)
        etas = ladder(1, 3 if quick else finest)
        series = [_adaptive_series(problem, family, label, etas, paths, seed, t0) for label, family, t0 in ADAPTIVE_RUNS]
        panels.append({"problem": problem.name, "series": series})
    quadratic = catalog.get(ADAPTIVE_PROBLEMS[0][0], **ADAPTIVE_PROBLEMS[0][1])
    etas = ladder(1, 3 if quick else 4)
    wrong = [_adaptive_series(quadratic, family, label, etas, paths, 11) for label, family in ADAPTIVE_WRONG]
    return {"paths": paths, "horizon": 1.0, "test_fn": "|θ|²", "setting": dict(ADAPTIVE),
            "multiplier": "smooth cap, α = 2, ρ_max = 2", "panels": panels, "placements": wrong}


def _adaptive_draw(data: dict):
    import matplotlib.pyplot as plt

    panels = data["panels"] + [{"problem": "quadratic: where ρ enters", "series": data["placements"]}]
    fig, axes = plt.subplots(1, len(panels), figsize=(2.6 * len(panels), 3.4))
    for ax, panel in zip(np.atleast_1d(axes), panels):
        _ladder_panel(ax, panel["series"], panel["series"][0], panel["problem"], orders=(1,))
        ax.set_xlabel("SDE step h = η²")
        low, high = ax.get_ylim()
        ax.set_ylim(low, high * (high / low) ** 0.6)  # head-room: the legend sits above the data
        ax.legend(fontsize=5, loc="upper left", framealpha=0.85)
    s = data["setting"]
    fig.suptitle(f"RMSprop, Adam and PGPO on them against their SDEs: σ = {s['sigma0']:g}/η, ε = {s['eps0']:g}/η, "
                 f"1 − βᵢ = {s['c1']:g}·η²; g = {data['test_fn']}, T = {data['horizon']:g}, {data['paths']} coupled paths; "
                 f"slope in h [95% CI]; PGPO: {data['multiplier']}.", fontsize=7)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------
# the adaptive harness: which SDE is order 1, which order ½, which order 2, in which regime

ORDERS_LAWS = [  # (label, noise): RMSprop on the quadratic against its SDE, by the gradient noise's law
    ("Gaussian", "gaussian"), ("Laplace", "laplace"), ("Rademacher", "rademacher"), ("centred exponential", "exponential"),
]
ORDERS_MINIBATCH = [  # (label, family, noise, g): the 1-D linear regression, real mini-batches against Gaussian noise
    ("Adam, Gaussian noise, g = |θ|²", "Adam-SDE", "gaussian", "norm2"),
    ("Adam, mini-batches, g = |θ|²", "Adam-SDE", "sample", "norm2"),
    ("RMSprop, mini-batches, g = θ₀", "RMSprop-SDE", "sample", "coord0"),
]
ORDERS_BALLISTIC = [  # (label, family): the ballistic regime's SDEs of RMSprop
    ("order-1 SDE (b₀)", "RMSprop-SDE[ballistic]"),
    ("order-2 SDE without v-noise", "RMSprop-SDE-2[ballistic, no v-noise]"),
    ("order-2 SDE", "RMSprop-SDE-2[ballistic]"),
]
ORDERS_LOCAL = [  # (label, family): one step, exact over the mini-batches
    ("RMSprop, order 1", "RMSprop-SDE[ballistic]"), ("RMSprop, order 2 without v-noise", "RMSprop-SDE-2[ballistic, no v-noise]"),
    ("RMSprop, order 2", "RMSprop-SDE-2[ballistic]"), ("Adam, order 1", "Adam-SDE[ballistic]"),
    ("Adam, order 2", "Adam-SDE-2[ballistic]"), ("PGPO-RMSprop, order 2", "PGPO-RMSprop-SDE-2[ballistic, ρ in θ's drift and diffusion]"),
]


def _orders_series(problem, family: str, label: str, etas, paths: int, seed: int, noise: str, test_fn: str) -> dict:
    kwargs = family_named(family).measured_with(SMOOTH, t0=1.0, noise=noise, **ADAPTIVE)
    r = adaptive_weak_error(problem, etas, 1.0, kwargs["adaptive"], kwargs["multiplier"], kwargs["rho_in"],
                            test_fn=test_fn, paths=paths, seed=seed)
    series = _series(r, label)
    series["etas"] = r.fit_steps.tolist()  # against h = η², the step its order is claimed in
    series["reference"] = r.reference
    return series


def _adaptive_orders_data(quick: bool) -> dict:
    scale = 16 if quick else 1  # the quick figure: a sixteenth of the paths, a shorter ladder
    quadratic, logistic, q1d = catalog.quadratic(), catalog.logistic_regression(), catalog.quadratic(**Q1D)
    regression = catalog.linear_regression(**MINIBATCH)
    laws = [_orders_series(quadratic, "RMSprop-SDE", label, ladder(1, 3 if quick else 4), 32000 // scale, 21, noise,
                           "coord0") for label, noise in ORDERS_LAWS]
    batches = [_orders_series(regression, family, label, ladder(1, 3 if quick else 4), 16000 // scale, 22, noise, test)
               for label, family, noise, test in ORDERS_MINIBATCH]
    ballistic = [_orders_series(q1d, family, label, ladder(1, 3), 16000 // scale, 23, "gaussian", "norm2")
                 for label, family in ORDERS_BALLISTIC]
    steps = [2.0**-k for k in range(3, 10)]
    local = []
    for label, family in ORDERS_LOCAL:
        kwargs = family_named(family).measured_with(SMOOTH, t0=1.0, noise="sample", **ADAPTIVE)
        mismatch = [one_step_mismatch(logistic, kwargs["adaptive"], kwargs["multiplier"], kwargs["rho_in"], h**0.5)
                    for h in steps]
        local.append({"label": label, "h": steps, "mean": [m for m, _ in mismatch], "second": [v for _, v in mismatch]})
    return {"setting": dict(ADAPTIVE), "horizon": 1.0, "t0": 1.0, "laws": laws, "minibatch": batches,
            "ballistic": ballistic, "local": local, "multiplier": "smooth cap, α = 2, ρ_max = 2"}


def _slope_through(ax, h, coarsest_error: float, order: float, style: str) -> None:
    """A reference slope `order` through a series' coarsest point (its best-resolved error)."""
    h = np.asarray(h)
    ax.plot(h, abs(coarsest_error) * (h / h[0]) ** order, style, color="gray", lw=0.8, label=f"slope {order:g}")


def _adaptive_orders_draw(data: dict):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(11.0, 3.6))
    panels = [(data["laws"], ((0, 1), (-1, 0.5)), "diffusive: RMSprop, quadratic, g = θ₀,\nby noise law (exact reference)"),
              (data["minibatch"], ((0, 1), (1, 0.5)),
               "diffusive: 1-D linear regression (n = 8),\nreal mini-batches (Euler–Maruyama ref.)"),
              (data["ballistic"], ((0, 1), (-1, 2)), "ballistic: RMSprop, 1-D quadratic, g = |θ|²\n(Euler–Maruyama reference)")]
    for ax, (series, references, title) in zip(axes, panels):
        for one in series:
            _draw_series(ax, one)
        for (which, order), style in zip(references, (":", "-.")):  # each slope through the series that claims it
            _slope_through(ax, series[which]["etas"], series[which]["errors"][0], order, style)
        ax.set(xlabel="SDE step h = η²", ylabel="|weak error|, 95% CI", title=title)
        ax.title.set_fontsize(7.5)
        ax.legend(fontsize=5, loc="lower right", framealpha=0.85)
    ax = axes[3]
    for one in data["local"]:
        ax.loglog(one["h"], np.maximum(one["mean"], one["second"]), "o-", ms=3, lw=1, label=one["label"])
    by_label = {one["label"]: one for one in data["local"]}
    for label, order, style in (("RMSprop, order 1", 2, ":"), ("RMSprop, order 2", 3, "-.")):
        one = by_label[label]
        _slope_through(ax, one["h"], max(one["mean"][0], one["second"][0]), order, style)
    _eta_ticks(ax, data["local"][0]["h"])
    ax.set(xlabel="SDE step h", ylabel="one-step mismatch (max of mean, 2nd moment)",
           title="ballistic, one step, exact over mini-batches:\nO(h³) is local order 2, O(h²) order 1")
    ax.title.set_fontsize(7.5)
    ax.legend(fontsize=5, loc="lower right", framealpha=0.85)
    s = data["setting"]
    fig.suptitle(f"Which adaptive SDE is order ½, 1 or 2 in h, in which regime: σ₀ = {s['sigma0']:g}, ε₀ = {s['eps0']:g}, "
                 f"c₁ = c₂ = {s['c2']:g}, warm start t₀ = {data['t0']:g}, T = {data['horizon']:g}; slopes in h [95% CI]; "
                 f"open markers: negative errors", fontsize=7)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------
# hard cap (a kink in ρ) against the smooth cap


def _caps_data(quick: bool) -> dict:
    problem = catalog.quadratic(**Q1D)
    etas = ladder(2, 5 if quick else 7)
    paths = 1000 if quick else 8000
    caps = {"hard": KINKED, "smooth": SMOOTH}
    series = []
    ladders = [(c, o) for c in caps.items() for o in (1, 2)]
    for (cap, multiplier), order in tqdm(ladders, desc="cap ladders", leave=False, disable=in_worker()):
        r = weak_error(problem, etas, 1.0, multiplier=multiplier, order=order, test_fn="norm2", paths=paths, seed=5,
                       reference="em")
        series.append(_series(r, f"{cap} cap vs SME-{order}"))
    # where the paths go, against where the hard cap's kink is: ρ(I(x)) over the visited range
    x = np.linspace(-0.2, 1.7, 400)
    info = problem.info(torch.from_numpy(x)[:, None]).numpy()
    return {"problem": "1-D quadratic, λ = 2, σ = 0.5, x₀ = 1.5", "horizon": 1.0, "test_fn": "|x|²", "paths": paths,
            "multiplier": "α = 2, ρ_max = 2", "series": series, "x": x.tolist(),
            "rho": {cap: m(info).tolist() for cap, m in caps.items()}}


def _caps_draw(data: dict):
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(7.0, 3.0), gridspec_kw={"width_ratios": [1, 1.6]})
    for cap, rho in data["rho"].items():
        left.plot(data["x"], rho, "-" if cap == "hard" else "--", label=f"{cap} cap")
    left.set(xlabel="x", ylabel="ρ(I(x))", title="the multiplier along the path\n(x₀ = 1.5 → 0; kink at I = ½)")
    left.title.set_fontsize(7.5)
    left.legend(loc="lower right")
    _ladder_panel(right, data["series"], data["series"][0],
                  f"{data['problem']}, g = {data['test_fn']}, T = {data['horizon']:g},\n{data['paths']} coupled paths, "
                  f"scaled SDE, {data['multiplier']}")
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------
# marginal densities on the double well: iterates against the SDE's law (Fokker–Planck, exact to the grid)


def _density_data(quick: bool) -> dict:
    problem = catalog.double_well(sigma=2.0)
    horizon, paths, cells = 2.0, (20_000 if quick else 400_000), (500 if quick else 1400)
    lo, hi, bins = -3.5, 3.5, 140
    edges = np.linspace(lo, hi, bins + 1)
    panels = []
    etas = [2.0**-3, 2.0**-5, 2.0**-7]
    for j, eta in enumerate(tqdm(etas, desc="double-well densities", leave=False, disable=in_worker())):
        for process, multiplier, kinds in (("SGD", None, ("scaled",)), ("PGPO", SMOOTH, ("scaled", "paper"))):
            gen = torch.Generator().manual_seed(6000 + j)
            x = problem.x0.expand(paths, -1).clone()
            step = DiscreteProcess(problem, eta, multiplier)
            for _ in range(round(horizon / eta)):
                x = step.step(x, z=torch.randn(paths, 1, generator=gen, dtype=torch.float64))
            x = x[:, 0].numpy()
            kept = x[np.isfinite(x) & (x > lo) & (x < hi)]
            hist = np.histogram(kept, edges, density=False)[0] / (paths * (edges[1] - edges[0]))
            sdes = {}
            for sde in kinds:
                centres, p = sde_law(sme(problem, eta, multiplier, sde), float(problem.x0[0]), horizon, lo, hi, cells)
                binned = np.interp(0.5 * (edges[1:] + edges[:-1]), centres, p)
                sdes[sde] = {"x": centres.tolist(), "density": p.tolist(),
                              "tv": 0.5 * float(np.abs(hist - binned).sum() * (edges[1] - edges[0]))}
            panels.append({"eta": eta, "process": process, "histogram": hist.tolist(), "outside": int(paths - len(kept)),
                           "sdes": sdes})
    return {"problem": "double well L = ¼(x² − 1)², σ = 2, x₀ = 0.5", "horizon": horizon, "paths": paths,
            "cells": cells, "edges": edges.tolist(), "multiplier": "smooth cap, α = 2, ρ_max = 2", "panels": panels}


def _density_draw(data: dict):
    import matplotlib.pyplot as plt

    etas = sorted({p["eta"] for p in data["panels"]}, reverse=True)
    fig, axes = plt.subplots(2, len(etas), figsize=(7.2, 4.4), sharex=True)
    edges = np.array(data["edges"])
    styles = {"scaled": ("-", "C1", "scaled SDE"), "paper": ("--", "C3", "paper's SDE")}
    for panel in data["panels"]:
        ax = axes[0 if panel["process"] == "SGD" else 1, etas.index(panel["eta"])]
        ax.stairs(panel["histogram"], edges, fill=True, color="C0", alpha=0.35,
                  label=f"{panel['process']} iterates" + (f" ({panel['outside']} outside)" if panel["outside"] else ""))
        for kind, sde in panel["sdes"].items():
            style, color, name = styles[kind]
            ax.plot(sde["x"], sde["density"], style, color=color, lw=1, label=f"{name}: TV {sde['tv']:.3f}")
        ax.set_title(f"{panel['process']}, η = $2^{{{round(np.log2(panel['eta']))}}}$", fontsize=7.5)
        ax.legend(fontsize=5.5, loc="upper left", framealpha=0.85)
        ax.set_xlim(-2.5, 2.5)
    for ax in axes[1]:
        ax.set_xlabel("x")
    for ax in axes[:, 0]:
        ax.set_ylabel(f"density of x at T = {data['horizon']:g}")
    fig.suptitle(f"{data['problem']}: {data['paths']} iterates per panel against the SDE's law (Fokker–Planck, "
                 f"{data['cells']} cells).\nTV = total-variation distance over the bins; PGPO: {data['multiplier']}.",
                 fontsize=7.5)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------
# stationary spread: SGD/PGPO long-run variance against each SDE's (exact Lyapunov solutions)


def _spread_data(quick: bool) -> dict:
    rows = []
    for rho in (1.0, 1.5, 2.0):
        for eta in ladder(2, 8):
            discrete, scaled, paper = stationary_spread(np.diag(SPREAD_HESSIAN), eta, rho)
            rows.append({"rho": rho, "eta": eta, "discrete": discrete, "scaled": scaled, "paper": paper})
    return {"hessian": list(SPREAD_HESSIAN), "rows": rows}


def _spread_draw(data: dict):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(3.6, 2.8))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for color, rho in zip(colors, sorted({r["rho"] for r in data["rows"]})):
        rows = [r for r in data["rows"] if r["rho"] == rho]
        eta = [r["eta"] for r in rows]
        ax.semilogx(eta, [r["discrete"] / r["scaled"] for r in rows], "o-", ms=3, color=color, label=f"ρ={rho:g}: vs scaled SDE")
        ax.semilogx(eta, [r["discrete"] / r["paper"] for r in rows], "s--", ms=3, color=color, label=f"ρ={rho:g}: vs paper SDE")
        ax.axhline(rho**2, color=color, lw=0.6, ls=":")
    _eta_ticks(ax, [r["eta"] for r in data["rows"]])
    ax.set(xlabel="learning rate η", ylabel="tr Var(discrete) / tr Var(SDE)",
           title="stationary spread, constant ρ (dotted: ρ²)")
    top = max(max(r["discrete"] / r["paper"], r["discrete"] / r["scaled"]) for r in data["rows"])
    ax.set_ylim(top=1.6 * top)  # head-room for the legend above the curves
    ax.legend(loc="upper left", ncol=2, fontsize=6)
    fig.tight_layout()
    return fig


FIGURES = [
    Figure("multiplier", "the multiplier ρ(I) and the viscosity 1/ρ for several α and ρ_max, hard and smooth cap",
           _multiplier_data, _multiplier_draw),
    Figure("exact_orders", "SGD against its order-1 and order-2 SMEs on the exact problems: slopes 1 and 2, no Monte Carlo",
           _exact_orders_data, _exact_orders_draw),
    Figure("weak_error", "weak error vs η on every built-in problem: SGD and PGPO against the scaled and the paper's SDE, 95% bars",
           _weak_error_data, _weak_error_draw, long=True),
    Figure("order_two", "the 1-D quadratic against the order-2 SME: slope 2 for SGD and for PGPO with the scaled diffusion, "
           "not with the paper's", _order_two_data, _order_two_draw),
    Figure("minibatch", "PGPO with the mini-batch's own signal: the naive drift's error plateaus, the correct drift's falls "
           "at order 1", _minibatch_data, _minibatch_draw),
    Figure("adaptive", "RMSprop, Adam and PGPO on Adam against their SDEs, weak error vs the SDE step h = η², and the "
           "placements of ρ that fail", _adaptive_data, _adaptive_draw, long=True),
    Figure("adaptive_orders", "the adaptive harness: order ½ in h for a skewed gradient noise and real mini-batches, 1 for a "
           "symmetric law (diffusive regime); order 1 and 2 in the ballistic regime, globally and one step at a time",
           _adaptive_orders_data, _adaptive_orders_draw, long=True),
    Figure("caps", "hard cap (kink) vs smooth cap, against the order-1 and order-2 scaled SDEs, and ρ along the path",
           _caps_data, _caps_draw),
    Figure("double_well_density", "marginal densities of SGD/PGPO iterates on the double well at three η against the "
           "SDEs' laws (Fokker–Planck)", _density_data, _density_draw),
    Figure("stationary_spread", "long-run variance of SGD/PGPO (constant ρ) against the scaled SDE (→ 1) and the paper's (→ ρ²)",
           _spread_data, _spread_draw),
]


def _make(task: tuple[str, str, bool, bool]) -> list[Path]:
    """Figure task[0]: compute its data (or read it back, with replot = task[3]) into the folder task[1], quick or
    not (task[2]), and write NAME.json, NAME.png and NAME.pdf there: what a worker runs."""
    name, out, quick, replot = task
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure = next(f for f in FIGURES if f.name == name)
    out = Path(out)
    data_path = out / f"{figure.name}.json"
    if replot:
        if not data_path.exists():
            raise FileNotFoundError(f"--replot needs {data_path}; run without --replot first")
        try:
            data = json.loads(data_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{data_path} is not figure data ({err}); run without --replot to compute it again") from None
    else:
        start = time.perf_counter()
        data = figure.compute(quick)
        data["_meta"] = {"quick": quick, "seconds": round(time.perf_counter() - start, 2), "caption": figure.caption}
        data_path.write_text(json.dumps(data, indent=1))
    with plt.style.context(PAPER_STYLE):
        fig = figure.draw(data)
        for ext in ("png", "pdf"):
            fig.savefig(out / f"{figure.name}.{ext}")
        plt.close(fig)
    return [out / f"{figure.name}.{ext}" for ext in ("json", "png", "pdf")]


def names() -> list[str]:
    """The figures' names, in the order they are made."""
    return [f.name for f in FIGURES]


def saved(out: str | Path, wanted) -> list[str]:
    """The names among `wanted` whose data a replot reads, NAME.json in the folder `out`."""
    return [name for name in wanted if (Path(out) / f"{name}.json").is_file()]


def run(out: str | Path = "figures", quick: bool = False, replot: bool = False, only: str | None = None,
        progress: bool = True, jobs: int | None = 1) -> list[Path]:
    """Compute (or, with `replot`, read) each figure's data and write NAME.json, NAME.png and NAME.pdf; `jobs`
    figures at a time, each in a process of its own (None: one per core; `sde_lab.studies.parallel`). A replot
    redraws the figures whose data `out` holds, and refuses (FileNotFoundError) when it holds none of them."""
    out = Path(out)
    selected = [f for f in FIGURES if only is None or f.name == only]
    if only is not None and not selected:
        raise ValueError(f"unknown figure {only!r}; figures are {names()}")
    if replot:
        have = saved(out, [f.name for f in selected])
        if not have:
            raise FileNotFoundError(f"--replot found no saved figure data ({', '.join(f.name + '.json' for f in selected)})"
                                    f" in {out}/; run without --replot first")
        selected = [f for f in selected if f.name in have]
    else:
        out.mkdir(parents=True, exist_ok=True)
    tasks = [(f.name, str(out), quick, replot) for f in selected]
    made = run_all(_make, tasks, jobs, desc="figures", progress=progress,
                   first=[i for i, f in enumerate(selected) if f.long])
    return [path for paths in made for path in paths]
