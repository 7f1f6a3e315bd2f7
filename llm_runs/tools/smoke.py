"""`python -m llm_runs smoke --shape qwen3-8b [--layers K] [--steps N] [--engine hf]`: full training steps on a
randomly initialised model of the real shape — no weights, no internet — printing peak memory,
tokens/s and seconds per stage. `--shape tiny` is the CPU test's version. The real shape is meant for a GPU:
with `--device auto` (the default) and no CUDA device it is refused; `--device cpu` runs it anyway.

The model's config is written to a folder with the locally trained tokenizer (whose ids are a small
part of the 151 936-entry vocabulary; decoding skips the rest), and the trainer builds the weights
from it in place (`model.random_init`). Rewards are always 0 on random text, so the teacher uses
ground-truth demonstrations: every sample is trained on.
"""

from __future__ import annotations

import json
import statistics
import tempfile
from pathlib import Path

from llm_runs import tiny
from llm_runs.build import QWEN3_8B
from llm_runs.config import ConfigError, load
from llm_runs.metrics import STAGES

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "toy_science"

SHAPES = {
    "qwen3-8b": QWEN3_8B,
    "tiny": dict(vocab_size=tiny.VOCAB_SIZE, **tiny.SHAPE, max_position_embeddings=tiny.MAX_POSITIONS,
                 tie_word_embeddings=False),
}


def write_shape(out: Path, shape: str, layers: int | None) -> Path:
    from transformers import Qwen3Config

    from llm_runs.data import load_split

    corpus = [e.prompt for e in load_split(FIXTURES / "train.jsonl")]
    tokenizer = tiny.build_tokenizer(corpus)
    spec = dict(SHAPES[shape])
    if layers is not None:
        spec["num_hidden_layers"] = layers
    config = Qwen3Config(**spec, architectures=["Qwen3ForCausalLM"],  # as in the published config.json
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=None)
    out.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def run(shape: str = "qwen3-8b", layers: int | None = None, steps: int = 3, engine: str = "hf", prompts: int = 2,
        samples: int = 2, response_tokens: int = 128, micro_batch: int = 2, dtype: str = "bfloat16",
        teacher: str = "live", device: str = "auto", overrides: tuple = (), peak_tflops: float | None = None,
        bandwidth_gbs: float | None = None) -> dict:
    import torch

    from llm_runs.tools import utilisation
    from llm_runs.trainer import Trainer

    if shape == "qwen3-8b" and device == "auto" and not torch.cuda.is_available():
        raise ConfigError("smoke --shape qwen3-8b: no CUDA device is visible, and the real shape on a CPU takes "
                          "minutes and ~14 GiB for one decoder layer; to run it there anyway, say so: --device cpu "
                          "(e.g. --layers 1 --steps 1 --response-tokens 16 --device cpu, docs/scaling.md)")
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = write_shape(Path(tmp) / "model", shape, layers)
        config = load(None, [f"model.path={model_dir}", "model.random_init=true", f"model.dtype={dtype}",
                             f"data.train={FIXTURES / 'train.jsonl'}", f"data.test={FIXTURES / 'test.jsonl'}",
                             f"rollout.engine={engine}", f"rollout.prompts_per_step={prompts}",
                             f"rollout.samples_per_prompt={samples}", f"rollout.max_new_tokens={response_tokens}",
                             f"loss.micro_batch_size={micro_batch}", f"teacher.kind={teacher}",
                             "teacher.demonstration=ground_truth", "pgpo.enabled=true", "pgpo.alpha=1.0",
                             f"train.output_dir={tmp}", "train.eval_every=0", "train.checkpoint_every=0",
                             f"train.device={device}", *overrides])
        trainer = Trainer(config, Path(tmp) / "smoke", progress=False)
        parameters = sum(p.numel() for p in trainer.model.parameters())
        decoder, weights = utilisation.decoder_shape(trainer.model), utilisation.weight_bytes(trainer.model)
        rows = []
        for _ in range(steps + 1):
            row = trainer.step()
            row["train_flops"] = utilisation.train_flops(decoder, trainer.trained_lengths, row["tokens_generated"])
            rows.append(row)
        rows = rows[1:]  # the first step warms up
        rows_decoding = len(trainer.trained_lengths)  # this rank's rollouts, decoded together
        trainer.close()
    median = lambda key: statistics.median(r.get(key, 0.0) for r in rows)  # noqa: E731
    known = utilisation.device_peaks(torch.cuda.get_device_name()) if str(trainer.device).startswith("cuda") else None
    flops = peak_tflops * 1e12 if peak_tflops else known and known[0]
    bandwidth = bandwidth_gbs * 1e9 if bandwidth_gbs else known and known[1]
    train_flops_per_s = median("train_flops") / max(median("seconds_train"), 1e-9)
    bound = rows_decoding * bandwidth / weights if bandwidth else None  # tokens/s if decoding only read the weights
    return {"shape": shape, "layers": layers or SHAPES[shape]["num_hidden_layers"], "parameters": parameters,
            "device": str(trainer.device), "dtype": dtype, "teacher": teacher, "steps": steps,
            "sequences_per_step": prompts * samples, "response_tokens": response_tokens,
            "peak_memory_gb": max(r["peak_memory_gb"] for r in rows),
            "tokens_per_s_generated": median("tokens_per_s_generated"), "tokens_per_s_trained": median("tokens_per_s_trained"),
            **{f"seconds_{s}": median(f"seconds_{s}") for s in STAGES},
            "logprob_gap_mean": median("logprob_gap_mean"), "rho": rows[-1]["rho"], "loss": rows[-1]["loss"],
            "train_tflops_per_s": train_flops_per_s / 1e12, "train_mfu": train_flops_per_s / flops if flops else None,
            "peak_tflops": flops / 1e12 if flops else None, "rows_decoding": rows_decoding,
            "decode_bound_tokens_per_s": bound,
            "decode_fraction_of_bound": median("tokens_per_s_generated") / bound if bound else None}


