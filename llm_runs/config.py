"""Run configuration: dataclasses whose defaults are the paper's settings (`docs/method.md` §1), read from YAML
and overridden on the command line with `section.key=value`.

Unknown sections or keys, and values of the wrong type, are errors that name the key (and the file).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml


class ConfigError(ValueError):
    """A bad configuration: the message names the key and, when there is one, the file."""


@dataclass
class ModelConfig:
    path: str = "Qwen/Qwen3-8B"  # a local directory (config + weights + tokenizer) or a hub id
    dtype: str = "bfloat16"  # the trained weights' dtype: float32 | bfloat16 | float16
    tiny: bool = False  # build a tiny random Qwen3 and train a byte-level tokenizer locally (nothing downloaded)
    random_init: bool = False  # build the architecture of `path`'s config.json with random weights (no weights read)
    tiny_shape: dict = field(default_factory=lambda: {"hidden_size": 64, "num_hidden_layers": 2,
                                                      "num_attention_heads": 4, "num_key_value_heads": 2,
                                                      "head_dim": 32, "intermediate_size": 128})
    gradient_checkpointing: bool = False
    lora_rank: int | None = None  # None: full fine-tuning; r: LoRA adapters (the one-GPU option, `lora` extra)
    lora_alpha: float = 32.0
    lora_dropout: float = 0.0
    lora_targets: str = "all-linear"  # peft target_modules: "all-linear" or a comma-separated list
    enable_thinking: bool = False  # Qwen3 chat template: thinking disabled (`docs/method.md` §1)


@dataclass
class DataConfig:
    train: str = "data/sciknoweval/chemistry/train.json"  # JSON lines: idx, prompt, answer, system
    test: str = "data/sciknoweval/chemistry/test.json"
    template: str = "boxed"  # "boxed" (the PGPO paper's) | "answer_tag" (SDPO's)
    hub: str | None = None  # a `datasets` id to load instead of the files (needs the `hub` extra)
    hub_domain: str | None = None
    max_prompt_tokens: int = 2048


@dataclass
class RolloutConfig:
    engine: str = "hf"  # "hf" (transformers generate) | "vllm"
    prompts_per_step: int = 32  # P
    samples_per_prompt: int = 8  # n
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 8192
    gpu_memory_utilization: float = 0.5  # vllm only: the share of GPU memory for weights and KV cache
    enforce_eager: bool = False  # vllm only: skip compilation and CUDA graphs (faster start, slower sampling)
    cpu_kv_cache_gib: float = 1.0  # vllm's CPU build only: KV cache size (VLLM_CPU_KVCACHE_SPACE, if unset)
    logprob_gap_alarm: float = 0.05  # warn when the mean |log π_sampler − log π_trainer| per token exceeds this


@dataclass
class LossConfig:
    beta: float = 0.5  # D_β: 0 = KL(q‖p), ½ = JSD (SDPO's Science Q&A setting), 1 = KL(p‖q)
    topk: int | None = 100  # None: the full vocabulary
    add_tail: bool = True
    is_cap: float = 2.0  # importance weights w = min(exp(log π_train − log π_sampler), is_cap)
    micro_batch_size: int = 4  # sequences per forward/backward
    # "chunked": from the final hidden states and the output head, one chunk of positions at a time (the
    # (B, T, V) logits never exist); "plain": the model's logits and autograd (the reference). Equal results.
    implementation: str = "chunked"
    chunk_size: int | None = None  # positions per chunk; None: one (n, V) float32 buffer of at most 128 MiB


@dataclass
class TeacherConfig:
    kind: str = "ema"  # "ema" | "live" | "frozen"
    ema_tau: float = 0.05
    demonstration: str = "sibling"  # "sibling" (SDPO's rule) | "ground_truth"
    strip_think: bool = True


@dataclass
class PGPOConfig:
    enabled: bool = False  # False: SDPO (a plain optimizer step); True: the step scaled by ρ
    alpha: float = 0.0  # 0 (or rho_max = 1): ρ = 1, SDPO exactly
    rho_max: float = 2.0
    form: str = "linear"  # "linear" (the paper's hard cap) | "smooth"
    signal: str = "kl"  # pgpo.information kind: "kl" | "reverse_kl" | "jsd"
    reduce: str = "token"  # "token" | "sequence"


@dataclass
class OptimConfig:
    lr: float = 1e-5
    betas: tuple = (0.9, 0.999)
    weight_decay: float = 0.01
    eps: float = 1e-8
    warmup_steps: int = 10  # linear warm-up, then constant
    clip_norm: float = 1.0


@dataclass
class TrainConfig:
    steps: int = 500  # decision: the papers give no length; 500 covers SDPO's reported late collapse (~400)
    seed: int = 0
    output_dir: str = "runs"
    run_name: str | None = None  # default: <config stem>-<seed>
    eval_every: int = 25
    checkpoint_every: int = 25
    keep_checkpoints: int | None = 1  # step checkpoints kept besides "best" (None: all)
    log_every: int = 1
    device: str = "auto"  # "auto" | "cpu" | "cuda"


@dataclass
class EvalConfig:
    samples: int = 16  # mean@16
    temperature: float = 0.6
    top_p: float = 0.95
    max_new_tokens: int = 8192
    max_questions: int | None = None  # None: the whole test split
    batch_size: int = 64  # prompts per generate call


@dataclass
class WarmStartConfig:
    """`python -m llm_runs warm-start`: supervised steps that teach the response format and to copy a
    "Correct solution" from the teacher's context, with letters drawn at random so that the question
    itself stays uninformative (unguided accuracy stays at chance)."""

    steps: int = 300
    batch_size: int = 32
    lr: float = 3.0e-3
    guided_fraction: float = 0.5  # share of each batch rendered with a demonstration in context


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    pgpo: PGPOConfig = field(default_factory=PGPOConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    warm_start: WarmStartConfig = field(default_factory=WarmStartConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


CHOICES = {
    "model.dtype": ("float32", "bfloat16", "float16"),
    "data.template": ("boxed", "answer_tag"),
    "rollout.engine": ("hf", "vllm"),
    "loss.implementation": ("chunked", "plain"),
    "teacher.kind": ("ema", "live", "frozen"),
    "teacher.demonstration": ("sibling", "ground_truth"),
    "pgpo.form": ("linear", "smooth"),
    "pgpo.signal": ("kl", "reverse_kl", "jsd"),
    "pgpo.reduce": ("token", "sequence"),
    "train.device": ("auto", "cpu", "cuda"),
}
ABOVE = {  # key: a lower bound the value must exceed (sampling at temperature 0 or top-p 0 is undefined)
    "rollout.temperature": 0.0, "eval.temperature": 0.0, "rollout.top_p": 0.0, "eval.top_p": 0.0, "optim.eps": 0.0,
}
UNBOUNDED = ("loss.is_cap",)  # float keys where +inf means "no cap"
RANGES = {  # key: (lower, upper), inclusive
    "loss.beta": (0.0, 1.0), "teacher.ema_tau": (0.0, 1.0), "pgpo.alpha": (0.0, None), "pgpo.rho_max": (1.0, None),
    "optim.lr": (0.0, None), "optim.weight_decay": (0.0, None), "optim.clip_norm": (0.0, None),
    "rollout.prompts_per_step": (1, None), "rollout.samples_per_prompt": (1, None), "rollout.max_new_tokens": (1, None),
    "loss.micro_batch_size": (1, None), "rollout.gpu_memory_utilization": (0.0, 1.0),
    "rollout.cpu_kv_cache_gib": (0.0, None), "loss.topk": (1, None), "model.lora_rank": (1, None), "train.steps": (0, None), "eval.samples": (1, None),
    "train.eval_every": (0, None), "train.checkpoint_every": (0, None), "loss.is_cap": (0.0, None), "loss.chunk_size": (1, None),
    "warm_start.steps": (0, None), "warm_start.batch_size": (1, None), "warm_start.lr": (0.0, None),
    "warm_start.guided_fraction": (0.0, 1.0),
    "rollout.top_p": (0.0, 1.0), "eval.top_p": (0.0, 1.0), "rollout.temperature": (0.0, None),
    "eval.temperature": (0.0, None), "optim.eps": (0.0, None), "optim.warmup_steps": (0, None),
    "train.keep_checkpoints": (1, None), "train.log_every": (1, None), "eval.max_new_tokens": (1, None),
    "eval.batch_size": (1, None), "eval.max_questions": (1, None), "data.max_prompt_tokens": (1, None),
    "rollout.logprob_gap_alarm": (0.0, None),
}


def _coerce(key: str, value, annotation, where: str):
    """Check (and minimally convert) one value against its field's annotation."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(key, value, inner[0], where)
    if annotation is bool:
        if isinstance(value, bool):
            return value
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "3e-3" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif annotation is str:
        if isinstance(value, str):
            return value
    elif annotation is dict or origin is dict:
        if isinstance(value, dict):
            return value
    elif annotation is tuple or origin is tuple:
        if isinstance(value, (list, tuple)):
            return tuple(value)
    else:
        return value
    name = getattr(annotation, "__name__", str(annotation))
    raise ConfigError(f"{where}{key}: expected {name}, got {value!r} ({type(value).__name__})")


