"""Atomic checkpoints in the transformers format, plus everything else a resumed run needs.

    <run>/checkpoints/step-000004/   model (save_pretrained) + tokenizer + trainer_state.pt
    <run>/checkpoints/latest         the name of the newest complete checkpoint
    <run>/checkpoints/best/          the best validation checkpoint (when validation ran)

A checkpoint is written into a temporary folder and renamed into place, and `latest` is replaced
atomically after it, so a run killed at any moment leaves the previous checkpoint intact.
"""

from __future__ import annotations

import errno
import os
import pickle
import random
import shutil
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from llm_runs.config import ConfigError

STATE = "trainer_state.pt"  # in a checkpoint: optimizer, scheduler, teacher, sampler, RNG, run record; data only


def rng_state() -> dict:
    """Every generator's state as tensors, ints and tuples only, so that it loads with `weights_only=True`."""
    kind, keys, position, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), int(position), int(has_gauss), float(gauss))}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, position, has_gauss, gauss = state["numpy"]
    keys = keys.numpy() if isinstance(keys, torch.Tensor) else keys  # an ndarray in checkpoints before this
    np.random.set_state((kind, keys.astype(np.uint32), position, has_gauss, gauss))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class StorageError(OSError):
    """A checkpoint or export could not be written (no space left, or another OS error); what was partly
    written has been removed and the previous checkpoint is intact."""


def _no_space(err: BaseException, where: Path) -> bool:
    """Whether `err` (or what caused it) is the disk filling up: ENOSPC/EDQUOT, the writers' own words for it
    (safetensors: "StorageFull"; torch.save's zip writer only says "unexpected pos"), or a nearly full disk."""
    chain, seen = err, set()
    while chain is not None and id(chain) not in seen:
        seen.add(id(chain))
        if isinstance(chain, OSError) and chain.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if any(words in str(chain) for words in ("No space left", "StorageFull", "Disk quota")):
            return True
        chain = chain.__cause__ or chain.__context__
    try:
        return shutil.disk_usage(where).free < (1 << 20)
    except OSError:
        return False


