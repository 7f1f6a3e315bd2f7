"""SDPO and PGPO training, one optimizer step at a time (`docs/method.md` §1, "One step"): `Trainer.step`
reads as the step does,

    draw prompts → generate → score → teacher contexts → forward/backward per micro-batch →
    information I → ρ → optimizer step (clipped; skipped if non-finite) → push weights → metrics row

The trainer keeps the step and nothing else. Its parts are built by one call (`llm_runs.parts.build_parts`);
the run's life around the steps (validation, checkpoints and resume, the metrics log, signals and the job's
end) is `llm_runs.lifecycle`; micro-batches are `llm_runs.batch`, the metrics row `llm_runs.metrics`.

`pgpo.enabled: false` is SDPO: a plain `optimizer.step()`. With PGPO the step is
`pgpo.modulated_step(optimizer, ρ)`, ρ = min(1 + α·I, ρ_max) (or the smooth cap); α = 0 gives ρ = 1,
which is SDPO bit for bit. The study's variants (`llm_runs.schema.PGPOConfig`, `docs/results.md`):
`pgpo.replay_rho` (SDPO with another run's ρ_t, or its mean, as a learning-rate multiplier),
`pgpo.per_sequence` (each sequence weighted by its own ρ_i, the weights averaging to 1 over the batch) and
`pgpo.normalize_information` (ρ = g(I / running mean of I)).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from tqdm.auto import tqdm

from llm_runs import parallel
from llm_runs.batch import Batch, make_batch, response_logits
from llm_runs.chunked_loss import chunked_self_distillation_loss, response_hidden
from llm_runs.config import RunConfig
from llm_runs.data import Example, render
from llm_runs.diagnostics import SDEState, grad_sq_norm
from llm_runs.lifecycle import Lifecycle, RunState
from llm_runs.loss import SelfDistillationOutput, self_distillation_loss
from llm_runs.metrics import StepMetrics
from llm_runs.parts import RunParts, build_parts
from llm_runs.reward import score
from llm_runs.rollout import Rollout, Sampling, replay
from llm_runs.teacher import demonstrations
from llm_runs.variants import check_variants, normalised_information
from pgpo import global_information, modulated_step


@dataclass
class Prompts:
    """This rank's share of the step's global batch of P prompts (p = P / ranks)."""

    epoch: int
    examples: list[Example]  # (p,)
    ids: list[list[int]]  # (p, prompt length): the rendered prompts' token ids
    seeds: list[int]  # (p,): one per position in the global batch, so rollouts do not depend on the split


@dataclass
class Scored:
    """The rollouts' texts and rewards, (p·n,) each, prompt-major like the rollouts."""

    texts: list[str]
    rewards: list[float]


@dataclass
class TeacherContexts:
    """Per rollout, the teacher's context: the prompt re-rendered with feedback (a demonstration)."""

    ids: list[list[int]]  # (p·n, context length)
    mask: list[float]  # (p·n,): 1 where the sample has a teacher, 0 where it is masked out of the loss


