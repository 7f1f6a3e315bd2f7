"""The rendering of `llm_runs.compare`'s data: `table(data)`, the Markdown beside the paper's Table 1, and
`save_figure(data, path)`, validation accuracy over training per domain. Light: no torch unless a figure is
drawn (the style lives in `pgpo`).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from llm_runs.compare import DOMAINS_PER_TABLE, PAPER, PAPER_DOMAINS, SDE_KEYS
from llm_runs.config import ConfigError


# ---------------------------------------------------------------------------------------------
# the table


def _pm(stats: dict) -> str:
    if stats["mean"] is None:
        return "no validation yet"
    return f"{stats['mean']:.2f}" + (f" ± {stats['std']:.2f}" if stats["std"] is not None else "")


def _signed(value: float | None) -> str:
    return "—" if value is None else f"{value:+.2f}"


def _steps(g: dict) -> str:
    done, planned = g["steps_done"], g["steps_planned"]
    left = f"{min(done)}" if min(done) == max(done) else f"{min(done)}–{max(done)}"
    right = f"{min(planned)}" if min(planned) == max(planned) else f"{min(planned)}–{max(planned)}"
    return f"{left}/{right}"


def _unit(groups: list[dict]) -> tuple[str, float]:
    """(unit, seconds per unit) for the table's times: hours, or minutes or seconds when all are short."""
    longest = max([g["hours"] for g in groups] + [g["hours_estimate"] or 0 for g in groups], default=0)
    return ("h", 3600.0) if longest >= 0.5 else ("min", 60.0) if longest >= 1 / 60 else ("s", 1.0)


def _hours(g: dict, unit: tuple[str, float]) -> str:
    scale = 3600 / unit[1]
    if g["finished"]:
        return f"{g['hours'] * scale:.2f} (finished)"
    estimate = "?" if g["hours_estimate"] is None else f"~{g['hours_estimate'] * scale:.2f}"
    return f"{g['hours'] * scale:.2f} of {estimate}"


def _markdown(header: list[str], rows: list[list[str]]) -> list[str]:
    """A Markdown table with its columns padded to one width each (readable as plain text too)."""
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows)]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return [line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)]


