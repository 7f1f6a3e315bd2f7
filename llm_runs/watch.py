"""Watching a run while it trains (docs/training.md, "Watching a run").

- On a terminal, a progress bar with the step's reward, I, ρ, loss, lr and the last validation accuracy.
  Elsewhere (a batch job's log file, `--no-progress`), plain lines with the same numbers, a timestamp and
  the time left: one after the first step, then at most one per `train.log_interval` seconds, one at each
  validation and one at the end.
- The trackers `train.report_to` names, fed every metrics.jsonl row (rank 0 only): TensorBoard event files
  in RUN/tensorboard/ (`auto`, the default: when tensorboard is installed), Weights & Biases, trackio,
  MLflow. A resumed run continues the same tracker run; TensorBoard drops the events of the steps that are
  redone (its purge step), as metrics.jsonl drops their rows.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import secrets
import sys
import time
from pathlib import Path

from tqdm.auto import tqdm

from llm_runs.config import ConfigError, RunConfig, flat
from llm_runs.diagnostics import ROW_KEYS as SDE_ROW_KEYS

TRACKERS = {"tensorboard": "tensorboard", "wandb": "wandb", "trackio": "trackio", "mlflow": "mlflow"}  # name → module
ROW_NOT_SCALAR = ("step", "timestamp", "val_best")  # the x axis, the wall clock, a flag


def trackers(report_to: str) -> list[str]:
    """The tracker names `train.report_to` means ("auto", "none", or comma-separated names), each installed."""
    names = [n.strip() for n in report_to.split(",") if n.strip()]
    if names in ([], ["none"]):
        return []
    if names == ["auto"]:
        return ["tensorboard"] if importlib.util.find_spec("tensorboard") else []
    unknown = [n for n in names if n not in TRACKERS]
    if unknown:
        raise ConfigError(f"train.report_to: unknown {', '.join(unknown)}; use auto, none, or comma-separated names "
                          f"of {', '.join(TRACKERS)}")
    for name in names:
        if importlib.util.find_spec(TRACKERS[name]) is None:
            raise ConfigError(f"train.report_to: {name} is not installed (pip install {name})")
    return names


def tag(key: str) -> str:
    """A metrics.jsonl key's tracker name, grouped as the dashboards show them: val/…, pgpo/…, sde/…, time/…,
    train/…."""
    if key.startswith("val_"):
        return f"val/{key[4:]}"
    if key in ("information", "rho", "effective_lr", "information_nonfinite_total"):
        return f"pgpo/{key}"
    if key in SDE_ROW_KEYS:  # the SDE diagnostics (`llm_runs.diagnostics`)
        return f"sde/{key}"
    if key.startswith(("seconds_", "tokens_per_s", "peak_memory", "tokens_total")):
        return f"time/{key}"
    return f"train/{key}"


def scalars(row: dict) -> dict[str, float]:
    """The row's numbers under their tracker names (finite or not: a NaN loss is worth seeing)."""
    return {tag(k): float(v) for k, v in row.items()
            if k not in ROW_NOT_SCALAR and isinstance(v, (int, float)) and not isinstance(v, bool)}


def samples_markdown(samples: list[dict]) -> str:
    """A validation's kept completions as a Markdown table (TensorBoard's text plugin renders it)."""
    def cell(text: str) -> str:
        return "<br>".join(str(text).replace("|", "\\|").splitlines())  # every line break, \r and \v too

    lines = ["| idx | reward | answer | question | completion |", "|---|---|---|---|---|"]
    lines += [f"| {s['idx']} | {s['reward']:g} | {cell(s['answer'])} | {cell(s['question'])} | {cell(s['completion'])} |"
              for s in samples]
    return "\n".join(lines)


