"""`python -m llm_runs demo [--quick]`: does the loop learn? SDPO against PGPO on a CPU, in minutes.

1. data: `llm_runs.experiment.synthetic` ("largest of four values", seed 0) written to `<out>/data`;
2. warm start (`llm_runs.experiment.warm_start`) to `<out>/warm_start/final`, reused when its settings match;
3. for every seed and method, a run from that checkpoint with that seed (`Trainer`, the code path of the
   Qwen3-8B configs; only the config differs): held-out mean@k every `train.eval_every` steps, the
   warm start's own held-out mean@k as step 0. A finished run is reused, an interrupted one resumed;
4. a figure (held-out mean@k, I_t, ρ_t and response length against steps; mean ± std over seeds) and
   a table (final and best held-out mean@k per method) — `<figure>.png/.pdf/.json` and `<figure>.md`.

`--quick` (what `make demo` runs): one seed, SDPO and PGPO α = 1. Full: seeds 0, 1, 2 and α ∈ {0.5, 1, 2}.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from llm_runs.config import from_dict, load
from llm_runs.experiment.config import DemoConfig
from llm_runs.experiment.synthetic import write_splits
from llm_runs.metrics import STAGES

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo_cpu.yaml"
TASK = {"kind": "largest", "low": 0, "high": 30, "train": 2000, "test": 200, "seed": 0}
METHODS = {"SDPO": ["pgpo.enabled=false"],
           "PGPO α=0.5": ["pgpo.enabled=true", "pgpo.alpha=0.5"],
           "PGPO α=1": ["pgpo.enabled=true", "pgpo.alpha=1.0"],
           "PGPO α=2": ["pgpo.enabled=true", "pgpo.alpha=2.0"],
           # a control, not in the default grid: SDPO at PGPO α=2's run-average step size (ρ̄ = 1.35 in the
           # full demo), to tell a larger step from an information-modulated one
           "SDPO lr×1.35": ["pgpo.enabled=false", "optim.lr=1.35e-3"]}
QUICK = {"seeds": (0,), "methods": ("SDPO", "PGPO α=1")}
FULL = {"seeds": (0, 1, 2), "methods": ("SDPO", "PGPO α=0.5", "PGPO α=1", "PGPO α=2")}
SERIES = ("information", "rho", "response_length_mean", "reward_mean", "teacher_fraction")
SMOOTH = 10  # steps in the running mean of the per-step series in the figure


def _slug(method: str) -> str:
    return method.lower().replace(" ", "_").replace("α=", "a").replace("×", "x")


def warm_start_checkpoint(out: Path, overrides: list[str], progress: bool = True) -> tuple[Path, dict]:
    """The warm start's export, trained unless `<out>/warm_start` already holds one with the same settings."""
    from llm_runs.experiment.warm_start import warm_start

    config = load(CONFIG, overrides, schema=DemoConfig)
    record_path = out / "warm_start" / "warm_start.json"
    if record_path.exists():
        record = json.loads(record_path.read_text())
        if (record.get("settings") == config.to_dict()["warm_start"] and record.get("data") == config.data.train
                and (out / "warm_start" / "final" / "config.json").exists()):
            return out / "warm_start" / "final", record
    record = warm_start(config, out / "warm_start", progress=progress)
    record["data"] = config.data.train
    record_path.write_text(json.dumps(record, indent=1))
    return out / "warm_start" / "final", record


def run_one(out: Path, method: str, seed: int, checkpoint: Path, overrides: list[str], progress: bool = True) -> Path:
    """One training run from the warm start; reused when finished, resumed when interrupted."""
    from llm_runs.trainer import Trainer

    name = f"{_slug(method)}-seed{seed}"
    run_dir = out / "runs" / name
    config = load(CONFIG, [*overrides, "model.tiny=false", f"model.path={checkpoint}", f"train.seed={seed}",
                           f"train.output_dir={out / 'runs'}", f"train.run_name={name}", *METHODS[method]])
    if (run_dir / "config.yaml").exists():
        saved = from_dict(yaml.safe_load((run_dir / "config.yaml").read_text()))
        if saved.to_dict() != config.to_dict():
            raise ValueError(f"{run_dir} holds a run with other settings; choose another --out (or remove it)")
    if (run_dir / "summary.json").exists():
        return run_dir
    trainer = Trainer(config, run_dir, progress=progress)
    if not trainer.resume() and (run_dir / "metrics.jsonl").exists():
        (run_dir / "metrics.jsonl").unlink()  # stopped before its first checkpoint: start again
    return trainer.train()


