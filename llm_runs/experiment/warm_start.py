"""The warm start of the CPU experiment: a short supervised phase before self-distillation.

A random tiny model never answers in the template's format, so SDPO's sibling rule finds no success
and gives no teacher. This phase teaches exactly two things and nothing about the task:

- the format: the student's prompt → a minimal response (`\\boxed{L}` or `<answer>…</answer>`);
- the use of context: the teacher's prompt with "Correct solution: <response for L>" → that response.

Every letter L is drawn at random, independent of the question, so nothing here rewards reading the
question: unguided accuracy stays at chance (it is measured and recorded), the copy rate shows the
self-teacher has something to give, and whatever the model later learns about the task comes from
self-distillation. The result is an exported checkpoint (`<out>/final`, the transformers format) that
a run reads through `model.path`, exactly as the Qwen3-8B configs read theirs.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from tqdm.auto import trange

from llm_runs.config import RunConfig
from llm_runs.data import Example, answer_text, messages, render
from llm_runs.evaluate import evaluate
from llm_runs.experiment.config import DemoConfig
from llm_runs.tokens import left_pad, pad_id
from llm_runs.build import DTYPES, load_examples, load_model, model_source, resolve_device, seed_everything


def letters_of(example: Example) -> str:
    """The option letters of a question ("A: …" lines), or ABCD when it lists none."""
    return "".join(re.findall(r"^([A-Z]):", example.prompt, flags=re.M)) or "ABCD"


def _corpus(examples: list[Example], template: str) -> list[str]:
    """What the tokenizer is trained on: the questions and the texts the templates wrap around them."""
    demo = answer_text("A", template)
    texts = [e.prompt for e in examples]
    for e in examples[:64]:  # the fixed wording (instructions, "Correct solution") needs a few copies only
        texts += [m["content"] for m in messages(e, template, demo)] + [demo]
    return texts


def _sequences(rows: list[tuple[list[int], list[int]]], pad: int) -> tuple[torch.Tensor, ...]:
    """(prompt, target) id lists → left-padded ids, attention, labels (-100 outside the targets): (B, L) each."""
    ids, attention = left_pad([p + t for p, t in rows], pad)
    labels = torch.full_like(ids, -100)
    for i, (_, t) in enumerate(rows):
        labels[i, ids.shape[1] - len(t):] = torch.tensor(t)
    return ids, attention, labels


def copy_rate(model, tokenizer, examples: list[Example], config: RunConfig, seed: int) -> float:
    """mean@k of answering the letter a demonstration in context names (a random one per question)."""
    rng = np.random.default_rng(seed)
    targets = [dataclasses.replace(e, answer=str(rng.choice(list(letters_of(e))))) for e in examples]
    demos = [answer_text(e.answer, config.data.template) for e in targets]
    return evaluate(model, tokenizer, targets, config.data.template, config.eval, config.model.enable_thinking,
                    demonstrations=demos)["mean_at_k"]


def draw(train: list[Example], count: int, rng: np.random.Generator, guided_fraction: float,
         template: str) -> list[tuple[Example, str | None, str]]:
    """`count` (example, demonstration or None, target response) triples; the letter is random, never the answer's."""
    out = []
    for i in rng.integers(0, len(train), count):
        letter = str(rng.choice(list(letters_of(train[i]))))
        demo = answer_text(letter, template) if rng.random() < guided_fraction else None
        out.append((train[i], demo, answer_text(letter, template)))
    return out


def warm_start(config: DemoConfig, out: str | Path, progress: bool = True) -> dict:
    """Train the warm start into `out` (config.yaml, base_model/, final/, warm_start.json); returns the record.
    `config.warm_start` holds its settings (`load(path, overrides, schema=DemoConfig)`)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    w, template, thinking = config.warm_start, config.data.template, config.model.enable_thinking
    seed_everything(config.train.seed)
    device = resolve_device(config.train.device)
    train, test = load_examples(config, "train"), load_examples(config, "test")
    source = model_source(config, out, _corpus(train, template))
    model, tokenizer = load_model(source, DTYPES[config.model.dtype], device)
    model.train()
    eos = tokenizer.eos_token_id
    pad = pad_id(tokenizer)
    optimizer = torch.optim.AdamW(model.parameters(), lr=w.lr, weight_decay=0.0)
    rng = np.random.default_rng([config.train.seed, 1])
    losses, start = [], time.perf_counter()
    for _ in trange(w.steps, desc="warm start", disable=not progress):
        rows = [(tokenizer(render(tokenizer, example, template, demo, thinking)).input_ids,
                 tokenizer(target).input_ids + [eos])
                for example, demo, target in draw(train, w.batch_size, rng, w.guided_fraction, template)]
        ids, attention, labels = (t.to(device) for t in _sequences(rows, pad))
        loss = model(input_ids=ids, attention_mask=attention, labels=labels, use_cache=False).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    seconds = time.perf_counter() - start
    model.eval()
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(config.train.seed)
        unguided = evaluate(model, tokenizer, test, template, config.eval, thinking)
        copied = copy_rate(model, tokenizer, test, config, config.train.seed)
    model.save_pretrained(out / "final")
    tokenizer.save_pretrained(out / "final")
    (out / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    record = {"steps": w.steps, "seconds": seconds, "loss_first": losses[0] if losses else None,
              "loss_last": float(np.mean(losses[-10:])) if losses else None,
              "held_out_mean_at_k": unguided["mean_at_k"], "held_out_format_rate": unguided["format_rate"],
              "copy_rate": copied, "k": unguided["k"], "questions": unguided["questions"],
              "settings": dataclasses.asdict(w), "checkpoint": str(out / "final")}
    (out / "warm_start.json").write_text(json.dumps(record, indent=1))
    return record
