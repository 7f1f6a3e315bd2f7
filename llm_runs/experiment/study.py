"""`python -m llm_runs study [--quick]`: is PGPO more than a larger learning rate? (`docs/results.md`)

The demo's task, warm start and resumable run folders (`llm_runs.experiment.demo`), with every arm of `ARMS` in
both `SETTINGS`, paired by seed: for one seed every arm draws the same prompts in the same order and samples
with the same rollout seeds (`train.seed`), so a paired difference removes the seed's own luck.

- the arms are config settings of the trainer (`llm_runs.schema.PGPOConfig`): SDPO; PGPO α ∈ {0.5, 1, 2}; ρ per
  sequence and I normalised by its running mean (both new); and three controls read from a PGPO α = 1 run, so
  they run after it: SDPO at lr × ρ̄ (ρ̄: the same seed's mean ρ), SDPO with the same seed's ρ_t replayed as a
  learning-rate schedule (`pgpo.replay_rho`: the same SDE time Σ lr·ρ step by step; PGPO α = 1 itself, bit for
  bit, as the seed fixes the batches) and the next seed's ρ_t replayed (the same schedule, decoupled from the
  batch in hand); a follow-up control (`FOLLOW_UPS`, not in the full study's default arms) replays PGPO α = 2's
  next seed (`DONORS`);
- runs go to `<out>/runs/<setting>/<arm>-seed<k>`; a finished one is reused, a killed one resumes from its
  last checkpoint; `--jobs` processes run them (one torch thread each);
- the report (`report`): per arm and setting the mean final held-out mean@k with a 95 % t interval, paired
  differences (t) against SDPO and against the replayed schedule, the collapse rate (`COLLAPSE`, Wilson
  interval) and whether the SDE diagnostics moved before a collapse (`precursors`); JSON + one figure.

Every number here was fixed before any study run: seeds 0…K−1, the arms' α, the collapse thresholds, the sizing.
"""

from __future__ import annotations

import json
import math
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import yaml

from llm_runs.config import from_dict, load
from llm_runs.diagnostics import undo_small_batch_scale
from llm_runs.experiment.demo import CONFIG, TASK, warm_start_checkpoint
# the report's rendering, and CONTROLS: the arms the paired differences are taken against
from llm_runs.experiment.study_report import CONTROLS, draw, save_figure, table  # noqa: F401
# the statistics: running means, t and Wilson intervals, corr(ρ, I) with the trend removed
from llm_runs.experiment.study_statistics import (COUPLING_WIDTH, fluctuation_correlation, running_mean,  # noqa: F401
                                                  t_interval, wilson)
from llm_runs.experiment.synthetic import write_splits
from llm_runs.schema import ConfigError

REFERENCE = "PGPO α=1"  # the PGPO run whose ρ the controls read (the paper's default α)
# name → overrides; "{reference}" is the same setting's and seed's donor run folder (the arm's entry in DONORS,
# else REFERENCE), "{reference:next}" the next seed's (seed k + 1, cyclically over the study's seeds: k = K − 1
# reads seed 0)
ARMS = {
    "SDPO": ["pgpo.enabled=false"],
    "SDPO lr×ρ̄": ["pgpo.enabled=false", "pgpo.replay_rho={reference}", "pgpo.replay_rho_mode=mean"],
    "SDPO ρ-replay": ["pgpo.enabled=false", "pgpo.replay_rho={reference}", "pgpo.replay_rho_mode=schedule"],
    # the same seed's replay meets the very batches that made its ρ_t, so it is PGPO α = 1 bit for bit (the
    # pipeline is deterministic given the seed): replayed onto the next seed's batches, ρ_t keeps its schedule
    # and SDE time but is decoupled from the batch in hand
    "SDPO ρ-replay next seed": ["pgpo.enabled=false", "pgpo.replay_rho={reference:next}",
                                "pgpo.replay_rho_mode=schedule"],
    # the same decoupled control for α = 2, whose ρ_t varies most of the paper's forms: where the coupling, if it
    # matters, has the most room to show (a follow-up, docs/results.md; not in the full study's default arms)
    "SDPO α=2 ρ-replay next seed": ["pgpo.enabled=false", "pgpo.replay_rho={reference:next}",
                                    "pgpo.replay_rho_mode=schedule"],
    "PGPO α=0.5": ["pgpo.enabled=true", "pgpo.alpha=0.5"],
    "PGPO α=1": ["pgpo.enabled=true", "pgpo.alpha=1.0"],
    "PGPO α=2": ["pgpo.enabled=true", "pgpo.alpha=2.0"],
    "PGPO α=1 per-sequence": ["pgpo.enabled=true", "pgpo.alpha=1.0", "pgpo.per_sequence=true"],
    # α = 0.5 on I / Ī: ρ = 1.5 at an average batch, mid-way to the cap, where α = 1 would sit on it
    "PGPO α=0.5 normalised I": ["pgpo.enabled=true", "pgpo.alpha=0.5", "pgpo.normalize_information=true"],
}
# arm → the PGPO arm whose runs it reads, where that is not REFERENCE
DONORS = {"SDPO α=2 ρ-replay next seed": "PGPO α=2"}
# arms added after the full study, run by naming them (--arms) and by --quick, which runs every arm
FOLLOW_UPS = ("SDPO α=2 ρ-replay next seed",)
STUDY_ARMS = [a for a in ARMS if a not in FOLLOW_UPS]  # the full study's arms (`study` with no --arms)
SETTINGS = {
    "demo": [],  # the demo's: ground-truth demonstrations, a frozen teacher
    "collapse": ["teacher.demonstration=sibling", "teacher.kind=ema"],  # SDPO's rule; collapsed in the demo
}
# The sized full study (docs/results.md, "Sizing"): 10 seeds × 8 arms × 2 settings = 160 runs on 2 cores
FULL = {"seeds": 10, "overrides": ["train.steps=300", "train.eval_every=100", "train.checkpoint_every=50",
                                   "rollout.prompts_per_step=16", "loss.micro_batch_size=32"]}
