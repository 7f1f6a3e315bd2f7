"""Configs usable from anywhere: a shipped config by name, a config's relative paths against the directory
the command runs in (the shipped fixtures from the installed package), a wheel that carries both, and the
README's quick-start commands run as written."""

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from llm_runs import paths
from llm_runs.config import ConfigError, load
from llm_runs.data import DataError, load_split

ROOT = Path(__file__).resolve().parents[2]


def _cli(args, cwd, pythonpath=ROOT, timeout=600):
    env = {**os.environ, "PYTHONPATH": str(pythonpath)}
    return subprocess.run([sys.executable, "-m", "llm_runs", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_a_shipped_config_loads_by_name_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("tiny_cpu", "tiny_cpu.yaml", "qwen3_8b_physics_pgpo_a2"):
        assert paths.config_file(name).parent == ROOT / "llm_runs" / "configs"
    assert load("qwen3_8b_physics_pgpo_a2").pgpo.alpha == 2
    assert len(paths.shipped_configs()) == len(list((ROOT / "llm_runs" / "configs").glob("*.yaml")))
    with pytest.raises(ConfigError, match=r"config file tiny_gpu does not exist \(or a shipped config's name: .*tiny_cpu"):
        load("tiny_gpu")
    with pytest.raises(ConfigError, match="config file sub/tiny_cpu does not exist"):
        load("sub/tiny_cpu")  # a path is a path: never swapped for a shipped config of the same name


def test_a_file_beside_shadows_the_shipped_config_of_that_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert load("tiny_cpu").pgpo.alpha == 1.0  # none here: the shipped config
    (tmp_path / "tiny_cpu.yaml").write_text("pgpo:\n  alpha: 7.0\n")
    assert load("tiny_cpu.yaml").pgpo.alpha == 7.0  # the user's file, not the shipped one
    assert load("tiny_cpu").pgpo.alpha == 7.0  # the bare name too: a file here wins over the shipped config


def test_relative_paths_are_read_from_the_working_directory_then_the_package(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shipped = "llm_runs/fixtures/toy_science/test.jsonl"
    assert paths.input_file(shipped) == ROOT / shipped  # not here: the installed package's
    assert len(load_split(shipped)) == len(load_split(ROOT / shipped))
    (tmp_path / "llm_runs" / "fixtures" / "toy_science").mkdir(parents=True)
    (tmp_path / shipped).write_text(json.dumps({"idx": 0, "prompt": "mine", "answer": "A"}) + "\n")
    assert [e.prompt for e in load_split(shipped)] == ["mine"]  # the working directory's own file first
    with pytest.raises(DataError, match=r"split file data/sciknoweval/physics/test\.json does not exist; make the "
                                        r"Science Q&A splits with `python -m llm_runs data sciknoweval --out "
                                        r"data/sciknoweval`"):
        load_split("data/sciknoweval/physics/test.json")  # named as the config wrote it


@pytest.mark.slow
def test_an_installed_wheel_trains_the_shipped_config_by_name_outside_the_repository(tmp_path):
    """The wheel `pip` builds from pyproject.toml, unpacked as an install would, runs `--config tiny_cpu` from
    an empty directory: the configs and fixtures are package data."""
    source = tmp_path / "source"
    source.mkdir()
    for part in ("pyproject.toml", "README.md", "LICENSE", "pgpo", "sde_lab", "llm_runs"):
        copy = shutil.copytree if (ROOT / part).is_dir() else shutil.copy
        copy(ROOT / part, source / part, **({"ignore": shutil.ignore_patterns("__pycache__")}
                                              if (ROOT / part).is_dir() else {}))
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                            str(tmp_path / "wheel"), str(source)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-2000:]
    site = tmp_path / "site"
    with zipfile.ZipFile(next((tmp_path / "wheel").glob("*.whl"))) as wheel:
        names = set(wheel.namelist())
        wheel.extractall(site)
    for shipped in (ROOT / "llm_runs" / "configs").glob("*.yaml"):
        assert f"llm_runs/configs/{shipped.name}" in names
    for fixture in (ROOT / "llm_runs" / "fixtures").rglob("*.*"):
        assert fixture.relative_to(ROOT).as_posix() in names
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    found = subprocess.run([sys.executable, "-c", "import llm_runs; print(llm_runs.__file__)"], cwd=elsewhere,
                           env={**os.environ, "PYTHONPATH": str(site)}, capture_output=True, text=True)
    assert Path(found.stdout.strip()).is_relative_to(site)  # the wheel's package, not the repository's
    done = _cli(["train", "--config", "tiny_cpu", "--no-progress", "train.steps=2", "train.eval_every=0",
                 "train.checkpoint_every=0"], cwd=elsewhere, pythonpath=site)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = (elsewhere / "runs" / "tiny_cpu-seed0" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["step"] for r in rows] == [1, 2]


def _readme_quick_start() -> list[str]:
    """The `python -m llm_runs …` lines of the README's CPU quick start, comments stripped."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"\*\*On a CPU, in seconds.*?```bash\n(.*?)```", text, re.S).group(1)
    return [line.split("#")[0].strip() for line in block.splitlines() if line.startswith("python -m llm_runs ")]


@pytest.mark.slow
def test_the_readme_quick_start_runs_as_written_from_an_empty_directory(tmp_path):
    """train → resume → eval (final and best) → compare, verbatim; the bench commands too, shortened (their
    full length is a measurement: minutes)."""
    lines = _readme_quick_start()
    commands = [shlex.split(line)[3:] for line in lines]  # after `python -m llm_runs`
    assert [c[0] for c in commands[:5]] == ["train", "train", "eval", "eval", "compare"]
    shorter = {"bench": ["--steps", "1", "--repeats", "1"], "bench-loss": ["--vocab", "512", "--hidden", "64",
                                                                           "--device", "cpu"]}
    for args in commands:
        done = _cli(args + shorter.get(args[0], []), cwd=tmp_path)
        assert done.returncode == 0, f"{' '.join(args)}:\n{done.stderr[-3000:]}"
    run = tmp_path / "runs" / "tiny_cpu-seed0"
    assert [json.loads(r)["step"] for r in (run / "metrics.jsonl").read_text().splitlines()] == list(range(1, 13))
    for evaluated in (run / "final", run / "checkpoints" / "best"):
        result = json.loads((evaluated / "eval.json").read_text())
        assert result["questions"] == 4 and 0.0 <= result["mean_at_k"] <= 1.0
