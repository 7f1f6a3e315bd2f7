"""`python -m llm_runs compare RUN_DIR...`: SDPO against PGPO over run folders, beside the PGPO paper's Table 1.

Each run folder is read as it stands, finished or not: `config.yaml` (with the changes of `resumed.yaml`) says its
domain, method, seed and plan; the validation rows of `metrics.jsonl` give its best (max) and final (last)
validation mean@k. Runs are grouped by domain × method; the seeds of a group are aggregated (mean ± sample std).
`compare(paths)` returns the data (JSON-ready); `llm_runs.report` renders it: `table(data)` the Markdown,
`save_figure(data, path)` the figure.
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
    sde: dict = field(default_factory=dict)  # the SDE diagnostics of the last logged step (`llm_runs.diagnostics`)

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


SDE_KEYS = ("sde_time", "noise_scale_ema", "temperature", "information_running_mean")  # compare's SDE columns


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
               eval_seconds=[float(r.get("seconds_eval", 0.0)) for r in vals],
               sde={k: rows[-1][k] for k in SDE_KEYS if rows and rows[-1].get(k) is not None})


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
        "settings_differ": differ, "runs": per_run,
        # the SDE diagnostics at each run's last logged step, over the seeds (finite ones: a NaN noise scale is
        # a step of one micro-batch)
        "sde": {k: _stats([r.sde[k] for r in members if k in r.sde and math.isfinite(r.sde[k])]) for k in SDE_KEYS}}


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


def __getattr__(name: str):
    """`compare.table`, `compare.draw`, `compare.save_figure`: the rendering lives in `llm_runs.report`, which
    reads this module's data, so it is imported on first use."""
    if name in ("table", "draw", "save_figure", "FIGURE_SUFFIXES"):
        from llm_runs import report

        return getattr(report, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
