"""Everything a run trains with, built from its config in one call: `build_parts(config, run_dir)` returns a
`RunParts` (device and process group, examples and their fingerprint, model and tokenizer, LoRA, teacher,
sharding, optimizer and schedule, the multiplier, the rollout engine, the prompt sampler), in the order each
needs the last, saying what it is doing while it loads. The trainer receives them; it never builds.

The pieces themselves live in `llm_runs.build`; this module only puts them together.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from llm_runs import parallel, watch
from llm_runs.build import (DTYPES, adamw, attach_lora, examples_sha256, load_examples, load_model, model_source,
                            parameter_count, resolve_device, rollout_engine, seed_everything)
from llm_runs.config import ConfigError, RunConfig
from llm_runs.data import Example, PromptSampler, render
from llm_runs.teacher import AdapterTeacher, TeacherWeights
from llm_runs.tokens import pad_id
from pgpo import Multiplier


@dataclass
class RunParts:
    """A run's parts, ready to train: the trainer's inputs."""

    device: torch.device
    rank: int
    world: int  # processes in the job
    train_examples: list[Example]  # (N,) within data.max_prompt_tokens
    test_examples: list[Example]  # (M,) within data.max_prompt_tokens
    prompt_ids: list[list[int]]  # (N, prompt length): the rendered training prompts' token ids
    fingerprint: dict  # {"data.train": sha256, "data.test": sha256}: the examples as loaded, before the cut
    source: str  # the model folder (or hub id) the run started from
    model: torch.nn.Module  # sharded (FSDP2) when world > 1, with LoRA adapters when model.lora_rank
    tokenizer: object
    pad: int  # the pad token's id
    teacher: AdapterTeacher | TeacherWeights
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    multiplier: Multiplier | None  # None: SDPO (pgpo.enabled: false)
    engine: object  # the rollout engine, asleep
    sampler: PromptSampler


def build_parts(config: RunConfig, run_dir: Path) -> RunParts:
    """The run's parts for `config`, with `run_dir` made (the tiny model is built inside it); every rank calls
    this. Refuses, before any loading, a tracker that is not installed and a batch the processes cannot share."""
    watch.trackers(config.train.report_to)
    run_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(config.train.device)
    rank, world = parallel.init(device)
    say = watch.Startup(run_dir.name, lead=rank == 0)
    say(f"starting on {device.type}, {world} process{'es' if world > 1 else ''}; loading the data")
    if config.rollout.prompts_per_step % world:
        raise ConfigError(f"rollout.prompts_per_step = {config.rollout.prompts_per_step} must be a multiple of "
                          f"the {world} processes (each takes an equal share of the global batch)")
    if config.model.lora_rank and world > 1:
        raise ConfigError("model.lora_rank: LoRA is the one-GPU option; with several processes use full "
                          "fine-tuning (FSDP2)")
    seed_everything(config.train.seed)
    train, test = load_examples(config, "train"), load_examples(config, "test")
    fingerprint = {"data.train": examples_sha256(train), "data.test": examples_sha256(test)}
    if fingerprint["data.train"] == fingerprint["data.test"]:
        say("warning: data.test holds the same examples as data.train: validation will measure recall, not "
            "generalisation")
    if device.type == "cpu" and not config.model.tiny:
        warn_of_cpu_cost(config, say)

    say("building the tiny model" if config.model.tiny else f"loading the model {config.model.path}")
    source = model_source(config, run_dir, [e.prompt for e in train + test])
    model, tokenizer = load_model(source, DTYPES[config.model.dtype], device, config.model.random_init)
    if config.model.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    model.train()
    train, prompt_ids = within_prompt_limit(config, tokenizer, train, "training")
    test, _ = within_prompt_limit(config, tokenizer, test, "test")

    model, teacher = with_teacher(config, model)
    if world > 1:
        say(f"sharding the model over {world} processes (FSDP2)")
    parallel.shard(model, device)
    if teacher.model is not None:
        parallel.shard(teacher.model, device)  # the EMA teacher sharded the same way
    optimizer, scheduler = adamw(model, config.optim)
    p = config.pgpo
    multiplier = Multiplier(p.alpha, p.rho_max, form=p.form) if p.enabled else None

    say(f"starting the rollout engine ({config.rollout.engine})")
    engine = rollout_engine(config, model, tokenizer, source, device, rank, world)
    say(f"ready: {len(train)} training and {len(test)} test prompts")
    return RunParts(device, rank, world, train, test, prompt_ids, fingerprint, source, model, tokenizer,
                    pad_id(tokenizer), teacher, optimizer, scheduler, multiplier, engine,
                    PromptSampler(len(train), config.train.seed))


def with_teacher(config: RunConfig, model) -> tuple[torch.nn.Module, AdapterTeacher | TeacherWeights]:
    """The model to train (LoRA adapters attached when `model.lora_rank`) and its teacher (`teacher.kind`): the
    adapters' EMA or frozen copy under LoRA, a copy of the unsharded weights otherwise."""
    t = config.teacher
    if config.model.lora_rank:
        model = attach_lora(model, config.model)
        return model, AdapterTeacher(model, t.kind, t.ema_tau)
    return model, TeacherWeights(model, t.kind, t.ema_tau)


def within_prompt_limit(config: RunConfig, tokenizer, examples: list[Example],
                        split: str) -> tuple[list[Example], list[list[int]]]:
    """The examples whose rendered prompt fits `data.max_prompt_tokens`, and their token ids; overlong ones are
    dropped, as verl does, and reported (a test prompt too long for the context would fail validation)."""
    limit, kept, ids = config.data.max_prompt_tokens, [], []
    for e in examples:
        row = tokenizer(render(tokenizer, e, config.data.template, enable_thinking=config.model.enable_thinking)).input_ids
        if len(row) <= limit:
            ids.append(row)
            kept.append(e)
    if not kept:
        raise ConfigError(f"data.max_prompt_tokens = {limit}: every {split} prompt is longer")
    if len(kept) < len(examples):
        tqdm.write(f"dropped {len(examples) - len(kept)} {split} prompts longer than {limit} tokens")
    return kept, ids


def warn_of_cpu_cost(config: RunConfig, say) -> None:
    """A model of billions of parameters on a CPU (a GPU config run where no GPU is seen): said before the minutes
    of loading, with the command that prices the run."""
    try:
        parameters = parameter_count(config)
    except (ConfigError, OSError, ValueError):
        return  # a shape it cannot read: the load says what is wrong
    if parameters >= 1e9:
        say(f"warning: {parameters / 1e9:.1f} B parameters on the CPU: loading takes minutes and each step far "
            f"longer; this config is for GPUs (`python -m llm_runs plan --config …` prices a run)")
