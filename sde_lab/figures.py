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
from scipy import linalg
from tqdm.auto import tqdm

from pgpo import Multiplier
from sde_lab import problems
from sde_lab.weak_error import weak_error

PAPER = {"font.size": 9, "axes.titlesize": 9, "axes.labelsize": 9, "legend.fontsize": 7.5,
         "xtick.labelsize": 8, "ytick.labelsize": 8, "figure.dpi": 150, "savefig.bbox": "tight"}


@dataclass
class Figure:
    name: str
    caption: str
    compute: Callable[[bool], dict]  # quick → data
    draw: Callable[[dict], "object"]  # data → matplotlib Figure


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
        left.plot(data["information"], c["rho"], style, color=color, label=label)
        right.plot(data["information"], c["viscosity"], style, color=color)
    left.set(xlabel="information I (nats)", ylabel="step multiplier ρ", title="ρ = min(1 + αI, ρ_max) (—), smooth cap (--)")
    right.set(xlabel="information I (nats)", ylabel="viscosity ν = 1/ρ", title="viscosity reading")
    left.legend(loc="lower right")
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------
# weak error on the exact problems (no Monte Carlo)


def _exact_orders_data(quick: bool) -> dict:
    etas = [2.0**-j for j in range(2, 13 if quick else 15)]
    panels = []
    for name in ("quadratic", "random_hessian"):
        for order in (1, 2):
            r = weak_error(problems.get(name), etas, 2.0, order=order)
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
        ax.set(xlabel="learning rate η", title=f"SGD on {name} (exact, g = L, T = {data['horizon']:g})")
        ax.legend(loc="lower right", fontsize=6.5, framealpha=0.9)
    axes[0].set_ylabel(r"$|\,\mathbb{E}\,g(x_{T/\eta}) - \mathbb{E}\,g(X_T)\,|$")
    fig.tight_layout()
    return fig


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
PROCESSES = [("SGD", None, "scaled"), ("PGPO, scaled SDE", "smooth", "scaled"), ("PGPO, paper's SDE", "smooth", "paper")]


def _weak_error_data(quick: bool) -> dict:
    paths = 500 if quick else 4000
    panels = []
    for name, kwargs, horizon, test_fn in tqdm(PANELS, desc="weak error panels", leave=False):
        problem = problems.get(name, **kwargs)
        first = 2 if problem.lambda_max is None else max(2, int(np.ceil(np.log2(2.0 * 2.0 * problem.lambda_max))))
        etas = [2.0**-j for j in range(first, first + 5)]
        series = []
        for label, form, sde in PROCESSES:
            multiplier = None if form is None else Multiplier(2.0, 2.0, form=form)
            r = weak_error(problem, etas, horizon, multiplier=multiplier, sde=sde, test_fn=test_fn, paths=paths,
                           seed=7, reference="em")
            series.append({"label": label, "etas": r.etas.tolist(), "errors": r.errors.tolist(),
                           "stderr": r.stderr.tolist(), "slope": r.slope, "slope_ci": list(r.slope_ci)})
        panels.append({"problem": problem.name + (" (features ×2)" if kwargs else ""), "horizon": horizon,
                       "test_fn": test_fn, "series": series})
    return {"paths": paths, "multiplier": "smooth cap, α = 2, ρ_max = 2", "panels": panels}


