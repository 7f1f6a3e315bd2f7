"""PGPO inside TRL's SDPO trainer (`trl.experimental.sdpo`, trl 1.16.0; the `trl` extra).

    from pgpo.trl import PGPOConfig, PGPOTrainer
    args = PGPOConfig(..., pgpo_alpha=1.0, pgpo_rho_max=2.0)      # every SDPOConfig field, plus pgpo_*
    PGPOTrainer(model, reward_funcs=..., args=args, train_dataset=...).train()

What it adds to `SDPOTrainer`, and nothing else:
- I: on every training forward of the self-distillation loss, Σ m·KL(q ‖ p) and Σ m over the loss's own
  support (the student's top-k plus a tail bucket, the top-k renormalised, or the vocabulary: as
  `distillation_mode`, `distillation_topk` and `distillation_add_tail` say), from the logits the loss
  already has (temperature-scaled as the loss sees them), m the loss's mask. The pair is summed over
  gradient accumulation and, at the optimizer step, over ranks, then divided once.
- ρ = min(1 + α·I, ρ_max) (`pgpo.Multiplier`) applied by `pgpo.modulated_step` at the optimizer step: the
  update is ρ times SDPO's, the optimizer's state untouched. HF's Trainer calls `optimizer.step()` inline
  (there is no method to override), so the step of the optimizer that accelerate handed back is replaced
  on that instance, looked up when training starts (after `accelerator.prepare` and the scheduler, which
  replace or wrap it), and its own `step` (gradient-accumulation skips, scaler) still runs inside.
- `pgpo/information` and `pgpo/rho` in TRL's logs (every `report_to` logger sees them).

α = 0 gives ρ = 1 and `modulated_step` then runs the plain step: SDPO bit for bit.

Refused, with the reason: DeepSpeed (it steps the optimizer inside its engine, out of reach);
`use_teacher_server` (the teacher's log-probs come from a server for the sampled token only: there is no
distribution to take I from); `distillation_mode="sampled_token"` (no support either).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

try:
    from trl.experimental.sdpo import SDPOConfig, SDPOTrainer
except ImportError as error:  # say which extra brings it
    raise ImportError("pgpo.trl needs TRL's SDPO trainer: pip install 'pgpo-toolkit[trl]' (trl==1.16.0)") from error

from pgpo.distributed import all_reduce_information
from pgpo.information import KINDS, information, ratio
from pgpo.multiplier import FORMS, Multiplier
from pgpo.optimizer import METHODS, modulated_step, step_method

__all__ = ["PGPOConfig", "PGPOTrainer", "support_logprobs"]


@dataclass
class PGPOConfig(SDPOConfig):
    """`SDPOConfig` plus PGPO's multiplier ρ = g(I) (every field can be given on TRL's command line too)."""

    pgpo_alpha: float = field(default=1.0, metadata={"help": "PGPO's sensitivity α ≥ 0 (α = 0 is SDPO)."})
    pgpo_rho_max: float = field(default=2.0, metadata={"help": "PGPO's cap ρ_max ≥ 1."})
    pgpo_form: str = field(default="linear", metadata={"help": f"The multiplier's form, one of {FORMS}."})
    pgpo_divergence: str = field(default="kl", metadata={
        "help": f"The divergence behind I, one of {KINDS}: 'kl' is KL(teacher ‖ student)."})
    pgpo_step_method: str = field(default="auto", metadata={
        "help": f"How ρ scales the update, one of {METHODS} (see pgpo.modulated_step)."})

    def __post_init__(self):
        super().__post_init__()
        Multiplier(self.pgpo_alpha, self.pgpo_rho_max, self.pgpo_form)  # raises, naming the parameter
        if self.pgpo_divergence not in KINDS:
            raise ValueError(f"pgpo_divergence must be one of {KINDS}, got {self.pgpo_divergence!r}")
        if self.pgpo_step_method not in METHODS:
            raise ValueError(f"pgpo_step_method must be one of {METHODS}, got {self.pgpo_step_method!r}")
        if self.use_teacher_server:
            raise ValueError("PGPO needs the teacher's distribution on the loss's support, and use_teacher_server=True "
                             "gives the sampled token's log-probability only: use a local teacher")
        if self.distillation_mode == "sampled_token":
            raise ValueError("PGPO needs a support to take I on: distillation_mode='topk_logits' or 'full_logits', "
                             "not 'sampled_token'")


class PGPOTrainer(SDPOTrainer):
    """TRL's `SDPOTrainer` whose every optimizer step is scaled by ρ = g(I) (see the module docstring)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if not isinstance(self.args, PGPOConfig):
            raise TypeError(f"PGPOTrainer needs args=PGPOConfig(...), got {type(self.args).__name__}")
        if self.is_deepspeed_enabled:
            raise ValueError("DeepSpeed steps the optimizer inside its engine, where the update cannot be scaled by ρ; "
                             "use DDP or FSDP (accelerate's FSDP plugin) for PGPO")
        self.multiplier = Multiplier(self.args.pgpo_alpha, self.args.pgpo_rho_max, self.args.pgpo_form)
        self._information_sums = [0.0, 0.0]  # Σ m·D and Σ m since the last optimizer step, on this rank
        self.last_information = self.last_rho = None

    def _compute_self_distillation_loss(self, model, inputs, distillation_logits):
        if model.training:  # evaluation passes carry no step
            self._accumulate_information(distillation_logits)
        return super()._compute_self_distillation_loss(model, inputs, distillation_logits)

    @torch.no_grad()
    def _accumulate_information(self, logits) -> None:
        args = self.args
        log_p, log_q = support_logprobs(logits.student_logits, logits.teacher_logits, args.distillation_mode,
                                        args.distillation_topk, args.distillation_add_tail)
        numerator, denominator = information(log_p, log_q, mask=logits.loss_mask, kind=args.pgpo_divergence,
                                             reduce="sum")
        self._information_sums[0] += numerator.double()
        self._information_sums[1] += denominator.double()

    def training_step(self, model, inputs, num_items_in_batch):
        self._install_modulated_step()
        return super().training_step(model, inputs, num_items_in_batch)

    def _install_modulated_step(self) -> None:
        """Replace `self.optimizer.step` on the instance (once per optimizer object): by the first training
        step, accelerate's `prepare` and the LR scheduler have done their own replacing and wrapping."""
        optimizer = self.optimizer
        if getattr(optimizer.step, "_pgpo_modulated", False):
            return
        step_method(optimizer, self.args.pgpo_step_method)  # refuses a method that would be wrong, now
        plain = _PlainStep(optimizer, optimizer.step)

        def step(closure=None):
            return modulated_step(plain, self._rho(), closure=closure, method=self.args.pgpo_step_method)

        step._pgpo_modulated = True
        if hasattr(optimizer.step, "_wrapped_by_lr_sched"):  # the scheduler's step counter still runs, inside
            step._wrapped_by_lr_sched = True
        optimizer.step = step

    def _rho(self) -> float:
        """I over this step's micro-batches and every rank (a collective: every rank steps), then ρ = g(I)."""
        device = self.accelerator.device
        numerator, denominator = all_reduce_information(
            torch.as_tensor(self._information_sums[0], dtype=torch.float64, device=device),
            torch.as_tensor(self._information_sums[1], dtype=torch.float64, device=device))
        self._information_sums = [0.0, 0.0]
        self.last_information = ratio(numerator, denominator).item()
        self.last_rho = float(self.multiplier(self.last_information))
        self._metrics["train"]["pgpo/information"].append(self.last_information)
        self._metrics["train"]["pgpo/rho"].append(self.last_rho)
        return self.last_rho