# every arm once on a few steps, for CI (under 5 minutes on 2 cores, warm start included)
QUICK = {"seeds": 1, "overrides": ["train.steps=3", "train.eval_every=3", "train.checkpoint_every=2",
                                   "rollout.prompts_per_step=4", "loss.micro_batch_size=8", "eval.max_questions=8",
                                   "eval.samples=2", "warm_start.steps=30"]}
# Collapse, fixed before any study run: the 10-step running mean of the training reward (fraction of correct
# rollouts) below 0.10 — well under chance, 0.25, which the warm start answers at — or of the student's entropy
# below 0.01 nats per token, at any step after the warm-up; or a final held-out mean@k below 0.10. Onset: the
# first such step. (The README's collapses: accuracy to 0 with entropy 0.03–0.05; a stall at entropy 0.007.)
COLLAPSE = {"window": 10, "reward_below": 0.10, "entropy_below": 0.01, "final_below": 0.10}
PRECURSOR_WINDOW = 10  # steps before the onset compared with the first steps of the run
DIAGNOSTICS = ("noise_scale_ema", "temperature")


def slug(name: str) -> str:
    return (name.lower().replace(" ", "_").replace("α=", "a").replace("×", "x").replace("ρ̄", "rhobar")
            .replace("ρ", "rho"))


def run_dir(out: Path, setting: str, arm: str, seed: int) -> Path:
    return out / "runs" / setting / f"{slug(arm)}-seed{seed}"


def donor_arm(arm: str) -> str:
    """The PGPO arm whose runs `arm` reads (meaningful where `reference_seed` is not None)."""
    return DONORS.get(arm, REFERENCE)


def reads_a_run(arm: str) -> bool:
    """Whether `arm` replays a donor run's ρ (a control), so it waits for that run."""
    return "{reference" in " ".join(ARMS[arm])


def reference_seed(arm: str, seed: int, seeds: list[int]) -> int | None:
    """The seed whose donor run (`donor_arm`) `arm` replays at `seed` (None: the arm reads no run)."""
    text = " ".join(ARMS[arm])
    if "{reference:next}" in text:
        return seeds[(seeds.index(seed) + 1) % len(seeds)]
    return seed if "{reference}" in text else None


def run_config(out: Path, setting: str, arm: str, seed: int, checkpoint: Path, overrides: list[str],
               seeds: list[int]):
    """The run's config: demo_cpu.yaml ← the study's overrides ← the setting's ← the arm's, its seed and folder."""
    folder = run_dir(out, setting, arm, seed)
    donor = reference_seed(arm, seed, seeds)
    arm_overrides = list(ARMS[arm])
    if donor is not None:
        reference = str(run_dir(out, setting, donor_arm(arm), donor).resolve())
        arm_overrides = [o.replace("{reference:next}", reference).replace("{reference}", reference)
                         for o in arm_overrides]
    return load(CONFIG, [*overrides, *SETTINGS[setting], "model.tiny=false", f"model.path={checkpoint}",
                         f"train.seed={seed}", f"train.output_dir={folder.parent}", f"train.run_name={folder.name}",
                         "train.report_to=none", *arm_overrides]), folder


