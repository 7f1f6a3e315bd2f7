"""Data parallelism with FSDP2 (`torchrun --nproc_per_node N -m llm_runs train …`); one process is the
degenerate case, so the trainer has a single code path.

- `init()` starts the process group from torchrun's environment (NCCL on GPUs, gloo on CPUs);
- `shard(model)` applies `fully_shard` to every decoder layer and to the root; on GPUs, bf16 compute
  with fp32 gradient reduction;
- `gather(values)` concatenates per-rank lists on every rank (for metrics).

FSDP2 averages gradients over ranks; the trainer scales its loss by the world size so that the
reduced gradient is that of the global batch's loss.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def init(device: torch.device) -> tuple[int, int]:
    """(rank, world size); initialises the default group when launched by torchrun with WORLD_SIZE > 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend)
        if device.type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return dist.get_rank(), dist.get_world_size()


def finish() -> None:
    """Tear the default group down before exit: left to interpreter shutdown, gloo's threads can abort the
    process ("terminate called without an active exception") after the run has finished. A vLLM engine's
    shutdown may already have destroyed it (then there is nothing left to do)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def barrier() -> None:
    """Every rank waits here for the others (a no-op with one process)."""
    if world_size() > 1:
        dist.barrier()


def compute_dtype(weights: torch.dtype, device: torch.device) -> torch.dtype:
    """The dtype the forward computes in: bf16 when sharded on GPUs (`shard`'s mixed precision), else the weights'.
    A rollout engine must sample in this dtype for its log-probs to match the trainer's."""
    return torch.bfloat16 if world_size() > 1 and device.type == "cuda" else weights


def shard(model: torch.nn.Module, device: torch.device, reshard_after_forward: bool = True) -> torch.nn.Module:
    """`fully_shard` per decoder layer and at the root (a no-op with one process)."""
    if world_size() == 1:
        return model
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mixed = compute_dtype(torch.float32, device) == torch.bfloat16
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if mixed \
        else MixedPrecisionPolicy()
    for layer in model.model.layers:
        fully_shard(layer, mp_policy=policy, reshard_after_forward=reshard_after_forward)
    fully_shard(model, mp_policy=policy, reshard_after_forward=reshard_after_forward)
    return model


def reshard(module: torch.nn.Module) -> None:
    """Free what an FSDP2 module's explicit `unshard()` gathered (not recursive; a no-op with one process)."""
    if world_size() > 1 and hasattr(module, "reshard"):
        module.reshard()


def gather(values: list) -> list:
    """Every rank's list, concatenated in rank order, on every rank."""
    if world_size() == 1:
        return list(values)
    out = [None] * world_size()
    dist.all_gather_object(out, list(values))
    return [v for part in out for v in part]