class _PlainStep:
    """What `modulated_step` sees: the optimizer's own step (as it was before PGPO replaced it) and its live
    `param_groups` (read at each step, never captured: accelerate replaces the list when it prepares)."""

    def __init__(self, optimizer, step):
        self.optimizer, self._step = optimizer, step

    @property
    def param_groups(self):
        return self.optimizer.param_groups

    def step(self, closure=None):
        return self._step() if closure is None else self._step(closure)


@torch.no_grad()
def support_logprobs(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mode: str = "topk_logits",
                     topk: int | None = None, add_tail: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Student and teacher log-probabilities on the support of TRL's self-distillation loss.

    Args:
        student_logits, teacher_logits: (B, T, V), aligned on the completion tokens.
        mode: "topk_logits" — the student's top-k tokens, plus one bucket holding each distribution's remaining
            mass (`add_tail`), or the top-k renormalised; "full_logits" — the vocabulary.
        topk: k, for "topk_logits".

    Returns:
        (log p, log q), each (B, T, S) float32, normalised over S (S = k + 1, k or V). The tail's log-mass is a
        log-sum-exp over the logits outside the top-k, not log(1 − Σ top-k): exact however confident the
        distribution (the subtraction loses every digit when the top-k holds nearly all the mass).
    """
    student, teacher = student_logits.float(), teacher_logits.float()
    if mode == "full_logits":
        return student.log_softmax(-1), teacher.log_softmax(-1)
    if mode != "topk_logits":
        raise ValueError(f"mode must be 'topk_logits' or 'full_logits', got {mode!r}")
    if topk is None:
        raise ValueError("mode='topk_logits' needs topk")
    top = student.topk(topk, dim=-1).indices
    supports = []
    for logits in (student, teacher):
        log_z = logits.logsumexp(-1, keepdim=True)
        inside = logits.gather(-1, top)
        if add_tail:
            rest = logits.scatter(-1, top, float("-inf")).logsumexp(-1, keepdim=True)
            supports.append(torch.cat([inside, rest], -1) - log_z)
        else:
            supports.append(inside.log_softmax(-1))
    return supports[0], supports[1]