def _set(config: RunConfig, key: str, value, where: str = "") -> None:
    section, _, name = key.partition(".")
    if not name or section not in {f.name for f in dataclasses.fields(RunConfig)}:
        sections = [f.name for f in dataclasses.fields(RunConfig)]
        raise ConfigError(f"{where}unknown key {key!r}: keys are section.name with sections {sections}")
    target = getattr(config, section)
    hints = typing.get_type_hints(type(target))
    if name not in hints:
        raise ConfigError(f"{where}unknown key {key!r}; {section} has {sorted(hints)}")
    value = _coerce(key, value, hints[name], where)
    if key in CHOICES and value not in CHOICES[key]:
        raise ConfigError(f"{where}{key}: must be one of {CHOICES[key]}, got {value!r}")
    if isinstance(value, float) and (math.isnan(value) or (math.isinf(value) and key not in UNBOUNDED)):
        raise ConfigError(f"{where}{key}: must be a finite number, got {value!r}")  # NaN passes every comparison
    if key in ABOVE and value is not None and not value > ABOVE[key]:
        raise ConfigError(f"{where}{key}: must be greater than {ABOVE[key]}, got {value!r}")
    if key == "optim.betas" and (len(value) != 2 or not all(
            isinstance(b, (int, float)) and not isinstance(b, bool) and 0.0 <= b < 1.0 for b in value)):
        raise ConfigError(f"{where}{key}: must be two numbers in [0, 1), got {value!r}")
    if key in RANGES and value is not None:
        lo, hi = RANGES[key]
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise ConfigError(f"{where}{key}: must lie in [{lo}, {'∞' if hi is None else hi}], got {value!r}")
    setattr(target, name, value)


