"""The run configuration's schema: one dataclass per section, whose defaults are the paper's settings
(`docs/method.md` §1). Every field says what it accepts: a `Literal[...]` type for a choice,
`Annotated[..., Range(...)]` for an interval, and a docstring. Reading and checking values against it is
`llm_runs.config`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Annotated, Literal

from llm_runs import tiny


class ConfigError(ValueError):
    """A bad configuration: the message names the key and, when there is one, the file."""


@dataclass(frozen=True)
class Range:
    """A field's interval: lo ≤ value ≤ hi (None: no bound on that side); `above`: lo < value instead
    (sampling at temperature 0 or top-p 0 is undefined); `below`: value < hi. For a tuple, every element.
    Float fields must be finite (NaN passes every comparison) unless `inf`: then +inf is allowed (no cap)."""

    lo: float | None = None
    hi: float | None = None
    above: bool = False
    below: bool = False
    inf: bool = False

    def __str__(self) -> str:
        hi = "∞" if self.hi is None else self.hi
        return f"[{self.lo}, {hi}{')' if self.below else ']'}"

    def holds(self, value) -> bool:
        """Written so that NaN fails."""
        return ((self.lo is None or (value > self.lo if self.above else value >= self.lo))
                and (self.hi is None or (value < self.hi if self.below else value <= self.hi)))


@dataclass
class ModelConfig:
    path: str = "Qwen/Qwen3-8B"
    """A local directory (config + weights + tokenizer) or a hub id."""
    dtype: Literal["float32", "bfloat16", "float16"] = "bfloat16"
    """The trained weights' dtype."""
    tiny: bool = False
    """Build a tiny random Qwen3 and train a byte-level tokenizer locally (nothing downloaded)."""
    random_init: bool = False
    """Build the architecture of `path`'s config.json with random weights (no weights read)."""
    tiny_shape: dict = field(default_factory=lambda: dict(tiny.SHAPE))
    """With `tiny`: the Qwen3 config values of the tiny model (default `llm_runs.tiny.SHAPE`)."""
    gradient_checkpointing: bool = False
    """Recompute the decoder layers' activations in the backward pass: less memory, more time."""
    lora_rank: Annotated[int | None, Range(1)] = None
    """None: full fine-tuning; r: LoRA adapters of rank r (the one-GPU option, `lora` extra)."""
    lora_alpha: float = 32.0
    """LoRA's scale numerator: the adapters' update is scaled by lora_alpha / lora_rank."""
    lora_dropout: float = 0.0
    """Dropout on the LoRA adapters' input."""
    lora_targets: str = "all-linear"
    """peft's target_modules: "all-linear" or a comma-separated list of module names."""
    enable_thinking: bool = False
    """Qwen3's chat template with thinking enabled; off, as in the papers (`docs/method.md` §1)."""


@dataclass
class DataConfig:
    train: str = "data/sciknoweval/chemistry/train.json"
    """The training split: JSON lines with idx, prompt, answer, system."""
    test: str = "data/sciknoweval/chemistry/test.json"
    """The held-out split, same format: validation during training and `eval`."""
    template: Literal["boxed", "answer_tag"] = "boxed"
    """The prompt and answer format: "boxed" (the PGPO paper's) or "answer_tag" (SDPO's)."""
    hub: str | None = None
    """"hicai-zju/SciKnowEval": cut the splits from the hub in memory instead of reading the files (the `hub`
    extra and internet; `python -m llm_runs data sciknoweval` writes the same splits to files once)."""
    hub_domain: str | None = None
    """With `hub`: the domain, one of biology, chemistry, material, physics."""
    max_prompt_tokens: Annotated[int, Range(1)] = 2048
    """Prompts longer than this (training and test) are dropped at start, and reported."""


@dataclass
class RolloutConfig:
    engine: Literal["hf", "vllm", "replay"] = "hf"
    """The sampler: "hf" (the trainer's model, batched with the KV cache), "vllm" (in the trainer's process),
    or "replay" (no sampling: the rollouts another run recorded, `rollout.replay`)."""
    prompts_per_step: Annotated[int, Range(1)] = 32
    """P: prompts per optimizer step."""
    samples_per_prompt: Annotated[int, Range(1)] = 8
    """n: responses sampled per prompt (a group)."""
    temperature: Annotated[float, Range(0.0, above=True)] = 1.0
    """The sampling temperature."""
    top_p: Annotated[float, Range(0.0, 1.0, above=True)] = 1.0
    """Nucleus sampling's mass (1: off)."""
    max_new_tokens: Annotated[int, Range(1)] = 8192
    """Response tokens per sample at most."""
    gpu_memory_utilization: Annotated[float, Range(0.0, 1.0)] = 0.5
    """vllm only: the share of GPU memory for its weights and KV cache."""
    enforce_eager: bool = False
    """vllm only: skip compilation and CUDA graphs (faster start, slower sampling)."""
    cpu_kv_cache_gib: Annotated[float, Range(0.0)] = 1.0
    """vllm's CPU build only: its KV cache size in GiB (VLLM_CPU_KVCACHE_SPACE, if that is unset)."""
    logprob_gap_alarm: Annotated[float, Range(0.0)] = 0.05
    """Warn when the mean |log π_sampler − log π_trainer| per token exceeds this."""
    record: bool = False
    """Append each step's rollouts to RUN/rollouts/rank<r>.jsonl (token ids, the sampler's log-probs), so that
    another run can train on the same samples (`engine: replay`)."""
    replay: str | None = None
    """engine: replay only: the run folder whose recorded rollouts (`record: true`) this run trains on."""


