"""`python -m llm_runs compare RUN_DIR...`: SDPO against PGPO over run folders, beside the PGPO paper's Table 1.

Each run folder is read as it stands, finished or not: `config.yaml` (with the changes of `resumed.yaml`) says its
domain, method, seed and plan; the validation rows of `metrics.jsonl` give its best (max) and final (last)
validation mean@k. Runs are grouped by domain × method; the seeds of a group are aggregated (mean ± sample std).
`compare(paths)` returns the data (JSON-ready), `table(data)` the Markdown, `save_figure(data, path)` the figure.
Light: no torch unless a figure is drawn (the style lives in `pgpo`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from llm_runs.config import RESUME_SAFE, ConfigError, RunConfig, apply_overrides, flat, load

# The PGPO paper: Wang, Wu et al., "Physics-Guided Policy Optimization with Self-Distillation", 2026,
# arXiv 2606.03620. Table 1 and Appendix C: mean@16 accuracy (%) on SciKnowEval L3 multiple choice (test
# splits), Qwen3-8B. It does not say whether these are the best or the final validation, nor which α gave
# "PGPO (best α)"; Appendix C lists three PGPO rows without their α (our configs sweep α ∈ {0.5, 1, 2}).
PAPER = {
    "citation": "Wang, Wu et al., Physics-Guided Policy Optimization with Self-Distillation, 2026, "
                "arXiv 2606.03620 (Table 1 and Appendix C)",
    "metric": "mean@16 accuracy (%), SciKnowEval L3 multiple choice, test split, Qwen3-8B",
    "k": 16,
    "table_1": {
        "SDPO": {"chemistry": 72.57, "physics": 77.05, "biology": 61.62, "material": 74.14},
        "PGPO (best α)": {"chemistry": 76.02, "physics": 77.56, "biology": 61.25, "material": 78.65},
    },
    "appendix_c_pgpo": [  # in the paper's order; α not stated
        {"chemistry": 71.88, "physics": 75.51, "biology": 52.00, "material": 75.27},
        {"chemistry": 76.02, "physics": 76.93, "biology": 56.50, "material": 77.73},
        {"chemistry": 70.94, "physics": 77.56, "biology": 61.25, "material": 78.65},
    ],
}
PAPER_DOMAINS = {"chemistry": "Chemistry", "physics": "Physics", "biology": "Biology", "material": "Materials"}
"""Our domain names → the paper's column names, in the paper's column order."""
DOMAINS_PER_TABLE = 2  # the Markdown table is printed in blocks of this many domains: ~100 columns wide


@dataclass
class Run:
    """One run folder, read: its settings and what it has done so far."""

    path: Path
    config: RunConfig
    domain: str
    seed: int
    steps_done: int
    steps_planned: int
    finished: bool  # summary.json written and every planned step done
    validations: list[tuple[int, float]] = field(default_factory=list)  # (step, mean@k in [0, 1]), in step order
    step_seconds: list[float] = field(default_factory=list)  # (rows,): each row's step, without validation
    eval_seconds: list[float] = field(default_factory=list)  # (validations,)

    @property
    def method(self) -> tuple:
        p = self.config.pgpo
        return ("SDPO",) if not p.enabled else ("PGPO", float(p.alpha), float(p.rho_max), p.form)

    def hours(self) -> float:
        return (sum(self.step_seconds) + sum(self.eval_seconds)) / 3600

    def hours_estimate(self) -> float | None:
        """The total once every planned step and validation is done, at this run's mean step and validation
        time (None: no row yet to time)."""
        if self.finished:
            return self.hours()
        if not self.step_seconds:
            return None
        every, planned = self.config.train.eval_every, self.steps_planned
        later_evals = sum(1 for s in range(self.steps_done + 1, planned + 1)
                          if every and (s % every == 0 or s == planned))  # the trainer's validation cadence
        mean_eval = float(np.mean(self.eval_seconds)) if self.eval_seconds else 0.0  # none yet: steps only
        rest = (planned - self.steps_done) * float(np.mean(self.step_seconds)) + later_evals * mean_eval
        return self.hours() + max(rest, 0.0) / 3600


# ---------------------------------------------------------------------------------------------
# reading run folders


def run_folders(paths) -> list[Path]:
    """Each path, a run folder (it holds config.yaml) or a folder of run folders (e.g. runs/), → run folders,
    each once, in the order given (children sorted). Anything else is a ConfigError naming it."""
    found: list[Path] = []
    for path in map(Path, paths):
        if (path / "config.yaml").is_file():
            runs = [path]
        elif path.is_dir():
            runs = sorted(p for p in path.iterdir() if (p / "config.yaml").is_file())
            if not runs:
                raise ConfigError(f"{path}: not a run folder (no config.yaml) and it holds no run folder")
        else:
            raise ConfigError(f"{path}: no such run folder" if not path.exists() else
                              f"{path}: not a run folder (a file, not a folder holding config.yaml)")
        found += [r for r in runs if r.resolve() not in {f.resolve() for f in found}]
    return found


def domain_of(config: RunConfig) -> str:
    """The test split's domain: data.hub_domain when read from the hub, else the folder of data.test
    (data/sciknoweval/biology/test.json → biology), else data.test's stem."""
    if config.data.hub and config.data.hub_domain:
        return config.data.hub_domain
    test = Path(config.data.test)
    return test.parent.name or test.stem


