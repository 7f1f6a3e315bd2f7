"""A run's life around its steps: validation, checkpoints and resume, the metrics log, the trackers, signals
and the job's end, and (`start`) the run folder's checks and hold. `Trainer` keeps the step; this module decides
when steps happen and what is kept of them. Followed from `python -m llm_runs train`, the way only goes down:

    start → RunHold(run folder) → Trainer(config, run_dir) (its parts: `llm_runs.parts.build_parts`)
          → Lifecycle.resume (if asked) → Lifecycle.train → Trainer.step, validated, logged, checkpointed

Files in the run folder (rank 0 writes, unless said): config.yaml (kept as started), metrics.jsonl (one row per
step, cut back to a checkpoint's byte offset on resume), eval/step-N.json, checkpoints/ (`llm_runs.checkpoint`),
ranks/rank<r>.jsonl (each rank's own I, ρ, grad norm), final/ (the consolidated export), summary.json,
preempted.json (while a stopped run waits to be resumed), .hold (`llm_runs.hold`).
"""

from __future__ import annotations

import errno
import json
import shutil
import sys
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import yaml

from llm_runs import checkpoint, parallel, preemption, watch
from llm_runs.config import ConfigError, RunConfig, check_resume, load
from llm_runs.evaluate import evaluate
from llm_runs.hold import RunHold
from llm_runs.preemption import PREEMPTED, Preempted, StopWatch, job_end_time
from llm_runs.rollout import replay

if TYPE_CHECKING:
    from llm_runs.trainer import Trainer


@dataclass
class RunState:
    """What a checkpoint keeps of the run besides its tensors (the `run` record)."""

    step: int = 0
    skipped_total: int = 0
    nonfinite_information_total: int = 0
    best_val: float | None = None
    best_step: int | None = None
    final_val: float | None = None  # the most recent validation
    metrics_offset: int = 0
    pending_row: dict | None = None  # a step checkpointed before its validation: its row, logged after it
    data_sha256: dict | None = None  # {"data.train": …, "data.test": …}: the examples the run trains and validates on
    tokens_total: int = 0  # response tokens generated so far, over every rank
    sde: dict = field(default_factory=dict)  # the SDE diagnostics' running values (`llm_runs.diagnostics.SDEState`)


def check_new_run_dir(run_dir: Path) -> None:
    """Refuse to start a run in a folder that holds a run, or that holds anything else (it would be overwritten)."""
    metrics = run_dir / "metrics.jsonl"
    if metrics.exists() and metrics.stat().st_size:
        raise ConfigError(f"{run_dir} already holds a run: use --resume {run_dir}, or set train.run_name")
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"{run_dir} is a file, not a run folder: set train.run_name or train.output_dir")
    ours = ("config.yaml", "base_model", ".hold")  # a run stopped before its first step has one of them
    if run_dir.is_dir() and any(run_dir.iterdir()) and not any((run_dir / name).exists() for name in ours):
        raise ConfigError(f"{run_dir} exists and is not a run folder (no config.yaml): its files would be "
                          f"overwritten; set train.run_name or train.output_dir")


