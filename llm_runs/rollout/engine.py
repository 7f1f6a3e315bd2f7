"""The rollout engines' one small interface (`hf.HFEngine` and `vllm.VLLMEngine` implement it).

    engine.generate(prompt_ids, n, sampling, seeds=None) → [Rollout] * (len(prompt_ids) · n), prompt-major;
                                              prompt i's samples drawn from seeds[i] (else from torch's
                                              global generator), whatever the batching or the rank split
    engine.update_weights(named_tensors)      push the trainer's weights
    engine.sleep() / engine.wake()            release / reclaim memory around training (where supported)
    engine.close()                            shut down (vLLM: before the process group goes)

`hf.HFEngine` samples on the trainer's own model (its own loop over transformers' KV cache);
`vllm.VLLMEngine` runs a `vllm.LLM` in the training process (the `gpu` extra on CUDA, vLLM's CPU build in `.venv-vllm` on a CPU).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Protocol

import torch


@dataclass(frozen=True)
class Sampling:
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 8192
    logprobs: bool = True  # return the sampler's log-probability of every sampled token


@dataclass
class Rollout:
    prompt_index: int  # into the prompt_ids list
    token_ids: list[int]  # the response, ending with EOS unless truncated
    logprobs: list[float] | None  # the sampler's log π(y_t), len(token_ids)
    finish_reason: str  # "stop" | "length"


class RolloutEngine(Protocol):
    def generate(self, prompt_ids: list[list[int]], n: int, sampling: Sampling,
                 seeds: list[int] | None = None) -> list[Rollout]: ...

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None: ...

    def sleep(self) -> None: ...

    def wake(self) -> None: ...

    def close(self) -> None: ...
