"""SDPO and PGPO training, one optimizer step at a time (`docs/method.md` §1, "One step").

    rollout → reward → teacher contexts → micro-batches (student with grad, teacher without) →
    I over micro-batches (and ranks) → ρ → clip (skip if non-finite) → modulated AdamW step →
    scheduler → EMA teacher → push weights → metrics row → validation / checkpoint

`pgpo.enabled: false` is SDPO: a plain `optimizer.step()`. With PGPO the step is
`pgpo.modulated_step(optimizer, ρ)`, ρ = min(1 + α·I, ρ_max) (or the smooth cap); α = 0 gives ρ = 1,
which is SDPO bit for bit.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import random
import resource
import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml
from tqdm.auto import tqdm

from llm_runs import checkpoint, model_files, parallel
from llm_runs.config import ConfigError, RunConfig, check_resume, load
from llm_runs.data import PromptSampler, load_hub, load_split, render
from llm_runs.evaluate import evaluate
from llm_runs.chunked_loss import chunked_self_distillation_loss, response_hidden
from llm_runs.loss import SelfDistillationOutput, self_distillation_loss
from llm_runs.reward import score
from llm_runs.rollout import HFEngine, Sampling
from llm_runs.teacher import AdapterTeacher, TeacherWeights, demonstrations
from llm_runs.tokens import left_pad, pad_id
from pgpo import Multiplier, global_information, modulated_step

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# ---------------------------------------------------------------------------------------------
# setup


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device: cuda requested but no GPU is visible")
    return torch.device(name)


def model_source(config: RunConfig, run_dir: Path, corpus: list[str]) -> str:
    """A directory (or hub id) holding config, weights and tokenizer; the tiny model is built here."""
    if config.model.tiny:
        from llm_runs import tiny

        path = run_dir / "base_model"
        if not (path / "config.json").exists():
            tiny.build(path, corpus, config.model.tiny_shape, seed=config.train.seed)
        return str(path)
    path = Path(config.model.path).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise ConfigError(f"model.path {path}: no config.json there (not a transformers model directory)")
        return str(path)
    if config.model.path.startswith((".", "/", "~")) or config.model.path.count("/") != 1:
        raise ConfigError(f"model.path {config.model.path!r} does not exist (and is not a hub id like Qwen/Qwen3-8B)")
    return config.model.path  # a hub id: from_pretrained downloads it (users with internet)


def load_model(source: str, dtype: torch.dtype, device: torch.device, random_init: bool = False,
               what: str = "model.path"):
    """The model and tokenizer of `source` (a model folder or a hub id), checked first (`llm_runs.model_files`):
    a clear error names the file for a folder that is not a model, unreadable or non-finite weights, a missing
    or foreign tokenizer. `what` names the setting `source` came from, for those messages."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    local = Path(source).is_dir()
    if local:
        spec = model_files.check_folder(Path(source), what, weights=not random_init)
        model_files.check_tokenizer(Path(source), what)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        if not local:
            spec = AutoConfig.from_pretrained(source).to_dict()
        model_files.check_tokenizer_fits(tokenizer, spec, f"{what} {source}")
        if random_init:  # the shape without the weights, initialised where it will run
            with torch.device(device):
                return AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(source), dtype=dtype), tokenizer
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype)
    except OSError as err:
        raise ConfigError(f"{what} {source!r}: could not load a model and tokenizer ({err})") from None
    model_files.check_finite_parameters(model, f"{what} {source}")
    return model.to(device), tokenizer


def attach_lora(model, m):
    """Wrap `model` with LoRA adapters (peft); only the adapters train."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as err:
        raise ConfigError("model.lora_rank needs peft: pip install -e '.[lora]'") from err
    targets = m.lora_targets if m.lora_targets == "all-linear" else [t.strip() for t in m.lora_targets.split(",")]
    config = LoraConfig(r=m.lora_rank, lora_alpha=m.lora_alpha, lora_dropout=m.lora_dropout, target_modules=targets,
                        task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def examples_sha256(examples) -> str:
    """A fingerprint of a split's examples (ids, prompts, answers, system prompts), wherever they came from."""
    digest = hashlib.sha256()
    for e in examples:
        digest.update(json.dumps([e.idx, e.prompt, e.answer, e.system]).encode())
    return digest.hexdigest()


def load_examples(config: RunConfig, split: str):
    if config.data.hub:
        return load_hub(config.data.hub, config.data.hub_domain, split)
    return load_split(config.data.train if split == "train" else config.data.test)


