"""`python -m pgpo` (what `make demo` runs) works and shows what it claims."""

import subprocess
import sys

import pytest


def run(*args):
    return subprocess.run([sys.executable, "-m", "pgpo", *args], capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_demo_shows_an_exact_modulated_step():
    done = run()
    assert done.returncode == 0, done.stderr
    assert "ratio 1.600000000000" in done.stdout  # ρ(0.6) with α = 1, ρ_max = 2
    assert "moment buffers bit-identical to the plain step: True" in done.stdout


def test_demo_rejects_a_bad_parameter_by_name():
    done = run("--rho-max", "0.5")
    assert done.returncode == 2 and "rho_max must be >= 1" in done.stderr
