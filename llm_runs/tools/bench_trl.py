"""`python -m llm_runs bench --peer trl --config PATH [--steps K] [--repeats R] [key=value ...]`: this project's
trainer against TRL's SDPO trainer (and TRL with `pgpo.trl`), interleaved, on the same model, data and matched
settings: seconds per step and rollout tokens per second, as ratios to TRL's.

Matched from the config: the model (the tiny one built once, loaded by both), prompts (the same chat
messages), P prompts × n samples per step in micro-batches of `loss.micro_batch_size`, `max_new_tokens`,
temperature and top-p, the support (top-k + tail), β (TRL's `distillation_alpha`), the EMA teacher and its
rate, AdamW's lr, betas, decay and clipping, the dtype. Switched off in TRL to match: bf16 autocast and
gradient checkpointing (unless the config turns checkpointing on). Both are SDPO (this project's trainer with
`pgpo.enabled=false`; it computes I all the same). The teachers differ in what they are shown (this project:
its config's demonstration; TRL: the answer as privileged context), not in how much they compute: one
forward per sample.

Per step: wall time from step start to step end, the first (warm-up) step dropped. Rollout tokens per
second: response tokens over the seconds spent generating them (TRL: its `_generate`, timed around).
"""

from __future__ import annotations

import logging
import os
import statistics
import tempfile
import time
from pathlib import Path

from llm_runs.config import RunConfig, load

ARMS = ("llm_runs", "TRL SDPO", "TRL + pgpo.trl")


def measure(config_path: str, overrides: list[str], steps: int = 5, repeats: int = 3, progress=None) -> dict:
    """{arm: {"step": [seconds per step], "tokens_per_s": [per run]}} over `repeats` fresh runs per arm,
    interleaved (arm order rotated each repeat, so a drift in machine speed hits all alike)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    # TRL warns at every step that a random model's rewards are flat: true, and beside the point of a bench
    logging.getLogger("trl").setLevel(logging.ERROR)
    results = {arm: {"step": [], "tokens_per_s": []} for arm in ARMS}
    with tempfile.TemporaryDirectory() as tmp:
        common = [*overrides, "pgpo.enabled=false", f"train.output_dir={tmp}", "train.eval_every=0",
                  "train.checkpoint_every=0", f"train.steps={steps + 1}"]
        model_dir = _model_dir(load(config_path, common), Path(tmp))  # built once (tiny), then loaded by every arm
        config = load(config_path, [*common, f"model.path={model_dir}", "model.tiny=false"])
        for r in range(repeats):
            for arm in ARMS[r % len(ARMS):] + ARMS[:r % len(ARMS)]:
                out = Path(tmp) / f"{arm}-{r}".replace(" ", "_")
                seconds, tokens_per_s = _run_llm_runs(config, out, steps) if arm == "llm_runs" else \
                    _run_trl(config, out, steps, pgpo=arm == "TRL + pgpo.trl")
                results[arm]["step"] += seconds
                results[arm]["tokens_per_s"].append(tokens_per_s)
                if progress:
                    progress(f"repeat {r + 1}/{repeats} {arm}: {statistics.median(seconds):.3f} s/step, "
                             f"{tokens_per_s:.0f} rollout tokens/s")
    results["settings"] = _describe(config)
    return results


def _model_dir(config: RunConfig, tmp: Path) -> str:
    from llm_runs.build import model_source
    from llm_runs.data import load_split

    corpus = [e.prompt for e in load_split(config.data.train) + load_split(config.data.test)] if config.model.tiny else []
    return model_source(config, tmp, corpus)


def _run_llm_runs(config: RunConfig, out: Path, steps: int) -> tuple[list, float]:
    from llm_runs.trainer import Trainer

    trainer = Trainer(config, out, progress=False)
    try:
        trainer.step()  # warm-up: first calls allocate
        seconds, tokens, rollout_seconds = [], 0.0, 0.0
        for _ in range(steps):
            start = time.perf_counter()
            row = trainer.step()
            seconds.append(time.perf_counter() - start)
            tokens += row["response_length_mean"] * config.rollout.prompts_per_step * config.rollout.samples_per_prompt
            rollout_seconds += row["seconds_rollout"]
    finally:
        trainer.close()
    return seconds, tokens / rollout_seconds


def trl_arguments(config: RunConfig, out: Path, steps: int, pgpo: bool = False):
    """The SDPOConfig (PGPOConfig with `pgpo`) matching this project's `config` (see the module docstring)."""
    from trl.experimental.sdpo import SDPOConfig

    from pgpo.trl import PGPOConfig

    r, loss, optim = config.rollout, config.loss, config.optim
    batch = r.prompts_per_step * r.samples_per_prompt
    if batch % loss.micro_batch_size:
        raise ValueError(f"TRL needs the step's {batch} samples in whole micro-batches of loss.micro_batch_size="
                         f"{loss.micro_batch_size}")
    if loss.topk is None:
        raise ValueError("the TRL arm matches loss.topk (top-k + tail); loss.topk=null (the whole vocabulary) is not matched")
    extra = dict(pgpo_alpha=config.pgpo.alpha, pgpo_rho_max=config.pgpo.rho_max) if pgpo else {}
    return (PGPOConfig if pgpo else SDPOConfig)(
        output_dir=str(out), use_cpu=config.train.device == "cpu", bf16=False, fp16=False,
        gradient_checkpointing=config.model.gradient_checkpointing, use_vllm=False,
        per_device_train_batch_size=loss.micro_batch_size, gradient_accumulation_steps=batch // loss.micro_batch_size,
        num_generations=r.samples_per_prompt, max_completion_length=r.max_new_tokens, max_prompt_length=4096,
        temperature=r.temperature, top_p=r.top_p, max_steps=steps + 1, logging_steps=1, report_to="none", disable_tqdm=True,
        save_strategy="no", seed=config.train.seed,
        learning_rate=optim.lr, adam_beta1=optim.betas[0], adam_beta2=optim.betas[1], adam_epsilon=optim.eps,
        weight_decay=optim.weight_decay, max_grad_norm=optim.clip_norm, lr_scheduler_type="constant",
        distillation_mode="topk_logits", distillation_topk=loss.topk, distillation_add_tail=loss.add_tail,
        distillation_alpha=loss.beta, teacher_model_kind="ema", teacher_update_rate=config.teacher.ema_tau,
        include_environment_feedback=True, **extra)


