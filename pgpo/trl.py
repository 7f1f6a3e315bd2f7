"""PGPO inside TRL's SDPO trainer (`trl.experimental.sdpo`, trl 1.16.0; the `trl` extra). See docs/trl.md.

    from pgpo.trl import PGPOConfig, PGPOTrainer                   # was: from trl.experimental.sdpo import ...
    args = PGPOConfig(..., pgpo_alpha=1.0, pgpo_rho_max=2.0)        # every SDPOConfig field, plus pgpo_*
    PGPOTrainer(model, reward_funcs=..., args=args, train_dataset=...).train()

PGPO is on by default (pgpo_alpha = 1): `train()` says so in its first log line, and ρ and I are in the
logs from step 1 (`logging_first_step` defaults to True here). pgpo_alpha = 0 is SDPOTrainer bit for bit.

What it adds to `SDPOTrainer`, and nothing else:
- I: on every training forward of the self-distillation loss, Σ m·D and Σ m from what the loss already
  has, m the loss's mask, D per `distillation_mode`:
  - "topk_logits" / "full_logits": the divergence on the loss's own support (the student's top-k plus a
    tail bucket, the top-k renormalised, or the vocabulary), from the temperature-scaled logits;
  - "sampled_token": the unbiased single-sample estimate from the sampled token's log-ratio
    (`pgpo.sampled`), times the importance weight the loss applies (`distillation_is_clip`);
  - a teacher served by vLLM (`use_teacher_server`): the same, from the log-probabilities the server
    returns (the sampled token's, or the teacher's own top-k plus a tail bucket).
  The pair is summed over gradient accumulation and, at the optimizer step, over ranks, then divided once.
- ρ = g(I) (`pgpo.Multiplier`) applied by `pgpo.modulated_step` at the optimizer step: the update is ρ times
  SDPO's, the optimizer's state untouched. HF's Trainer calls `optimizer.step()` inline (there is no method
  to override), so the step of the optimizer that accelerate handed back is replaced on that instance,
  looked up when training starts (after `accelerator.prepare` and the scheduler, which replace or wrap it),
  and its own `step` (gradient-accumulation skips, scaler) still runs inside.
- In TRL's logs (every `report_to` logger): `pgpo/rho_last`, `pgpo/information_last` (the last optimizer
  step's) and `pgpo/rho_window_mean`, `pgpo/information_window_mean` (the mean over the optimizer steps
  since the previous log: `logging_steps` of them, `pgpo/window_steps`).

Refused, with the reason: DeepSpeed (it steps the optimizer inside its engine, out of reach); at α > 0, a
teacher server whose answer lacks the log-probabilities the loss uses (no estimator of I exists then).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import torch

try:
    from trl.experimental.sdpo import SDPOConfig, SDPOTrainer
    from trl.experimental.sdpo.loss_utils import add_tail_bucket, apply_importance_sampling_clipping
except ImportError as error:  # say which extra brings it
    raise ImportError("pgpo.trl needs TRL's SDPO trainer: pip install 'pgpo-toolkit[trl]' (trl==1.16.0)") from error
from pgpo.distributed import all_reduce_information
from pgpo.information import KINDS, information, ratio
from pgpo.multiplier import FORMS, Multiplier
from pgpo.optimizer import METHODS, modulated_step, step_method
from pgpo.sampled import sampled_information

__all__ = ["PGPOConfig", "PGPOTrainer", "support_logprobs", "token_logprobs", "window_metrics"]

logger = logging.getLogger(__name__)  # no handler of its own: a WARNING reaches stderr unless logging says otherwise

DIVERGENCE_NAMES = {"kl": "KL(teacher ‖ student)", "reverse_kl": "KL(student ‖ teacher)",
                    "jsd": "JSD(student, teacher)"}


@dataclass
class PGPOConfig(SDPOConfig):
    """`SDPOConfig` plus PGPO's multiplier ρ = g(I) (every field can be given on TRL's command line too).

    PGPO is on by default (pgpo_alpha = 1); pgpo_alpha = 0 is SDPO. `logging_first_step` defaults to True here,
    so that ρ and I are logged at step 1."""

    pgpo_alpha: float = field(default=1.0, metadata={
        "help": "PGPO's sensitivity α ≥ 0. The default 1 turns PGPO on; α = 0 is SDPOTrainer exactly."})
    pgpo_rho_max: float = field(default=2.0, metadata={"help": "PGPO's cap ρ_max ≥ 1."})
    pgpo_form: str = field(default="linear", metadata={"help": f"The multiplier's form, one of {FORMS}."})
    pgpo_divergence: str = field(default="kl", metadata={
        "help": f"The divergence behind I, one of {KINDS}: 'kl' is KL(teacher ‖ student)."})
    pgpo_step_method: str = field(default="auto", metadata={
        "help": f"How ρ scales the update, one of {METHODS} (see pgpo.modulated_step)."})
    logging_first_step: bool = field(default=True, metadata={
        "help": "Log the first global step (True here, unlike SDPOConfig: PGPO's ρ and I are logged at step 1)."})

    def __post_init__(self):
        super().__post_init__()
        Multiplier(self.pgpo_alpha, self.pgpo_rho_max, self.pgpo_form)  # raises, naming the parameter
        if self.pgpo_divergence not in KINDS:
            raise ValueError(f"pgpo_divergence must be one of {KINDS}, got {self.pgpo_divergence!r}")
        if self.pgpo_step_method not in METHODS:
            raise ValueError(f"pgpo_step_method must be one of {METHODS}, got {self.pgpo_step_method!r}")
        if self.distillation_mode == "sampled_token":
            changed = [f"{name}={value}" for name, value, plain in (
                ("top_p", self.top_p, 1.0), ("top_k", self.top_k or 0, 0), ("min_p", self.min_p, None),
                ("repetition_penalty", self.repetition_penalty, 1.0)) if value != plain]
            if changed:
                logger.warning(f"PGPO estimates I from the sampled tokens as if drawn from the student's softmax; "
                               f"{', '.join(changed)} change(s) the sampler, so I is estimated under that sampler")


class PGPOTrainer(SDPOTrainer):
    """TRL's `SDPOTrainer` whose every optimizer step is scaled by ρ = g(I) (see the module docstring)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if not isinstance(self.args, PGPOConfig):
            raise TypeError(f"PGPOTrainer needs args=PGPOConfig(...), got {type(self.args).__name__}")
        if self.is_deepspeed_enabled:
            raise ValueError("DeepSpeed steps the optimizer inside its engine, where the update cannot be scaled by "
                             "ρ; use DDP or FSDP (accelerate's FSDP plugin) for PGPO")
        self.multiplier = Multiplier(self.args.pgpo_alpha, self.args.pgpo_rho_max, self.args.pgpo_form)
        self._information_sums = [0.0, 0.0]  # Σ m·D and Σ m since the last optimizer step, on this rank
        self._window = {"information": [], "rho": []}  # the optimizer steps since the last log
        self._server_capture = None
        self.last_information = self.last_rho = None

    def train(self, *args, **kwargs):
        if self.accelerator.is_main_process:  # a warning where PGPO changes the steps: seen at the default verbosity
            logger.log(logging.WARNING if self.args.pgpo_alpha > 0 else logging.INFO, self.announcement())
        return super().train(*args, **kwargs)

    def announcement(self) -> str:
        """The line `train()` logs first: whether PGPO is on, with what, and where ρ and I are logged."""
        args = self.args
        estimate = {"sampled_token": "estimated from the sampled tokens", "topk_logits": "on the top-k support",
                    "full_logits": "on the vocabulary"}.get(args.distillation_mode, args.distillation_mode)
        where = "pgpo/rho_* and pgpo/information_* are logged " + (
            "from step 1" if args.logging_first_step
            else f"every {args.logging_steps} steps (logging_first_step=False)")
        signal = f"I = {DIVERGENCE_NAMES[args.pgpo_divergence]} {estimate}"
        if args.pgpo_alpha == 0:
            return f"PGPO is off (pgpo_alpha=0): SDPO's steps exactly; {signal} is still computed; {where}"
        cap = (f"min(1 + {args.pgpo_alpha:g}·I, {args.pgpo_rho_max:g})" if args.pgpo_form == "linear"
               else f"g(I) ({args.pgpo_form}, α={args.pgpo_alpha:g}, ρ_max={args.pgpo_rho_max:g})")
        return (f"PGPO is on (pgpo_alpha={args.pgpo_alpha:g}): every optimizer step is SDPO's times ρ = {cap}, "
                f"{signal}; {where}. pgpo_alpha=0 gives SDPOTrainer's steps exactly")

    # ------------------------------------------------------------------------------------------ I

    def _compute_self_distillation_loss(self, model, inputs, distillation_logits):
        if model.training:  # evaluation passes carry no step
            self._accumulate_information(distillation_logits, inputs)
        return super()._compute_self_distillation_loss(model, inputs, distillation_logits)

    @torch.no_grad()
    def _accumulate_information(self, logits, inputs) -> None:
        args = self.args
        if args.distillation_mode == "sampled_token":
            student = token_logprobs(logits.student_logits, logits.completion_ids)
            teacher = token_logprobs(logits.teacher_logits, logits.completion_ids)
            self._add_sampled(student, teacher, logits.loss_mask, inputs)
            return
        log_p, log_q = support_logprobs(logits.student_logits, logits.teacher_logits, args.distillation_mode,
                                        args.distillation_topk, args.distillation_add_tail)
        self._add(*information(log_p, log_q, mask=logits.loss_mask, kind=args.pgpo_divergence, reduce="sum"))

    def _add_sampled(self, student, teacher, mask, inputs) -> None:
        """The sampled tokens' estimate, weighted per token as TRL's loss weights its per-token term."""
        old = inputs.get("old_per_token_logps")
        weight = None
        if self.args.distillation_is_clip is not None and old is not None:
            weight = apply_importance_sampling_clipping(torch.ones_like(student), student, old,
                                                        self.args.distillation_is_clip)
        self._add(*sampled_information(student, teacher, mask=mask, kind=self.args.pgpo_divergence, weight=weight,
                                       reduce="sum"))

    def _add(self, numerator, denominator) -> None:
        self._information_sums[0] += numerator.double()
        self._information_sums[1] += denominator.double()

    def _compute_server_distillation_loss(self, model, inputs):
        """The teacher served by vLLM: the loss's own forward and the server's answer are caught on their way
        (`_forward_logits`, `_get_teacher_token_logprobs_from_server`), so that I costs no extra call."""
        if not model.training:
            return super()._compute_server_distillation_loss(model, inputs)
        self._server_capture = {}
        try:
            loss = super()._compute_server_distillation_loss(model, inputs)
            captured = self._server_capture
        finally:
            self._server_capture = None
        self._accumulate_server_information(captured, inputs)
        return loss

    def _forward_logits(self, model, input_ids, attention_mask, logits_to_keep):
        logits = super()._forward_logits(model, input_ids, attention_mask, logits_to_keep)
        if self._server_capture is not None:
            self._server_capture["student_logits"] = logits
        return logits

    def _get_teacher_token_logprobs_from_server(self, inputs, logits_to_keep):
        teacher = super()._get_teacher_token_logprobs_from_server(inputs, logits_to_keep)
        if self._server_capture is not None:
            self._server_capture["teacher"] = teacher
        return teacher

    @torch.no_grad()
    def _accumulate_server_information(self, captured, inputs) -> None:
        args = self.args
        teacher = captured.get("teacher") or {}
        needed = ("actual_logprobs",) if args.distillation_mode == "sampled_token" else ("topk_logprobs",
                                                                                         "topk_token_ids")
        missing = [key for key in needed if teacher.get(key) is None] + (
            [] if "student_logits" in captured else ["the student's logits"])
        if missing:  # the server's answer never came through `_get_teacher_token_logprobs_from_server` (a subclass)
            if args.pgpo_alpha > 0:
                raise ValueError(f"PGPO saw no {', '.join(missing)} from the teacher server on this micro-batch, and "
                                 f"without the teacher's log-probabilities there is no estimator of I: set "
                                 f"use_teacher_server=False (a local teacher) or pgpo_alpha=0 (SDPO, which needs no I)")
            # I unknown: NaN on every rank after the reduction, logged as such
            device = inputs["completion_mask"].device
            self._add(torch.tensor(float("nan"), device=device), torch.tensor(1.0, device=device))
            return
        student_logits = captured["student_logits"]
        mask = inputs["completion_mask"]
        if inputs.get("self_distillation_mask") is not None:
            mask = mask * inputs["self_distillation_mask"].unsqueeze(1)
        keep = mask.bool()
        if args.distillation_mode == "sampled_token":
            student = token_logprobs(student_logits, inputs["completion_ids"])
            self._add_sampled(student, teacher["actual_logprobs"].float(), mask, inputs)
            return
        # the teacher's own top-k (the server cannot score the student's), a tail bucket or renormalised, as TRL's loss
        log_q = torch.where(keep.unsqueeze(-1), teacher["topk_logprobs"].float(), 0.0)
        log_p = torch.where(keep.unsqueeze(-1), token_logprobs(student_logits, teacher["topk_token_ids"]), 0.0)
        if args.distillation_add_tail:
            log_p, log_q = add_tail_bucket(log_p), add_tail_bucket(log_q)
        else:
            log_p, log_q = log_p.log_softmax(-1), log_q.log_softmax(-1)
        self._add(*information(log_p, log_q, mask=mask, kind=args.pgpo_divergence, reduce="sum"))

    # ------------------------------------------------------------------------------------------ ρ

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
        self._window["information"].append(self.last_information)
        self._window["rho"].append(self.last_rho)
        return self.last_rho

    # ------------------------------------------------------------------------------------------ logs

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self.model.training and self._window["rho"]:  # TRL's rule for a training log (not an evaluation's)
            logs.update(window_metrics(self._window["information"], self._window["rho"]))
            self._window = {"information": [], "rho": []}
        super().log(logs, start_time)