def table(data: dict) -> str:
    """Markdown: per domain, best and final validation mean@k (%) per method, mean ± std over seeds, beside the
    paper's Table 1; the PGPO − SDPO rows; then each group's seeds, steps and hours."""
    groups = {(g["domain"], g["method"]): g for g in data["groups"]}
    ks = sorted({k for g in data["groups"] for k in g["k"]})
    k = str(ks[0]) if len(ks) == 1 else "k"
    shown = data.get("paper_beside", True)  # the paper's Table 1 only beside runs of its model
    lines = [f"Validation mean@{k} (%), mean ± std over seeds (ddof 1): best = the highest validation, "
             f"final = the last.", f"Model: {', '.join(data.get('models', []))}" + (
                 "" if shown else " — not the paper's Qwen3-8B, so its Table 1 is not shown beside these runs.")]
    for i in range(0, len(data["domains"]), DOMAINS_PER_TABLE):
        domains = data["domains"][i:i + DOMAINS_PER_TABLE]
        header = ["method"]
        for d in domains:
            name = PAPER_DOMAINS.get(d, d)
            header += [f"{name} best", f"{name} final"] + (["paper"] if shown and d in PAPER_DOMAINS else [])
        rows = []
        for method in data["methods"]:
            if not any((d, method) in groups for d in domains):
                continue
            row = [method]
            for d in domains:
                g = groups.get((d, method))
                row += [_pm(g["best"]), _pm(g["final"])] if g else ["", ""]
                if shown and d in PAPER_DOMAINS:
                    row.append("" if g is None else f"{g['paper']:.2f}" + ("" if method == "SDPO" else "†"))
            rows.append(row)
        for method in data["methods"][1:] if data["methods"][:1] == ["SDPO"] else []:
            found = {x["domain"]: x for x in data["improvements"] if x["method"] == method and x["domain"] in domains}
            if not found:
                continue
            row = [f"Δ {method} − SDPO"]
            for d in domains:
                x = found.get(d)
                row += [_signed(x["best"]), _signed(x["final"])] if x else ["", ""]
                if shown and d in PAPER_DOMAINS:
                    row.append(_signed(x["paper"]) if x else "")
            rows.append(row)
        lines += [""] + _markdown(header, rows)
    if shown and any(d in PAPER_DOMAINS for d in data["domains"]):
        lines += ["", "paper: PGPO paper (arXiv 2606.03620), Table 1, mean@16; it does not say whether it reports "
                      "the best or the final validation.",
                  "† the paper's \"PGPO (best α)\" row: it does not say which α (Appendix C lists three PGPO rows "
                  "without their α)."]
        if ks != [PAPER["k"]]:
            lines.append(f"note: ours is mean@{'/'.join(map(str, ks))} (eval.samples), the paper's mean@{PAPER['k']}.")
    rows, unit = [], _unit(data["groups"])
    for g in data["groups"]:
        missing = [s for s in g["seeds"] if s not in g["seeds_validated"]]
        seeds = f"{len(g['seeds'])}: {', '.join(map(str, g['seeds']))}"
        if missing:
            seeds += f" (no validation yet: {', '.join(map(str, missing))})"
        questions = {r["max_questions"] for r in g["runs"]}
        k_cell = "/".join(map(str, g["k"])) + ("" if questions == {None} else
                                              f" (first {'/'.join(str(q) for q in questions if q)} questions)")
        rows.append([PAPER_DOMAINS.get(g["domain"], g["domain"]), g["method"], seeds, k_cell, _steps(g),
                     _hours(g, unit)])
    lines += ["", *_markdown(["domain", "method", "seeds", "k", "steps done/planned",
                              f"time ({unit[0]}), all seeds: so far (of est. total)"], rows)]
    sde = [g for g in data["groups"] if any(g.get("sde", {}).get(k, {}).get("values") for k in SDE_KEYS)]
    if sde:  # runs that log the SDE diagnostics (`docs/method.md`, "SDE diagnostics")
        cell = lambda st: "" if st["mean"] is None else f"{st['mean']:.4g}" + (  # noqa: E731
            f" ± {st['std']:.2g}" if st["std"] is not None else "")
        lines += ["", "SDE diagnostics at the last logged step, mean ± std over seeds: t = Σ lr·ρ, the gradient-noise "
                      "scale B_simple (its moving average, in sequences), the temperature lr·ρ/B, I's running mean.",
                  *_markdown(["domain", "method", "SDE time t", "noise scale", "temperature", "I running mean"],
                             [[PAPER_DOMAINS.get(g["domain"], g["domain"]), g["method"],
                               *(cell(g["sde"][k]) for k in SDE_KEYS)] for g in sde])]
    for g in data["groups"]:
        if g["settings_differ"]:
            lines.append(f"note: the runs of {g['domain']} {g['method']} differ in {', '.join(g['settings_differ'])}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# the figure


def draw(data: dict):
    """One panel per domain: validation mean@k (%) against step, one line per method (the mean over the seeds
    validated at that step; band: their min–max), the paper's SDPO and PGPO (best α) as dashed lines."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    domains = data["domains"]
    cols = min(len(domains), 2 if len(domains) == 4 else 3)
    rows = math.ceil(len(domains) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.5 * cols, 2.8 * rows), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    color = {m: colors[i % len(colors)] for i, m in enumerate(data["methods"])}  # one colour per method everywhere
    for ax in axes.flat[len(domains):]:
        ax.set_visible(False)
    for ax, domain in zip(axes.flat, domains):
        for g in (g for g in data["groups"] if g["domain"] == domain):
            by_step: dict[int, list[float]] = {}
            for run in g["runs"]:
                for step, value in run["validations"]:
                    by_step.setdefault(step, []).append(value)
            if not by_step:
                continue
            steps = sorted(by_step)
            values = [by_step[s] for s in steps]
            ax.plot(steps, [np.mean(v) for v in values], color=color[g["method"]], marker="o", markersize=2.5,
                    label=g["method"])
            ax.fill_between(steps, [min(v) for v in values], [max(v) for v in values], color=color[g["method"]],
                            alpha=0.2, linewidth=0)
        if data.get("paper_beside", True) and domain in PAPER_DOMAINS:
            table_1 = PAPER["table_1"]
            ax.axhline(table_1["SDPO"][domain], color=color.get("SDPO", "grey"), linestyle="--", linewidth=1,
                       label="paper SDPO")
            ax.axhline(table_1["PGPO (best α)"][domain], color="black", linestyle="--", linewidth=1,
                       label="paper PGPO (best α)")
        ks = sorted({k for g in data["groups"] if g["domain"] == domain for k in g["k"]})
        ax.set_title(PAPER_DOMAINS.get(domain, domain))
        ax.set_xlabel("step")
        ax.set_ylabel(f"validation mean@{ks[0] if len(ks) == 1 else 'k'} (%)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers
        ax.grid(alpha=0.3)
    fig.suptitle("Validation accuracy over training; band: min–max over seeds", fontsize="medium")
    fig.tight_layout()
    handles: dict = {}  # one legend for every panel: the methods' colours are the same in each
    for ax in axes.flat[:len(domains)]:
        for handle, name in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(name, handle)
    if len(domains) == 1:
        axes[0, 0].legend(handles.values(), handles.keys(), loc="best")
    else:  # below the panels (savefig's tight bounding box takes it in)
        fig.legend(handles.values(), handles.keys(), loc="upper center", bbox_to_anchor=(0.5, 0.0),
                   ncol=min(len(handles), 3), frameon=False)
    return fig


FIGURE_SUFFIXES = (".png", ".pdf", ".svg", ".jpg", ".jpeg")


def save_figure(data: dict, path: str | Path) -> list[Path]:
    """Draw into PATH.png and PATH.pdf (PATH without a figure suffix), or into PATH alone (with one); returns the
    files. The project's figure style (`pgpo.PAPER_STYLE`), as the demo's figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pgpo import PAPER_STYLE

    path = Path(path)
    if not data["groups"]:
        raise ConfigError("--figure: no run to draw")
    files = [path] if path.suffix.lower() in FIGURE_SUFFIXES else [Path(f"{path}.png"), Path(f"{path}.pdf")]
    path.parent.mkdir(parents=True, exist_ok=True)
    with plt.style.context(PAPER_STYLE):
        fig = draw(data)
        for f in files:
            fig.savefig(f)
        plt.close(fig)
    return files