@contextmanager
def atomic_folder(final: Path):
    """Yield a temporary folder beside `final`; on success it replaces `final` (the old one moved aside first),
    on any error it is removed — a full disk becomes a StorageError naming the folder."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".tmp-{final.name}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        yield tmp
        if final.exists():  # replacing (e.g. "best"): move the old one aside first
            old = final.parent / f".old-{final.name}"
            if old.exists():
                shutil.rmtree(old)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old)
        else:
            os.replace(tmp, final)
    except Exception as err:
        full = _no_space(err, final.parent)
        shutil.rmtree(tmp, ignore_errors=True)  # the partial folder must not keep holding the space
        if full:
            last = latest(final.parent.parent) if final.parent.name == "checkpoints" else None  # not strict: an aside
            kept = f"; the last complete checkpoint, {last}, is intact" if last else ""
            raise StorageError(errno.ENOSPC, f"no space left on the device while writing {final} (the partial "
                                             f"folder was removed{kept}): free some space and resume") from err
        raise


def save(run_dir: Path, name: str, model, tokenizer, state: dict, keep: int | None = 1, mark_latest: bool = True) -> Path:
    """Write checkpoint `name` atomically; keep the newest `keep` step checkpoints (None: all)."""
    root = Path(run_dir) / "checkpoints"
    final = root / name
    with atomic_folder(final) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        torch.save(state, tmp / STATE)
    if mark_latest:
        try:
            _write_text_atomic(root / "latest", name)
        except OSError as err:
            if _no_space(err, root):
                raise StorageError(errno.ENOSPC, f"no space left on the device while marking {final} as the "
                                                 f"latest checkpoint: free some space and resume") from err
            raise
        if keep is not None:
            steps = sorted(p for p in root.glob("step-*") if p.is_dir())
            for stale in steps[:-keep]:
                shutil.rmtree(stale)
    return final


def latest(run_dir: Path, strict: bool = False) -> Path | None:
    """The newest complete checkpoint named by checkpoints/latest, or None when there is no pointer. A pointer
    to a missing or incomplete folder (damage after the fact: writes are atomic) is None, or with `strict`
    an error — resuming must not quietly start over from step 0 and drop the run's log. The pointer names a
    folder of checkpoints/ itself: any other path (`../`, an absolute path, a link out) is refused, always."""
    root = Path(run_dir) / "checkpoints"
    pointer = root / "latest"
    if not pointer.exists():
        return None
    name = pointer.read_text().strip()
    path = root / name
    if not name or Path(name).name != name or name in (".", "..") or path.resolve().parent != root.resolve():
        raise ConfigError(f"{pointer} names {name!r}, which is not a checkpoint folder inside {root}: a "
                          f"checkpoint pointer never leads out of its run folder (was it edited, or planted?)")
    if (path / STATE).exists():
        return path
    if strict:
        raise ConfigError(f"{pointer} names {path.name}, which is missing or incomplete (no {STATE}): "
                          f"point it at a complete checkpoint, or delete it to start the run over from step 0")
    return None


# what a state file written before the RNG states were kept as tensors holds besides tensors and containers
try:
    from numpy._core.multiarray import _reconstruct
except ImportError:  # numpy < 2
    from numpy.core.multiarray import _reconstruct
_LEGACY_NUMPY = [np.ndarray, np.dtype, _reconstruct, type(np.dtype(np.uint32))]


def read_state(file: Path) -> dict:
    """A checkpoint's state file, read as data only (`torch.load(weights_only=True)`: tensors, numbers,
    strings and containers; no object is built and no code runs, whatever the file holds), with a clear error
    when it is damaged or holds anything else."""
    try:
        with torch.serialization.safe_globals(_LEGACY_NUMPY):
            return torch.load(file, weights_only=True)
    except pickle.UnpicklingError as err:
        raise ConfigError(f"{file}: holds more than data ({str(err).splitlines()[0][:200]}); a checkpoint is "
                          f"tensors, numbers and strings only, so it was not written by this trainer: not loaded") from None
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        if isinstance(err, torch.OutOfMemoryError):
            raise
        raise ConfigError(f"{file}: cannot be read ({type(err).__name__}: {str(err).splitlines()[0][:160]}); the "
                          f"checkpoint was damaged after it was written") from None


# ---------------------------------------------------------------------------------------------
# several processes: torch.distributed.checkpoint, each rank writing its own shards


def save_sharded(run_dir: Path, name: str, model, optimizer, teacher_model, state: dict, rank: int,
                 keep: int | None = 1) -> Path:
    """model + optimizer + teacher as DCP shards, `state` (rank 0's) and every rank's RNG states; atomic.

    Every rank must call it. Resumes on the same number of processes.
    """
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_state_dict

    root = Path(run_dir) / "checkpoints"
    final, tmp = root / name, root / f".tmp-{name}"
    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
    dist.barrier()
    model_state, optim_state = get_state_dict(model, optimizer)
    shards = {"model": model_state, "optimizer": optim_state}
    if teacher_model is not None:
        shards["teacher"] = get_model_state_dict(teacher_model)
    dcp.save(shards, checkpoint_id=str(tmp / "dcp"))
    torch.save(rng_state(), tmp / f"rng-rank{rank}.pt")
    if rank == 0:
        torch.save({**state, "world_size": dist.get_world_size()}, tmp / STATE)
    dist.barrier()
    if rank == 0:
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _write_text_atomic(root / "latest", name)
        if keep is not None:
            for stale in sorted(p for p in root.glob("step-*") if p.is_dir())[:-keep]:
                shutil.rmtree(stale)
    dist.barrier()
    return final


def load_sharded(path: Path, model, optimizer, teacher_model, rank: int) -> dict:
    """Fill model, optimizer and teacher from the DCP shards and restore this rank's RNG; returns rank 0's state."""
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (get_model_state_dict, get_state_dict, set_model_state_dict,
                                                         set_state_dict)

    state = read_state(path / STATE)
    world = dist.get_world_size() if dist.is_initialized() else 1
    if state.get("world_size") != world:
        raise ConfigError(f"checkpoint {path} was written by {state.get('world_size')} processes; "
                         f"resume it with the same number (this run has {world})")
    model_state, optim_state = get_state_dict(model, optimizer)
    shards = {"model": model_state, "optimizer": optim_state}
    if teacher_model is not None:
        shards["teacher"] = get_model_state_dict(teacher_model)
    dcp.load(shards, checkpoint_id=str(path / "dcp"))
    set_state_dict(model, optimizer, model_state_dict=shards["model"], optim_state_dict=shards["optimizer"])
    if teacher_model is not None:
        set_model_state_dict(teacher_model, shards["teacher"])
    set_rng_state(read_state(path / f"rng-rank{rank}.pt"))
    return state


def is_sharded(path: Path) -> bool:
    return (Path(path) / "dcp").is_dir()


# ---------------------------------------------------------------------------------------------
# a run's parts from a checkpoint (either kind)


def restore(path: Path, parts, lora: bool, rank: int, world: int, check) -> dict:
    """Fill `parts` (the trainer's: `model`, `optimizer`, `scheduler`, `teacher`, `sampler`, `device`) from the
    checkpoint at `path`, sharded or not; `check(run record)` is called before the optimizer, schedule, teacher
    and sampler are touched, and may refuse. Returns the checkpoint's run record."""
    if is_sharded(path) or world > 1:
        state = load_sharded(path, parts.model, parts.optimizer, parts.teacher.model, rank)
        check(state["run"])
        parts.scheduler.load_state_dict(state["scheduler"])
        parts.sampler.load_state_dict(state["sampler"])
        return state["run"]
    from safetensors.torch import load_file

    from llm_runs import model_files

    files = sorted(path.glob("*.safetensors"))
    for file in files:  # damaged weights: the file named, not a header error
        model_files.open_safetensors(file)
    if lora:
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(parts.model, load_file(path / "adapter_model.safetensors", device=str(parts.device)))
    else:
        weights = {}
        for file in files:
            weights.update(load_file(file, device=str(parts.device)))
        missing, unexpected = parts.model.load_state_dict(weights, strict=False)
        if unexpected or [m for m in missing if not m.endswith("lm_head.weight")]:
            raise RuntimeError(f"checkpoint {path}: missing {missing}, unexpected {unexpected}")
    state = read_state(path / STATE)
    check(state["run"])
    parts.optimizer.load_state_dict(state["optimizer"])
    parts.scheduler.load_state_dict(state["scheduler"])
    parts.teacher.load_state_dict(state["teacher"])
    parts.sampler.load_state_dict(state["sampler"])
    set_rng_state(state["rng"])
    return state["run"]