@dataclass
class LossConfig:
    beta: Annotated[float, Range(0.0, 1.0)] = 0.5
    """D_β's mixing weight: 0 = KL(q‖p), ½ = JSD (SDPO's Science Q&A setting), 1 = KL(p‖q)."""
    topk: Annotated[int | None, Range(1)] = 100
    """The support: the student's top-k tokens; None: the full vocabulary."""
    add_tail: bool = True
    """Add one tail bucket holding the rest of each distribution's mass; False: the top-k renormalised."""
    is_cap: Annotated[float, Range(0.0, inf=True)] = 2.0
    """Importance weights w = min(exp(log π_train − log π_sampler), is_cap); .inf: no cap."""
    micro_batch_size: Annotated[int, Range(1)] = 4
    """Sequences per forward/backward."""
    implementation: Literal["chunked", "plain"] = "chunked"
    """How the loss is computed. "chunked": from the final hidden states and the output head, one chunk of
    positions at a time (the (B, T, V) logits never exist); "plain": the model's logits and autograd (the
    reference). Equal results."""
    chunk_size: Annotated[int | None, Range(1)] = None
    """Positions per chunk; None: one (n, V) float32 buffer of at most 128 MiB."""


@dataclass
class TeacherConfig:
    kind: Literal["ema", "live", "frozen"] = "ema"
    """The teacher's weights: an EMA of the student's, the student's own, or the base model's."""
    ema_tau: Annotated[float, Range(0.0, 1.0)] = 0.05
    """τ of the EMA teacher: T ← (1 − τ)T + τθ after every optimizer step."""
    demonstration: Literal["sibling", "ground_truth"] = "sibling"
    """The teacher's context: a successful sibling response (SDPO's rule) or the dataset's answer."""
    strip_think: bool = True
    """Remove `<think>…</think>` blocks from sibling demonstrations."""


@dataclass
class PGPOConfig:
    enabled: bool = False
    """False: SDPO (a plain optimizer step); True: the step scaled by ρ = g(I)."""
    alpha: Annotated[float, Range(0.0)] = 0.0
    """The sensitivity of ρ to I; 0 (or rho_max = 1): ρ = 1, SDPO exactly."""
    rho_max: Annotated[float, Range(1.0)] = 2.0
    """The cap on ρ."""
    form: Literal["linear", "smooth"] = "linear"
    """The multiplier's shape: "linear" (the paper's hard cap) or "smooth"."""
    divergence: Literal["kl", "reverse_kl", "jsd"] = "kl"
    """The divergence the information signal I is computed with (a `pgpo.information` kind): "kl" = KL(q ‖ p),
    "reverse_kl" = KL(p ‖ q), "jsd". Was `pgpo.signal`."""
    reduce: Literal["token", "sequence"] = "token"
    """I as a mean over response tokens, or over sequences (each sequence's token mean)."""
    per_sequence: bool = False
    """Each sequence weighted by its own ρ_i = g(I_i) (I_i: its token-mean information), the weights divided by
    their mean over the batch's sequences with a teacher, so that they average to 1: the gradient is
    Σ_i (ρ_i / ρ̄_seq) ∇L_i / B and the step is the batch's ρ = g(I) times the step on that reweighted gradient
    (the mean weight of a sequence is then the batch's ρ). Needs `enabled`; costs one extra evaluation of the
    loss (no extra model forward) per micro-batch."""
    normalize_information: bool = False
    """ρ = g(I / Ī), Ī the mean of I over the earlier steps with a finite I (the diagnostics' running mean, kept
    across resumes), so that α means the same on every task; at the first step (no earlier step) I / Ī := 1.
    Needs `enabled`."""
    replay_rho: str | None = None
    """A run folder: SDPO with that run's logged ρ_t as a learning-rate multiplier (`modulated_step`, ρ_t of its
    metrics.jsonl at the same step; no coupling to this run's I). Needs `enabled: false`; a run with fewer steps
    than `train.steps` is refused."""
    replay_rho_mode: Literal["schedule", "mean"] = "schedule"
    """With `replay_rho`: "schedule" replays ρ_t step by step; "mean" applies that run's mean ρ̄ (over its first
    `train.steps` steps) at every step: SDPO at lr × ρ̄ (the same SDE time Σ lr·ρ as the replayed run)."""


