"""`[torchrun --nproc_per_node N -m] python -m llm_runs bench-checkpoint [--shape qwen3-8b] [--layers K]`: the
two ways to write a sharded run's checkpoint, timed against each other in one run on a model of the real
shape (random weights, AdamW state after one step):

- `dcp`: what the trainer does (`llm_runs.checkpoint.save_sharded`): every rank writes its own shards with
  `torch.distributed.checkpoint`;
- `gather`: the alternative: the full state gathered to rank 0 (offloaded to its host memory) and written
  there with `torch.save`.

For each, the median seconds over `--repeats`, the largest peak of accelerator memory over the ranks and the
largest peak of host memory (resident set, from the kernel's high-water mark, reset before each save), and
the size on disk; then gather/dcp ratios. With one process the model is still sharded (FSDP2 over a group of
one), so the comparison runs on one GPU, or on a CPU with `--shape tiny`.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist

from llm_runs import checkpoint
from llm_runs.config import ConfigError
from llm_runs.tools.smoke import SHAPES, write_shape


def _host_peak_reset() -> bool:
    """Reset this process's resident-set high-water mark (Linux: /proc/self/clear_refs); False where it cannot."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _host_peak_gib() -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20  # kB
    except OSError:
        pass
    return None


def _group(device: torch.device) -> tuple[int, int]:
    """(rank, world): torchrun's group, or a group of one process (DCP and FSDP2 need one)."""
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if "WORLD_SIZE" in os.environ:
            dist.init_process_group(backend)
        else:
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
        if device.type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return dist.get_rank(), dist.get_world_size()


def _model_and_optimizer(shape: str, layers: int | None, dtype: torch.dtype, device: torch.device, folder: Path):
    """A randomly initialised model of `shape`, sharded per decoder layer (FSDP2), and AdamW after one step on
    random gradients (so that its two moments exist, as in a run's checkpoint)."""
    from torch.distributed.fsdp import fully_shard
    from transformers import AutoConfig, AutoModelForCausalLM

    if dist.get_rank() == 0:
        write_shape(folder, shape, layers)
    dist.barrier()
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder), dtype=dtype)
    for layer in model.model.layers:
        fully_shard(layer)
    fully_shard(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
    for p in model.parameters():
        p.grad = torch.full_like(p, 1e-3)  # any finite gradient: the moments exist after the step
    optimizer.step()
    return model, optimizer


def _gather_save(model, optimizer, path: Path, rank: int) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    model_state, optim_state = get_state_dict(model, optimizer, options=options)  # a collective
    if rank == 0:
        torch.save({"model": model_state, "optimizer": optim_state}, path)
    dist.barrier()


def _measure(save, device: torch.device) -> dict:
    """Seconds, accelerator peak (GiB, the largest over ranks) and host peak (GiB, the largest over ranks)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    host = _host_peak_reset()
    dist.barrier()
    start = time.perf_counter()
    save()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peaks = torch.tensor([torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else 0.0,
                          (_host_peak_gib() or 0.0) if host else -1.0, seconds], dtype=torch.float64,
                         device=device)
    dist.all_reduce(peaks, op=dist.ReduceOp.MAX)
    return {"seconds": peaks[2].item(), "device_peak_gib": peaks[0].item() if device.type == "cuda" else None,
            "host_peak_gib": peaks[1].item() if peaks[1].item() >= 0 else None}


def _size_gib(path: Path) -> float:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(f.stat().st_size for f in files) / 2**30


def run(shape: str = "qwen3-8b", layers: int | None = None, repeats: int = 3, dtype: str = "bfloat16",
        device: str = "auto", out: str | None = None) -> dict:
    """Both saves, `repeats` times each (alternating), into `out` (a shared folder under torchrun on several
    nodes; default: a temporary folder on node 0's disk). Returns the medians and the ratios."""
    from llm_runs.build import DTYPES, resolve_device

    if repeats < 1:
        raise ConfigError(f"--repeats {repeats}: at least 1")
    dev = resolve_device(device)
    if shape == "qwen3-8b" and device == "auto" and dev.type != "cuda":
        raise ConfigError("bench-checkpoint --shape qwen3-8b: no CUDA device is visible; on a CPU use --shape tiny "
                          "(or say --device cpu, with --layers 1, for the real shape's layer)")
    rank, world = _group(dev)
    where = [tempfile.mkdtemp(prefix="bench-checkpoint-", dir=out) if rank == 0 else None]
    dist.broadcast_object_list(where, src=0)  # one folder for every rank (shared across nodes: --out)
    tmp = Path(where[0])
    try:
        model, optimizer = _model_and_optimizer(shape, layers, DTYPES[dtype], dev, tmp / "model")
        parameters = sum(p.numel() for p in model.parameters())
        runs: dict[str, list[dict]] = {"dcp": [], "gather": []}
        for r in range(repeats):
            runs["dcp"].append(_measure(lambda: checkpoint.save_sharded(tmp / "run", f"step-{r:06d}", model, optimizer,
                                                                        None, {"run": {}}, rank, keep=1), dev))
            runs["gather"].append(_measure(lambda: _gather_save(model, optimizer, tmp / "full.pt", rank), dev))
        sizes = {"dcp": _size_gib(tmp / "run" / "checkpoints" / f"step-{repeats - 1:06d}"),
                 "gather": _size_gib(tmp / "full.pt") if rank == 0 else 0.0}
        dist.barrier()
    finally:
        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
    result = {"shape": shape, "layers": layers or SHAPES[shape]["num_hidden_layers"], "parameters": parameters,
              "dtype": dtype, "device": str(dev), "processes": world, "repeats": repeats}
    for name, rows in runs.items():
        peak = lambda key: max((r[key] for r in rows), default=None) if rows[0][key] is not None else None  # noqa: E731
        result[name] = {"seconds": statistics.median(r["seconds"] for r in rows),
                        "device_peak_gib": peak("device_peak_gib"), "host_peak_gib": peak("host_peak_gib"),
                        "disk_gib": sizes[name]}
    ratio = lambda key: (result["gather"][key] / result["dcp"][key]  # noqa: E731
                         if result["dcp"][key] and result["gather"][key] is not None else None)
    result["gather_over_dcp"] = {key: ratio(key) for key in ("seconds", "device_peak_gib", "host_peak_gib")}
    dist.destroy_process_group()
    return result


def report(result: dict) -> str:
    return json.dumps(result, indent=1)


def command(args) -> int:
    """`python -m llm_runs bench-checkpoint`: the JSON on rank 0's stdout."""
    result = run(args.shape, args.layers, args.repeats, args.dtype, args.device, args.out)
    if int(os.environ.get("RANK", "0")) == 0:
        print(report(result))
    return 0
