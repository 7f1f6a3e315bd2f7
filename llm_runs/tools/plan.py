"""`python -m llm_runs plan --config NAME [--grid] [--run RUN_DIR]`: what a run, or the paper's grid, will cost
before it starts: GPU-hours, and disk per checkpoint, per run and for the grid.

Time comes from throughput assumptions stated in the output, each of which a flag overrides, or, with `--run`,
from the seconds per step that a run (or its first steps) measured. The time per step is

    tokens per step  T = prompts_per_step · samples_per_prompt · R    (R: the mean response length; by default
                                                                      max_new_tokens, an upper bound)
    seconds per step = T / (G · generation rate) + T / (G · training rate)      (G GPUs)

plus validation: test questions · eval.samples · eval.max_new_tokens / (G · generation rate) per validation.

Disk comes from the parameter count (the model's config.json, or Qwen3-8B's published shape for its hub id,
read without weights) and what a checkpoint holds: the weights in `model.dtype`, AdamW's two moments in the
same dtype, the EMA teacher's copy (`teacher.kind: ema`), and `keep_checkpoints` of them, plus "best" and the
final export (weights only). One more checkpoint exists while the next is being written.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path

from llm_runs.build import parameter_count
from llm_runs.config import ConfigError, RunConfig, load

BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass
class Assumptions:
    gpus: int = 8
    """GPUs per run (the paper's node)."""
    generation_tokens_per_s: float = 1000.0
    """Per GPU, vLLM sampling. An assumption, not a measurement: vLLM was not measured on a GPU here."""
    training_tokens_per_s: float = 3500.0
    """Per GPU, teacher and student forward and backward: docs/scaling.md measured 3,525 response tokens/s trained
    on one H200 (bf16, chunked loss, micro-batch 4)."""
    response_tokens: int | None = None
    """The mean response length R; None: rollout.max_new_tokens (an upper bound)."""
    test_questions: int | None = None
    """Questions in the test split; None: counted from data.test when the file is there."""


def disk(config: RunConfig, parameters: int) -> dict:
    """Bytes of one step checkpoint, of "best" and the final export, and of a run (with keep_checkpoints)."""
    if config.model.lora_rank:
        raise ConfigError("plan: LoRA runs (model.lora_rank) are not modelled; their checkpoints hold the adapters only")
    weights = parameters * BYTES[config.model.dtype]
    checkpoint = weights * (3 + (config.teacher.kind == "ema"))  # weights, AdamW's m and v, the EMA teacher
    kept = config.train.keep_checkpoints or max(1, config.train.steps // max(1, config.train.checkpoint_every))
    run = (kept * checkpoint if config.train.checkpoint_every else 0) + weights * (1 + bool(config.train.eval_every))
    return {"weights": weights, "checkpoint": checkpoint, "kept_checkpoints": kept, "run": run,
            "run_peak": run + (checkpoint if config.train.checkpoint_every else 0)}


def _test_questions(config: RunConfig, given: int | None) -> int | None:
    if given is not None:
        return given
    from llm_runs import paths

    path = paths.input_file(config.data.test)
    if not path.exists():
        return None
    from llm_runs.data import load_split

    return len(load_split(path))


def assumed_hours(config: RunConfig, a: Assumptions) -> dict:
    r = config.rollout
    response = a.response_tokens or r.max_new_tokens
    tokens = r.prompts_per_step * r.samples_per_prompt * response
    step_s = tokens / (a.gpus * a.generation_tokens_per_s) + tokens / (a.gpus * a.training_tokens_per_s)
    questions = _test_questions(config, a.test_questions)
    validations = (config.train.steps // config.train.eval_every + 1) if config.train.eval_every else 0
    eval_s = 0.0 if questions is None else (questions * config.eval.samples * config.eval.max_new_tokens
                                            / (a.gpus * a.generation_tokens_per_s))
    hours = (config.train.steps * step_s + validations * eval_s) / 3600
    return {"tokens_per_step": tokens, "seconds_per_step": step_s, "validations": validations,
            "seconds_per_validation": eval_s if questions is not None else None, "hours": hours,
            "gpu_hours": hours * a.gpus, "test_questions": questions}


def measured_hours(run_dir: Path, config: RunConfig) -> dict:
    """From a run's metrics.jsonl: the median seconds per step (the first step, which compiles and warms up, left
    out when there are others) over the run's steps, on the processes it ran with."""
    path = Path(run_dir) / "metrics.jsonl"
    rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []
    rows = [r for r in rows if "seconds_step" in r]
    if not rows:
        raise ConfigError(f"--run {run_dir}: no measured step in {path}")
    seconds = [r["seconds_step"] for r in (rows[1:] if len(rows) > 1 else rows)]
    processes = max(1, len(list((Path(run_dir) / "ranks").glob("rank*.jsonl"))))
    step_s = statistics.median(seconds)
    hours = config.train.steps * step_s / 3600
    left = max(0, config.train.steps - rows[-1]["step"]) * step_s / 3600
    tokens = statistics.median(r["tokens_generated"] / r["seconds_step"] for r in rows if r["seconds_step"] > 0)
    return {"measured_steps": len(rows), "seconds_per_step": step_s, "processes": processes, "hours": hours,
            "gpu_hours": hours * processes, "hours_left": left, "generated_tokens_per_s": tokens}


def plan(config_name: str, overrides=(), a: Assumptions | None = None, run_dir: str | None = None) -> dict:
    config = load(config_name, list(overrides))
    a = a or Assumptions()
    parameters = parameter_count(config)
    out = {"config": str(config_name), "steps": config.train.steps, "parameters": parameters,
           "assumptions": asdict(a), "assumed": assumed_hours(config, a), "disk": disk(config, parameters)}
    if run_dir is not None:
        out["measured"] = measured_hours(Path(run_dir), config)
    return out


def grid(seeds: int = 3, a: Assumptions | None = None, overrides=()) -> dict:
    """Every shipped qwen3_8b_* config × `seeds` seeds, and their totals."""
    from llm_runs.paths import SHIPPED_CONFIGS

    names = sorted(p.stem for p in SHIPPED_CONFIGS.glob("qwen3_8b_*.yaml"))
    runs = [plan(name, overrides, a) for name in names]
    total = {"runs": len(runs) * seeds,
             "gpu_hours": seeds * sum(r["assumed"]["gpu_hours"] for r in runs),
             "disk": seeds * sum(r["disk"]["run"] for r in runs)}
    return {"seeds": seeds, "configs": runs, "total": total}


def _gb(n: float) -> str:
    """Bytes in decimal units, the unit chosen to fit (disks are sold in them)."""
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6)):
        if n >= size:
            return f"{n / size:,.1f} {unit}"
    return f"{n / 1e3:,.1f} kB"


def report(p: dict) -> str:
    a, t, d = p["assumptions"], p["assumed"], p["disk"]
    response = a["response_tokens"] or "max_new_tokens (an upper bound)"
    lines = [f"{p['config']}: {p['steps']} steps, {p['parameters']:,} parameters",
             f"  assumed: {a['gpus']} GPUs, generation {a['generation_tokens_per_s']:,.0f} and training "
             f"{a['training_tokens_per_s']:,.0f} tokens/s per GPU, mean response {response}",
             f"  time:    {t['tokens_per_step']:,} tokens/step → {t['seconds_per_step']:,.1f} s/step; "
             + (f"{t['validations']} validations × {t['seconds_per_validation']:,.0f} s; "
                if t["seconds_per_validation"] is not None else
                f"{t['validations']} validations not counted (data.test not found: --test-questions N); ")
             + f"{t['hours']:,.1f} h = {t['gpu_hours']:,.1f} GPU-hours",
             f"  disk:    checkpoint {_gb(d['checkpoint'])} (weights {_gb(d['weights'])}), × {d['kept_checkpoints']} "
             f"kept + best + final = {_gb(d['run'])} per run ({_gb(d['run_peak'])} while writing a checkpoint)"]
    if "measured" in p:
        m = p["measured"]
        lines.append(f"  measured ({m['measured_steps']} steps on {m['processes']} process(es)): "
                     f"{m['seconds_per_step']:,.1f} s/step, {m['generated_tokens_per_s']:,.0f} generated tokens/s → "
                     f"{m['hours']:,.2f} h = {m['gpu_hours']:,.2f} GPU-hours for the run, {m['hours_left']:,.2f} h left")
    return "\n".join(lines)


def grid_report(g: dict) -> str:
    lines = [report(r) for r in g["configs"]]
    t = g["total"]
    lines.append(f"grid: {len(g['configs'])} configs × {g['seeds']} seeds = {t['runs']} runs: "
                 f"{t['gpu_hours']:,.0f} GPU-hours, {_gb(t['disk'])} of disk (at the assumptions above)")
    return "\n".join(lines)