def run_one(task: tuple) -> tuple:
    """One run (in a worker process): reused when finished, resumed from its checkpoint when interrupted."""
    out, setting, arm, seed, checkpoint, overrides, seeds = task
    import torch

    torch.set_num_threads(1)  # one core per job: --jobs processes share the machine
    from transformers.utils import logging as hf_logging

    from llm_runs.trainer import Trainer

    hf_logging.disable_progress_bar()  # a bar per saved shard, from every worker, would bury the study's lines

    config, folder = run_config(Path(out), setting, arm, seed, Path(checkpoint), overrides, seeds)
    if (folder / "config.yaml").exists():
        saved = from_dict(yaml.safe_load((folder / "config.yaml").read_text()))
        if saved.to_dict() != config.to_dict():
            raise ConfigError(f"{folder} holds a run with other settings; choose another --out (or remove it)")
    if (folder / "summary.json").exists():
        return task, False
    trainer = Trainer(config, folder, progress=False)
    if not trainer.resume() and (folder / "metrics.jsonl").exists():
        (folder / "metrics.jsonl").unlink()  # stopped before its first checkpoint: start again
    trainer.train()
    return task, True


def plan(arms, settings, seeds) -> list[tuple[str, str, int]]:
    """(setting, arm, seed) in the order they may start: the donor runs first (the controls wait for them)."""
    arms = list(arms)
    donors = {donor_arm(a) for a in arms if reads_a_run(a)}
    arms += sorted(donors - set(arms), key=list(ARMS).index)  # a control needs its PGPO runs
    order = sorted(arms, key=lambda a: (a not in donors, reads_a_run(a)))
    return [(s, a, k) for k in seeds for a in order for s in settings]


def execute(out: Path, tasks: list[tuple[str, str, int]], checkpoint: Path, overrides: list[str], jobs: int,
            log=print) -> dict:
    """Run `tasks` over `jobs` processes, a control only once its donor run is finished; {"trained": [...],
    "reused": [...]} folder names."""
    finished_runs: set = set()  # (setting, arm, seed)
    waiting = list(tasks)
    trained, reused = [], []
    seeds = sorted({k for _, _, k in tasks})

    def ready(t):
        donor = reference_seed(t[1], t[2], seeds)
        return donor is None or (t[0], donor_arm(t[1]), donor) in finished_runs

    def finish(task, fresh):
        _, setting, arm, seed, _, _, _ = task
        (trained if fresh else reused).append(str(run_dir(out, setting, arm, seed).relative_to(out)))
        finished_runs.add((setting, arm, seed))
        log(f"{'trained' if fresh else 'reused '} {setting}/{arm} seed {seed} "
            f"({len(trained) + len(reused)}/{len(tasks)})")

    def pack(t):
        return (str(out), t[0], t[1], t[2], str(checkpoint), list(overrides), seeds)

    if jobs <= 1:
        while waiting:
            t = next(t for t in waiting if ready(t))
            waiting.remove(t)
            finish(*run_one(pack(t)))
        return {"trained": trained, "reused": reused}
    with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn")) as pool:
        running = set()
        while waiting or running:
            for t in [t for t in waiting if ready(t)][:max(0, jobs - len(running))]:
                waiting.remove(t)
                running.add(pool.submit(run_one, pack(t)))
            if not running:
                raise RuntimeError(f"no run can start: {waiting[:3]} wait for reference runs that are not planned")
            finished, running = wait(running, return_when=FIRST_COMPLETED)
            for f in finished:
                finish(*f.result())
    return {"trained": trained, "reused": reused}


# -- the report ------------------------------------------------------------------------------------------


def read_rows(folder: Path) -> list[dict]:
    rows = {}
    for line in (folder / "metrics.jsonl").read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            rows[row["step"]] = row  # a resumed run's redone step: the last row
    return [rows[s] for s in sorted(rows)]


def collapse_onset(rows: list[dict], final: float, warmup: int) -> int | None:
    """The first step at which `COLLAPSE` holds (the running means end there), None if it never does; a final
    held-out mean@k below `final_below` with no earlier onset: the last step."""
    c = COLLAPSE
    steps = [r["step"] for r in rows]
    width = max(1, min(c["window"], len(rows)))
    reward = running_mean([r["reward_mean"] for r in rows], width)
    entropy = running_mean([r.get("entropy") for r in rows], width)
    for i, step in enumerate(steps[width - 1:]):
        if step > warmup and (reward[i] < c["reward_below"] or entropy[i] < c["entropy_below"]):
            return step
    return steps[-1] if final < c["final_below"] else None


