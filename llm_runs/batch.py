"""Micro-batches: left-padded student and teacher sequences whose responses end at the right edge, and the
forward pass that returns the logits predicting those responses."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from llm_runs.tokens import left_pad


@dataclass
class Batch:
    """One micro-batch; every response is right-aligned in the last R positions."""

    student_ids: torch.Tensor  # (b, Ls)
    student_attention: torch.Tensor  # (b, Ls)
    teacher_ids: torch.Tensor  # (b, Lt)
    teacher_attention: torch.Tensor  # (b, Lt)
    response_ids: torch.Tensor  # (b, R)
    response_mask: torch.Tensor  # (b, R)
    sampler_logprobs: torch.Tensor  # (b, R)
    sample_mask: torch.Tensor  # (b,)

    def to(self, device: torch.device) -> "Batch":
        return Batch(*(to_device(t, device) for t in self.__dict__.values()))


def make_batch(prompts: list[list[int]], teacher_prompts: list[list[int]], responses: list[list[int]],
               logprobs: list[list[float]], mask: list[float], pad: int) -> Batch:
    """b samples → a `Batch` on the host: prompt + response (student) and teacher context + response (teacher),
    left-padded with `pad`; R = the longest response; `mask` (b,) is 1 where the sample has a teacher."""
    width = max(len(r) for r in responses)
    response_ids = torch.full((len(responses), width), pad, dtype=torch.long)
    response_mask = torch.zeros((len(responses), width))
    sampler = torch.zeros((len(responses), width))
    for i, (r, lp) in enumerate(zip(responses, logprobs)):
        response_ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
        response_mask[i, width - len(r):] = 1.0
        sampler[i, width - len(r):] = torch.tensor(lp)
    s_ids, s_att = left_pad([p + r for p, r in zip(prompts, responses)], pad)
    t_ids, t_att = left_pad([p + r for p, r in zip(teacher_prompts, responses)], pad)
    return Batch(s_ids, s_att, t_ids, t_att, response_ids, response_mask, sampler, torch.tensor(mask))


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on `device`; to a GPU from pinned memory, asynchronously (a copy from pageable memory
    would wait for the GPU to finish its queue first)."""
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


def response_logits(model, ids: torch.Tensor, attention: torch.Tensor, length: int) -> torch.Tensor:
    """Logits predicting the last `length` tokens: (b, L) → (b, length, V), via logits_to_keep."""
    positions = (attention.cumsum(-1) - 1).clamp(min=0)  # left padding: positions count real tokens only
    out = model(input_ids=ids, attention_mask=attention, position_ids=positions, logits_to_keep=length + 1,
                use_cache=False)  # a single pass: a KV cache would only cost memory
    return out.logits[:, :-1]