def _rows(path: Path) -> list[dict]:
    """metrics.jsonl's rows; a last line cut short (a run killed while writing it) is left out."""
    if not path.exists():
        return []
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    rows = []
    for i, line in enumerate(lines):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break
            raise ConfigError(f"{path}, line {i + 1}: not a JSON row") from None
    return rows


def _step_seconds(row: dict) -> float:
    """The step's own seconds: `seconds_step` where logged, else the sum of its stages (validation apart)."""
    if "seconds_step" in row:
        return float(row["seconds_step"])
    return float(sum(v for k, v in row.items() if k.startswith("seconds_") and k != "seconds_eval"))


def read_run(path: Path) -> Run:
    """A run folder → Run. Its config is config.yaml with resumed.yaml's changes (train.steps may have grown)."""
    config = load(path / "config.yaml")
    resumed = path / "resumed.yaml"
    if resumed.exists():
        changes = yaml.safe_load(resumed.read_text()) or {}
        apply_overrides(config, [f"{k}={json.dumps(v)}" for k, v in changes.items()])  # JSON is YAML
    rows = _rows(path / "metrics.jsonl")
    vals = [r for r in rows if r.get("val_mean_at_k") is not None]
    done = rows[-1]["step"] if rows else 0
    return Run(path=path, config=config, domain=domain_of(config), seed=config.train.seed, steps_done=done,
               steps_planned=config.train.steps,
               finished=(path / "summary.json").exists() and done >= config.train.steps,
               validations=[(r["step"], float(r["val_mean_at_k"])) for r in vals],
               step_seconds=[_step_seconds(r) for r in rows],
               eval_seconds=[float(r.get("seconds_eval", 0.0)) for r in vals])


# ---------------------------------------------------------------------------------------------
# grouping and aggregating


def labels(runs: list[Run]) -> dict[Path, str]:
    """{run folder: method label}: SDPO, or PGPO α=<alpha>, with ρ_max and form added only where the PGPO runs
    of one domain differ in them."""
    out = {}
    for run in runs:
        if run.method[0] == "SDPO":
            out[run.path] = "SDPO"
            continue
        _, alpha, rho_max, form = run.method
        peers = [r.method for r in runs if r.domain == run.domain and r.method[0] == "PGPO"]
        label = f"PGPO α={alpha:g}"
        if len({m[2] for m in peers}) > 1:
            label += f", ρ_max={rho_max:g}"
        if len({m[3] for m in peers}) > 1:
            label += f", {form}"
        out[run.path] = label
    return out


_SAME_RUN_KEYS = set(RESUME_SAFE) | {"train.seed"}  # differences that leave runs of one group comparable


def group(runs: list[Run], names: dict[Path, str]) -> dict[tuple[str, str], list[Run]]:
    """{(domain, method label): runs, by seed} (`names`: `labels(runs)`); two runs of one group with the same
    seed are refused."""
    groups: dict[tuple[str, str], list[Run]] = {}
    for run in runs:
        members = groups.setdefault((run.domain, names[run.path]), [])
        twin = next((r for r in members if r.seed == run.seed), None)
        if twin is not None:
            a, b = flat(twin.config), flat(run.config)
            differ = [k for k in a if a[k] != b[k] and k not in _SAME_RUN_KEYS]
            raise ConfigError(f"{twin.path} and {run.path} are both {names[run.path]} on {run.domain} with seed "
                              f"{run.seed} (duplicates{'; they differ in ' + ', '.join(differ) if differ else ''}): "
                              f"compare them in separate calls")
        members.append(run)
    return {key: sorted(members, key=lambda r: r.seed) for key, members in groups.items()}


def _order(domain: str) -> tuple:
    return (0, list(PAPER_DOMAINS).index(domain), "") if domain in PAPER_DOMAINS else (1, 0, domain)


def _stats(values: list[float]) -> dict:
    """Mean ± sample std (ddof 1; None for one value) of per-seed values (percent)."""
    if not values:
        return {"mean": None, "std": None, "values": []}
    return {"mean": float(np.mean(values)), "std": float(np.std(values, ddof=1)) if len(values) > 1 else None,
            "values": values}


