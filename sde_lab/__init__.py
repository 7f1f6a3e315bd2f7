"""sde_lab — SGD and PGPO as Euler–Maruyama-discretised SDEs, and their measured weak order.

    result = weak_error(problems.quadratic(), etas=[2**-j for j in range(9, 15)], horizon=2.0)
    result.slope, result.slope_ci, result.verdict()

- `Problem`, `problems`     what is optimised: ∇L, Σ^{1/2}, the information signal, mini-batches;
- `DiscreteProcess`         SGD / PGPO at step η;
- `sme`, `SDEModel`         their stochastic modified equations, each with the weak order it claims;
- `euler_maruyama`          the scheme and the coupled simulation;
- `oracles`                 exact moments where a problem has them;
- `weak_error`, `fit`       the measurement and its fits with 95% intervals.
"""

from sde_lab import problems
from sde_lab.discrete import DiscreteProcess
from sde_lab.problem import Problem
from sde_lab.sme import SDEModel, sme
from sde_lab.weak_error import WeakErrorResult, weak_error

__all__ = ["Problem", "problems", "DiscreteProcess", "SDEModel", "sme", "weak_error", "WeakErrorResult"]
