"""The rendering of the study's report (`llm_runs.experiment.study`): `table(data)`, the Markdown, and
`save_figure(data, figure)`, the JSON, the Markdown and one figure (final accuracy and collapse per arm, with
their intervals)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from llm_runs.experiment.demo import save_report

# the study's controls, in column order
CONTROLS = ("SDPO", "SDPO ρ-replay", "SDPO ρ-replay next seed", "SDPO α=2 ρ-replay next seed")


def table(data: dict) -> str:
    """Markdown: per setting and arm, final mean@k (95 % t), paired differences, collapse rate (Wilson), the
    collapse onset and how much later it comes than SDPO's, seed by seed (95 % t)."""
    def fmt(e, scale=100.0, digits=1):
        if e is None or e.get("mean") is None:
            return "–"
        ci = f" [{scale * e['low']:.{digits}f}, {scale * e['high']:.{digits}f}]" if e.get("low") is not None else ""
        return f"{scale * e['mean']:.{digits}f}{ci}"

    k, lines = data["k"], []
    for setting, result in data["results"].items():
        # a column per control the report has (any arm carries its paired difference)
        controls = [c for c in data.get("controls", CONTROLS) if any(f"minus {c}" in e for e in result["summary"].values())]
        # ρ's correlation with the run's own I, trend removed (reports written before it have none)
        coupling = int(any(e.get("rho_coupling", {}).get("n") for e in result["summary"].values()))
        heads = "".join(f" − {c.removeprefix('SDPO ') if c != 'SDPO' else c} (points) |" for c in controls)
        lines += [f"**{setting}** ({len(data['seeds'])} seed{'s' if len(data['seeds']) > 1 else ''})", "",
                  f"| arm | final mean@{k} (%) |{heads} collapsed | collapse onset (step) | onset − SDPO (steps) "
                  f"| mean ρ |{' corr(ρ, I) |' if coupling else ''}", "|---" * (6 + len(controls) + coupling) + "|"]
        for arm, e in result["summary"].items():
            c = e["collapse"]
            diffs = "".join(f" {fmt(e.get(f'minus {control}'))} |" for control in controls)
            lines.append(f"| {arm} | {fmt(e['final'])} |{diffs} "
                         f"{c['k']}/{c['n']} [{100 * c['low']:.0f}, {100 * c['high']:.0f}]% | {fmt(e.get('onset'), 1.0)} "
                         f"| {fmt(e.get('onset minus SDPO'), 1.0)} | {fmt(e['rho_mean'], 1.0)} |"
                         + (f" {fmt(e.get('rho_coupling'), 1.0, 2)} |" if coupling else ""))
        lines.append("")
    return "\n".join(lines)


def draw(data: dict):
    """Two rows (final held-out mean@k; collapse rate), a column per setting; bars: 95 % intervals."""
    import matplotlib.pyplot as plt

    settings = list(data["results"])
    fig, axes = plt.subplots(2, len(settings), figsize=(3.6 * len(settings), 5.2), squeeze=False, sharey="row")
    for j, setting in enumerate(settings):
        summary = data["results"][setting]["summary"]
        arms = list(summary)
        x = np.arange(len(arms))
        for i, (key, label) in enumerate((("final", f"final held-out mean@{data['k']}"), ("collapse", "collapse rate"))):
            ax = axes[i, j]
            entries = [summary[a][key] for a in arms]
            mean = np.array([e["mean" if key == "final" else "rate"] for e in entries], dtype=float)
            low = np.array([np.nan if e["low"] is None else e["low"] for e in entries], dtype=float)
            high = np.array([np.nan if e["high"] is None else e["high"] for e in entries], dtype=float)
            err = np.nan_to_num(np.vstack([mean - low, high - mean]))
            ax.errorbar(x, mean, yerr=err, fmt="o", capsize=3)
            ax.set_xticks(x, arms if i == 1 else [], rotation=60, ha="right")
            ax.set_ylim(0, 1)
            ax.grid(alpha=0.3)
            if j == 0:
                ax.set_ylabel(label)
            if i == 0:
                ax.set_title(setting)
                ax.axhline(data["chance"], color="grey", linestyle=":", linewidth=1)
    fig.suptitle(f"{len(data['seeds'])} paired seed{'s' if len(data['seeds']) > 1 else ''}, {data['steps']} steps; 95 % t (accuracy), Wilson (collapse)")
    fig.tight_layout()
    return fig


def save_figure(data: dict, figure: Path) -> list[Path]:
    return save_report(data, figure, table, draw)