def check_writable(run_dir: Path) -> None:
    """Make `run_dir` and write a file into it, or refuse with the reason (a read-only file system, no permission,
    a quota) before anything is loaded: every file of the run goes there."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=run_dir, prefix=".write-test-"):
            pass
    except OSError as err:
        raise ConfigError(f"{run_dir}: the run folder cannot be written ({err.strerror or err}): set "
                          f"train.output_dir (or --resume a copy) on a writable file system") from None


def start(run_dir: Path, config: RunConfig | None = None, resume_overrides: list[str] | None = None,
          progress: bool = True, lead: bool = True) -> int:
    """A run from its config into `run_dir` (new), or `run_dir` resumed (`config` None: its own config.yaml with
    the allowed `resume_overrides`), trained to its end; returns the exit code: 0, or `PREEMPTED` when stopped
    early with a checkpoint. `lead`: this process checks and holds the folder for the job (rank 0)."""
    from llm_runs.config import load_for_resume
    from llm_runs.trainer import Trainer

    resuming = config is None
    if lead and not resuming:
        check_new_run_dir(run_dir)
    fresh = not resuming and not run_dir.exists()
    trainer = None
    try:
        if lead:
            check_writable(run_dir)
        with RunHold(run_dir) if lead else nullcontext():  # a live run holds its folder: no second process trains in it
            if resuming:
                config = load_for_resume(run_dir, resume_overrides or [])  # refuses another experiment's settings
            trainer = Trainer(config, run_dir, progress=progress)
            if resuming and not trainer.resume():
                print(f"{run_dir}: no checkpoint yet, starting from step 0", file=sys.stderr)
            trainer.train()  # closes the rollout engine at the end
    except Preempted as stop:  # every rank agreed on it and wrote its part of the checkpoint
        trainer.close()
        parallel.finish()
        print(f"{run_dir}: {stop} (exit code {PREEMPTED})", file=sys.stderr)
        return PREEMPTED
    except BaseException:
        if fresh and lead and not (run_dir / "metrics.jsonl").exists():  # it never trained: leave no folder behind
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    parallel.finish()
    return 0


class Lifecycle:
    """The life of `trainer`'s run in its folder: `train()`, `resume()`, `save()`, `validate()`, `export()`."""

    def __init__(self, trainer: Trainer, progress: bool = True):
        self.trainer, self.progress = trainer, progress
        self.config, self.rank, self.world = trainer.config, trainer.rank, trainer.world
        self.resumed = False  # set by resume(): the run folder's config.yaml is then never rewritten
        self.watch = None

    @property
    def run_dir(self) -> Path:
        return self.trainer.run_dir

    @property
    def metrics_path(self) -> Path:
        return self.run_dir / "metrics.jsonl"

    @property
    def state(self) -> RunState:
        return self.trainer.state

    @state.setter
    def state(self, value: RunState) -> None:
        self.trainer.state = value

    def export(self, name: str = "final") -> Path | None:
        """Consolidated weights in the transformers format (rank 0 writes; every rank must call)."""
        path, full = self.run_dir / name, None
        if self.world > 1:  # a collective: every rank gathers, rank 0 writes
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

            options = StateDictOptions(full_state_dict=True, cpu_offload=True)
            full = get_model_state_dict(self.trainer.model, options=options)
        if self.rank == 0:
            with checkpoint.atomic_folder(path) as tmp:  # a full disk leaves no half-written export behind
                self.trainer.model.save_pretrained(tmp, state_dict=full)
                self.trainer.tokenizer.save_pretrained(tmp)
        return path

    # -- validation ---------------------------------------------------------------------------

    def validate(self) -> dict:
        """The model's mean@k on the test split (`eval.*`), kept in eval/step-N.json."""
        c, t = self.config, self.trainer
        with torch.random.fork_rng(devices=[t.device] if t.device.type == "cuda" else []):
            torch.manual_seed(c.train.seed + 1_000_003 * self.state.step)  # eval never shifts training's randomness
            result = evaluate(t.model, t.tokenizer, t.test_examples, c.data.template, c.eval, c.model.enable_thinking,
                              engine=t.engine if c.rollout.engine == "vllm" else None)
        t.engine.sleep()
        path = self.run_dir / "eval" / f"step-{self.state.step:06d}.json"
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps(result, indent=1))
        return result

    # -- the loop -----------------------------------------------------------------------------

    def _log(self, row: dict) -> None:
        """Append the step's row to metrics.jsonl (rank 0), opened and closed per row: a write that fails leaves
        no buffered rest to fail again on close."""
        if self.rank != 0:
            return
        try:
            with self.metrics_path.open("a") as log:
                log.write(json.dumps(row) + "\n")
        except OSError as err:
            if err.errno in (errno.ENOSPC, errno.EDQUOT):  # the row is redone on resume (the log is cut back)
                raise checkpoint.StorageError(errno.ENOSPC, f"no space left on the device while writing "
                                                            f"{self.metrics_path}: free some space and resume") from err
            if err.errno in (errno.EROFS, errno.EACCES, errno.EPERM):  # e.g. the file system remounted read-only
                raise checkpoint.StorageError(err.errno, f"cannot write {self.metrics_path} ({err.strerror}): make "
                                                         f"the run folder writable again and resume") from err
            raise

    def _validate_and_log(self, row: dict) -> None:
        """Validate at this step, add the result to `row`, log it, and keep a "best" checkpoint when it is."""
        start = time.perf_counter()
        result = self.validate()
        row["seconds_eval"] = time.perf_counter() - start
        row["val_mean_at_k"] = self.state.final_val = result["mean_at_k"]
        if self.state.best_val is None or result["mean_at_k"] > self.state.best_val:
            self.state.best_val, self.state.best_step = result["mean_at_k"], self.state.step
            row["val_best"] = True
        self._log(row)
        self.watch.samples(self.state.step, result["samples"])
        if row.get("val_best"):
            if self.world == 1:
                self.save("best", mark_latest=False)
            else:
                self.export("checkpoints/best")

    def train(self) -> Path:
        """Steps until `train.steps` (from where `resume()` left it), then the final export and summary.json."""
        c, lead = self.config, self.rank == 0  # rank 0 writes the run's files
        saved = self.run_dir / "config.yaml"
        if lead and not (self.resumed and saved.exists()):  # a resumed run keeps the config it started with
            saved.write_text(yaml.safe_dump(c.to_dict(), sort_keys=False))
        if lead:
            preemption.unmark(self.run_dir)  # training again
        pending = self.state.pending_row is not None
        self.watch = watch.Watch(self.run_dir, c, start_step=self.state.step - pending,
                                 first_step=self.state.step + (not pending), progress=self.progress, lead=lead)
        try:
            self._train_steps()
        finally:  # on a crash too: the trackers keep every row logged so far
            self.watch.close()
        self.export("final")  # consolidated weights, loadable by from_pretrained (and vLLM)
        self.trainer.close()  # after the last collective: vLLM's shutdown may take the process group with it
        if not lead:
            return self.run_dir
        summary = {"steps": self.state.step, "skipped": self.state.skipped_total,
                   "nonfinite_information": self.state.nonfinite_information_total,
                   "best_val_mean_at_k": self.state.best_val, "best_step": self.state.best_step,
                   "final_val_mean_at_k": self.state.final_val, "tokens_total": self.state.tokens_total}
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
        return self.run_dir

    def _train_steps(self) -> None:
        """Steps until `train.steps`, each logged, validated and checkpointed as the cadences say; stopped early
        (checkpoint written, `Preempted` raised) on SIGTERM/SIGUSR1 or when the job's end is near."""
        c = self.config
        if self.state.pending_row is not None:  # resumed from a checkpoint written before its validation
            row, self.state.pending_row = self.state.pending_row, None
            self._validate_and_log(row)
            self.watch.row(row)
        clock = StopWatch(c.train.checkpoint_minutes, job_end_time(c.train.end_time), c.train.end_margin_s,
                          self.trainer.device)
        clock.install()
        try:
            while self.state.step < c.train.steps:
                started = time.monotonic()
                saved = self._one_step(clock)
                clock.step_took(time.monotonic() - started - saved)
                if self.state.step == c.train.steps:
                    break  # the run is done: a late signal changes nothing
                reason, save = clock.decide()  # the same on every rank
                if save and not saved:
                    self._timed_save(clock)
                if reason:
                    if self.rank == 0:
                        preemption.mark(self.run_dir, self.state.step, reason)
                    raise Preempted(self.state.step, reason)
        finally:
            clock.uninstall()

    def _one_step(self, clock: StopWatch) -> float:
        """A step, logged, validated and checkpointed as the step cadences say; returns the seconds spent saving."""
        c = self.config
        row = self.trainer.step()
        last = self.state.step == c.train.steps
        evaluate = bool(c.train.eval_every) and (self.state.step % c.train.eval_every == 0 or last)
        keep = bool(c.train.checkpoint_every) and (self.state.step % c.train.checkpoint_every == 0 or last)
        saved = 0.0
        if keep and evaluate:
            # the step's checkpoint first, holding the row still to be logged: a validation that fails
            # (out of memory, killed) costs only itself, and a resume redoes it before step k + 1
            self.state.pending_row = row
            saved = self._timed_save(clock)
            self.state.pending_row = None
            self._validate_and_log(row)
        else:
            if evaluate:
                self._validate_and_log(row)
            else:
                self._log(row)
            if keep:
                saved = self._timed_save(clock)
        self.watch.row(row)
        return saved

    def _timed_save(self, clock: StopWatch) -> float:
        started = time.monotonic()
        self.save()
        seconds = time.monotonic() - started
        clock.saved(seconds)
        return seconds

    # -- checkpoint / resume ------------------------------------------------------------------

    def trainer_state(self) -> dict:
        """Everything of a one-process checkpoint besides the weights: data only (`checkpoint.read_state`)."""
        t = self.trainer
        return {"optimizer": t.optimizer.state_dict(), "scheduler": t.scheduler.state_dict(),
                "teacher": t.teacher.state_dict(), "sampler": t.sampler.state_dict(),
                "rng": checkpoint.rng_state(), "run": self.state.__dict__.copy()}

    def save(self, name: str | None = None, mark_latest: bool = True) -> Path:
        """A resumable step checkpoint; `mark_latest=False` ("best") keeps the weights and the run record only
        (the optimizer state of an 8B model is ~65 GiB, and "best" is for evaluation, not for resuming)."""
        t, keep = self.trainer, self.config.train.keep_checkpoints
        self.state.metrics_offset = self.metrics_path.stat().st_size if self.metrics_path.exists() else 0
        name = name or f"step-{self.state.step:06d}"
        if self.world > 1:  # sharded (torch.distributed.checkpoint); "best" is a consolidated export instead
            small = {"scheduler": t.scheduler.state_dict(), "sampler": t.sampler.state_dict(),
                     "run": self.state.__dict__.copy()}
            return checkpoint.save_sharded(self.run_dir, name, t.model, t.optimizer, t.teacher.model, small,
                                           self.rank, keep=keep)
        state = self.trainer_state() if mark_latest else {"run": self.state.__dict__.copy()}
        return checkpoint.save(self.run_dir, name, t.model, t.tokenizer, state, keep=keep, mark_latest=mark_latest)

    def resume(self) -> bool:
        """Load the latest checkpoint, if any, and push its weights to the rollout engine (which started from
        the base model)."""
        saved = self.run_dir / "config.yaml"
        if saved.exists():
            check_resume(load(saved), self.config, self.run_dir)
        self.resumed = True
        path = checkpoint.latest(self.run_dir, strict=True)
        if path is None:
            self._forget_rows_after(0)  # killed before its first checkpoint: the run starts over from step 0
            return False
        logged = self._logged_steps()
        self._load(path)
        self._forget_rows_after(self.state.step)
        self.trainer.push_weights()
        redone = [k for k in logged if k > self.state.step]
        watch.Startup(self.run_dir.name, lead=self.rank == 0)(
            f"resumed from {path.name} (step {self.state.step})"
            + (f"; steps {redone[0]}–{redone[-1]}, logged after it, are redone and shown again" if redone else ""))
        return True

    def _logged_steps(self) -> list[int]:
        """The steps metrics.jsonl holds (rank 0; a torn last line, from a kill mid-write, is skipped)."""
        if self.rank != 0 or not self.metrics_path.exists():
            return []
        steps = []
        for line in self.metrics_path.read_text().splitlines():
            try:
                steps.append(int(json.loads(line)["step"]))
            except (ValueError, KeyError, TypeError):
                continue
        return steps

    def _check_same_data(self, then: dict | None) -> None:
        """Refuse to resume on examples other than those the run's first steps saw (same paths, edited files):
        `then` is the checkpoint's fingerprint, compared before anything of the checkpoint is applied."""
        now = self.state.data_sha256
        if then is None:  # a checkpoint from before fingerprints were kept
            return
        changed = [k for k in now if then.get(k) != now[k]]
        if changed:
            raise ConfigError(f"--resume {self.run_dir}: the examples of {', '.join(changed)} "
                              f"({', '.join(str(getattr(self.config.data, k.split('.')[1])) for k in changed)}) "
                              f"differ from those the run started on; resume on the same data, or start a new run")

    def _forget_rows_after(self, step: int) -> None:
        """Drop the logged rows of steps after `step` (they are redone): metrics.jsonl on rank 0 (a checkpoint
        also truncates it to its byte offset), and each rank's own ranks/rank<r>.jsonl."""
        if self.rank == 0 and step == 0 and self.metrics_path.exists():
            self.metrics_path.write_text("")
        mine = self.run_dir / "ranks" / f"rank{self.rank}.jsonl"
        if mine.exists():
            rows = [line for line in mine.read_text().splitlines() if json.loads(line)["step"] <= step]
            mine.write_text("".join(line + "\n" for line in rows))
        replay.forget_after(self.run_dir, self.rank, step)

    def _load(self, path: Path) -> None:
        """The checkpoint at `path` into the trainer's parts, its data fingerprint checked before the rest."""
        run = checkpoint.restore(path, self.trainer, lora=bool(self.config.model.lora_rank), rank=self.rank,
                                 world=self.world, check=lambda run: self._check_same_data(run.get("data_sha256")))
        self._restore_run(run)

    def _restore_run(self, run: dict) -> None:
        """The checkpoint's run record (this run's data fingerprint kept: checked equal, or absent in an older
        checkpoint), and metrics.jsonl cut back to it: rows written after the checkpoint are redone."""
        self.state = RunState(**{**run, "data_sha256": self.state.data_sha256})
        if self.rank == 0:
            with self.metrics_path.open("r+b") as f:
                f.truncate(self.state.metrics_offset)
