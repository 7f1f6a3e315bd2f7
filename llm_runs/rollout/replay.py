"""Rollouts recorded by one run and served again to another: an A/B of the trainer on the same samples.

Sampling is discontinuous in the weights. The inverse-CDF draw (`hf.next_token`) picks the token whose
CDF interval holds the row's uniform, so two runs whose updates differ only by float rounding (one process
or eight, the loss in one chunk or many, one transformers release or the next) draw the same tokens only
until a uniform falls closer to an interval's end than that rounding moves it. From then on they train on
different samples and their metrics part by far more than rounding. To compare two trainers, give them
the same rollouts:

    run A:  rollout.record: true            each step's rollouts → A/rollouts/rank<r>.jsonl
    run B:  rollout.engine: replay          B samples nothing: each prompt gets A's rollouts back
            rollout.replay: A

A record is one line per prompt, keyed by the prompt's sampling seed (one per run seed, step and position in
the global batch, whatever the number of processes), so a run on 2 processes replays a run on 1. The line
also holds a digest of the prompt's token ids and the sampling settings: a replay on another prompt, another
n or other settings is refused, never served silently.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Iterable

import torch

from llm_runs.config import ConfigError
from llm_runs.rollout.engine import Rollout, Sampling

FOLDER = "rollouts"  # in a run folder: rank<r>.jsonl


def prompt_digest(prompt_ids: list[int]) -> str:
    return hashlib.sha256(json.dumps(prompt_ids).encode()).hexdigest()[:16]


def record(run_dir: Path, rank: int, step: int, prompt_ids: list[list[int]], seeds: list[int], n: int,
           sampling: Sampling, rollouts: list[Rollout]) -> None:
    """Append one step's rollouts of this rank (len(prompt_ids)·n, prompt-major) to RUN/rollouts/rank<r>.jsonl."""
    path = Path(run_dir) / FOLDER / f"rank{rank}.jsonl"
    path.parent.mkdir(exist_ok=True)
    settings = asdict(sampling)
    with path.open("a") as f:
        for i, (ids, seed) in enumerate(zip(prompt_ids, seeds)):
            samples = [{"token_ids": r.token_ids, "logprobs": r.logprobs, "finish_reason": r.finish_reason}
                       for r in rollouts[i * n:(i + 1) * n]]
            f.write(json.dumps({"seed": seed, "step": step, "prompt": prompt_digest(ids), "sampling": settings,
                                "samples": samples}) + "\n")


def forget_after(run_dir: Path, rank: int, step: int) -> None:
    """Drop this rank's records of steps after `step` (a resumed run redoes them)."""
    path = Path(run_dir) / FOLDER / f"rank{rank}.jsonl"
    if path.exists():
        kept = [line for line in path.read_text().splitlines() if json.loads(line)["step"] <= step]
        path.write_text("".join(line + "\n" for line in kept))


class ReplayEngine:
    """A rollout engine that serves a recorded run's rollouts (`rollout.engine: replay`)."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        files = sorted((self.run_dir / FOLDER).glob("rank*.jsonl"))
        if not files:
            raise ConfigError(f"rollout.replay = {run_dir}: no recorded rollouts there ({FOLDER}/rank*.jsonl); "
                                    f"record them with rollout.record=true in that run")
        # seed → (file, byte offset) of its line: the samples are read when asked for, not held
        self._index: dict[int, tuple[Path, int]] = {}
        for file in files:
            with file.open("rb") as f:
                offset = 0
                for number, line in enumerate(f, 1):
                    try:
                        self._index[int(json.loads(line)["seed"])] = (file, offset)  # a redone step: the last wins
                    except (ValueError, KeyError) as err:
                        raise ConfigError(f"{file}:{number}: not a rollout record ({err})") from None
                    offset += len(line)

    def _read(self, seed: int) -> dict:
        file, offset = self._index[seed]
        with file.open("rb") as f:
            f.seek(offset)
            return json.loads(f.readline())

    def generate(self, prompt_ids: list[list[int]], n: int, sampling: Sampling,
                 seeds: list[int] | None = None) -> list[Rollout]:
        """Prompt i's n recorded rollouts, looked up by seeds[i], prompt-major like any engine."""
        if seeds is None:
            raise ValueError("the replay engine serves rollouts by their sampling seed: generate(..., seeds=...)")
        out = []
        for i, (ids, seed) in enumerate(zip(prompt_ids, seeds)):
            if seed not in self._index:
                raise ConfigError(f"rollout.replay = {self.run_dir}: no recorded rollouts for the prompt with seed {seed} "
                               f"(that run stopped earlier, or had another train.seed or rollout.prompts_per_step)")
            row = self._read(seed)
            wanted = asdict(sampling)
            if row["prompt"] != prompt_digest(ids) or len(row["samples"]) != n or row["sampling"] != wanted:
                raise ConfigError(f"rollout.replay = {self.run_dir}: the recorded step {row['step']} (seed {seed}) had "
                                 f"another prompt, n = {len(row['samples'])} or sampling {row['sampling']}; this run "
                                 f"asks for n = {n}, {wanted}")
            out += [Rollout(i, s["token_ids"], s["logprobs"], s["finish_reason"]) for s in row["samples"]]
        return out

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        pass  # it samples nothing

    def sleep(self) -> None:
        pass

    def wake(self) -> None:
        pass

    def close(self) -> None:
        pass
