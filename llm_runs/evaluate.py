"""Validation: mean@k accuracy on the test split (k = 16 samples per question, T = 0.6, top-p 0.95)."""

from __future__ import annotations

import numpy as np
from tqdm.auto import tqdm

from llm_runs.data import Example, render
from llm_runs.reward import extract, score
from llm_runs.rollout import HFEngine, Sampling


def evaluate(model, tokenizer, examples: list[Example], template: str, eval_config, enable_thinking: bool = False,
             engine=None, progress: bool = False, demonstrations: list[str] | None = None) -> dict:
    """{"mean_at_k", "format_rate", "k", "questions", "per_question": [{"idx", "accuracy"}], "samples": [{"idx",
    "question", "answer", "completion", "reward"}]}; seeded by torch's generator. `samples`: the first sample of
    each of the first `eval.keep_samples` questions, to read what the model writes. `format_rate`: the share of responses with an extractable answer. With `demonstrations`
    (one per example) the prompts are the teacher's, with that "Correct solution" in context."""
    if eval_config.max_questions is not None:
        examples = examples[: eval_config.max_questions]
    if demonstrations is not None and len(demonstrations) < len(examples):
        raise ValueError(f"{len(demonstrations)} demonstrations for {len(examples)} examples")
    engine = engine or HFEngine(model, tokenizer, batch_size=eval_config.batch_size * eval_config.samples)
    k = eval_config.samples
    sampling = Sampling(eval_config.temperature, eval_config.top_p, eval_config.max_new_tokens, logprobs=False)
    per_question, formatted, samples = [], 0, []
    for start in tqdm(range(0, len(examples), eval_config.batch_size), desc="eval", disable=not progress, leave=False):
        chunk = examples[start:start + eval_config.batch_size]
        demos = demonstrations[start:start + len(chunk)] if demonstrations is not None else [None] * len(chunk)
        prompts = [tokenizer(render(tokenizer, e, template, d, enable_thinking)).input_ids for e, d in zip(chunk, demos)]
        rollouts = engine.generate(prompts, k, sampling)
        texts = tokenizer.batch_decode([r.token_ids for r in rollouts], skip_special_tokens=True)
        formatted += sum(extract(t, template) is not None for t in texts)
        for q, example in enumerate(chunk):
            scores = [score(t, example.answer, template) for t in texts[q * k:(q + 1) * k]]
            per_question.append({"idx": example.idx, "accuracy": float(np.mean(scores))})
            if len(samples) < eval_config.keep_samples:
                samples.append({"idx": example.idx, "question": example.prompt, "answer": example.answer,
                                "completion": texts[q * k], "reward": scores[0]})
    return {"mean_at_k": float(np.mean([q["accuracy"] for q in per_question])),
            "format_rate": formatted / max(1, k * len(per_question)), "k": k,
            "questions": len(per_question), "per_question": per_question, "samples": samples}