def _paper(domain: str, method: str) -> tuple[str | None, float | None]:
    if domain not in PAPER_DOMAINS:
        return None, None
    row = "SDPO" if method == "SDPO" else "PGPO (best α)"
    return row, PAPER["table_1"][row][domain]


def compare(paths) -> dict:
    """Run folders (or folders of them) → the comparison, JSON-ready; accuracies in percent.

    Returns {"unit", "paper", "domains": [...], "methods": [...], "groups": [one per domain × method, with
    "best"/"final": {"mean", "std", "values"} over seeds, "paper", "runs": [per run: seed, best, best_step,
    final, final_step, validations [[step, %]], steps, hours]], "improvements": [PGPO − SDPO per domain]}."""
    runs = [read_run(p) for p in run_folders(paths)]
    names = labels(runs)
    grouped = group(runs, names)
    domains = sorted({d for d, _ in grouped}, key=_order)
    kind = {names[r.path]: r.method for r in runs}
    methods = sorted(kind, key=lambda m: (m != "SDPO", kind[m], m))  # SDPO first, then PGPO by α, ρ_max, form
    groups = []
    for domain in domains:
        for method in methods:
            members = grouped.get((domain, method))
            if members:
                groups.append(_group_data(domain, method, members))
    models = sorted({model_name(r.config) for r in runs})
    return {"unit": "percent", "paper": PAPER, "models": models, "paper_beside": all(map(is_papers_model, models)),
            "domains": domains, "methods": methods, "groups": groups, "improvements": _improvements(groups)}


def model_name(config: RunConfig) -> str:
    return "the tiny Qwen3 (built locally)" if config.model.tiny else config.model.path


def is_papers_model(name: str) -> bool:
    """Qwen3-8B, by its hub id or a local copy's folder name: the model of the paper's Table 1."""
    return Path(name).name == "Qwen3-8B"


def _group_data(domain: str, method: str, members: list[Run]) -> dict:
    validated = [r for r in members if r.validations]
    per_run = []
    for r in members:
        values = [(s, 100 * v) for s, v in r.validations]
        best = max(values, key=lambda sv: sv[1]) if values else (None, None)  # the first step reaching the max
        per_run.append({
            "folder": str(r.path), "seed": r.seed, "validations": [list(sv) for sv in values],
            "best": best[1], "best_step": best[0], "final": values[-1][1] if values else None,
            "final_step": values[-1][0] if values else None, "steps_done": r.steps_done,
            "steps_planned": r.steps_planned, "finished": r.finished, "hours": r.hours(),
            "hours_estimate": r.hours_estimate(), "k": r.config.eval.samples,
            "max_questions": r.config.eval.max_questions})
    estimates = [x["hours_estimate"] for x in per_run]
    paper_row, paper = _paper(domain, method)
    differ = sorted({k for r in members for k, v in flat(r.config).items()
                     if v != flat(members[0].config)[k] and k not in _SAME_RUN_KEYS})
    p = members[0].config.pgpo
    return {
        "domain": domain, "method": method,
        "pgpo": {"enabled": p.enabled, "alpha": p.alpha, "rho_max": p.rho_max, "form": p.form} if p.enabled else None,
        "seeds": [r.seed for r in members], "seeds_validated": [r.seed for r in validated],
        "k": sorted({r.config.eval.samples for r in members}),
        "best": _stats([x["best"] for x in per_run if x["best"] is not None]),
        "final": _stats([x["final"] for x in per_run if x["final"] is not None]),
        "paper": paper, "paper_row": paper_row,
        "steps_done": [x["steps_done"] for x in per_run], "steps_planned": [x["steps_planned"] for x in per_run],
        "finished": all(r.finished for r in members),
        "hours": sum(x["hours"] for x in per_run),  # summed over the group's runs: the compute spent
        "hours_estimate": None if None in estimates else sum(estimates),
        "settings_differ": differ, "runs": per_run}


def _improvements(groups: list[dict]) -> list[dict]:
    """PGPO − SDPO per domain (difference of the seed means), as the paper's "Improvement" row."""
    out = []
    for g in groups:
        sdpo = next((s for s in groups if s["domain"] == g["domain"] and s["method"] == "SDPO"), None)
        if g["method"] == "SDPO" or sdpo is None:
            continue
        diff = {key: None if g[key]["mean"] is None or sdpo[key]["mean"] is None else g[key]["mean"] - sdpo[key]["mean"]
                for key in ("best", "final")}
        paper = None
        if g["domain"] in PAPER_DOMAINS:
            t = PAPER["table_1"]
            paper = t["PGPO (best α)"][g["domain"]] - t["SDPO"][g["domain"]]
        out.append({"domain": g["domain"], "method": g["method"], **diff, "paper": paper})
    return out


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