@dataclass
class OptimConfig:
    lr: Annotated[float, Range(0.0)] = 1e-5
    """AdamW's learning rate (PGPO scales the step by ρ, not this)."""
    betas: Annotated[tuple[float, float], Range(0, 1, below=True)] = (0.9, 0.999)
    """AdamW's (β1, β2)."""
    weight_decay: Annotated[float, Range(0.0)] = 0.01
    """AdamW's decoupled weight decay."""
    eps: Annotated[float, Range(0.0, above=True)] = 1e-8
    """AdamW's ε."""
    warmup_steps: Annotated[int, Range(0)] = 10
    """Linear warm-up of the learning rate over this many steps, then constant."""
    clip_norm: Annotated[float, Range(0.0)] = 1.0
    """The gradient is clipped to this global norm (before ρ scales the step)."""


@dataclass
class TrainConfig:
    steps: Annotated[int, Range(0)] = 500
    """Optimizer steps. Decision: the papers give no length; 500 covers SDPO's reported late collapse (~400)."""
    seed: Annotated[int, Range(0)] = 0
    """Seeds the prompt order, the sampling, validation and any random initialisation (numpy's seeds are ≥ 0)."""
    output_dir: str = "runs"
    """The run folder is output_dir/run_name."""
    run_name: str | None = None
    """The run folder's name; default: <config stem>-seed<seed>."""
    eval_every: Annotated[int, Range(0)] = 25
    """Validate on the test split every this many steps, and at the end (0: never)."""
    checkpoint_every: Annotated[int, Range(0)] = 25
    """Checkpoint every this many steps, and at the end (0: never)."""
    keep_checkpoints: Annotated[int | None, Range(1)] = 1
    """Step checkpoints kept besides "best" (None: all)."""
    checkpoint_minutes: Annotated[float | None, Range(0.0, above=True)] = None
    """Also checkpoint when this many minutes have passed since the last checkpoint (None: by steps only)."""
    end_time: Annotated[float | None, Range(0.0)] = None
    """The job's end as a UNIX time (None: SLURM_JOB_END_TIME where the scheduler sets it, else none): when it
    is nearer than one step + one checkpoint + end_margin_s, checkpoint and stop with exit code 75."""
    end_margin_s: Annotated[float, Range(0.0)] = 120.0
    """Seconds kept free before the job's end, beyond the longest step and checkpoint seen."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where to train: "auto" is CUDA when there is one, else the CPU."""
    report_to: str = "auto"
    """Trackers fed every metrics row: comma-separated names of tensorboard (RUN/tensorboard/), wandb, trackio,
    mlflow; "auto": tensorboard when it is installed; "none": metrics.jsonl only."""
    log_interval: Annotated[float, Range(0.0)] = 60.0
    """Without a progress bar (output not a terminal, or --no-progress): seconds between plain progress lines
    (also one at the first step, each validation and the end); 0: a line per step."""


@dataclass
class EvalConfig:
    samples: Annotated[int, Range(1)] = 16
    """k of mean@k: samples per test question (mean@16)."""
    temperature: Annotated[float, Range(0.0, above=True)] = 0.6
    """The sampling temperature of validation and `eval`."""
    top_p: Annotated[float, Range(0.0, 1.0, above=True)] = 0.95
    """Nucleus sampling's mass in validation and `eval`."""
    max_new_tokens: Annotated[int, Range(1)] = 8192
    """Response tokens per sample at most."""
    max_questions: Annotated[int | None, Range(1)] = None
    """The first this many test questions; None: the whole test split."""
    batch_size: Annotated[int, Range(1)] = 64
    """Prompts per generate call."""
    keep_samples: Annotated[int, Range(0)] = 4
    """Completions kept per validation (one each for the first this many test questions): in
    RUN/eval/step-N.json and the trackers."""


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    """The network, its dtype and fine-tuning mode."""
    data: DataConfig = field(default_factory=DataConfig)
    """The splits and the prompt template."""
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    """Sampling the responses trained on."""
    loss: LossConfig = field(default_factory=LossConfig)
    """The self-distillation loss."""
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    """The self-teacher's weights and context."""
    pgpo: PGPOConfig = field(default_factory=PGPOConfig)
    """The information-modulated step."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """AdamW and its schedule."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """The run's length, cadence, folder and device."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Validation (mean@k on the test split)."""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
