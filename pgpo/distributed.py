"""Reduce the information signal over data-parallel ranks.

Every rank must step with the same ρ, so I is reduced exactly: the numerators Σ m·D and the
denominators Σ m of all micro-batches and ranks are summed, then divided once (`docs/method.md` §2).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from pgpo.information import ratio


def all_reduce_information(numerator, denominator, group=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum (numerator, denominator) over the ranks of `group` (default: the world).

    Args:
        numerator, denominator: 0-d tensors (or numbers) from `information(..., reduce="sum")`,
            already summed over this rank's micro-batches.
        group: a torch.distributed process group, or None for the default one.

    Returns:
        (numerator, denominator) summed over all ranks, as float64 tensors on the input's device
        (float64 so that summing many ranks loses nothing). Without an initialised process group this
        is the identity (up to that conversion). Call it on every rank: it is a collective.
    """
    device = numerator.device if isinstance(numerator, torch.Tensor) else torch.device("cpu")
    pair = torch.stack(
        [torch.as_tensor(numerator, dtype=torch.float64, device=device).reshape(()),
         torch.as_tensor(denominator, dtype=torch.float64, device=device).reshape(())]
    )
    if dist.is_available() and dist.is_initialized():
        # one collective for both numbers
        dist.all_reduce(pair, op=dist.ReduceOp.SUM, group=group)
    return pair[0], pair[1]


def global_information(numerator, denominator, group=None) -> torch.Tensor:
    """I over all ranks: the reduced numerator over the reduced denominator (0 if nothing is masked in)."""
    return ratio(*all_reduce_information(numerator, denominator, group))