class Trainer:
    """A run's step in `run_dir`: `step()` once; `train()` runs steps from 0 (or after `resume()`) with the run's
    life around them (`self.life`, `llm_runs.lifecycle`)."""

    def __init__(self, config: RunConfig, run_dir: Path, progress: bool = True, parts: RunParts | None = None):
        self.config, self.run_dir = config, Path(run_dir)
        p = parts if parts is not None else build_parts(config, self.run_dir)
        self.device, self.rank, self.world, self.source = p.device, p.rank, p.world, p.source
        self.train_examples, self.test_examples, self.prompt_ids = p.train_examples, p.test_examples, p.prompt_ids
        self.model, self.tokenizer, self.pad, self.teacher = p.model, p.tokenizer, p.pad, p.teacher
        self.optimizer, self.scheduler, self.multiplier = p.optimizer, p.scheduler, p.multiplier
        self.engine, self.sampler = p.engine, p.sampler
        self.state = RunState(data_sha256=p.fingerprint)
        self.replayed = check_variants(config)  # (steps,) ρ_t to replay, or None
        self.sequence_rho = [0.0, 0.0]  # this step's Σ m_i·ρ_i and Σ m_i (pgpo.per_sequence), summed over ranks
        self.step_extra: dict = {}  # the variants' own row keys for this step
        self.trained_lengths: list[int] = []
        self.life = Lifecycle(self, progress)

    # the run's life around the step (llm_runs.lifecycle)
    def train(self) -> Path:
        return self.life.train()

    def resume(self) -> bool:
        return self.life.resume()

    def save(self, name: str | None = None, mark_latest: bool = True) -> Path:
        return self.life.save(name, mark_latest)

    def validate(self) -> dict:
        return self.life.validate()

    def export(self, name: str = "final") -> Path | None:
        return self.life.export(name)

    def close(self) -> None:
        """Shut the rollout engine down (vLLM: before the process group goes; every rank calls this)."""
        self.engine.close()

    # -- one step ------------------------------------------------------------------------------

    def step(self) -> dict:
        """One optimizer step on P·n rollouts; returns the step's metrics row."""
        start = time.perf_counter()
        metrics = StepMetrics(self.device)
        prompts = self.draw_prompts()
        with metrics.stage("rollout"):
            rollouts = self.generate(prompts)
        with metrics.stage("reward"):
            scored = self.score(prompts, rollouts)
        with metrics.stage("teacher"):
            contexts = self.teacher_contexts(prompts, rollouts, scored)
        self.forward_backward(prompts, rollouts, contexts, metrics)
        with metrics.stage("train"):
            information, grad_norm = metrics.read(self.information(metrics), self.clip_gradients())
            rho = self.rho(information)
            lr = self.optimizer.param_groups[0]["lr"]
            skipped = not self.optimizer_step(rho, grad_norm)
        with metrics.stage("weight_sync"):
            self.push_weights()
        self.state.step += 1
        metrics.rollouts(rollouts, scored.rewards, contexts.mask)
        row = self.metrics_row(metrics, prompts.epoch, lr, information, rho, grad_norm, skipped)
        row.update(self.sde_diagnostics(metrics, lr, rho, grad_norm, information, skipped))
        row.update(self.step_extra)
        self.state.tokens_total += row["tokens_generated"]
        row.update(tokens_total=self.state.tokens_total, seconds_step=time.perf_counter() - start,
                   timestamp=time.time())
        return row

    def draw_prompts(self) -> Prompts:
        """P prompts drawn without replacement within an epoch, the same on every rank; this rank takes its
        share, each prompt with one seed per (run, step, position in the global batch)."""
        c = self.config
        chosen = self.sampler.draw(c.rollout.prompts_per_step)
        epoch = self.sampler.epoch  # after the draw: the epoch its last prompt came from
        share = c.rollout.prompts_per_step // self.world
        mine = range(self.rank * share, (self.rank + 1) * share)
        seeds = [int(np.random.SeedSequence([c.train.seed, self.state.step, i]).generate_state(1)[0]) for i in mine]
        return Prompts(epoch, [self.train_examples[chosen[i]] for i in mine], [self.prompt_ids[chosen[i]] for i in mine],
                       seeds)

    def generate(self, prompts: Prompts) -> list[Rollout]:
        """n samples per prompt, (p·n,) prompt-major, with the engine awake only for this (vLLM's sleep mode gives
        its memory back to training; a no-op for `hf`)."""
        r = self.config.rollout
        sampling = Sampling(r.temperature, r.top_p, r.max_new_tokens)
        self.engine.wake()
        rollouts = self.engine.generate(prompts.ids, r.samples_per_prompt, sampling, seeds=prompts.seeds)
        self.engine.sleep()
        if r.record:  # for another run to train on the same samples (rollout.engine=replay)
            replay.record(self.run_dir, self.rank, self.state.step + 1, prompts.ids, prompts.seeds, r.samples_per_prompt,
                          sampling, rollouts)
        return rollouts

    def score(self, prompts: Prompts, rollouts: list[Rollout]) -> Scored:
        """Each response decoded and scored against its prompt's answer (1.0 right, 0.0 otherwise)."""
        texts = self.tokenizer.batch_decode([r.token_ids for r in rollouts], skip_special_tokens=True)
        template = self.config.data.template
        return Scored(texts, [score(t, prompts.examples[r.prompt_index].answer, template)
                              for t, r in zip(texts, rollouts)])

    def teacher_contexts(self, prompts: Prompts, rollouts: list[Rollout], scored: Scored) -> TeacherContexts:
        """Each rollout's teacher context: its prompt with a demonstration (a successful sibling's answer, or the
        ground truth, as `teacher.demonstration` says); none → masked out, its context any (the prompt)."""
        c, n = self.config, self.config.rollout.samples_per_prompt
        demos = []
        for g, example in enumerate(prompts.examples):
            group = slice(g * n, (g + 1) * n)
            demos += demonstrations(scored.texts[group], scored.rewards[group], example, c.data.template,
                                    c.teacher.demonstration, c.teacher.strip_think)
        ids = [prompts.ids[r.prompt_index] if d is None else
               self.tokenizer(render(self.tokenizer, prompts.examples[r.prompt_index], c.data.template, d,
                                     c.model.enable_thinking)).input_ids
               for r, d in zip(rollouts, demos)]
        return TeacherContexts(ids, [0.0 if d is None else 1.0 for d in demos])

    def forward_backward(self, prompts: Prompts, rollouts: list[Rollout], contexts: TeacherContexts,
                         metrics: StepMetrics) -> None:
        """Gradients of the global batch's mean loss: per micro-batch of `loss.micro_batch_size` rollouts, the
        teacher's forward (no gradient), the student's, the loss and its backward; sums kept in `metrics`."""
        c = self.config
        total = c.rollout.prompts_per_step * c.rollout.samples_per_prompt  # the global batch
        self.optimizer.zero_grad(set_to_none=True)
        self.step_extra = {}
        self.sequence_rho = [torch.zeros((), dtype=torch.float64, device=self.device) for _ in range(2)]
        # this rank's student sequences, tokens each: the step's model FLOPs (smoke's MFU)
        self.trained_lengths = [len(prompts.ids[r.prompt_index]) + len(r.token_ids) for r in rollouts]
        for start in range(0, len(rollouts), c.loss.micro_batch_size):  # this rank's share
            part = slice(start, start + c.loss.micro_batch_size)
            batch = make_batch([prompts.ids[r.prompt_index] for r in rollouts[part]], contexts.ids[part],
                               [r.token_ids for r in rollouts[part]], [r.logprobs for r in rollouts[part]],
                               contexts.mask[part], self.pad).to(self.device)
            out = self.micro_batch_loss(batch, metrics)
            with metrics.stage("train"):
                b = batch.sample_mask.shape[0]
                # Σ over micro-batches and ranks = the mean over all P·n sequences (FSDP averages over ranks)
                (out.loss * (b * self.world / total)).backward()
                if start == 0:  # the first micro-batch's gradient, over every rank: the small batch of B_simple
                    # its loss was scaled by its share of the batch, b·world/total: |G_b|² is the norm over that share²
                    share = b * self.world / total
                    metrics.first_gradient(grad_sq_norm(self.model.parameters()) / share ** 2, b * self.world)
            metrics.add(out, batch, reduce=c.pgpo.reduce, weight=b / total)
        if c.pgpo.per_sequence:
            self.normalise_sequence_weights(metrics)

    def normalise_sequence_weights(self, metrics: StepMetrics) -> None:
        """pgpo.per_sequence: the gradient Σ_i m_i·ρ_i·∇L_i / B divided by ρ̄_seq = Σ m_i·ρ_i / Σ m_i (over every
        rank), so that the weights ρ_i / ρ̄_seq average to 1; B_simple's first-micro-batch norm scaled alike."""
        weighted, count = self.sequence_rho
        if self.world > 1:
            pair = torch.stack([weighted, count])
            torch.distributed.all_reduce(pair)
            weighted, count = pair[0], pair[1]
        weighted, count = float(weighted), float(count)
        mean = weighted / count if count > 0 else 1.0  # no sequence with a teacher: the gradient is 0 anyway
        self.step_extra = {"rho_sequence_mean": mean}
        with torch.no_grad():
            for p in self.model.parameters():
                if p.grad is not None:
                    p.grad.div_(mean)
        metrics.first_sq = metrics.first_sq / mean ** 2

    def micro_batch_loss(self, batch: Batch, metrics: StepMetrics) -> SelfDistillationOutput:
        """Teacher forward (no gradient), student forward, the loss and its metrics (`loss.implementation`):
        logits (b, R, V) for `plain`, final hidden states and the head for `chunked`."""
        c, length = self.config, batch.response_ids.shape[1]
        chunked = c.loss.implementation == "chunked"
        forward = response_hidden if chunked else response_logits
        with metrics.stage("teacher"), torch.no_grad(), self.teacher.forward() as network:
            teacher = forward(network, batch.teacher_ids, batch.teacher_attention, length)
        with metrics.stage("train"):
            student = forward(self.model, batch.student_ids, batch.student_attention, length)
            options = dict(beta=c.loss.beta, topk=c.loss.topk, add_tail=c.loss.add_tail, is_cap=c.loss.is_cap,
                           divergence=c.pgpo.divergence, response_ids=batch.response_ids,
                           sampler_logprobs=batch.sampler_logprobs)
            loss = (self_distillation_loss if not chunked else
                    lambda s, t, *args, **kw: chunked_self_distillation_loss(*s, *t, *args, chunk_size=c.loss.chunk_size, **kw))
            if c.pgpo.per_sequence:
                out = self.per_sequence_loss(loss, student, teacher, batch, options, chunked)
            else:
                out = loss(student, teacher, batch.response_mask, batch.sample_mask, **options)
            if chunked and network is not self.model:  # a separate teacher under FSDP2: free the head it gathered
                parallel.reshard(network)
            return out

    def per_sequence_loss(self, loss, student, teacher, batch: Batch, options: dict, chunked: bool) -> SelfDistillationOutput:
        """pgpo.per_sequence: I_i of each sequence from a no-gradient evaluation of the loss, then the loss with
        sequence i weighted by m_i·ρ_i, ρ_i = g(I_i) (b,); the metrics are the unweighted evaluation's (a weighted
        sample mask would weight I too). Σ m_i·ρ_i and Σ m_i are added to `self.sequence_rho`."""
        with torch.no_grad():
            if chunked:
                hidden, head = student
                plain_head = None if head is None else SimpleNamespace(
                    weight=head.weight.detach(), bias=None if head.bias is None else head.bias.detach())
                probe = loss((hidden.detach(), plain_head), teacher, batch.response_mask, batch.sample_mask, **options)
            else:
                probe = loss(student.detach(), teacher, batch.response_mask, batch.sample_mask, **options)
            rho_i = self.multiplier(probe.information_per_sequence.double())  # (b,)
            mask = batch.sample_mask.double()
            self.sequence_rho[0] += (mask * rho_i).sum()
            self.sequence_rho[1] += mask.sum()
        weighted = (batch.sample_mask.double() * rho_i).to(batch.sample_mask.dtype)  # (b,)
        out = loss(student, teacher, batch.response_mask, weighted, **options)
        return dataclasses.replace(probe, loss=out.loss)

    def information(self, metrics: StepMetrics) -> torch.Tensor:
        """I over the global batch: the micro-batches' numerator and denominator summed over ranks, so every
        rank gets the same I, hence the same ρ (a 0-d tensor, still on the device)."""
        return global_information(*metrics.information_pair())

    def clip_gradients(self) -> torch.Tensor:
        """The gradient's norm before clipping to `optim.clip_norm` (non-finite when a gradient is)."""
        return torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.optim.clip_norm)

    def rho(self, information: float) -> float:
        """ρ = g(I) for PGPO (1 for a non-finite I, counted), 1 for SDPO; the replayed ρ_t with `pgpo.replay_rho`;
        g(I / Ī) with `pgpo.normalize_information` (`normalised_information`)."""
        self.state.nonfinite_information_total += int(not math.isfinite(information))
        if self.replayed is not None:
            return float(self.replayed[self.state.step])
        if self.multiplier is None:
            return 1.0
        if self.config.pgpo.normalize_information:
            information = normalised_information(information, self.state.sde)
            self.step_extra["information_normalised"] = information
        return float(self.multiplier(information))

    def optimizer_step(self, rho: float, grad_norm: float) -> bool:
        """The update (ρ-modulated for PGPO), the scheduler's tick and the EMA teacher's move; all three dropped
        when the gradient is not finite. Returns whether the step was applied."""
        if not math.isfinite(grad_norm):
            self.optimizer.zero_grad(set_to_none=True)
            self.state.skipped_total += 1
            return False
        if self.multiplier is None and self.replayed is None:
            self.optimizer.step()
        else:
            modulated_step(self.optimizer, rho)
        self.scheduler.step()
        self.teacher.update()
        return True

    def sde_diagnostics(self, metrics: StepMetrics, lr: float, rho: float, grad_norm: float, information: float,
                        skipped: bool) -> dict:
        """SDE time, gradient-noise scale, temperature and I's running mean (`llm_runs.diagnostics`); their
        running values live in the run's state, so a resume continues them."""
        sde = SDEState(**self.state.sde)
        c = self.config.rollout
        row = sde.update(lr=lr, rho=rho, applied=not skipped, information=information, first_sq=metrics.first_sq,
                         first_sequences=metrics.first_sequences, full_sq=grad_norm ** 2,
                         sequences=c.prompts_per_step * c.samples_per_prompt)
        self.state.sde = dataclasses.asdict(sde)
        return row

    def push_weights(self) -> None:
        """The trainer's weights into the rollout engine (a no-op for `hf`, which samples from them)."""
        self.engine.update_weights(self.model.named_parameters())

    def metrics_row(self, metrics: StepMetrics, epoch: int, lr: float, information: float, rho: float,
                    grad_norm: float, skipped: bool) -> dict:
        """The step's row for metrics.jsonl, over the global batch (every rank's part gathered), with an alarm
        when the sampler's log-probabilities drift from the trainer's."""
        c = self.config
        if self.world > 1:
            metrics.gather(parallel)
            self._log_rank(information, rho, grad_norm)
        alarm = metrics.logprob_gap() > c.rollout.logprob_gap_alarm
        if alarm and self.rank == 0:  # the engine sampled with weights the trainer does not have
            tqdm.write(f"step {self.state.step}: sampler-vs-trainer log-prob gap {metrics.logprob_gap():.3g} > "
                       f"{c.rollout.logprob_gap_alarm:g}: are the engine's weights stale?")
        return metrics.row(step=self.state.step, epoch=epoch, lr=lr, rho=rho, information=information,
                           grad_norm=grad_norm, skipped=skipped, skipped_total=self.state.skipped_total,
                           nonfinite_total=self.state.nonfinite_information_total,
                           samples_per_prompt=c.rollout.samples_per_prompt, alarm=alarm, device=self.device)

    def _log_rank(self, information: float, rho: float, grad_norm: float) -> None:
        """Each rank's own I, ρ and grad norm (they must agree: FSDP shards drift apart otherwise)."""
        path = self.run_dir / "ranks" / f"rank{self.rank}.jsonl"
        path.parent.mkdir(exist_ok=True)
        with path.open("a") as f:
            f.write(json.dumps({"step": self.state.step, "information": information, "rho": rho,
                                "grad_norm": grad_norm}) + "\n")