def step_zero(checkpoint: Path, overrides: list[str], seeds) -> dict[int, float]:
    """Held-out mean@k of the warm start for each seed, with the seed the runs' validation uses at step 0."""
    from llm_runs.data import load_split
    from llm_runs.evaluate import evaluate
    from llm_runs.build import DTYPES, load_model, resolve_device

    config = load(CONFIG, overrides)
    model, tokenizer = load_model(str(checkpoint), DTYPES[config.model.dtype], resolve_device(config.train.device))
    test, out = load_split(config.data.test), {}
    for seed in seeds:
        with torch.no_grad(), torch.random.fork_rng():
            torch.manual_seed(seed)
            out[seed] = evaluate(model, tokenizer, test, config.data.template, config.eval,
                                 config.model.enable_thinking)["mean_at_k"]
    return out


def collect(run_dir: Path, start: float) -> dict:
    """A run's per-step series and its held-out mean@k at (0, eval steps…)."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    evals = [(r["step"], r["val_mean_at_k"]) for r in rows if "val_mean_at_k" in r]
    return {"steps": [r["step"] for r in rows], **{k: [r[k] for r in rows] for k in SERIES},
            "eval_steps": [0] + [s for s, _ in evals], "eval": [start] + [v for _, v in evals],
            "seconds": sum(r.get(f"seconds_{s}", 0) for r in rows for s in (*STAGES, "eval"))}


def crossing(steps: list, values: list, level: float = 0.5) -> float | None:
    """The first step at which `values` reach `level`, linearly interpolated between evaluations (None: never)."""
    if values and values[0] >= level:
        return steps[0]
    for i in range(1, len(values)):
        if values[i] >= level > values[i - 1]:
            return steps[i - 1] + (level - values[i - 1]) / (values[i] - values[i - 1]) * (steps[i] - steps[i - 1])
    return None


def table(data: dict) -> str:
    """Markdown: held-out mean@k of the warm start, final and best per method, and the step at which it first
    reaches 50%; mean ± std over seeds (std with ddof 1)."""
    def fmt(values, scale=100.0, digits=1):
        if any(v is None for v in values):
            return f"not reached in {sum(v is None for v in values)} of {len(values)}"
        values = scale * np.asarray(values, dtype=float)
        spread = f" ± {values.std(ddof=1):.{digits}f}" if len(values) > 1 else ""
        return f"{values.mean():.{digits}f}{spread}"

    k = data["k"]
    lines = [f"| method | warm start mean@{k} (%) | final mean@{k} (%) | best mean@{k} (%) | step reaching 50% | seeds |",
             "|---|---|---|---|---|---|"]
    for method, runs in data["runs"].items():
        finals = [r["eval"][-1] for r in runs]
        bests = [max(r["eval"][1:]) for r in runs]
        halfway = [crossing(r["eval_steps"], r["eval"]) for r in runs]
        lines.append(f"| {method} | {fmt([r['eval'][0] for r in runs])} | {fmt(finals)} | {fmt(bests)} | "
                     f"{fmt(halfway, 1.0, 0)} | {', '.join(map(str, data['seeds']))} |")
    return "\n".join(lines)


def draw(data: dict):
    """2 × 2 panels: held-out mean@k, I_t, ρ_t, response length; a band is ± one std over seeds."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(7.0, 5.0), sharex=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    panels = [("eval", f"held-out mean@{data['k']}"), ("information", f"information I_t (running mean of {SMOOTH})"),
              ("rho", f"multiplier ρ_t (running mean of {SMOOTH})"),
              ("response_length_mean", f"response length, tokens (running mean of {SMOOTH})")]
    for (key, title), ax in zip(panels, axes.flat):
        for color, (method, runs) in zip(colors, data["runs"].items()):
            if key == "eval":
                x = np.asarray(runs[0]["eval_steps"])
                ys = np.array([r["eval"] for r in runs])
                marker = "o"
            else:
                x = np.asarray(runs[0]["steps"])
                width = max(1, min(SMOOTH, len(x)))  # a toy run may be shorter than the window
                ys = np.array([np.convolve(r[key], np.ones(width) / width, mode="valid") for r in runs])
                x = x[width - 1:]
                marker = None
            mean, std = ys.mean(0), ys.std(0, ddof=1) if len(ys) > 1 else np.zeros(ys.shape[1])
            ax.plot(x, mean, color=color, marker=marker, markersize=3, label=f"{method} ({len(runs)} seed{'s' if len(runs) > 1 else ''})")
            ax.fill_between(x, mean - std, mean + std, color=color, alpha=0.2, linewidth=0)
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0, 0].axhline(data["chance"], color="grey", linestyle=":", linewidth=1, label="chance")
    axes[0, 0].set_ylim(0, 1)
    axes[0, 0].legend(loc="upper left")
    for ax in axes[1]:
        ax.set_xlabel("step")
    t = data["config"]["teacher"]
    fig.suptitle(f"Tiny Qwen3, \"{data['task']['kind']}\" task, one warm start; teacher: {t['kind']}, "
                 f"{t['demonstration'].replace('_', ' ')} demonstrations")
    fig.tight_layout()
    return fig


