"""The step's metrics, gathered by one object as the step runs (`StepMetrics`), and the row it logs to
metrics.jsonl (README, "What a run writes").

The loss's sums stay on the device while the micro-batches run and are read back once, with I and the
gradient norm, in the step's one host sync.
"""

from __future__ import annotations

import dataclasses
import resource
import time
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

STAGES = ("rollout", "reward", "teacher", "train", "weight_sync")  # each row's seconds_<stage>


@dataclass
class LossSums:
    """Sums over the step's micro-batches: 0-d float64 tensors on the device while the step runs, floats once
    read. `*_num / *_den` are token means (`information_*`: token or sequence means, as `pgpo.reduce` says)."""

    information_num: torch.Tensor | float  # I's numerator and denominator, before the sum over ranks
    information_den: torch.Tensor | float
    loss: torch.Tensor | float  # each micro-batch's loss weighted by its share of the global batch
    divergence_num: torch.Tensor | float  # pgpo.divergence(teacher ‖ student), token mean
    divergence_den: torch.Tensor | float
    jsd_num: torch.Tensor | float
    jsd_den: torch.Tensor | float
    entropy_num: torch.Tensor | float  # the student's entropy on the support, token mean
    entropy_den: torch.Tensor | float
    logprob_gap: torch.Tensor | float  # Σ |log π_trainer(y_t) − log π_sampler(y_t)| over response tokens
    tokens: torch.Tensor | float  # response tokens
    logprob_gap_max: torch.Tensor | float  # a maximum, not a sum

    @classmethod
    def zeros(cls, device: torch.device) -> "LossSums":
        return cls(*(torch.zeros((), dtype=torch.float64, device=device) for _ in dataclasses.fields(cls)))

    def values(self) -> list:
        return [getattr(self, f.name) for f in dataclasses.fields(self)]

    @classmethod
    def combine(cls, parts: list["LossSums"]) -> "LossSums":
        """Read sums from every rank → the global batch's (sums added, the maximum taken)."""
        names = [f.name for f in dataclasses.fields(cls)]
        return cls(*((max if n == "logprob_gap_max" else sum)(getattr(p, n) for p in parts) for n in names))



