"""SDPO and PGPO training, one optimizer step at a time (`docs/method.md` §1, "One step"): `Trainer.step`
reads as the step does,

    draw prompts → generate → score → teacher contexts → forward/backward per micro-batch →
    information I → ρ → optimizer step (clipped; skipped if non-finite) → push weights → metrics row

and `Trainer.train` runs steps with validation and checkpoints between them. The run's parts are built in
`llm_runs.build`, micro-batches in `llm_runs.batch`, the metrics row in `llm_runs.metrics`; the progress
lines, TensorBoard and the other trackers in `llm_runs.watch`.

`pgpo.enabled: false` is SDPO: a plain `optimizer.step()`. With PGPO the step is
`pgpo.modulated_step(optimizer, ρ)`, ρ = min(1 + α·I, ρ_max) (or the smooth cap); α = 0 gives ρ = 1,
which is SDPO bit for bit.
"""

from __future__ import annotations

import errno
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml
from tqdm.auto import tqdm

from llm_runs import checkpoint, model_files, parallel, preemption, watch
from llm_runs.batch import Batch, make_batch, response_logits
from llm_runs.build import (DTYPES, adamw, attach_lora, examples_sha256, load_examples, load_model, model_source,
                            parameter_count, resolve_device, rollout_engine, seed_everything)
from llm_runs.chunked_loss import chunked_self_distillation_loss, response_hidden
from llm_runs.config import ConfigError, RunConfig, check_resume, load
from llm_runs.data import Example, PromptSampler, render
from llm_runs.evaluate import evaluate
from llm_runs.loss import SelfDistillationOutput, self_distillation_loss
from llm_runs.metrics import StepMetrics
from llm_runs.preemption import Preempted, StopWatch, job_end_time
from llm_runs.reward import score
from llm_runs.rollout import Rollout, Sampling, replay
from llm_runs.teacher import AdapterTeacher, TeacherWeights, demonstrations
from llm_runs.tokens import pad_id
from pgpo import Multiplier, global_information, modulated_step


@dataclass
class RunState:
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
    """A run in `run_dir`: `train()` from step 0 (or after `resume()`), one `step()` at a time."""

    def __init__(self, config: RunConfig, run_dir: Path, progress: bool = True):
        self.config, self.run_dir, self.progress = config, Path(run_dir), progress
        watch.trackers(config.train.report_to)  # a tracker named but not installed: refused before any loading
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.device = resolve_device(config.train.device)
        self.rank, self.world = parallel.init(self.device)
        say = watch.Startup(self.run_dir.name, lead=self.rank == 0)
        say(f"starting on {self.device.type}, {self.world} process{'es' if self.world > 1 else ''}; loading the data")
        if config.rollout.prompts_per_step % self.world:
            raise ConfigError(f"rollout.prompts_per_step = {config.rollout.prompts_per_step} must be a multiple of "
                              f"the {self.world} processes (each takes an equal share of the global batch)")
        seed_everything(config.train.seed)
        self.train_examples = load_examples(config, "train")
        self.test_examples = load_examples(config, "test")
        fingerprint = {"data.train": examples_sha256(self.train_examples), "data.test": examples_sha256(self.test_examples)}
        if fingerprint["data.train"] == fingerprint["data.test"]:
            say("warning: data.test holds the same examples as data.train: validation will measure recall, not "
                "generalisation")
        corpus = [e.prompt for e in self.train_examples + self.test_examples]
        if self.device.type == "cpu" and not config.model.tiny:
            self._warn_of_cpu_cost(say)
        say("building the tiny model" if config.model.tiny else f"loading the model {config.model.path}")
        self.source = model_source(config, self.run_dir, corpus)
        self.model, self.tokenizer = load_model(self.source, DTYPES[config.model.dtype], self.device,
                                                config.model.random_init)
        if config.model.gradient_checkpointing:
            self.model.gradient_checkpointing_enable()
        self.model.train()
        self.pad = pad_id(self.tokenizer)
        self.prompt_ids = self._tokenize_prompts()
        if config.model.lora_rank:
            if self.world > 1:
                raise ConfigError("model.lora_rank: LoRA is the one-GPU option; with several processes use full "
                                  "fine-tuning (FSDP2)")
            self.model = attach_lora(self.model, config.model)
            self.teacher = AdapterTeacher(self.model, config.teacher.kind, config.teacher.ema_tau)
        else:
            self.teacher = TeacherWeights(self.model, config.teacher.kind, config.teacher.ema_tau)  # copied unsharded
        if self.world > 1:
            say(f"sharding the model over {self.world} processes (FSDP2)")
        parallel.shard(self.model, self.device)
        if self.teacher.model is not None:
            parallel.shard(self.teacher.model, self.device)  # the EMA teacher sharded the same way
        self.optimizer, self.scheduler = adamw(self.model, config.optim)
        p = config.pgpo
        self.multiplier = Multiplier(p.alpha, p.rho_max, form=p.form) if p.enabled else None
        say(f"starting the rollout engine ({config.rollout.engine})")
        self.engine = rollout_engine(config, self.model, self.tokenizer, self.source, self.device, self.rank,
                                     self.world)
        say(f"ready: {len(self.train_examples)} training and {len(self.test_examples)} test prompts")
        self.sampler = PromptSampler(len(self.train_examples), config.train.seed)
        self.state = RunState(data_sha256=fingerprint)
        self.resumed = False  # set by resume(): the run folder's config.yaml is then never rewritten
        self.metrics_path = self.run_dir / "metrics.jsonl"

    def _warn_of_cpu_cost(self, say) -> None:
        """A model of billions of parameters on a CPU (a GPU config run where no GPU is seen): said before the
        minutes of loading, with the command that prices the run."""
        try:
            parameters = parameter_count(self.config)
        except (ConfigError, OSError, ValueError):
            return  # a shape it cannot read: the load below says what is wrong
        if parameters >= 1e9:
            say(f"warning: {parameters / 1e9:.1f} B parameters on the CPU: loading takes minutes and each step far "
                f"longer; this config is for GPUs (`python -m llm_runs plan --config …` prices a run)")

    def close(self) -> None:
        """Shut the rollout engine down (vLLM: before the process group goes; every rank calls this)."""
        self.engine.close()

    def _tokenize_prompts(self) -> list[list[int]]:
        """Token ids of the training prompts; overlong prompts are dropped from both splits, as verl does, and
        reported (a test prompt too long for the context would fail validation, or exhaust its memory)."""
        self.train_examples, ids = self._within_limit(self.train_examples, "training")
        self.test_examples, _ = self._within_limit(self.test_examples, "test")
        return ids

    def _within_limit(self, examples: list, split: str) -> tuple[list, list[list[int]]]:
        limit = self.config.data.max_prompt_tokens
        kept, ids = [], []
        for e in examples:
            row = self.tokenizer(render(self.tokenizer, e, self.config.data.template,
                                        enable_thinking=self.config.model.enable_thinking)).input_ids
            if len(row) <= limit:
                ids.append(row)
                kept.append(e)
        if not kept:
            raise ConfigError(f"data.max_prompt_tokens = {limit}: every {split} prompt is longer")
        if len(kept) < len(examples):
            tqdm.write(f"dropped {len(examples) - len(kept)} {split} prompts longer than {limit} tokens")
        return kept, ids

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
            metrics.add(out, batch, reduce=c.pgpo.reduce, weight=b / total)

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
            if not chunked:
                return self_distillation_loss(student, teacher, batch.response_mask, batch.sample_mask, **options)
            out = chunked_self_distillation_loss(*student, *teacher, batch.response_mask, batch.sample_mask,
                                                 chunk_size=c.loss.chunk_size, **options)
            if network is not self.model:  # a separate teacher under FSDP2: free the head it gathered
                parallel.reshard(network)
            return out

    def information(self, metrics: StepMetrics) -> torch.Tensor:
        """I over the global batch: the micro-batches' numerator and denominator summed over ranks, so every
        rank gets the same I, hence the same ρ (a 0-d tensor, still on the device)."""
        return global_information(*metrics.information_pair())

    def clip_gradients(self) -> torch.Tensor:
        """The gradient's norm before clipping to `optim.clip_norm` (non-finite when a gradient is)."""
        return torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.optim.clip_norm)

    def rho(self, information: float) -> float:
        """ρ = g(I) for PGPO (1 for a non-finite I, counted), 1 for SDPO."""
        self.state.nonfinite_information_total += int(not math.isfinite(information))
        return float(self.multiplier(information)) if self.multiplier is not None else 1.0

    def optimizer_step(self, rho: float, grad_norm: float) -> bool:
        """The update (ρ-modulated for PGPO), the scheduler's tick and the EMA teacher's move; all three dropped
        when the gradient is not finite. Returns whether the step was applied."""
        if not math.isfinite(grad_norm):
            self.optimizer.zero_grad(set_to_none=True)
            self.state.skipped_total += 1
            return False
        if self.multiplier is None:
            self.optimizer.step()
        else:
            modulated_step(self.optimizer, rho)
        self.scheduler.step()
        self.teacher.update()
        return True

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

    def export(self, name: str = "final") -> Path | None:
        """Consolidated weights in the transformers format (rank 0 writes; every rank must call)."""
        path, full = self.run_dir / name, None
        if self.world > 1:  # a collective: every rank gathers, rank 0 writes
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

            full = get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if self.rank == 0:
            with checkpoint.atomic_folder(path) as tmp:  # a full disk leaves no half-written export behind
                self.model.save_pretrained(tmp, state_dict=full)
                self.tokenizer.save_pretrained(tmp)
        return path

    # -- validation ---------------------------------------------------------------------------

    def validate(self) -> dict:
        c = self.config
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(c.train.seed + 1_000_003 * self.state.step)  # eval never shifts training's randomness
            result = evaluate(self.model, self.tokenizer, self.test_examples, c.data.template, c.eval,
                              c.model.enable_thinking, engine=self.engine if c.rollout.engine == "vllm" else None)
        self.engine.sleep()
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
        self.close()  # after the last collective: vLLM's shutdown may take the process group with it
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
        clock = StopWatch(c.train.checkpoint_minutes, job_end_time(c.train.end_time), c.train.end_margin_s, self.device)
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
        row = self.step()
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
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "teacher": self.teacher.state_dict(), "sampler": self.sampler.state_dict(),
                "rng": checkpoint.rng_state(), "run": self.state.__dict__.copy()}

    def save(self, name: str | None = None, mark_latest: bool = True) -> Path:
        """A resumable step checkpoint; `mark_latest=False` ("best") keeps the weights and the run record only
        (the optimizer state of an 8B model is ~65 GiB, and "best" is for evaluation, not for resuming)."""
        self.state.metrics_offset = self.metrics_path.stat().st_size if self.metrics_path.exists() else 0
        if self.world > 1:  # sharded (torch.distributed.checkpoint); "best" is a consolidated export instead
            small = {"scheduler": self.scheduler.state_dict(), "sampler": self.sampler.state_dict(),
                     "run": self.state.__dict__.copy()}
            return checkpoint.save_sharded(self.run_dir, name or f"step-{self.state.step:06d}", self.model,
                                           self.optimizer, self.teacher.model, small, self.rank,
                                           keep=self.config.train.keep_checkpoints)
        state = self.trainer_state() if mark_latest else {"run": self.state.__dict__.copy()}
        return checkpoint.save(self.run_dir, name or f"step-{self.state.step:06d}", self.model, self.tokenizer,
                               state, keep=self.config.train.keep_checkpoints, mark_latest=mark_latest)

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
        self._load(path)
        self._forget_rows_after(self.state.step)
        self.push_weights()
        return True

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
        if checkpoint.is_sharded(path) or self.world > 1:
            state = checkpoint.load_sharded(path, self.model, self.optimizer, self.teacher.model, self.rank)
            self._check_same_data(state["run"].get("data_sha256"))
            self.scheduler.load_state_dict(state["scheduler"])
            self.sampler.load_state_dict(state["sampler"])
            self._restore_run(state["run"])
            return
        from safetensors.torch import load_file

        for file in sorted(path.glob("*.safetensors")):  # damaged weights: the file named, not a header error
            model_files.open_safetensors(file)
        if self.config.model.lora_rank:
            from peft import set_peft_model_state_dict

            set_peft_model_state_dict(self.model, load_file(path / "adapter_model.safetensors", device=str(self.device)))
            self._load_rest(path)
            return
        weights = {}
        for shard in sorted(path.glob("*.safetensors")):
            weights.update(load_file(shard, device=str(self.device)))
        missing, unexpected = self.model.load_state_dict(weights, strict=False)
        if unexpected or [m for m in missing if not m.endswith("lm_head.weight")]:
            raise RuntimeError(f"checkpoint {path}: missing {missing}, unexpected {unexpected}")
        self._load_rest(path)

    def _load_rest(self, path: Path) -> None:
        state = checkpoint.read_state(path / checkpoint.STATE)
        self._check_same_data(state["run"].get("data_sha256"))
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.teacher.load_state_dict(state["teacher"])
        self.sampler.load_state_dict(state["sampler"])
        checkpoint.set_rng_state(state["rng"])
        self._restore_run(state["run"])

    def _restore_run(self, run: dict) -> None:
        """The checkpoint's run record (this run's data fingerprint kept: checked equal, or absent in an older
        checkpoint), and metrics.jsonl cut back to it: rows written after the checkpoint are redone."""
        self.state = RunState(**{**run, "data_sha256": self.state.data_sha256})
        if self.rank == 0:
            with self.metrics_path.open("r+b") as f:
                f.truncate(self.state.metrics_offset)