def _run_trl(config: RunConfig, out: Path, steps: int, pgpo: bool = False) -> tuple[list, float]:
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from transformers.trainer_callback import PrinterCallback
    from trl.experimental.sdpo import SDPOTrainer

    from llm_runs import reward as rewards
    from llm_runs.build import DTYPES
    from llm_runs.data import load_split, messages

    if pgpo:
        from pgpo.trl import PGPOTrainer as base
    else:
        base = SDPOTrainer

    class Timed(base):
        """TRL's trainer with its generation timed and its response tokens counted."""
        rollout_seconds, rollout_tokens = 0.0, 0

        def _generate(self, prompt_ids):
            start = time.perf_counter()
            prompts, completions = super()._generate(prompt_ids)
            if self.state.global_step > 0:  # the warm-up step is not counted
                Timed.rollout_seconds += time.perf_counter() - start
                Timed.rollout_tokens += sum(len(c) for c in completions)
            return prompts, completions

    ends = []

    class StepEnds(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            ends.append(("begin", time.perf_counter()))

        def on_step_end(self, args, state, control, **kwargs):
            ends.append(("end", time.perf_counter()))

    examples = load_split(config.data.train)
    data = [{"prompt": messages(e, config.data.template), "privileged_context": f"Correct solution: {e.answer}",
             "answer": e.answer} for e in examples]

    def reward(prompts, completions, completion_ids, answer, **kwargs):
        return [rewards.score(c[0]["content"] if isinstance(c, list) else c, a, config.data.template)
                for c, a in zip(completions, answer)]

    model_dir = config.model.path  # the folder the llm_runs arm loads too
    tokenizer = AutoTokenizer.from_pretrained(model_dir, padding_side="left", truncation_side="left")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=DTYPES[config.model.dtype])
    trainer = Timed(model=model, reward_funcs=reward, args=trl_arguments(config, out, steps, pgpo),
                    train_dataset=data, processing_class=tokenizer, callbacks=[StepEnds()])
    trainer.remove_callback(PrinterCallback)  # its per-step log dicts would drown the bench's own lines
    trainer.train()
    begins = [t for kind, t in ends if kind == "begin"][1:]  # the warm-up step dropped
    finishes = [t for kind, t in ends if kind == "end"][1:]
    return [b - a for a, b in zip(begins, finishes)], Timed.rollout_tokens / Timed.rollout_seconds


def _describe(config: RunConfig) -> str:
    r, loss = config.rollout, config.loss
    return (f"{r.prompts_per_step} prompts × {r.samples_per_prompt} samples, {r.max_new_tokens} new tokens, top-k "
            f"{loss.topk}{' + tail' if loss.add_tail else ''}, β {loss.beta:g}, {config.teacher.kind} teacher, "
            f"{config.model.dtype}, AdamW {config.optim.lr:g}, micro-batches of {loss.micro_batch_size}, {config.train.device}")


def report(results: dict) -> str:
    """Seconds per step and rollout tokens per second: min and median, and as ratios to TRL's SDPO."""
    lines = [f"settings: {results['settings']}",
             f"{'':<16}{'s/step min':>12}{'median':>10}{'tok/s min':>12}{'median':>10}   ratio to TRL SDPO (min, median)"]
    peer = results["TRL SDPO"]
    for arm in ARMS:
        row = results[arm]
        step = (min(row["step"]), statistics.median(row["step"]))
        # tokens per second: its "min" is the slowest run; the ratio compares like with like
        tokens = (min(row["tokens_per_s"]), statistics.median(row["tokens_per_s"]))
        ratio_step = (step[0] / min(peer["step"]), step[1] / statistics.median(peer["step"]))
        ratio_tokens = (tokens[0] / min(peer["tokens_per_s"]), tokens[1] / statistics.median(peer["tokens_per_s"]))
        lines.append(f"{arm:<16}{step[0]:>12.4f}{step[1]:>10.4f}{tokens[0]:>12.0f}{tokens[1]:>10.0f}   "
                     f"step {ratio_step[0]:.2f}, {ratio_step[1]:.2f}; tokens/s {ratio_tokens[0]:.2f}, {ratio_tokens[1]:.2f}")
    lines.append("(step ratio < 1: faster than TRL; tokens/s ratio > 1: faster rollouts)")
    return "\n".join(lines)