def window_mean(rows: list[dict], key: str, end: int, width: int) -> float | None:
    """The mean of `key` over the `width` steps up to and including `end` (None values skipped)."""
    values = [r.get(key) for r in rows if end - width < r["step"] <= end]
    values = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(values)) if values else None


def batch_sizes(folder: Path) -> tuple[int, int]:
    """(b, B) of a one-process run: its micro-batch and its batch, in sequences, from its config.yaml."""
    config = yaml.safe_load((folder / "config.yaml").read_text())
    return config["loss"]["micro_batch_size"], config["rollout"]["prompts_per_step"] * config["rollout"]["samples_per_prompt"]


def summarise_run(folder: Path, warmup: int) -> dict:
    """A run's final held-out mean@k, mean ρ, collapse onset and the diagnostics' windows (B_simple's as the
    fixed estimator gives it: runs logged before its fix are corrected from their own rows)."""
    rows = undo_small_batch_scale(read_rows(folder), *batch_sizes(folder))
    evals = [r["val_mean_at_k"] for r in rows if "val_mean_at_k" in r]
    final = evals[-1] if evals else float("nan")
    onset = collapse_onset(rows, final, warmup)
    return {"final": final, "rho_mean": float(np.mean([r["rho"] for r in rows])), "steps": rows[-1]["step"],
            "collapsed": onset is not None, "onset": onset,
            "eval": [(r["step"], r["val_mean_at_k"]) for r in rows if "val_mean_at_k" in r],
            "sde_time": rows[-1].get("sde_time"),
            # how much the step follows the batch in hand: 1 for PGPO (ρ = g(I)), ~0 for a replay decoupled from it
            "rho_coupling": fluctuation_correlation([r["rho"] for r in rows], [r.get("information") for r in rows]),
            "diagnostics": {k: [r.get(k) for r in rows] for k in DIAGNOSTICS}}


def precursors(runs: dict[str, list[dict]]) -> dict:
    """Whether a collapse is preceded by a change in the noise scale or the temperature: for each collapsed run
    the log-ratio of the diagnostic's mean over the `PRECURSOR_WINDOW` steps before the onset to its mean over
    the run's first `PRECURSOR_WINDOW` steps; for the setting's runs that did not collapse, the same log-ratio at
    the collapsed runs' median onset (the reference: what the quantity does anyway). Means with t intervals."""
    every = [r for arm in runs.values() for r in arm]
    collapsed = [r for r in every if r["collapsed"] and r["onset"] is not None]
    out = {"collapsed_runs": len(collapsed), "window": PRECURSOR_WINDOW}
    if not collapsed:
        return out
    median = int(np.median([r["onset"] for r in collapsed]))
    for key in DIAGNOSTICS:
        def log_ratio(r, end):
            rows = [{"step": i + 1, key: v} for i, v in enumerate(r["diagnostics"][key])]
            before = window_mean(rows, key, end - 1, PRECURSOR_WINDOW)
            start = window_mean(rows, key, PRECURSOR_WINDOW, PRECURSOR_WINDOW)
            return math.log(before / start) if before and start and before > 0 and start > 0 else None
        a = [v for v in (log_ratio(r, r["onset"]) for r in collapsed) if v is not None]
        b = [v for v in (log_ratio(r, median) for r in every if not r["collapsed"]) if v is not None]
        entry = {"collapsed_log_ratio": t_interval(a), "stable_log_ratio": t_interval(b), "median_onset": median}
        if len(a) > 1 and len(b) > 1:
            from scipy import stats

            low, high = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
            entry["difference"] = {"mean": float(np.mean(a) - np.mean(b)), "low": float(low), "high": float(high)}
        out[key] = entry
    return out