def save_figure(data: dict, figure: Path) -> list[Path]:
    return save_report(data, figure, table, draw)


def save_report(data: dict, figure: Path, table, draw) -> list[Path]:
    """FIGURE.json (the data), FIGURE.md (`table(data)`) and FIGURE.png/.pdf (`draw(data)`, the project's style);
    the experiments' one way to write a report."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pgpo import PAPER_STYLE

    figure.parent.mkdir(parents=True, exist_ok=True)
    figure.with_suffix(".json").write_text(json.dumps(data, indent=1))
    figure.with_suffix(".md").write_text(table(data) + "\n")
    with plt.style.context(PAPER_STYLE):
        fig = draw(data)
        for ext in ("png", "pdf"):
            fig.savefig(figure.with_suffix(f".{ext}"))
        plt.close(fig)
    return [figure.with_suffix(f".{ext}") for ext in ("json", "md", "png", "pdf")]


def run(out: str | Path = "runs/demo", quick: bool = False, seeds=None, methods=None, overrides=(),
        figure: str | Path | None = None, progress: bool = True) -> dict:
    """The whole experiment; returns the figure's data (also written next to the figure)."""
    out = Path(out)
    plan = QUICK if quick else FULL
    seeds, methods = tuple(seeds or plan["seeds"]), tuple(methods or plan["methods"])
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; methods are {list(METHODS)}")
    start = time.perf_counter()
    train_path, test_path = write_splits(out / "data", **TASK)
    overrides = [f"data.train={train_path}", f"data.test={test_path}", *overrides]
    checkpoint, record = warm_start_checkpoint(out, overrides, progress)
    config = load(CONFIG, overrides, schema=DemoConfig)
    runs: dict[str, list] = {m: [] for m in methods}
    zero = step_zero(checkpoint, overrides, seeds)
    for seed in seeds:  # seed-major: a stopped full run already holds every method for the first seeds
        for method in methods:
            runs[method].append(collect(run_one(out, method, seed, checkpoint, overrides, progress), zero[seed]))
    data = {"task": TASK, "seeds": list(seeds), "k": config.eval.samples, "chance": 0.25, "quick": quick,
            "warm_start": record, "steps": config.train.steps, "runs": runs,
            "config": config.to_dict(), "seconds": round(time.perf_counter() - start, 1)}
    figure = Path(figure) if figure else (out / "llm_demo_quick" if quick else Path("figures") / "llm_demo")
    data["files"] = [str(p) for p in save_figure(data, figure)]
    return data