# ---------------------------------------------------------------------------------------------
# batching: left-padded sequences whose responses end at the right edge


@dataclass
class Batch:
    """One micro-batch; every response is right-aligned in the last R positions."""

    student_ids: torch.Tensor  # (b, Ls)
    student_attention: torch.Tensor  # (b, Ls)
    teacher_ids: torch.Tensor  # (b, Lt)
    teacher_attention: torch.Tensor  # (b, Lt)
    response_ids: torch.Tensor  # (b, R)
    response_mask: torch.Tensor  # (b, R)
    sampler_logprobs: torch.Tensor  # (b, R)
    sample_mask: torch.Tensor  # (b,)


def make_batch(prompts: list[list[int]], teacher_prompts: list[list[int]], responses: list[list[int]],
               logprobs: list[list[float]], mask: list[float], pad: int) -> Batch:
    width = max(len(r) for r in responses)
    response_ids = torch.full((len(responses), width), pad, dtype=torch.long)
    response_mask = torch.zeros((len(responses), width))
    sampler = torch.zeros((len(responses), width))
    for i, (r, lp) in enumerate(zip(responses, logprobs)):
        response_ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
        response_mask[i, width - len(r):] = 1.0
        sampler[i, width - len(r):] = torch.tensor(lp)
    s_ids, s_att = left_pad([p + r for p, r in zip(prompts, responses)], pad)
    t_ids, t_att = left_pad([p + r for p, r in zip(teacher_prompts, responses)], pad)
    return Batch(s_ids, s_att, t_ids, t_att, response_ids, response_mask, sampler, torch.tensor(mask))


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on `device`; to a GPU from pinned memory, asynchronously (a copy from pageable memory
    would wait for the GPU to finish its queue first)."""
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


def response_logits(model, ids: torch.Tensor, attention: torch.Tensor, length: int) -> torch.Tensor:
    """Logits predicting the last `length` tokens: (b, L) → (b, length, V), via logits_to_keep."""
    positions = (attention.cumsum(-1) - 1).clamp(min=0)  # left padding: positions count real tokens only
    out = model(input_ids=ids, attention_mask=attention, position_ids=positions, logits_to_keep=length + 1,
                use_cache=False)  # a single pass: a KV cache would only cost memory
    return out.logits[:, :-1]


# ---------------------------------------------------------------------------------------------
# the run


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


class Timer:
    def __init__(self):
        self.seconds = defaultdict(float)

    @contextmanager
    def __call__(self, stage: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] += time.perf_counter() - start


class MetricSums:
    """The step's running sums for its metrics row, kept on the device (no host sync per micro-batch)."""

    KEYS = ("info_num", "info_den", "loss", "kl_num", "kl_den", "jsd_num", "jsd_den", "entropy_num", "entropy_den",
            "lp_gap_sum", "tokens")

    def __init__(self, device: torch.device):
        self.values = torch.zeros(len(self.KEYS), dtype=torch.float64, device=device)
        self.gap_max = torch.zeros((), dtype=torch.float64, device=device)

    def add(self, out: SelfDistillationOutput, batch: Batch, reduce: str, weight: float) -> None:
        pair = out.information if reduce == "token" else out.information_sequence
        gap = (out.token_logprobs.double() - batch.sampler_logprobs.double()).abs() * batch.response_mask
        parts = [*pair, out.loss.detach() * weight, *out.information, *out.jsd, *out.entropy, gap.sum(),
                 batch.response_mask.sum()]
        self.values += torch.stack([x.double().reshape(()) for x in parts])
        self.gap_max = torch.maximum(self.gap_max, gap.max().double())

    def information_pair(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.values[0], self.values[1]

    def read(self, information: torch.Tensor, grad_norm) -> tuple[float, float, dict]:
        """(I, grad norm, the sums by name) in one device-to-host copy."""
        if hasattr(grad_norm, "full_tensor"):  # FSDP2: a replicated DTensor
            grad_norm = grad_norm.full_tensor()
        head = torch.stack([information.double().reshape(()), grad_norm.double().reshape(()), self.gap_max])
        values = torch.cat([head, self.values]).tolist()
        return values[0], values[1], {"lp_gap_max": values[2], **dict(zip(self.KEYS, values[3:]))}


def peak_memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB


class Trainer:
    def __init__(self, config: RunConfig, run_dir: Path, progress: bool = True):
        self.config, self.run_dir, self.progress = config, Path(run_dir), progress
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.device = resolve_device(config.train.device)
        self.rank, self.world = parallel.init(self.device)
        if config.rollout.prompts_per_step % self.world:
            raise ConfigError(f"rollout.prompts_per_step = {config.rollout.prompts_per_step} must be a multiple of "
                              f"the {self.world} processes (each takes an equal share of the global batch)")
        seed_everything(config.train.seed)
        self.train_examples = load_examples(config, "train")
        self.test_examples = load_examples(config, "test")
        fingerprint = {"data.train": examples_sha256(self.train_examples), "data.test": examples_sha256(self.test_examples)}
        corpus = [e.prompt for e in self.train_examples + self.test_examples]
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
        parallel.shard(self.model, self.device)
        if self.teacher.model is not None:
            parallel.shard(self.teacher.model, self.device)  # the EMA teacher sharded the same way
        o = config.optim
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(trainable, lr=o.lr, betas=tuple(o.betas), eps=o.eps,
                                           weight_decay=o.weight_decay)
        warmup = max(1, o.warmup_steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda k: min(1.0, (k + 1) / warmup))
        p = config.pgpo
        self.multiplier = Multiplier(p.alpha, p.rho_max, form=p.form) if p.enabled else None
        self.engine = self._engine()
        self.sampler = PromptSampler(len(self.train_examples), config.train.seed)
        self.state = RunState(data_sha256=fingerprint)
        self.resumed = False  # set by resume(): the run folder's config.yaml is then never rewritten
        self.metrics_path = self.run_dir / "metrics.jsonl"

    def _engine(self):
        c = self.config
        if c.rollout.engine == "hf":
            return HFEngine(self.model, self.tokenizer, batch_size=c.rollout.prompts_per_step * c.rollout.samples_per_prompt)
        if c.model.lora_rank:
            raise ConfigError("rollout.engine=vllm with model.lora_rank: pushing adapters to vLLM is not supported; "
                              "use rollout.engine=hf")
        engine = build_vllm_engine(c, self.source, self.device, seed=c.train.seed + self.rank,
                                   distributed=self.world > 1, random_weights=c.model.random_init)
        if c.model.random_init:  # vLLM started from dummy weights: give it the trainer's
            engine.update_weights(self.model.named_parameters())
        engine.sleep()  # the trainer's turn first
        return engine

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
        self.engine.update_weights(self.model.named_parameters())
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
        state = checkpoint.read_state(path / "trainer_state.pt")
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

    # -- one step -----------------------------------------------------------------------------

    def _micro_batch_loss(self, batch: Batch, timer: Timer) -> SelfDistillationOutput:
        """Teacher forward (no gradient), student forward, the loss and its metrics (`loss.implementation`)."""
        c, length = self.config, batch.response_ids.shape[1]
        chunked = c.loss.implementation == "chunked"
        forward = response_hidden if chunked else response_logits
        with timer("teacher"), torch.no_grad(), self.teacher.forward() as network:
            teacher = forward(network, batch.teacher_ids, batch.teacher_attention, length)
        with timer("train"):
            student = forward(self.model, batch.student_ids, batch.student_attention, length)
            options = dict(beta=c.loss.beta, topk=c.loss.topk, add_tail=c.loss.add_tail, signal=c.pgpo.signal,
                           response_ids=batch.response_ids, sampler_logprobs=batch.sampler_logprobs,
                           is_cap=c.loss.is_cap)
            if not chunked:
                return self_distillation_loss(student, teacher, batch.response_mask, batch.sample_mask, **options)
            out = chunked_self_distillation_loss(*student, *teacher, batch.response_mask, batch.sample_mask,
                                                 chunk_size=c.loss.chunk_size, **options)
            if network is not self.model:  # a separate teacher under FSDP2: free the head it gathered
                parallel.reshard(network)
            return out

    def step(self) -> dict:
        c, timer = self.config, Timer()
        P, n = c.rollout.prompts_per_step, c.rollout.samples_per_prompt
        epoch = self.sampler.epoch
        chosen = self.sampler.draw(P)  # the same global batch on every rank; each takes its share
        share = P // self.world
        mine = range(self.rank * share, (self.rank + 1) * share)
        examples = [self.train_examples[chosen[i]] for i in mine]
        prompts = [self.prompt_ids[chosen[i]] for i in mine]
        # one seed per (run, step, position in the global batch): rollouts independent of the split
        seeds = [int(np.random.SeedSequence([c.train.seed, self.state.step, i]).generate_state(1)[0]) for i in mine]

        with timer("rollout"):
            self.engine.wake()
            rollouts = self.engine.generate(prompts, n, Sampling(c.rollout.temperature, c.rollout.top_p,
                                                                 c.rollout.max_new_tokens), seeds=seeds)
            self.engine.sleep()  # give the memory back to training (vLLM's sleep mode; a no-op for hf)
        with timer("reward"):
            texts = self.tokenizer.batch_decode([r.token_ids for r in rollouts], skip_special_tokens=True)
            rewards = [score(t, examples[r.prompt_index].answer, c.data.template) for t, r in zip(texts, rollouts)]
        with timer("teacher"):
            demos = []
            for g, example in enumerate(examples):
                group = slice(g * n, (g + 1) * n)
                demos += demonstrations(texts[group], rewards[group], example, c.data.template,
                                        c.teacher.demonstration, c.teacher.strip_think)
            teacher_prompts = [
                prompts[r.prompt_index] if d is None else  # no teacher: any context, the sample is masked out
                self.tokenizer(render(self.tokenizer, examples[r.prompt_index], c.data.template, d,
                                      c.model.enable_thinking)).input_ids
                for r, d in zip(rollouts, demos)]
        mask = [0.0 if d is None else 1.0 for d in demos]

        total = P * n  # the global batch
        sums = MetricSums(self.device)  # on the device: read back once, after the loop
        self.optimizer.zero_grad(set_to_none=True)
        for start in range(0, len(rollouts), c.loss.micro_batch_size):  # this rank's share
            part = slice(start, start + c.loss.micro_batch_size)
            batch = make_batch([prompts[r.prompt_index] for r in rollouts[part]], teacher_prompts[part],
                               [r.token_ids for r in rollouts[part]], [r.logprobs for r in rollouts[part]],
                               mask[part], self.pad)
            batch = Batch(*(to_device(t, self.device) for t in batch.__dict__.values()))
            out = self._micro_batch_loss(batch, timer)
            with timer("train"):
                b = batch.sample_mask.shape[0]
                # Σ over micro-batches and ranks = the mean over all P·n sequences (FSDP averages over ranks)
                (out.loss * (b * self.world / total)).backward()
            sums.add(out, batch, reduce=c.pgpo.reduce, weight=b / total)

        with timer("train"):
            information = global_information(*sums.information_pair())  # summed over ranks: one ρ on every rank
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), c.optim.clip_norm)
            information, grad_norm, totals = sums.read(information, grad_norm)  # the step's one host sync
            nonfinite = not math.isfinite(information)
            self.state.nonfinite_information_total += int(nonfinite)
            rho = float(self.multiplier(information)) if self.multiplier is not None else 1.0
            skipped = not math.isfinite(grad_norm)
            lr = self.optimizer.param_groups[0]["lr"]
            if skipped:  # the step is dropped: no update, no scheduler tick, no EMA move
                self.optimizer.zero_grad(set_to_none=True)
                self.state.skipped_total += 1
            else:
                if self.multiplier is None:
                    self.optimizer.step()
                else:
                    modulated_step(self.optimizer, rho)
                self.scheduler.step()
                self.teacher.update()
        with timer("weight_sync"):
            self.engine.update_weights(self.model.named_parameters())

        self.state.step += 1
        if self.world > 1:  # what the metrics need from every rank
            parts = parallel.gather([totals])
            totals = {k: (max if k == "lp_gap_max" else sum)(p[k] for p in parts) for k in parts[0]}
            rewards, mask = parallel.gather(rewards), parallel.gather(mask)
            finished = parallel.gather([r.finish_reason for r in rollouts])
            lengths = parallel.gather([len(r.token_ids) for r in rollouts])
            self._log_rank(information, rho, grad_norm)
        else:
            finished = [r.finish_reason for r in rollouts]
            lengths = [len(r.token_ids) for r in rollouts]
        groups = [rewards[g * n:(g + 1) * n] for g in range(P)]
        ratio = lambda key: totals[key + "_num"] / totals[key + "_den"] if totals[key + "_den"] else 0.0  # noqa: E731
        gap = totals["lp_gap_sum"] / max(totals["tokens"], 1.0)
        alarm = gap > c.rollout.logprob_gap_alarm  # the engine sampled with weights the trainer does not have
        if alarm and self.rank == 0:
            tqdm.write(f"step {self.state.step}: sampler-vs-trainer log-prob gap {gap:.3g} > "
                       f"{c.rollout.logprob_gap_alarm:g}: are the engine's weights stale?")
        seconds = dict(timer.seconds)
        return {
            "step": self.state.step, "epoch": epoch, "lr": lr, "effective_lr": lr * rho, "information": information,
            "rho": rho, "information_nonfinite_total": self.state.nonfinite_information_total, "loss": totals["loss"],
            "grad_norm": grad_norm, "skipped": int(skipped), "skipped_total": self.state.skipped_total,
            "reward_mean": float(np.mean(rewards)), "reward_std": float(np.std(rewards)),
            "groups_with_success": float(np.mean([max(g) == 1.0 for g in groups])),
            "teacher_fraction": float(np.mean(mask)), "response_length_mean": float(np.mean(lengths)),
            "response_length_max": int(max(lengths)),
            "truncated_fraction": float(np.mean([f == "length" for f in finished])),
            "kl_teacher_student": ratio("kl"), "jsd_teacher_student": ratio("jsd"), "entropy": ratio("entropy"),
            "logprob_gap_mean": gap, "logprob_gap_max": totals["lp_gap_max"], "logprob_gap_alarm": int(alarm),
            "tokens_per_s_generated": sum(lengths) / max(seconds.get("rollout", 0.0), 1e-9),
            "tokens_per_s_trained": totals["tokens"] / max(seconds.get("train", 0.0), 1e-9),
            **{f"seconds_{k}": v for k, v in seconds.items()}, "peak_memory_gb": peak_memory_gb(self.device),
        }

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
                              c.model.enable_thinking, engine=None if c.rollout.engine == "hf" else self.engine)
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
        bar = tqdm(total=c.train.steps, initial=self.state.step, desc=self.run_dir.name,
                   disable=not (self.progress and lead))
        if self.state.pending_row is not None:  # resumed from a checkpoint written before its validation
            row, self.state.pending_row = self.state.pending_row, None
            self._validate_and_log(row)
        while self.state.step < c.train.steps:
            row = self.step()
            last = self.state.step == c.train.steps
            evaluate = bool(c.train.eval_every) and (self.state.step % c.train.eval_every == 0 or last)
            keep = bool(c.train.checkpoint_every) and (self.state.step % c.train.checkpoint_every == 0 or last)
            if keep and evaluate:
                # the step's checkpoint first, holding the row still to be logged: a validation that fails
                # (out of memory, killed) costs only itself, and a resume redoes it before step k + 1
                self.state.pending_row = row
                self.save()
                self.state.pending_row = None
                self._validate_and_log(row)
            else:
                if evaluate:
                    self._validate_and_log(row)
                else:
                    self._log(row)
                if keep:
                    self.save()
            bar.update(1)
            bar.set_postfix(reward=f"{row['reward_mean']:.2f}", I=f"{row['information']:.3f}",
                            rho=f"{row['rho']:.2f}", loss=f"{row['loss']:.4f}")
        bar.close()
        self.export("final")  # consolidated weights, loadable by from_pretrained (and vLLM)
        self.close()  # after the last collective: vLLM's shutdown may take the process group with it
        if not lead:
            return self.run_dir
        summary = {"steps": self.state.step, "skipped": self.state.skipped_total,
                   "nonfinite_information": self.state.nonfinite_information_total,
                   "best_val_mean_at_k": self.state.best_val, "best_step": self.state.best_step,
                   "final_val_mean_at_k": self.state.final_val}
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
        return self.run_dir