def load(path: str | Path | None = None, overrides: list[str] | tuple = ()) -> RunConfig:
    """Defaults ← the YAML file (nested sections) ← `section.key=value` overrides (values parsed as YAML)."""
    config = RunConfig()
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise ConfigError(f"config file {path} does not exist")
        data = _read_mapping(path, "the top level must be a mapping of sections")
        for section, values in data.items():
            if not isinstance(values, dict):
                raise ConfigError(f"{path}: section {section!r} must be a mapping, got {values!r}")
            for name, value in values.items():
                _set(config, f"{section}.{name}", value, where=f"{path}: ")
    apply_overrides(config, overrides)
    return config


def _read_mapping(path: Path, shape: str) -> dict:
    """A YAML file whose top level is a mapping (empty: {}); `shape` says what it must be, in the error."""
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: {shape}, got {data!r}")
    return data


def apply_overrides(config: RunConfig, overrides) -> None:
    """`section.key=value` items (values parsed as YAML) set on `config`."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"override {item!r}: expected section.key=value")
        _set(config, key.strip(), yaml.safe_load(raw) if raw.strip() else None, where="command line: ")


def from_dict(data: dict) -> RunConfig:
    """The inverse of `RunConfig.to_dict` (a resolved config saved in a run folder)."""
    config = RunConfig()
    for section, values in data.items():
        for name, value in values.items():
            _set(config, f"{section}.{name}", value, where="resolved config: ")
    return config


# ---------------------------------------------------------------------------------------------
# resuming a run with changed settings

# What `--resume` may change: the run's length, its logging, evaluation and checkpoint cadence, where it
# lives, and memory knobs that leave every computed number the same up to float rounding. Any other
# change would make the resumed run a different experiment from the one its first steps belong to.
RESUME_SAFE = (
    "train.steps", "train.eval_every", "train.checkpoint_every", "train.keep_checkpoints", "train.log_every",
    "train.output_dir", "train.run_name",
    "loss.micro_batch_size", "loss.implementation", "loss.chunk_size", "model.gradient_checkpointing",
    "rollout.gpu_memory_utilization", "rollout.enforce_eager", "rollout.cpu_kv_cache_gib",
    "rollout.logprob_gap_alarm", "warm_start.*",  # warm_start: read by the warm-start command, not by training
)


def flat(config: RunConfig) -> dict:
    """{"section.key": value} for every setting."""
    return {f"{section}.{key}": value for section, values in config.to_dict().items() for key, value in values.items()}


def resume_safe(key: str) -> bool:
    return key in RESUME_SAFE or f"{key.partition('.')[0]}.*" in RESUME_SAFE


def resume_changes(saved: RunConfig, new: RunConfig) -> tuple[dict, dict]:
    """The settings that differ between a run's saved config and the one it is resumed with, split into
    (refused, allowed): {key: (saved value, new value)} each."""
    before, after = flat(saved), flat(new)
    changed = {k: (before[k], after[k]) for k in before if _normal(before[k]) != _normal(after[k])}
    refused = {k: v for k, v in changed.items() if not resume_safe(k)}
    return refused, {k: v for k, v in changed.items() if k not in refused}


def check_resume(saved: RunConfig, new: RunConfig, run_dir) -> dict:
    """Refuse (ConfigError naming each key) a resume whose settings differ from the run's beyond RESUME_SAFE;
    returns the allowed changes."""
    refused, allowed = resume_changes(saved, new)
    if refused:
        listed = "; ".join(f"{k}: {old!r} → {new!r}" for k, (old, new) in refused.items())
        raise ConfigError(
            f"--resume {run_dir}: {len(refused)} setting(s) differ from the run's config.yaml and would make it a "
            f"different experiment: {listed}. A resume may change only {', '.join(RESUME_SAFE)}; to change the "
            f"others, start a new run (a new train.run_name).")
    return allowed


def _normal(value):
    return list(value) if isinstance(value, tuple) else value


RESUMED = "resumed.yaml"  # in a run folder: the allowed changes made by earlier resumes, {key: value}


def load_for_resume(run_dir, overrides=()) -> RunConfig:
    """A run's config for `--resume`: its config.yaml ← the changes earlier resumes made (RESUMED) ← `overrides`.
    Refuses changes outside RESUME_SAFE (naming each key); records the allowed ones in RESUMED, so that the
    next resume keeps them; config.yaml itself is never rewritten."""
    run_dir = Path(run_dir)
    saved_path, resumed_path = run_dir / "config.yaml", run_dir / RESUMED
    saved = load(saved_path)
    earlier = _read_mapping(resumed_path, "must map section.key to a value") if resumed_path.exists() else {}
    config = copy.deepcopy(saved)
    for key, value in earlier.items():
        _set(config, key, value, where=f"{resumed_path}: ")
    apply_overrides(config, overrides)
    allowed = check_resume(saved, config, run_dir)
    if allowed and os.environ.get("RANK", "0") == "0":
        tmp = resumed_path.with_name(RESUMED + ".tmp")
        tmp.write_text(yaml.safe_dump({k: _normal(new) for k, (_, new) in allowed.items()}, sort_keys=False))
        os.replace(tmp, resumed_path)
    elif not allowed and resumed_path.exists() and os.environ.get("RANK", "0") == "0":
        resumed_path.unlink()  # every earlier change undone on the command line
    return config
