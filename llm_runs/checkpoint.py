"""Atomic checkpoints in the transformers format, plus everything else a resumed run needs.

    <run>/checkpoints/step-000004/   model (save_pretrained) + tokenizer + trainer_state.pt
    <run>/checkpoints/latest         the name of the newest complete checkpoint
    <run>/checkpoints/best/          the best validation checkpoint (when validation ran)

A checkpoint is written into a temporary folder and renamed into place, and `latest` is replaced
atomically after it, so a run killed at any moment leaves the previous checkpoint intact.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def save(run_dir: Path, name: str, model, tokenizer, state: dict, keep: int | None = 1, mark_latest: bool = True) -> Path:
    """Write checkpoint `name` atomically; keep the newest `keep` step checkpoints (None: all)."""
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / name
    tmp = root / f".tmp-{name}"
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    torch.save(state, tmp / "trainer_state.pt")
    if final.exists():  # replacing (e.g. "best"): move the old one aside first
        old = root / f".old-{name}"
        if old.exists():
            shutil.rmtree(old)
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old)
    else:
        os.replace(tmp, final)
    if mark_latest:
        _write_text_atomic(root / "latest", name)
        if keep is not None:
            steps = sorted(p for p in root.glob("step-*") if p.is_dir())
            for stale in steps[:-keep]:
                shutil.rmtree(stale)
    return final


def latest(run_dir: Path) -> Path | None:
    pointer = Path(run_dir) / "checkpoints" / "latest"
    if not pointer.exists():
        return None
    path = pointer.parent / pointer.read_text().strip()
    return path if (path / "trainer_state.pt").exists() else None