def report(out: Path, arms, settings, seeds, warmup: int, controls=CONTROLS) -> dict:
    """The study's numbers from the run folders (nothing is trained here); paired differences against `controls`."""
    results = {}
    for setting in settings:
        runs = {a: [dict(seed=k, **summarise_run(run_dir(out, setting, a, k), warmup)) for k in seeds] for a in arms}
        by_seed = {a: {r["seed"]: r["final"] for r in rs} for a, rs in runs.items()}
        onsets = {a: {r["seed"]: r["onset"] for r in rs} for a, rs in runs.items()}
        summary = {}
        for arm, rs in runs.items():
            entry = {"final": t_interval([r["final"] for r in rs]),
                     "collapse": wilson(sum(r["collapsed"] for r in rs), len(rs)),
                     "rho_mean": t_interval([r["rho_mean"] for r in rs]),
                     "rho_coupling": t_interval([r["rho_coupling"] for r in rs if r.get("rho_coupling") is not None]),
                     "sde_time": t_interval([r["sde_time"] for r in rs if r["sde_time"] is not None])}
            entry["onset"] = t_interval([o for o in onsets[arm].values() if o is not None])
            for control in controls:
                if control in by_seed and control != arm:
                    paired = [by_seed[arm][k] - by_seed[control][k] for k in seeds]
                    entry[f"minus {control}"] = t_interval(paired)
                    # how much later (> 0) a collapse comes than in the control, over the seeds where both collapse
                    later = [onsets[arm][k] - onsets[control][k] for k in seeds
                             if onsets[arm][k] is not None and onsets[control][k] is not None]
                    entry[f"onset minus {control}"] = t_interval(later)
            summary[arm] = entry
        results[setting] = {"summary": summary, "precursors": precursors(runs),
                            "runs": {a: [{k: v for k, v in r.items() if k != "diagnostics"} for r in rs]
                                     for a, rs in runs.items()}}
    return results


def figure_path(out: Path, quick: bool, report: str | Path | None = None) -> Path:
    """Where the report goes (PATH.json/.md/.png/.pdf): `report` when given; --quick writes to its --out folder
    only, never over the committed figures/llm_study.*"""
    if report is not None:
        return Path(report).with_suffix("") if Path(report).suffix in (".json", ".md", ".png", ".pdf") else Path(report)
    return out / "llm_study_quick" if quick else Path("figures") / "llm_study"


def run(out: str | Path | None = None, quick: bool = False, seeds=None, jobs: int = 2, arms=None, settings=None,
        overrides=(), log=print, report_path: str | Path | None = None, against=()) -> dict:
    """The whole study: data, warm start, every run (resumed), the report; returns the report's data. `seeds`: K
    (seeds 0…K−1) or the seeds themselves; `against`: arms to take paired differences against besides CONTROLS."""
    out = Path(out or ("runs/study_quick" if quick else "runs/study"))
    preset = QUICK if quick else FULL
    seeds = list(range(seeds if seeds is not None else preset["seeds"])) if seeds is None or isinstance(seeds, int) \
        else list(seeds)
    arms = list(arms or (ARMS if quick else STUDY_ARMS))
    settings = list(settings or SETTINGS)
    unknown = [a for a in [*arms, *against] if a not in ARMS] + [s for s in settings if s not in SETTINGS]
    if unknown:
        raise ConfigError(f"unknown arms or settings {unknown}; arms are {list(ARMS)}, settings {list(SETTINGS)}")
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise ConfigError(f"the seeds must be distinct and non-negative, got {seeds}")
    tasks = plan(arms, settings, seeds)
    arms = sorted({a for _, a, _ in tasks}, key=list(ARMS).index)
    missing = [a for a in against if a not in arms]
    if missing:
        raise ConfigError(f"--against {missing}: not among the arms run ({arms})")
    controls = [*CONTROLS, *(a for a in against if a not in CONTROLS)]
    start = time.perf_counter()
    train_path, test_path = write_splits(out / "data", **TASK)
    overrides = [*preset["overrides"], f"data.train={train_path}", f"data.test={test_path}", *overrides]
    checkpoint, record = warm_start_checkpoint(out, overrides, progress=False)
    done = execute(out, tasks, checkpoint, overrides, jobs, log)
    config = load(CONFIG, overrides)
    data = {"question": "is PGPO more than a larger learning rate?", "task": TASK, "seeds": seeds, "quick": quick,
            "arms": {a: ARMS[a] for a in arms}, "reference": REFERENCE,
            # arm → the arm whose runs it reads, and {seed: the seed of that run it replays}, for the arms that read one
            "donors": {a: donor_arm(a) for a in arms if reads_a_run(a)},
            "reference_seeds": {a: {k: reference_seed(a, k, seeds) for k in seeds} for a in arms if reads_a_run(a)},
            "settings": {s: SETTINGS[s] for s in settings},
            "overrides": overrides, "steps": config.train.steps, "k": config.eval.samples, "chance": 0.25,
            "collapse": COLLAPSE, "precursor_window": PRECURSOR_WINDOW, "warm_start": record,
            "controls": controls, "results": report(out, arms, settings, seeds, config.optim.warmup_steps, controls),
            "trained": done["trained"], "reused": done["reused"], "jobs": jobs,
            "seconds": round(time.perf_counter() - start, 1)}
    data["files"] = [str(p) for p in save_figure(data, figure_path(out, quick, report_path))]
    return data