class TensorBoard:
    """Event files in RUN/tensorboard/: every row's scalars at its step, the config, the kept completions."""

    def __init__(self, run_dir: Path, config: RunConfig, first_step: int, name: str):
        from torch.utils.tensorboard import SummaryWriter

        # purge_step: on resume, the events of steps ≥ first_step written before the crash are dropped
        self.writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=first_step)
        if first_step <= 1:
            self.writer.add_text("config", "\n".join(f"    {k} = {v}" for k, v in flat(config).items()), 0)

    def log(self, row: dict) -> None:
        for key, value in scalars(row).items():
            self.writer.add_scalar(key, value, row["step"], walltime=row.get("timestamp"))
        self.writer.flush()  # a killed run keeps every logged step

    def samples(self, step: int, samples: list[dict]) -> None:
        self.writer.add_text("val/samples", samples_markdown(samples), step)

    def close(self) -> None:
        self.writer.close()


class WandB:
    """A Weights & Biases run (project from WANDB_PROJECT, else "pgpo"), resumed under the same id."""

    def __init__(self, run_dir: Path, config: RunConfig, first_step: int, name: str):
        import wandb

        self.wandb = wandb
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "pgpo"), name=name,
                              id=_tracker_id(run_dir, "wandb"), resume="allow", dir=str(run_dir),
                              config=config.to_dict())

    def log(self, row: dict) -> None:
        self.run.log(scalars(row), step=row["step"])

    def samples(self, step: int, samples: list[dict]) -> None:
        columns = ["idx", "reward", "answer", "question", "completion"]
        self.run.log({"val/samples": self.wandb.Table(columns=columns, data=[[s[c] for c in columns] for s in samples])},
                     step=step)

    def close(self) -> None:
        self.run.finish()


class Trackio:
    """A trackio run (project from TRACKIO_PROJECT, else "pgpo"), resumed under the same name."""

    def __init__(self, run_dir: Path, config: RunConfig, first_step: int, name: str):
        import trackio

        self.trackio = trackio
        trackio.init(project=os.environ.get("TRACKIO_PROJECT", "pgpo"), name=name, config=config.to_dict(),
                     resume="allow")

    def log(self, row: dict) -> None:
        self.trackio.log(scalars(row), step=row["step"])

    def samples(self, step: int, samples: list[dict]) -> None:
        pass  # trackio logs numbers; the completions stay in RUN/eval/step-N.json

    def close(self) -> None:
        self.trackio.finish()


class MLflow:
    """An MLflow run (tracking URI from MLFLOW_TRACKING_URI, as MLflow reads it), resumed by its run id."""

    def __init__(self, run_dir: Path, config: RunConfig, first_step: int, name: str):
        import mlflow

        self.mlflow = mlflow
        ids = _tracker_ids(run_dir)
        self.run = mlflow.start_run(run_id=ids.get("mlflow"), run_name=name)
        if "mlflow" not in ids:
            _save_tracker_id(run_dir, "mlflow", self.run.info.run_id)
            mlflow.log_params({k: str(v) for k, v in flat(config).items()})

    def log(self, row: dict) -> None:
        self.mlflow.log_metrics({k.replace("/", "."): v for k, v in scalars(row).items() if math.isfinite(v)},
                                step=row["step"])

    def samples(self, step: int, samples: list[dict]) -> None:
        self.mlflow.log_text(json.dumps(samples, indent=1), f"samples/step-{step:06d}.json")

    def close(self) -> None:
        self.mlflow.end_run()


SINKS = {"tensorboard": TensorBoard, "wandb": WandB, "trackio": Trackio, "mlflow": MLflow}


def _tracker_ids(run_dir: Path) -> dict:
    path = run_dir / "trackers.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _save_tracker_id(run_dir: Path, name: str, value: str) -> None:
    (run_dir / "trackers.json").write_text(json.dumps({**_tracker_ids(run_dir), name: value}, indent=1))


def _tracker_id(run_dir: Path, name: str) -> str:
    """A run's id with a tracker, made once and kept in RUN/trackers.json so that a resume continues it."""
    ids = _tracker_ids(run_dir)
    if name not in ids:
        _save_tracker_id(run_dir, name, f"{run_dir.name}-{secrets.token_hex(4)}")
    return _tracker_ids(run_dir)[name]


