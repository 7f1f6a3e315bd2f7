"""Stopping a run cleanly before a scheduler kills it, and checkpoints on a clock as well as on a step count.

SLURM and every preemptible scheduler send SIGTERM before they kill (torchrun forwards it to its workers and
kills them about 30 s later); `sbatch --signal=USR1@N` sends SIGUSR1 N seconds before the job's end. The
handler only sets a flag. At the next step boundary the ranks agree, in one collective, on three questions:

    stop      a signal reached some rank                         → checkpoint, then exit PREEMPTED
    due       train.checkpoint_minutes passed since the last save → checkpoint, go on
    ending    the job's end (train.end_time, else the scheduler's SLURM_JOB_END_TIME where it sets one) is
              nearer than one step + one checkpoint + train.end_margin_s → checkpoint, then exit PREEMPTED

One collective, because a flag seen by one rank only would send it into a checkpoint's collectives alone and
deadlock FSDP. PREEMPTED (75, EX_TEMPFAIL: "try again later") tells a requeue script to resume the run.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import torch

PREEMPTED = 75  # the exit code of a run stopped early with its checkpoint written: resume it
MARK = "preempted.json"  # in the run folder while it is stopped early: what a requeue script reads under torchrun,
#                          whose own exit code is 1 for any worker's
SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class Preempted(Exception):
    """The run stopped at a step boundary with its checkpoint written (exit code PREEMPTED)."""

    def __init__(self, step: int, reason: str):
        super().__init__(f"stopped at step {step} ({reason}) with its checkpoint written: resume it with --resume")
        self.step, self.reason = step, reason


def mark(run_dir, step: int, reason: str) -> None:
    """Leave RUN/preempted.json: {"step", "reason", "exit_code"} (removed when the run trains again)."""
    (Path(run_dir) / MARK).write_text(json.dumps({"step": step, "reason": reason, "exit_code": PREEMPTED}) + "\n")


def unmark(run_dir) -> None:
    (Path(run_dir) / MARK).unlink(missing_ok=True)


def job_end_time(configured: float | None) -> float | None:
    """The job's end as a UNIX time: the config's, else the scheduler's (SLURM_JOB_END_TIME), else None."""
    if configured is not None:
        return configured
    value = os.environ.get("SLURM_JOB_END_TIME", "")
    return float(value) if value.strip().isdigit() else None


class StopWatch:
    """The signal flag and the clocks; `decide()` at each step boundary returns (stop reason or None, save?)."""

    def __init__(self, checkpoint_minutes: float | None, end_time: float | None, end_margin_s: float,
                 device: torch.device):
        self.checkpoint_s = None if checkpoint_minutes is None else 60.0 * checkpoint_minutes
        self.end_time, self.margin, self.device = end_time, end_margin_s, device
        self.signal: int | None = None
        self.last_save = time.monotonic()
        self.step_s = 0.0  # the longest step and checkpoint seen: the room needed before the job's end
        self.save_s = 0.0
        self._previous = {}

    def install(self) -> None:
        """Catch SIGTERM and SIGUSR1 (main thread only: elsewhere Python cannot, and the scheduler's kill stands)."""
        try:
            for s in SIGNALS:
                self._previous[s] = signal.signal(s, self._caught)
        except ValueError:
            self._previous.clear()

    def uninstall(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()

    def _caught(self, number, frame) -> None:
        self.signal = number  # nothing else in a handler: the step finishes, then the ranks agree

    def step_took(self, seconds: float) -> None:
        self.step_s = max(self.step_s, seconds)

    def saved(self, seconds: float) -> None:
        self.save_s, self.last_save = max(self.save_s, seconds), time.monotonic()

    def decide(self) -> tuple[str | None, bool]:
        """(why to stop, or None; whether to checkpoint now), the same on every rank."""
        now = time.monotonic()
        due = self.checkpoint_s is not None and now - self.last_save >= self.checkpoint_s
        ending = self.end_time is not None and self.end_time - time.time() < self.step_s + self.save_s + self.margin
        stop = self.signal is not None
        if torch.distributed.is_available() and torch.distributed.is_initialized():  # one process: no device sync
            flags = torch.tensor([float(stop), float(due), float(ending)], device=self.device)
            torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)  # the one collective
            stop, due, ending = (bool(x) for x in flags.tolist())
        if stop:
            name = signal.Signals(self.signal).name if self.signal is not None else "a signal to another rank"
            return name, True
        if ending:
            return "the job's end is near", True
        return None, due