def _weak_error_draw(data: dict):
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    fig, axes = plt.subplots(2, 3, figsize=(7.2, 5.2))
    for ax, panel in zip(axes.flat, data["panels"]):
        for s in panel["series"]:
            eta, e, se = np.array(s["etas"]), np.array(s["errors"]), np.array(s["stderr"])
            lo, hi = s["slope_ci"]
            slope = f"{s['slope']:.2f} [{lo:.2f}, {hi:.2f}]" if np.isfinite(s["slope"]) else "n/a"
            # |e| with its 95% interval; where the interval crosses zero the bar stops at |e|/10
            low = np.minimum(1.96 * se, 0.9 * np.abs(e))
            bars = ax.errorbar(eta, np.abs(e), yerr=[low, 1.96 * se], fmt="-", lw=1, capsize=2,
                               label=f"{s['label']}: {slope}")
            color = bars[0].get_color()
            positive = e > 0
            ax.plot(eta[positive], e[positive], "o", ms=3.5, color=color, zorder=3)
            ax.plot(eta[~positive], -e[~positive], "o", ms=3.5, mfc="white", color=color, zorder=3)
        eta = np.array(panel["series"][0]["etas"])
        anchor = abs(panel["series"][0]["errors"][-1])
        ax.loglog(eta, anchor * (eta / eta[-1]), ":", color="gray", lw=0.8)
        ax.loglog(eta, anchor * (eta / eta[-1]) ** 2, "-.", color="gray", lw=0.8)
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_title(f"{panel['problem']}\ng = {panel['test_fn']}, T = {panel['horizon']:g}", fontsize=7.5)
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
# stationary spread: SGD/PGPO long-run variance against each SDE's (exact Lyapunov solutions)


def _spread_data(quick: bool) -> dict:
    h = np.diag([0.5, 1.0, 2.0])
    etas = [2.0**-j for j in range(2, 9)]
    rows = []
    for rho in (1.0, 1.5, 2.0):
        for eta in etas:
            a = np.eye(3) - eta * rho * h
            discrete = np.trace(linalg.solve_discrete_lyapunov(a, (eta * rho) ** 2 * h @ h))
            scaled = np.trace(linalg.solve_continuous_lyapunov(-rho * h, -eta * rho**2 * h @ h))
            paper = np.trace(linalg.solve_continuous_lyapunov(-rho * h, -eta * h @ h))
            rows.append({"rho": rho, "eta": eta, "discrete": discrete, "scaled": scaled, "paper": paper})
    return {"hessian": [0.5, 1.0, 2.0], "rows": rows}


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
    ax.set(xlabel="learning rate η", ylabel="tr Var(discrete) / tr Var(SDE)",
           title="stationary spread, constant ρ (dotted: ρ²)")
    ax.legend(loc="upper left", ncol=1)
    fig.tight_layout()
    return fig


FIGURES = [
    Figure("multiplier", "the multiplier ρ(I) and the viscosity 1/ρ for several α and ρ_max, hard and smooth cap",
           _multiplier_data, _multiplier_draw),
    Figure("exact_orders", "SGD against its order-1 and order-2 SMEs on the exact problems: slopes 1 and 2, no Monte Carlo",
           _exact_orders_data, _exact_orders_draw),
    Figure("weak_error", "weak error vs η on every built-in problem: SGD and PGPO against the scaled and the paper's SDE, 95% bars",
           _weak_error_data, _weak_error_draw),
    Figure("stationary_spread", "long-run variance of SGD/PGPO (constant ρ) against the scaled SDE (→ 1) and the paper's (→ ρ²)",
           _spread_data, _spread_draw),
]


def run(out: str | Path = "figures", quick: bool = False, replot: bool = False, only: str | None = None,
        progress: bool = True) -> list[Path]:
    """Compute (or, with `replot`, read) each figure's data and write NAME.json, NAME.png and NAME.pdf."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    selected = [f for f in FIGURES if only is None or f.name == only]
    if only is not None and not selected:
        raise ValueError(f"unknown figure {only!r}; figures are {[f.name for f in FIGURES]}")
    for figure in tqdm(selected, desc="figures", disable=not progress):
        data_path = out / f"{figure.name}.json"
        if replot:
            if not data_path.exists():
                raise FileNotFoundError(f"--replot needs {data_path}; run without --replot first")
            data = json.loads(data_path.read_text())
        else:
            start = time.perf_counter()
            data = figure.compute(quick)
            data["_meta"] = {"quick": quick, "seconds": round(time.perf_counter() - start, 2), "caption": figure.caption}
            data_path.write_text(json.dumps(data, indent=1))
        with plt.rc_context(PAPER):
            fig = figure.draw(data)
            for ext in ("png", "pdf"):
                fig.savefig(out / f"{figure.name}.{ext}")
            plt.close(fig)
        written += [out / f"{figure.name}.{ext}" for ext in ("json", "png", "pdf")]
    return written
