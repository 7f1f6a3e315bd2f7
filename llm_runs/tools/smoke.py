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
        teacher: str = "live", device: str = "auto", overrides: tuple = ()) -> dict:
    import torch

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
        rows = [trainer.step() for _ in range(steps + 1)][1:]  # the first step warms up
        trainer.close()
    median = lambda key: statistics.median(r.get(key, 0.0) for r in rows)  # noqa: E731
    return {"shape": shape, "layers": layers or SHAPES[shape]["num_hidden_layers"], "parameters": parameters,
            "device": str(trainer.device), "dtype": dtype, "teacher": teacher, "steps": steps,
            "sequences_per_step": prompts * samples, "response_tokens": response_tokens,
            "peak_memory_gb": max(r["peak_memory_gb"] for r in rows),
            "tokens_per_s_generated": median("tokens_per_s_generated"), "tokens_per_s_trained": median("tokens_per_s_trained"),
            **{f"seconds_{s}": median(f"seconds_{s}") for s in STAGES},
            "logprob_gap_mean": median("logprob_gap_mean"), "rho": rows[-1]["rho"], "loss": rows[-1]["loss"]}


def report(result: dict) -> str:
    return json.dumps(result, indent=1)