class StepMetrics:
    """Everything one step's metrics row needs, gathered as the step runs: seconds per stage, the loss's sums
    per micro-batch, the rollouts' rewards, lengths and finish reasons."""

    def __init__(self, device: torch.device):
        self.seconds = dict.fromkeys(STAGES, 0.0)
        self.sums = LossSums.zeros(device)
        self.rewards: list[float] = []  # (samples,) this rank's, then the global batch's after `gather`
        self.teacher_mask: list[float] = []
        self.lengths: list[int] = []
        self.finish_reasons: list[str] = []
        self.first_sq: torch.Tensor | float = float("nan")  # |∂L/∂θ|² after the first micro-batch (B_simple's)
        self.first_sequences = 0  # the sequences of that micro-batch, over every rank

    def first_gradient(self, sq_norm: torch.Tensor, sequences: int) -> None:
        """The squared gradient norm after the first micro-batch, kept on the device until `read`."""
        self.first_sq, self.first_sequences = sq_norm, sequences

    @contextmanager
    def stage(self, name: str):
        """Time a block as part of stage `name` (a stage may be entered many times in one step)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - start

    def add(self, out, batch, reduce: str, weight: float) -> None:
        """One micro-batch's `SelfDistillationOutput` on its `Batch`; `weight` = its share of the global batch."""
        pair = out.information if reduce == "token" else out.information_sequence
        gap = (out.token_logprobs.double() - batch.sampler_logprobs.double()).abs() * batch.response_mask  # (b, R)
        parts = [*pair, out.loss.detach() * weight, *out.information, *out.jsd, *out.entropy, gap.sum(),
                 batch.response_mask.sum()]
        s = self.sums
        # the sums are every field but the last, `logprob_gap_max`, which is a running maximum
        total = torch.stack(s.values()[:-1]) + torch.stack([x.double().reshape(()) for x in parts])
        self.sums = LossSums(*total.unbind(), torch.maximum(s.logprob_gap_max, gap.max().double()))

    def information_pair(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(numerator, denominator) of I on this rank, for `pgpo.global_information`."""
        return self.sums.information_num, self.sums.information_den

    def read(self, information: torch.Tensor, grad_norm) -> tuple[float, float]:
        """(I, grad norm) as floats, and the sums read back with them: one device-to-host copy."""
        if hasattr(grad_norm, "full_tensor"):  # FSDP2: a replicated DTensor
            grad_norm = grad_norm.full_tensor()
        first = torch.as_tensor(self.first_sq, dtype=torch.float64, device=information.device).reshape(())
        head = [information.double().reshape(()), grad_norm.double().reshape(()), first]
        values = torch.stack(head + [v.to(information.device) for v in self.sums.values()]).tolist()
        self.first_sq, self.sums = values[2], LossSums(*values[3:])
        return values[0], values[1]

    def rollouts(self, rollouts, rewards: list[float], teacher_mask: list[float]) -> None:
        self.rewards, self.teacher_mask = list(rewards), list(teacher_mask)
        self.lengths = [len(r.token_ids) for r in rollouts]
        self.finish_reasons = [r.finish_reason for r in rollouts]

    def gather(self, parallel) -> None:
        """Every rank's read sums and rollout statistics, combined on every rank (a collective)."""
        self.sums = LossSums.combine(parallel.gather([self.sums]))
        self.rewards, self.teacher_mask = parallel.gather(self.rewards), parallel.gather(self.teacher_mask)
        self.finish_reasons, self.lengths = parallel.gather(self.finish_reasons), parallel.gather(self.lengths)

    def logprob_gap(self) -> float:
        """The sampler-vs-trainer log-probability gap per response token (stale engine weights raise it)."""
        return self.sums.logprob_gap / max(self.sums.tokens, 1.0)

    def row(self, *, step: int, epoch: int, lr: float, rho: float, information: float, grad_norm: float,
            skipped: bool, skipped_total: int, nonfinite_total: int, samples_per_prompt: int, alarm: bool,
            device: torch.device) -> dict:
        """The step's row of metrics.jsonl (read sums, after `gather` on several ranks)."""
        s, n, seconds = self.sums, samples_per_prompt, self.seconds
        groups = [self.rewards[g:g + n] for g in range(0, len(self.rewards), n)]
        return {
            "step": step, "epoch": epoch, "lr": lr, "effective_lr": lr * rho, "information": information,
            "rho": rho, "information_nonfinite_total": nonfinite_total, "loss": s.loss, "grad_norm": grad_norm,
            "skipped": int(skipped), "skipped_total": skipped_total,
            "reward_mean": float(np.mean(self.rewards)), "reward_std": float(np.std(self.rewards)),
            "groups_with_success": float(np.mean([max(g) == 1.0 for g in groups])),
            "teacher_fraction": float(np.mean(self.teacher_mask)), "response_length_mean": float(np.mean(self.lengths)),
            "response_length_max": int(max(self.lengths)),
            "truncated_fraction": float(np.mean([f == "length" for f in self.finish_reasons])),
            "divergence_teacher_student": _mean(s.divergence_num, s.divergence_den),
            "jsd_teacher_student": _mean(s.jsd_num, s.jsd_den), "entropy": _mean(s.entropy_num, s.entropy_den), "logprob_gap_mean": self.logprob_gap(), "logprob_gap_max": s.logprob_gap_max,
            "logprob_gap_alarm": int(alarm),
            "tokens_generated": int(sum(self.lengths)),
            "tokens_per_s_generated": sum(self.lengths) / max(seconds["rollout"], 1e-9),
            "tokens_per_s_trained": s.tokens / max(seconds["train"], 1e-9),
            **{f"seconds_{k}": v for k, v in seconds.items()}, "peak_memory_gb": peak_memory_gb(device),
        }


def _mean(num: float, den: float) -> float:
    return num / den if den else 0.0  # no response token: nothing to average


def peak_memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB
