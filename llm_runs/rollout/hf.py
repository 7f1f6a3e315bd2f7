"""transformers `generate` as a rollout engine (`llm_runs.rollout.engine`'s interface).

Colocated with the trainer it *is* the trainer's model, so pushing weights is a no-op and the sampler's
log-probabilities differ from the trainer's only by batching arithmetic (the stale-weights detector then
reads ~1e-6).
"""

from __future__ import annotations

from typing import Iterable

import torch

from llm_runs import parallel
from llm_runs.rollout.engine import Rollout, Sampling
from llm_runs.tokens import left_pad, pad_id


class HFEngine:
    """transformers `generate`, batched with left padding; seeded by torch's global generator."""

    def __init__(self, model, tokenizer, batch_size: int = 64):
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size
        self.eos = {tokenizer.eos_token_id} | set(_as_list(getattr(model.generation_config, "eos_token_id", None)))
        self.pad = pad_id(tokenizer)

    @torch.no_grad()
    def generate(self, prompt_ids: list[list[int]], n: int, sampling: Sampling,
                 seeds: list[int] | None = None) -> list[Rollout]:
        """With `seeds`, prompt i's n samples come from its own generator seeded seeds[i] (one call per
        prompt): the rollouts then do not depend on how prompts are batched or split across ranks."""
        was_training = self.model.training
        self.model.eval()
        out = []
        try:
            if seeds is not None:
                if len(seeds) != len(prompt_ids):
                    raise ValueError(f"{len(seeds)} seeds for {len(prompt_ids)} prompts")
                for i, (prompt, seed) in enumerate(zip(prompt_ids, seeds)):
                    with torch.random.fork_rng(devices=self._cuda_devices()):
                        torch.manual_seed(seed)
                        out += self._generate([prompt], i, n, sampling)
            else:
                per_call = max(1, self.batch_size // n)
                for start in range(0, len(prompt_ids), per_call):
                    out += self._generate(prompt_ids[start:start + per_call], start, n, sampling)
        finally:
            self.model.train(was_training)
        return out

    def _cuda_devices(self) -> list:
        device = next(self.model.parameters()).device
        return [device] if device.type == "cuda" else []

    def _generate(self, prompts: list[list[int]], offset: int, n: int, sampling: Sampling) -> list[Rollout]:
        device = next(self.model.parameters()).device
        ids, attention = left_pad(prompts, self.pad)  # every prompt ends where generation starts
        result = self.model.generate(
            input_ids=ids.to(device), attention_mask=attention.to(device), do_sample=True,
            temperature=sampling.temperature, top_p=sampling.top_p, top_k=0, max_new_tokens=sampling.max_new_tokens,
            num_return_sequences=n, output_scores=sampling.logprobs, return_dict_in_generate=True,
            pad_token_id=self.pad, eos_token_id=sorted(self.eos),
            synced_gpus=parallel.world_size() > 1)  # sharded weights: every rank runs every forward
        new = result.sequences[:, ids.shape[1]:].cpu()
        if sampling.logprobs:  # the processed scores are the sampling distribution (temperature, top-p)
            scores = torch.stack(result.scores, dim=1).float().log_softmax(-1).cpu()  # (B·n, L, V)
            chosen = scores.gather(-1, new[..., None])[..., 0]
        rollouts = []
        for row in range(new.shape[0]):
            tokens = new[row].tolist()
            end = next((t + 1 for t, tok in enumerate(tokens) if tok in self.eos), None)
            length = len(tokens) if end is None else end
            rollouts.append(Rollout(offset + row // n, tokens[:length],
                                    chosen[row, :length].tolist() if sampling.logprobs else None,
                                    "length" if end is None else "stop"))
        return rollouts

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy the tensors into the engine's model, unless it is the trainer's own model (colocated)."""
        params = dict(self.model.named_parameters())
        for name, tensor in named_tensors:
            if name not in params:
                raise KeyError(f"engine model has no parameter {name!r}")
            if params[name].data_ptr() != tensor.data_ptr():
                params[name].data.copy_(tensor)

    def sleep(self) -> None:  # nothing to release: the model is shared with the trainer
        pass

    def wake(self) -> None:
        pass

    def close(self) -> None:  # the model belongs to the trainer
        pass


def _as_list(value) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple, set)) else [value]
