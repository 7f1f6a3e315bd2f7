"""The run's parts, built from its config: device, seeds, examples, model and tokenizer (checked first), LoRA,
the rollout engine, the run folder's name. The trainer calls these; so do `eval` and the experiment."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import numpy as np
import torch

from llm_runs import model_files, parallel
from llm_runs.config import ConfigError, RunConfig
from llm_runs.data import load_split
from llm_runs.sciknoweval import load_hub
from llm_runs.rollout import HFEngine
from llm_runs.rollout.replay import ReplayEngine

# Qwen/Qwen3-8B's config.json: 8,190,735,360 parameters (counted in the tests); transformers' defaults differ
QWEN3_8B = dict(vocab_size=151936, hidden_size=4096, intermediate_size=12288, num_hidden_layers=36,
                num_attention_heads=32, num_key_value_heads=8, head_dim=128, max_position_embeddings=40960,
                rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=False)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


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
        from llm_runs.checkpoint import atomic_folder

        path = run_dir / "base_model"
        if parallel.rank() == 0 and not (path / "config.json").exists():
            with atomic_folder(path) as tmp:  # complete or absent: never half-written for a later reader
                tiny.build(tmp, corpus, config.model.tiny_shape, seed=config.train.seed)
        parallel.barrier()  # the other ranks read what rank 0 wrote
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


def adamw(model, o) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW on the trainable parameters (`optim.*`) and its linear warm-up to `optim.lr` over `optim.warmup_steps`."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay)
    warmup = max(1, o.warmup_steps)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda k: min(1.0, (k + 1) / warmup))


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


def rollout_engine(config: RunConfig, model, tokenizer, source: str, device: torch.device, rank: int, world: int):
    """The engine `rollout.engine` names, asleep (the trainer's turn first): `hf` on the trainer's own model,
    `vllm` on `source`, given the trainer's weights when it started from dummy ones (`model.random_init`), or
    `replay`, another run's recorded rollouts."""
    c = config
    if (c.rollout.engine == "replay") != (c.rollout.replay is not None):
        raise ConfigError("rollout.engine=replay and rollout.replay=RUN_DIR go together: the engine serves that "
                          "run's recorded rollouts (rollout.record=true there)")
    if c.rollout.engine == "replay":
        return ReplayEngine(c.rollout.replay)
    if c.rollout.engine == "hf":
        return HFEngine(model, tokenizer, batch_size=c.rollout.prompts_per_step * c.rollout.samples_per_prompt)
    if c.model.lora_rank:
        raise ConfigError("rollout.engine=vllm with model.lora_rank: pushing adapters to vLLM is not supported; "
                          "use rollout.engine=hf")
    engine = build_vllm_engine(c, source, device, seed=c.train.seed + rank, distributed=world > 1,
                               random_weights=c.model.random_init)
    if c.model.random_init:  # vLLM started from dummy weights: give it the trainer's
        engine.update_weights(model.named_parameters())
    engine.sleep()
    return engine


def build_vllm_engine(config: RunConfig, source: str, device: torch.device, seed: int, distributed: bool = False,
                      random_weights: bool = False):
    """A `VLLMEngine` for `source` that samples in the dtype the trainer computes in, long enough for the
    longest prompt plus the longer of the rollout's and the evaluation's responses (at most the model's
    context, `max_position_embeddings`)."""
    from transformers import AutoConfig

    from llm_runs.rollout.vllm import VLLMEngine

    c = config
    longest = c.data.max_prompt_tokens + max(c.rollout.max_new_tokens, c.eval.max_new_tokens)
    context = getattr(AutoConfig.from_pretrained(source), "max_position_embeddings", None) or longest
    return VLLMEngine(source, seed=seed, dtype=parallel.compute_dtype(DTYPES[c.model.dtype], device),
                      gpu_memory_utilization=c.rollout.gpu_memory_utilization, max_model_len=min(longest, context),
                      distributed=distributed, enforce_eager=c.rollout.enforce_eager,
                      kv_cache_gib=c.rollout.cpu_kv_cache_gib, load_format="dummy" if random_weights else "auto")


def parameter_count(config: RunConfig) -> int:
    """The model's parameters from its shape alone (meta tensors): a local folder's config.json, the tiny shape,
    or Qwen3-8B's published shape for its hub id."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, Qwen3Config

    from llm_runs import tiny

    m = config.model
    if m.tiny:
        shape = Qwen3Config(vocab_size=tiny.VOCAB_SIZE, **m.tiny_shape, tie_word_embeddings=False)
    elif (Path(m.path).expanduser() / "config.json").exists():
        shape = AutoConfig.from_pretrained(Path(m.path).expanduser())
    elif m.path == "Qwen/Qwen3-8B":
        shape = Qwen3Config(**QWEN3_8B)
    else:
        raise ConfigError(f"model.path {m.path!r}: its shape is unknown here (not a local folder with config.json, "
                          f"not Qwen/Qwen3-8B): point model.path at a folder holding its config.json")
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(shape)
    return sum(p.numel() for p in model.parameters())


def run_name(config: RunConfig, config_path: str | None) -> str:
    """The run folder's name inside train.output_dir: train.run_name, else <config name>-seed<seed> (the config's
    file name less .yaml, so `..._pgpo_a0.5` keeps its `.5`). One path component, never a way out of output_dir."""
    if config.train.run_name is not None:
        name = config.train.run_name
        if not name or name in (".", "..") or "/" in name or "\\" in name:
            raise ConfigError(f"train.run_name {name!r}: must be one folder name inside train.output_dir "
                              f"(no '/', '..' or empty name)")
        return name
    name = Path(config_path).name if config_path else "run"
    stem = name[:-len(Path(name).suffix)] if Path(name).suffix in (".yaml", ".yml") else name
    return f"{stem}-seed{config.train.seed}"