def report(result: dict) -> str:
    lines = [json.dumps(result, indent=1)]
    if result["train_mfu"] is not None:
        lines.append(f"train part: {result['train_tflops_per_s']:.1f} TFLOP/s of the model's FLOPs, MFU "
                     f"{100 * result['train_mfu']:.1f}% of {result['peak_tflops']:.0f} TFLOP/s")
    else:
        lines.append(f"train part: {result['train_tflops_per_s']:.3g} TFLOP/s of the model's FLOPs (no MFU: the "
                     f"device's peak is unknown; give --peak-tflops)")
    if result["decode_fraction_of_bound"] is not None:
        lines.append(f"rollouts: {result['tokens_per_s_generated']:.1f} tokens/s for {result['rows_decoding']} rows, "
                     f"{100 * result['decode_fraction_of_bound']:.1f}% of the bandwidth bound "
                     f"({result['decode_bound_tokens_per_s']:.0f} tokens/s)")
    return "\n".join(lines)


def add_parser(sub) -> None:
    """`python -m llm_runs smoke`'s arguments."""
    smoke = sub.add_parser("smoke", help="full steps on a random model of the real shape (no weights needed)")
    smoke.add_argument("--shape", default="qwen3-8b", choices=["qwen3-8b", "tiny"], help="the model's shape (default qwen3-8b)")
    smoke.add_argument("--layers", type=int, help="keep the first K decoder layers (default: all)")
    smoke.add_argument("--steps", type=int, default=3, help="timed steps (after one warm-up step)")
    smoke.add_argument("--engine", default="hf", choices=["hf", "vllm"], help="the rollout engine (default hf)")
    smoke.add_argument("--prompts", type=int, default=2, help="prompts per step (default 2)")
    smoke.add_argument("--samples", type=int, default=2, help="samples per prompt (default 2)")
    smoke.add_argument("--response-tokens", type=int, default=128, help="tokens per response (default 128)")
    smoke.add_argument("--micro-batch", type=int, default=2, help="sequences per forward/backward (default 2)")
    smoke.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"], help="weights' dtype (default bfloat16)")
    smoke.add_argument("--teacher", default="live", choices=["live", "ema", "frozen"], help="teacher.kind (default live: no second copy)")
    smoke.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="auto: CUDA, and the real shape is refused without it")
    smoke.add_argument("--peak-tflops", type=float, help="the device's dense 16-bit peak, TFLOP/s (default: from "
                       "its name for H100/H200/A100/L40S)")
    smoke.add_argument("--bandwidth-gbs", type=float, help="its memory bandwidth, GB/s (default: from its name)")
    smoke.add_argument("overrides", nargs="*", help="section.key=value")


def command(args) -> int:
    print(report(run(args.shape, args.layers, args.steps, args.engine, args.prompts, args.samples, args.response_tokens,
                     args.micro_batch, args.dtype, args.teacher, args.device, tuple(args.overrides), args.peak_tflops,
                     args.bandwidth_gbs)))
    return 0
