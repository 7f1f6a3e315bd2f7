"""The trainer's own model as a rollout engine (`llm_runs.rollout.engine`'s interface): a sampling loop
over transformers' KV cache, batched over prompts, with every prompt's samples drawn from its own seed.

Why not `generate`: it samples with one global generator, so a prompt's samples depend on which prompts
share its batch, and the only way to keep rollouts independent of how the global batch is split across
ranks was one `generate` call per prompt (slow). Here each prompt's generator draws its uniforms up front
and a token is the inverse CDF of the processed distribution at its uniform: any batching, any rank
split, the same samples (up to float rounding of the batched forward).

Colocated with the trainer it *is* the trainer's model, so pushing weights is a no-op and the sampler's
log-probabilities differ from the trainer's only by batching arithmetic (the stale-weights detector then
reads ~1e-6).
"""

from __future__ import annotations

import inspect
from typing import Iterable

import torch
import torch.distributed as dist
from transformers import DynamicCache

from llm_runs import parallel
from llm_runs.rollout.engine import Rollout, Sampling
from llm_runs.tokens import left_pad, pad_id


class HFEngine:
    """Batched sampling on a transformers causal LM, `batch_size` sequences per forward, seeded per prompt."""

    def __init__(self, model, tokenizer, batch_size: int = 64):
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size
        self.eos = {tokenizer.eos_token_id} | set(_as_list(getattr(model.generation_config, "eos_token_id", None)))
        self.eos.discard(None)
        self.pad = pad_id(tokenizer)
        # transformers 5.24 renamed the forward's `past_key_values` to `cache` (the old name warns)
        self._cache_keyword = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

    @torch.no_grad()
    def generate(self, prompt_ids: list[list[int]], n: int, sampling: Sampling,
                 seeds: list[int] | None = None) -> list[Rollout]:
        """Prompt i's n samples come from a generator seeded seeds[i], whatever the batching. Without
        `seeds` they are drawn from torch's global generator, so a caller that seeds torch (validation
        does) gets the same samples."""
        if seeds is None:
            seeds = torch.randint(0, 2**31 - 1, (len(prompt_ids),)).tolist()
        if len(seeds) != len(prompt_ids):
            raise ValueError(f"{len(seeds)} seeds for {len(prompt_ids)} prompts")
        was_training = self.model.training
        self.model.eval()
        out = []
        try:
            per_call = max(1, self.batch_size // n)
            for start in range(0, len(prompt_ids), per_call):
                part = slice(start, start + per_call)
                out += self._sample(prompt_ids[part], seeds[part], start, n, sampling)
        finally:
            self.model.train(was_training)
        return out

    def _sample(self, prompts: list[list[int]], seeds: list[int], offset: int, n: int,
                sampling: Sampling) -> list[Rollout]:
        """One batch: B prompts × n samples as B·n rows, prompt-major, decoded with the KV cache."""
        device = next(self.model.parameters()).device
        length = sampling.max_new_tokens
        # (B·n, L): row (i, j) reads its uniforms from prompt i's generator, j-th block of L
        uniforms = torch.cat([torch.rand(n, length, generator=torch.Generator().manual_seed(int(s)),
                                         dtype=torch.float64) for s in seeds]).to(device)
        ids, attention = left_pad([p for p in prompts for _ in range(n)], self.pad)
        ids, attention = ids.to(device), attention.to(device)
        positions = (attention.cumsum(-1) - 1).clamp(min=0)  # left padding: each row counts from its own start
        rows = ids.shape[0]
        tokens = torch.full((rows, length), self.pad, dtype=torch.long, device=device)
        logprobs = torch.zeros((rows, length), dtype=torch.float32, device=device)
        finished = torch.zeros(rows, dtype=torch.bool, device=device)
        eos = torch.tensor(sorted(self.eos), dtype=torch.long, device=device)
        cache, steps = {self._cache_keyword: DynamicCache(config=self.model.config)}, 0
        for t in range(length):
            out = self.model(input_ids=ids, attention_mask=attention, position_ids=positions, use_cache=True,
                             logits_to_keep=1, **cache)  # the cache fills in place
            token, logprob = next_token(out.logits[:, -1].float(), uniforms[:, t], sampling)
            token = torch.where(finished, self.pad, token)
            tokens[:, t], logprobs[:, t] = token, logprob
            steps = t + 1
            finished |= torch.isin(token, eos)
            if self._all_finished(finished):
                break
            ids, positions = token[:, None], positions[:, -1:] + 1
            attention = torch.cat([attention, attention.new_ones(rows, 1)], dim=1)
        return self._rollouts(tokens[:, :steps].cpu(), logprobs[:, :steps].cpu(), offset, n, sampling.logprobs)

    def _all_finished(self, finished: torch.Tensor) -> bool:
        """Every row of this rank, and, with sharded weights, of every rank (each forward gathers the shards,
        so all ranks must run the same number of forwards)."""
        left = (~finished).sum()
        if parallel.world_size() > 1:
            left = left.clone()
            dist.all_reduce(left)
        return left.item() == 0

    def _rollouts(self, tokens: torch.Tensor, logprobs: torch.Tensor, offset: int, n: int,
                  with_logprobs: bool) -> list[Rollout]:
        rollouts = []
        for row in range(tokens.shape[0]):
            ids = tokens[row].tolist()
            end = next((t + 1 for t, tok in enumerate(ids) if tok in self.eos), None)
            kept = len(ids) if end is None else end
            rollouts.append(Rollout(offset + row // n, ids[:kept], logprobs[row, :kept].tolist() if with_logprobs else None,
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


def next_token(logits: torch.Tensor, uniforms: torch.Tensor, sampling: Sampling) -> tuple[torch.Tensor, torch.Tensor]:
    """logits (R, V) float32, uniforms (R,) in [0, 1) → (token (R,), its log-probability (R,) under the
    processed distribution: temperature, then the nucleus of mass top_p, renormalised).

    The token is the inverse CDF at the row's uniform over the vocabulary in id order; a token outside
    the nucleus has zero mass, so it is never drawn."""
    logp = (logits / sampling.temperature).log_softmax(-1)
    if sampling.top_p < 1.0:
        logp = logp.masked_fill(~nucleus(logp, sampling.top_p), float("-inf")).log_softmax(-1)
    cdf = logp.double().exp().cumsum(-1)  # float64: the rounding of a 150k-term sum stays far below 1e-7
    token = torch.searchsorted(cdf, (uniforms * cdf[:, -1])[:, None], right=True)[:, 0].clamp(max=logp.shape[-1] - 1)
    return token, logp.gather(-1, token[:, None])[:, 0]


def nucleus(logp: torch.Tensor, top_p: float) -> torch.Tensor:
    """(R, V) log-probabilities → (R, V) bool: the smallest set of most likely tokens whose mass reaches
    top_p (the token that crosses it included; at least one token)."""
    ordered, order = logp.sort(-1)  # ascending: the mass at or below each token sums its small terms first
    keep = ordered.exp().cumsum(-1) > 1 - top_p
    keep[:, -1] = True
    return torch.zeros_like(keep).scatter(-1, order, keep)