def build_vllm_engine(config: RunConfig, source: str, device: torch.device, seed: int, distributed: bool = False,
                      random_weights: bool = False):
    """A `VLLMEngine` for `source` that samples in the dtype the trainer computes in, long enough for the
    longest prompt plus the longer of the rollout's and the evaluation's responses (at most the model's
    context, `max_position_embeddings`)."""
    from transformers import AutoConfig

    from llm_runs.vllm_engine import VLLMEngine

    c = config
    longest = c.data.max_prompt_tokens + max(c.rollout.max_new_tokens, c.eval.max_new_tokens)
    context = getattr(AutoConfig.from_pretrained(source), "max_position_embeddings", None) or longest
    return VLLMEngine(source, seed=seed, dtype=parallel.compute_dtype(DTYPES[c.model.dtype], device),
                      gpu_memory_utilization=c.rollout.gpu_memory_utilization, max_model_len=min(longest, context),
                      distributed=distributed, enforce_eager=c.rollout.enforce_eager,
                      kv_cache_gib=c.rollout.cpu_kv_cache_gib, load_format="dummy" if random_weights else "auto")


def run_name(config: RunConfig, config_path: str | None) -> str:
    if config.train.run_name:
        return config.train.run_name
    stem = Path(config_path).stem if config_path else "run"
    return f"{stem}-seed{config.train.seed}"
