"""`pgpo` installs and runs with torch and numpy alone; the other two packages say which extra they need."""

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# a fresh interpreter where everything but torch and numpy (and the standard library) cannot be imported, as
# after `pip install pgpo-toolkit` into an environment that holds only those
BLOCK = """
import sys
HEAVY = {"scipy", "matplotlib", "sdeint", "tqdm", "transformers", "tokenizers", "yaml", "safetensors",
         "accelerate", "peft", "vllm", "trl"}
for name in HEAVY:
    sys.modules[name] = None  # `import name` fails and `find_spec(name)` is None: as if not installed
"""


def run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCK + code], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


def test_the_base_install_is_torch_and_numpy():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert sorted(d.split(">")[0].split("=")[0].split("<")[0] for d in project["dependencies"]) == ["numpy", "torch"]
    extras = project["optional-dependencies"]
    own = next(d for d in extras["test"] if d.startswith("pgpo-toolkit["))
    # `make test` still installs everything, TRL included (its integration is tested)
    assert {"all", "trl"} <= set(own[len("pgpo-toolkit["):-1].split(","))


def test_pgpo_works_with_torch_and_numpy_alone():
    done = run("""
import torch, pgpo
m = pgpo.Multiplier(alpha=1.0, rho_max=2.0)
logp = torch.log_softmax(torch.randn(2, 3, 5), -1)
num, den = pgpo.information(logp, logp.flip(-1), torch.ones(2, 3), reduce="sum")
p = torch.nn.Parameter(torch.ones(3)); p.grad = torch.ones(3)
rho = m(pgpo.global_information(num, den).item())
_, method = pgpo.modulated_step(torch.optim.AdamW([p], lr=0.1), rho, return_method=True)
import runpy; sys.argv = ["pgpo"]; runpy.run_module("pgpo", run_name="__main__")
loaded = sorted(k for k, v in sys.modules.items() if v is not None and k.split(".")[0] in HEAVY | {"sde_lab", "llm_runs"})
print("RESULT", 1.0 < rho <= 2.0, method, loaded)
""")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "RESULT True lr []" in done.stdout


def test_the_other_packages_name_their_extra():
    for package, extra in (("sde_lab", "sde"), ("llm_runs", "llm"), ("pgpo.trl", "trl")):
        done = run(f"import {package}")
        assert done.returncode != 0
        assert f"pip install 'pgpo-toolkit[{extra}]'" in done.stderr, done.stderr[-2000:]
