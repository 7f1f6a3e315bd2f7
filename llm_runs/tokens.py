"""Token-id plumbing shared by the rollout engine, the trainer and the warm start."""

from __future__ import annotations

import torch


def pad_id(tokenizer) -> int:
    """The id to pad with: the tokenizer's pad token, or its end-of-sequence token when it has none."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def left_pad(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Id lists → (ids (B, L), attention (B, L)) padded on the left, so that every row ends at the right edge
    (where generation starts, and where a response sits)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
        attention[i, width - len(r):] = 1
    return ids, attention
