"""The CPU experiment's settings: a run's (`RunConfig`) and the warm start's section, `warm_start:`.

`load(path, overrides, schema=DemoConfig)` reads them (the warm-start command, the demo); a plain
`load(path)` (training, `--resume`) checks the `warm_start` section against `WarmStartConfig` and leaves it
out (this module registers it: `llm_runs.config.register_experiment`; the command line imports it), so the
same file serves both. Light: no torch here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

from llm_runs.config import Range, RunConfig, register_experiment


@dataclass
class WarmStartConfig:
    """`python -m llm_runs warm-start`: supervised steps that teach the response format and to copy a
    "Correct solution" from the teacher's context, with letters drawn at random so that the question
    itself stays uninformative (unguided accuracy stays at chance)."""

    steps: Annotated[int, Range(0)] = 300
    """Supervised steps (one batch each)."""
    batch_size: Annotated[int, Range(1)] = 32
    """Examples per step."""
    lr: Annotated[float, Range(0.0)] = 3.0e-3
    """AdamW's learning rate (constant, no weight decay)."""
    guided_fraction: Annotated[float, Range(0.0, 1.0)] = 0.5
    """The share of each batch rendered with a demonstration in context."""


@register_experiment
@dataclass
class DemoConfig(RunConfig):
    """A run's settings and the warm start's (`llm_runs/configs/demo_cpu.yaml`)."""

    warm_start: WarmStartConfig = field(default_factory=WarmStartConfig)
    """Read by the warm-start command and the demo, not by training."""