def window_metrics(information_values: list[float], rho_values: list[float]) -> dict[str, float | int | None]:
    """The last optimizer step's I and ρ and their means over the window since the previous log. A non-finite I
    (ρ = 1 then) is logged as None (JSON loggers refuse NaN), left out of the mean and counted."""
    finite = [i for i in information_values if math.isfinite(i)]
    last = information_values[-1]
    return {"pgpo/rho_last": rho_values[-1], "pgpo/rho_window_mean": sum(rho_values) / len(rho_values),
            "pgpo/information_last": last if math.isfinite(last) else None,
            "pgpo/information_window_mean": sum(finite) / len(finite) if finite else None,
            "pgpo/window_steps": len(rho_values),
            "pgpo/information_nonfinite_steps": len(information_values) - len(finite)}


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
def token_logprobs(logits: torch.Tensor, ids: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """log softmax(logits) at `ids`, in float32: logits (B, T, V), ids (B, T) or (B, T, K) → ids' shape. One sequence
    and `chunk` positions at a time, so that no float32 copy of the whole (B, T, V) block is made."""
    squeeze = ids.dim() == logits.dim() - 1
    index = ids.unsqueeze(-1) if squeeze else ids
    out = torch.empty(index.shape, dtype=torch.float32, device=logits.device)
    for b in range(logits.shape[0]):
        for t in range(0, logits.shape[1], chunk):
            block = logits[b, t:t + chunk].float()
            out[b, t:t + chunk] = block.gather(-1, index[b, t:t + chunk]) - block.logsumexp(-1, keepdim=True)
    return out.squeeze(-1) if squeeze else out


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
