"""sde_lab — SGD and PGPO as Euler–Maruyama-discretised SDEs, and their measured weak order.

    result = weak_error(catalog.quadratic(), etas=[2**-j for j in range(9, 15)], horizon=2.0)
    result.slope, result.slope_ci, result.verdict()

The library:
- `Problem`, `catalog`      what is optimised: ∇L, Σ^{1/2}, the information signal, mini-batches; the built-ins;
- `observables`, `oracles`  test functions g; exact moments where a problem has them;
- `DiscreteProcess`         SGD / PGPO at step η (`discrete`);
- `Adaptive`                RMSprop / Adam (PGPO on each) in Malladi et al.'s scaling, with their SDEs,
                            each declaring its order in h = η² (`adaptive`);
- `sme`, `SDEModel`         their stochastic modified equations, each declaring the weak order it claims
                            (`sme.models_and_orders()`: every one with its order);
- `brownian`                the solvers' Brownian increments (numpy's generator, SFC64, on the CPU);
- `schemes`, `coupling`     Euler–Maruyama (declaring its weak and strong order), Richardson extrapolation
                            at that order; the coupled simulation of a process against its SDE;
- `weak_error`, `fit`       the measurement and its fits with 95% intervals;
- `stability`, `density`    the stable-step check; 1-D Fokker–Planck laws.

Its uses that make claims (the claims table, the figures, the benchmark) are `sde_lab.studies`.
"""

from importlib.util import find_spec

# `pgpo` installs with torch and numpy alone; this package needs its extra too
_MISSING = [m for m in ("scipy", "matplotlib", "sdeint", "tqdm") if find_spec(m) is None]
if _MISSING:
    raise ImportError(f"sde_lab needs {', '.join(_MISSING)}: pip install 'pgpo-toolkit[sde]' (from a clone: "
                      f"pip install -e '.[sde]'; everything: '.[all]')")

from sde_lab import catalog, sme  # the module, callable as its function sme (sde_lab/sme.py)
from sde_lab.adaptive import Adaptive, AdaptiveProcess, adaptive_sde
from sde_lab.discrete import DiscreteProcess
from sde_lab.problem import Problem
from sde_lab.sme import SDEModel
from sde_lab.weak_error import WeakErrorResult, weak_error

__all__ = ["Problem", "catalog", "DiscreteProcess", "SDEModel", "sme", "weak_error", "WeakErrorResult", "Adaptive",
           "AdaptiveProcess", "adaptive_sde"]