class Console:
    """The progress bar on a terminal; plain, timestamped lines elsewhere."""

    def __init__(self, name: str, total: int, start: int, bar: bool, interval: float, stream=None):
        self.name, self.total, self.start, self.interval = name, total, start, interval
        self.stream = stream or sys.stderr
        self.bar = tqdm(total=total, initial=start, desc=name, file=self.stream) if bar else None
        self.val: float | None = None
        self.began, self.last_line = time.monotonic(), None

    def update(self, row: dict) -> None:
        if "val_mean_at_k" in row:
            self.val = row["val_mean_at_k"]
        numbers = {"reward": f"{row['reward_mean']:.2f}", "I": f"{row['information']:.3f}", "rho": f"{row['rho']:.2f}",
                   "loss": f"{row['loss']:.4f}", "lr": f"{row['lr']:.1e}"}
        if self.val is not None:
            numbers["val"] = f"{self.val:.3f}"
        if self.bar is not None:
            self.bar.update(row["step"] - self.bar.n)
            self.bar.set_postfix(numbers)
            return
        now = time.monotonic()
        due = (self.last_line is None or now - self.last_line >= self.interval or "val_mean_at_k" in row
               or row["step"] >= self.total)
        if due:
            self.last_line = now
            print(self.line(row, numbers, now), file=self.stream, flush=True)

    def line(self, row: dict, numbers: dict, now: float) -> str:
        """`[time] name step s/total  reward … val …  x s/step  elapsed …  left ~…`"""
        done = row["step"] - self.start
        elapsed = now - self.began
        per_step = elapsed / done if done > 0 else float("nan")
        left = per_step * (self.total - row["step"])
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(row.get("timestamp", time.time())))
        values = "  ".join(f"{k} {v}" for k, v in numbers.items())
        return (f"[{stamp}] {self.name} step {row['step']}/{self.total}  {values}  {per_step:.1f} s/step  "
                f"elapsed {_duration(elapsed)}  left ~{_duration(left)}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class Startup:
    """What a run is doing before its first step (loading, sharding, starting the engine can take minutes on a GPU
    node): one timestamped line per stage on rank 0, with the time since the run started."""

    def __init__(self, name: str, lead: bool, stream=None):
        self.name, self.lead, self.stream = name, lead, stream or sys.stderr
        self.began = time.monotonic()

    def __call__(self, what: str) -> None:
        if self.lead:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            print(f"[{stamp}] {self.name}: {what} ({time.monotonic() - self.began:.1f} s since start)",
                  file=self.stream, flush=True)


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


class Watch:
    """The console and the trackers of one run; `row` after each logged metrics row, `samples` after each
    validation, `close` at the end (or on a crash: the files written so far stay readable)."""

    def __init__(self, run_dir: Path, config: RunConfig, start_step: int, first_step: int, progress: bool,
                 lead: bool, stream=None):
        stream = stream or sys.stderr
        name = Path(run_dir).name
        self.console = Console(name, config.train.steps, start_step, bar=progress and lead and stream.isatty(),
                               interval=config.train.log_interval, stream=stream) if lead else None
        self.sinks = []
        for tracker in trackers(config.train.report_to) if lead else []:
            try:
                self.sinks.append(SINKS[tracker](Path(run_dir), config, first_step, name))
            except Exception as err:  # the tracker's own setup (a store, a login): one line, the others closed
                self.close()
                raise ConfigError(f"train.report_to: {tracker} did not start: {type(err).__name__}: "
                                  f"{str(err).splitlines()[0] if str(err) else ''}") from err

    def row(self, row: dict) -> None:
        if self.console is not None:
            self.console.update(row)
        for sink in self.sinks:
            sink.log(row)

    def samples(self, step: int, samples: list[dict]) -> None:
        for sink in self.sinks:
            sink.samples(step, samples)

    def close(self) -> None:
        if self.console is not None:
            self.console.close()
        for sink in self.sinks:
            sink.close()
