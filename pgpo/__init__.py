"""pgpo — the Physics-Guided Policy Optimization multiplier core.

    ρ = min(1 + α·I, ρ_max)

where I is the information signal between a model's predictions and its feedback-conditioned
self-teacher. This package holds the framework-free pieces shared by `sde_lab` and `llm_runs`:

- `Multiplier`       ρ = g(I), its viscosity 1/ρ and slope dρ/dI;
- `information`      the signal I from student and teacher log-probabilities (KL, reverse KL, JSD);
- `modulated_step`   an optimizer step whose update is exactly ρ times the plain one, state untouched;
- `all_reduce_information`, `global_information`   I reduced exactly over data-parallel ranks.
"""

from pathlib import Path

from pgpo.distributed import all_reduce_information, global_information
from pgpo.divergence import generalized_jsd, kl
from pgpo.information import information
from pgpo.multiplier import Multiplier
from pgpo.optimizer import modulated_step, step_method

__all__ = [
    "Multiplier",
    "information",
    "modulated_step",
    "step_method",
    "all_reduce_information",
    "global_information",
    "kl",
    "generalized_jsd",
]
__version__ = "0.1.0"

# the figures' matplotlib style, shared by sde_lab's and llm_runs' figures: plt.style.context(PAPER_STYLE)
PAPER_STYLE = str(Path(__file__).with_name("paper.mplstyle"))
