"""Every command and snippet in the docs runs in a test, so that a doc and the code cannot disagree unseen.

What counts as a command (`doc_commands` applies this rule to README.md, docs/*.md and figures/README.md):
- in a fenced block tagged `bash`: each command, that is a line with its `\\` continuations, or a `for … done`
  loop whole, without its `#` comment;
- a fenced block tagged `python`: the whole block, one snippet;
- an inline code span (it may wrap across lines) that starts, after any `NAME=value` assignments, with a
  program a reader types (`PROGRAMS`: python, make, pip, pytest, torchrun, tensorboard, hf, git, or a
  virtual environment's bin/python or bin/torchrun) and has at least one argument;
- an inline code span that is a Python call or subscript on one of the packages, with no other names
  (`sde_lab.sme.models_and_orders()`; a signature such as `pgpo.step_method(optimizer)` is not one).
Not commands: fenced blocks untagged or tagged otherwise (printed output; docs/cluster.md's `text` blocks,
which tests/llm_runs/test_cluster.py runs under stand-ins for SLURM), indented blocks (formulas, log lines),
and spans that are flags (`--only NAME`), config keys (`pgpo.alpha`), module names or paths.

Each command is a key of `REGISTRY`, which says how it is checked:
- `run`: it runs here, on the CPU and offline, in a folder of its own (never the repository): exit 0 and,
  where the doc says what it prints or writes, that text or those files;
- `slow`: the same, marked slow (more than about 5 s);
- `gpu_or_hub`: it needs a GPU, eight of them or the hub; here it must fail in one `error:` line, the last
  on stderr, with no traceback (under torchrun, one such line per worker: torchrun's own report is its own);
- `install`: not executed; the extras it names exist in pyproject.toml, the make targets in the Makefile,
  and the pins and names agree with them;
- `illustrative`: cannot run as it stands (a fragment, placeholders, another tool's command); each says why.
A new or changed command fails `test_every_doc_command_is_classified` until it is classified here, and an
entry that no doc holds any more fails it too.

Where the doc's text cannot run here as it stands, `Check.runs` says what runs instead, with a comment why: a
placeholder (`RUN`) filled with the tiny run the README makes, a synopsis (`verify|bench|figures`) checked by
the command line's help, a loop by its first run, a command of more than ~3 minutes shortened by flags the
docs document (`--quick`, `--steps`, `key=value` overrides). Nothing runs in the repository but `pytest`
on its own test file, which only reads it. HF_HUB_OFFLINE=1 and an empty CUDA_VISIBLE_DEVICES make every
machine look like a laptop with no network: no hub, no GPU.
"""

from __future__ import annotations

import ast
import glob
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import threading
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ["README.md", *sorted(f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md")), "figures/README.md"]
PACKAGES = ("pgpo", "sde_lab", "llm_runs")
PROGRAMS = ("python", "python3", "make", "pip", "pytest", "torchrun", "tensorboard", "hf", "git")
VENV_PROGRAM = re.compile(r"^\.?[\w.-]*venv[\w.-]*/bin/(python|torchrun)$")  # .venv-vllm/bin/python
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)
SPAN = re.compile(r"(?<!`)`([^`]+)`(?!`)")
ASSIGNMENT = re.compile(r"^[A-Z_][A-Z0-9_]*=\S*$")


# ---------------------------------------------------------------------------------------------- the rule


def _without_comment(line: str) -> str:
    """`line` up to a `#` that starts a shell comment (outside quotes, after a blank)."""
    quote = None
    for i, c in enumerate(line):
        if quote:
            quote = None if c == quote else quote
        elif c in "'\"":
            quote = c
        elif c == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def bash_commands(block: str) -> list[str]:
    """The commands of a bash block: a line with its continuations, or a for/while/if block whole."""
    commands, current, depth = [], [], 0
    for raw in block.splitlines():
        line = _without_comment(raw)
        if not line.strip() and not current:
            continue
        current.append(line)
        words = line.split()
        depth += sum(w in ("for", "while", "if") for w in words[:1]) - sum(w in ("done", "fi") for w in words[:1])
        if depth == 0 and not line.endswith("\\"):
            commands.append(" ".join(" ".join(current).replace("\\ ", " ").split()))
            current = []
    assert not current, f"unfinished command in a bash block: {current}"
    return commands


def _is_command_span(text: str) -> bool:
    words = text.split()
    while words and ASSIGNMENT.match(words[0]):
        words = words[1:]
    if len(words) >= 2 and (words[0] in PROGRAMS or VENV_PROGRAM.match(words[0])):
        return True
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError:
        return False
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    return isinstance(tree.body, (ast.Call, ast.Subscript)) and bool(names) and names <= set(PACKAGES)


def doc_commands() -> dict[str, list[str]]:
    """{command: ["README.md:123", …]}, every command of the docs by the rule above, where each is found."""
    found: dict[str, list[str]] = {}
    for doc in DOCS:
        text = (ROOT / doc).read_text()
        for m in FENCE.finditer(text):
            where = f"{doc}:{text.count(chr(10), 0, m.start()) + 1}"
            if m.group(1) == "bash":
                for command in bash_commands(m.group(2)):
                    found.setdefault(command, []).append(where)
            elif m.group(1) == "python":
                found.setdefault(m.group(2).strip(), []).append(where)
        prose = FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)  # blocks out, line numbers kept
        for m in SPAN.finditer(prose):
            span = " ".join(m.group(1).split()).replace("\\|", "|")  # `\|` in a table cell is a `|`
            if _is_command_span(span):
                found.setdefault(span, []).append(f"{doc}:{prose.count(chr(10), 0, m.start()) + 1}")
    return found


# ---------------------------------------------------------------------------------------------- the registry

RUN, SLOW, GPU_OR_HUB, INSTALL, ILLUSTRATIVE = "run", "slow", "gpu_or_hub", "install", "illustrative"


@dataclass(frozen=True)
class Check:
    kind: str
    expect: tuple = ()  # text the output holds (stdout and stderr), or a callable(output, folder) that asserts
    files: tuple = ()  # files it writes, relative to its folder
    folder: str = "empty"  # where it runs: see Folders
    runs: str | None = None  # what runs instead of the doc's text: the entry's comment says why
    setup: str = ""  # Python run before a snippet, in its namespace: the inputs the snippet names
    why: str = ""  # illustrative: why it cannot run
    slow: bool = False  # a gpu_or_hub check that takes more than a few seconds
    server: bool = False  # it serves until stopped: checked once it says it serves
    vllm: bool = False  # runs in .venv-vllm (vLLM's CPU build): `make test-vllm`


def run(*expect, **kw) -> Check:
    return Check(RUN, expect, **kw)


def slow(*expect, **kw) -> Check:
    return Check(SLOW, expect, **kw)


def hub(*expect, **kw) -> Check:
    return Check(GPU_OR_HUB, expect, **kw)


INSTALLS = Check(INSTALL)


def illustrative(why: str) -> Check:
    return Check(ILLUSTRATIVE, why=why)


def _rows(path: str, n: int) -> Callable:
    def check(output: str, folder: Path):
        rows = (folder / path).read_text().splitlines()
        assert len(rows) == n, f"{path}: {len(rows)} rows, the doc says {n}"
    return check


def _same_rows(first: str, second: str, rel: float) -> Callable:
    """Every metrics row of `second` equals the same row of `first` to `rel`: all but the timings, the
    sampler-vs-trainer log-prob gap, a number at the level of float rounding (~1e-6) that rounding moves, and the
    gradient-noise estimates, which read the first micro-batch: another split over the processes, another one."""
    timing = ("seconds_", "tokens_per_s", "peak_memory", "timestamp", "logprob_gap_", "grad_noise_trace",
              "grad_sq_norm_estimate", "noise_scale", "grad_small_sq_norm")

    def check(output: str, folder: Path):
        import json

        a, b = ([json.loads(x) for x in (folder / f).read_text().splitlines()] for f in (first, second))
        assert len(a) == len(b) > 0
        for row_a, row_b in zip(a, b):
            for key in row_a.keys() & row_b.keys():
                if not key.startswith(timing) and isinstance(row_a[key], (int, float)):
                    assert row_b[key] == pytest.approx(row_a[key], rel=rel, abs=1e-9), (row_a["step"], key)
    return check


def _readme_table(header: str, skip_column: int) -> Callable:
    """The README's table under `header`, row for row in the output but for one column (measured numbers)."""
    def cells(line: str) -> list[str]:
        return [c.strip() for i, c in enumerate(line.strip().strip("|").split(" | ")) if i != skip_column]

    def check(output: str, folder: Path):
        doc = (ROOT / "README.md").read_text().split(header, 1)[1].split("\n\n", 1)[0]
        printed = {tuple(cells(line)) for line in output.splitlines() if line.startswith("|")}
        missing = [line for line in (header + doc).splitlines()
                   if line.startswith("|") and tuple(cells(line)) not in printed]
        assert not missing, f"README rows the command no longer prints: {missing}"
    return check


FIGURES = ("multiplier", "exact_orders", "weak_error", "order_two", "minibatch", "caps", "double_well_density",
           "adaptive", "adaptive_orders", "stationary_spread")  # figures/README.md's table
# The demo's own settings cut to seconds (overrides of demo_cpu.yaml, which the demo documents): its runs take
# 24 min in full and 4 min in quick mode, too long for a test; the commands run with these appended.
SHORT_DEMO = "train.steps=2 train.eval_every=2 train.checkpoint_every=2 eval.max_questions=8 warm_start.steps=4"
SHORT_STUDY = SHORT_DEMO + " eval.samples=2"  # the study's overrides come after its preset's, as the demo's
TINY_RUN = "runs/tiny_cpu-seed0"  # the run the README's CPU block makes, for the commands that name a RUN
QWEN_CONFIG = "llm_runs/configs/qwen3_8b_chemistry_pgpo_a1.yaml"
NO_DATA = "data/sciknoweval/chemistry/train.json does not exist"
REPLAY_ONE = ("python -m llm_runs train --config tiny_cpu train.run_name=one train.steps=3 rollout.record=true "
              "loss.implementation=plain")


def follow_up(command: str, column: str, *files: str) -> Check:
    """A documented study follow-up, run as written but on two seeds (the first two of its range, or 0 and 1)
    and in seconds (SHORT_STUDY); it must print the report with its paired-difference `column`."""
    short = (command.replace("--seeds 10-29", "--seeds 10-11") if "--seeds 10-29" in command
             else command.replace(" --arms ", " --seeds 2 --arms ", 1))
    return slow("report:", column, runs=f"{short} {SHORT_STUDY}", files=files)


REGISTRY: dict[str, Check] = {
    # README: the two commands, installing
    "make demo": INSTALLS,
    "make test": INSTALLS,
    "make test-fast": INSTALLS,
    "make test-vllm": INSTALLS,
    "make vllm-env": INSTALLS,
    "make install": INSTALLS,
    "make install EXTRAS=gpu,test": INSTALLS,
    "make test-latest": INSTALLS,
    "make test-vllm-latest": INSTALLS,
    "make lock": INSTALLS,
    "make lock-vllm": INSTALLS,
    "python3 -m venv .venv && . .venv/bin/activate": INSTALLS,
    "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu": INSTALLS,
    'pip install -e ".[test]"': INSTALLS,
    'pip install -e ".[gpu,test]"': INSTALLS,
    "pip install -e .": INSTALLS,
    'pip install -e ".[trl]"': INSTALLS,
    'pip install -e ".[peers]"': INSTALLS,
    'pip install -e ".[gpu]"': INSTALLS,
    'pip install -e ".[lora]"': INSTALLS,
    'pip install -e ".[gpu,test,hub]"': INSTALLS,
    'pip install -e ".[gpu,hub]"': INSTALLS,
    'pip install -e ".[trackers]"': INSTALLS,
    "git clone <this repository> && cd pgpo-toolkit": INSTALLS,
    'python -c "import pgpo; print(pgpo.Multiplier(1.0, 2.0)(0.3))"': run("1.3"),
    "python -m pgpo": run("ratio 1.600000000000", "moment buffers bit-identical to the plain step: True"),
    # the layout table's synopses: the subcommands they list exist (the CLI's help names each)
    "python -m sde_lab verify|bench|figures": run("verify", "bench", "figures", runs="python -m sde_lab --help"),
    "python -m llm_runs train|eval|…": run("train", "eval", "demo", "compare", runs="python -m llm_runs --help"),
    # docs/cluster.md names the command in prose: the options it is used with exist
    "python -m llm_runs train": run("--config", "--resume", runs="python -m llm_runs train --help"),
    # README: pgpo, sde_lab and TRL in a few lines
    "import pgpo\n\n"
    "m = pgpo.Multiplier(alpha=1.0, rho_max=2.0)              # form=\"linear\" | \"smooth\" | a callable\n"
    "num, den = pgpo.information(student_logprobs, teacher_logprobs, mask, reduce=\"sum\")  # (..., S), (...)\n"
    "I = pgpo.global_information(num, den)                       # summed over ranks if a group exists\n"
    "pgpo.modulated_step(optimizer, m(I.item()))                 # update × ρ, optimizer state untouched":
        # its inputs are the reader's: log-probabilities of shape (batch, tokens, support), a mask, an optimizer
        run(setup="import torch\n"
                  "student_logprobs = torch.randn(2, 5, 7).log_softmax(-1)\n"
                  "teacher_logprobs = torch.randn(2, 5, 7).log_softmax(-1)\n"
                  "mask = torch.ones(2, 5)\n"
                  "model = torch.nn.Linear(3, 1)\n"
                  "model(torch.randn(4, 3)).sum().backward()\n"
                  "optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)\n"),
    "from pgpo.trl import PGPOConfig, PGPOTrainer\n\n"
    "args = PGPOConfig(output_dir=\"out\", pgpo_alpha=1.0, pgpo_rho_max=2.0,        # plus any SDPOConfig field\n"
    "                  distillation_mode=\"topk_logits\", distillation_topk=100, distillation_add_tail=True)\n"
    "PGPOTrainer(model=\"Qwen/Qwen3-8B\", reward_funcs=reward, args=args, train_dataset=data).train()":
        # a GPU's: TRL's configs train in bf16, which a CPU without `use_cpu=True` is refused (then Qwen3-8B
        # would come from the hub); its inputs are the reader's reward function and prompts
        hub("doesn't support bf16/gpu", slow=True, setup="def reward(prompts, completions, **kwargs):\n"
                                   "    return [1.0 for _ in completions]\n"
                                   "data = [{'prompt': [{'role': 'user', 'content': 'What is 1 + 1?'}],"
                                   " 'privileged_context': 'The answer is 2.'}]\n"),
    # docs/trl.md: the switch in three lines, a GPU's and the hub's as the README's above (same inputs)
    "from pgpo.trl import PGPOConfig, PGPOTrainer                               # was: trl.experimental.sdpo's "
    "SDPOConfig, SDPOTrainer\n"
    "args = PGPOConfig(output_dir=\"out\", pgpo_alpha=1.0, pgpo_rho_max=2.0)       # every SDPOConfig field is taken "
    "as it is\n"
    "PGPOTrainer(model=\"Qwen/Qwen3-8B\", reward_funcs=reward, args=args, train_dataset=data).train()":
        hub("doesn't support bf16/gpu", slow=True, setup="def reward(prompts, completions, **kwargs):\n"
                                   "    return [1.0 for _ in completions]\n"
                                   "data = [{'prompt': [{'role': 'user', 'content': 'What is 1 + 1?'}],"
                                   " 'privileged_context': 'The answer is 2.'}]\n"),
    # docs/trl.md: the sampled-token estimator's variance against the full-support I, the repository's own test
    "pytest tests/pgpo/test_trl_sampled.py -s -k variance":
        slow("sampled-token I against the full-support I: 4 batches", "reverse_kl plain *", " passed", folder="repo"),
    "from pgpo import Multiplier\nfrom sde_lab import catalog, weak_error\n\n"
    "r = weak_error(catalog.quadratic(), etas=[2**-j for j in range(9, 15)], horizon=2.0)    # exact oracle\n"
    "r.slope, r.slope_ci, r.verdict(), r.diagnostics            # 0.993 [0.989, 0.998] 'order 1 holds'\n"
    "r = weak_error(catalog.self_distillation(), [2**-j for j in range(2, 7)], 1.0,\n"
    "               multiplier=Multiplier(2.0, 2.0, form=\"smooth\"), sde=\"scaled\", test_fn=\"norm2\", paths=1000)":
        slow("(0.993", "'order 1 holds'"),
    # README: sde_lab
    "python -m sde_lab verify --quick":
        slow("20 of 20 claims borne out", _readme_table("| problem             | process ", skip_column=4)),
    "python -m sde_lab verify": slow("47 of 47"),
    # the full figures take 357 s on a 2-core CPU (the adaptive one alone 215 s): `--quick`, which the same
    # README documents, makes every one of them in about a minute
    "python -m sde_lab figures": slow("10 figures written", runs="python -m sde_lab figures --quick",
                                      files=tuple(f"figures/{n}.{e}" for n in FIGURES for e in ("png", "pdf", "json"))),
    "python -m sde_lab figures --only adaptive": slow("1 figures written", files=("figures/adaptive.png",),
                                                      runs="python -m sde_lab figures --quick --only adaptive"),
    "python -m sde_lab figures --only exact_orders": run("1 figures written", files=("figures/exact_orders.json",)),
    "python -m sde_lab figures --only order_two": slow("1 figures written", files=("figures/order_two.pdf",)),
    "python -m sde_lab figures --replot": slow("10 figures written", folder="figures",
                                               files=tuple(f"figures/{n}.png" for n in FIGURES)),
    "python -m sde_lab bench": slow("sde_lab engine", "sdeint itoEuler", "path-steps/s"),
    "sde_lab.sme.models_and_orders()": run("ModelOrder(label='SGD/SME'"),
    # README: the cost of a paper run and of the grid, from the shape alone (meta tensors, nothing downloaded)
    "python -m llm_runs plan --config qwen3_8b_chemistry_pgpo_a1": run("8,190,735,360 parameters",
                                                                      "checkpoint 131.1 GB"),
    "python -m llm_runs plan --grid": slow("grid: 16 configs × 3 seeds = 48 runs: "),
    # README: llm_runs on a CPU (one folder: the run, then what reads it)
    "python -m llm_runs train --config tiny_cpu":
        slow("run folder: runs/tiny_cpu-seed0", folder="tiny",
             files=(f"{TINY_RUN}/final/config.json", f"{TINY_RUN}/tensorboard")),
    "python -m llm_runs train --resume runs/tiny_cpu-seed0 train.steps=12":
        slow(_rows(f"{TINY_RUN}/metrics.jsonl", 12), folder="tiny"),
    "python -m llm_runs eval --checkpoint runs/tiny_cpu-seed0/final": slow("mean@4 = ", folder="tiny",
                                                                          files=(f"{TINY_RUN}/final/eval.json",)),
    "python -m llm_runs eval --checkpoint runs/tiny_cpu-seed0/checkpoints/best":
        slow("mean@4 = ", folder="tiny", files=(f"{TINY_RUN}/checkpoints/best/eval.json",)),
    "python -m llm_runs compare runs/tiny_cpu-seed0": slow("best", "final", "steps done/planned", folder="tiny"),
    "tensorboard --logdir runs": slow("TensorBoard", "http://", folder="tiny", server=True),
    "python -m llm_runs compare runs/ --figure figures/compare --json figures/compare.json":
        slow(folder="tiny", files=("figures/compare.json", "figures/compare.png", "figures/compare.pdf")),
    "python -m llm_runs compare runs/ --figure compare --json compare.json":
        slow(folder="tiny", files=("compare.json", "compare.png", "compare.pdf")),
    # RUN is any run folder: the tiny one
    "python -m llm_runs train --resume RUN":
        slow("run folder", folder="tiny", runs=f"python -m llm_runs train --resume {TINY_RUN}"),
    "python -m llm_runs compare RUN":
        slow("steps done/planned", folder="tiny", runs=f"python -m llm_runs compare {TINY_RUN}"),
    "python -m llm_runs eval --checkpoint RUN/final --engine vllm":
        hub("needs vLLM", folder="tiny", slow=True,
            runs=f"python -m llm_runs eval --checkpoint {TINY_RUN}/final --engine vllm"),
    # the benches time 5 × 5 steps per arm (5 min) and 7 × 10 (TRL): one timed step of one run each here
    "python -m llm_runs bench --config tiny_cpu":
        slow("SDPO", "PGPO", runs="python -m llm_runs bench --config tiny_cpu --steps 1 --repeats 1"),
    "python -m llm_runs bench --peer trl --config tiny_cpu":
        slow("TRL", runs="python -m llm_runs bench --peer trl --config tiny_cpu --steps 1 --repeats 1"),
    "python -m llm_runs bench --peer trl --config llm_runs/configs/tiny_cpu.yaml --steps 10 --repeats 7":
        slow("TRL", runs="python -m llm_runs bench --peer trl --config llm_runs/configs/tiny_cpu.yaml "
                         "--steps 1 --repeats 1"),
    "python -m llm_runs bench-loss --lengths 1024": slow("chunked", "plain"),
    "python -m llm_runs bench-checkpoint --shape tiny --device cpu": slow('"gather_over_dcp"', '"dcp"'),
    # its default lengths, 1 024 to 8 192, take 11 min here: the README's own shorter line
    "python -m llm_runs bench-loss": slow("chunked", "plain", runs="python -m llm_runs bench-loss --lengths 1024"),
    "MLFLOW_TRACKING_URI=mlruns MLFLOW_ALLOW_FILE_STORE=true python -m llm_runs train --config tiny_cpu "
    "train.report_to=mlflow": slow("run folder", files=("mlruns", f"{TINY_RUN}/trackers.json")),
    # README: the CPU experiment, cut to seconds by SHORT_DEMO (its full runs take 4 to 24 minutes)
    "python -m llm_runs demo --quick": slow("warm start: held-out mean@8", folder="demo",
                                            runs=f"python -m llm_runs demo --quick {SHORT_DEMO}",
                                            files=("runs/demo/llm_demo_quick.png", "runs/demo/llm_demo_quick.md")),
    "python -m llm_runs demo": slow("PGPO α=2", folder="demo", runs=f"python -m llm_runs demo --seeds 0 {SHORT_DEMO}",
                                    files=("figures/llm_demo.png", "figures/llm_demo.md", "figures/llm_demo.json")),
    "python -m llm_runs demo --replot": run("figures/llm_demo.png", folder="figures"),  # the committed JSON
    'python -m llm_runs demo --methods "SDPO,SDPO lr×1.35,PGPO α=2" --figure figures/llm_demo_lr_control':
        slow("SDPO lr×1.35", folder="demo", files=("figures/llm_demo_lr_control.png",),
             runs=f'python -m llm_runs demo --methods "SDPO,SDPO lr×1.35,PGPO α=2" --figure '
                  f"figures/llm_demo_lr_control --seeds 0 {SHORT_DEMO}"),
    'python -m llm_runs demo --seeds 0 --methods "SDPO,PGPO α=1" --out runs/demo_sibling --figure '
    "figures/llm_demo_sibling teacher.demonstration=sibling teacher.kind=ema rollout.samples_per_prompt=8":
        slow("PGPO α=1", folder="demo", files=("figures/llm_demo_sibling.png",),
             runs='python -m llm_runs demo --seeds 0 --methods "SDPO,PGPO α=1" --out runs/demo_sibling --figure '
                  f"figures/llm_demo_sibling teacher.demonstration=sibling teacher.kind=ema "
                  f"rollout.samples_per_prompt=8 {SHORT_DEMO}"),
    "python -m llm_runs warm-start --config demo_cpu --out runs/warm_start":
        slow('"copy_rate"', folder="demo", files=("runs/warm_start/final/config.json",)),  # reads the demo's data
    "python -m llm_runs compare runs/demo/runs/sdpo-seed* runs/demo/runs/pgpo_a1-seed*":
        slow("Validation mean@8 (%), mean ± std over seeds (ddof 1)", "Δ PGPO α=1 − SDPO", folder="demo"),
    # README and docs/results.md: the study, cut to seconds by SHORT_STUDY (its full runs take about two hours)
    "python -m llm_runs study --quick": slow("report:", "PGPO α=0.5 normalised I", "SDPO ρ-replay",
                                             runs=f"python -m llm_runs study --quick {SHORT_STUDY}",
                                             files=("runs/study_quick/llm_study_quick.json",
                                                    "runs/study_quick/llm_study_quick.png")),
    "python -m llm_runs study": slow("report:", runs='python -m llm_runs study --seeds 2 --arms "SDPO,SDPO ρ-replay" '
                                                    f"--settings demo {SHORT_STUDY}",
                                     files=("figures/llm_study.json", "figures/llm_study.png", "figures/llm_study.pdf")),
    # docs/results.md: the follow-up runs, cut to two seeds and seconds
    **{command: follow_up(command, column, *files) for command, column, files in (
        ('python -m llm_runs study --settings demo,collapse --arms "SDPO,PGPO α=1,SDPO ρ-replay next seed" '
         '--report figures/llm_study_next_seed', "− ρ-replay next seed (points)",
         ("figures/llm_study_next_seed.json", "figures/llm_study_next_seed.png")),
        ('python -m llm_runs study --settings demo --seeds 10-29 --arms "PGPO α=1,PGPO α=1 per-sequence" '
         '--against "PGPO α=1" --report figures/llm_study_confirm', "− PGPO α=1 (points)",
         ("figures/llm_study_confirm.json", "figures/llm_study_confirm.md")),
        ('python -m llm_runs study --settings demo --seeds 10-29 --arms "PGPO α=2,PGPO α=0.5 normalised I" '
         '--against "PGPO α=2" --report figures/llm_study_confirm_normalised', "− PGPO α=2 (points)",
         ("figures/llm_study_confirm_normalised.json",)),
        ('python -m llm_runs study --settings demo --arms "SDPO,PGPO α=2,SDPO α=2 ρ-replay next seed" '
         '--report figures/llm_study_next_seed_a2', "− α=2 ρ-replay next seed (points)",
         ("figures/llm_study_next_seed_a2.json", "figures/llm_study_next_seed_a2.png")))},
    "python -m llm_runs study --replot": run("report: figures/llm_study.json", "| SDPO ρ-replay |", folder="figures",
                                             files=("figures/llm_study.png", "figures/llm_study.md")),
    # README and docs/training.md: the paper's runs, on the hub's data and model and on GPUs
    "python -m llm_runs data sciknoweval --out data/sciknoweval": hub("hicai-zju/SciKnowEval", "--source DIR"),
    f"python -m llm_runs train --config {QWEN_CONFIG}": hub(NO_DATA),
    f"torchrun --nproc_per_node 8 -m llm_runs train --config {QWEN_CONFIG}": hub(NO_DATA, slow=True),
    "torchrun --nproc_per_node 8 -m llm_runs train --config qwen3_8b_chemistry_pgpo_a1": hub(NO_DATA, slow=True),
    "torchrun --nproc_per_node 8 -m llm_runs train --resume runs/qwen3_8b_chemistry_pgpo_a1-seed0":
        hub("no config.yaml there", slow=True),
    "python -m llm_runs eval --checkpoint runs/qwen3_8b_chemistry_pgpo_a1-seed0/final --engine vllm --dtype bfloat16":
        hub("does not exist"),
    "python -m llm_runs smoke --shape qwen3-8b --layers 4": hub("no CUDA device is visible"),
    "python -m llm_runs smoke --shape qwen3-8b --steps 1 --prompts 4 --samples 4 --response-tokens 256 "
    "--micro-batch 4 --device cuda": hub("no GPU is visible"),
    "python -m llm_runs bench-loss --device cuda": hub("no CUDA device is visible"),
    "python -m llm_runs bench-loss --device cuda --lengths 1024,4096,16384 --profile": hub("no CUDA device is visible"),
    "python -m llm_runs smoke": hub("no CUDA device is visible"),
    "torchrun --nproc_per_node 8 -m llm_runs bench-checkpoint --shape qwen3-8b": hub("no CUDA device is visible",
                                                                                   slow=True),
    "python -m llm_runs bench-checkpoint --shape qwen3-8b --layers 4": hub("no CUDA device is visible"),
    # the loops launch 48 runs each: their first one here (test_loops_name_shipped_configs checks the rest)
    "for seed in 0 1 2; do for config in llm_runs/configs/qwen3_8b_*.yaml; do torchrun --nproc_per_node 8 -m llm_runs "
    'train --config "$config" --no-progress train.seed=$seed done done':
        hub("data/sciknoweval/biology/train.json does not exist", slow=True,
            runs="torchrun --nproc_per_node 8 -m llm_runs train "
                 "--config llm_runs/configs/qwen3_8b_biology_pgpo_a0.5.yaml --no-progress train.seed=0"),
    "for seed in 0 1 2; do for config in "
    "qwen3_8b_{biology,chemistry,material,physics}_{sdpo,pgpo_a0.5,pgpo_a1,pgpo_a2}; do torchrun --nproc_per_node 8 "
    "-m llm_runs train --config $config train.seed=$seed --no-progress || torchrun --nproc_per_node 8 -m llm_runs "
    "train --resume runs/$config-seed$seed --no-progress done done":
        hub("data/sciknoweval/biology/train.json does not exist", slow=True,
            runs="torchrun --nproc_per_node 8 -m llm_runs train --config qwen3_8b_biology_sdpo train.seed=0 "
                 "--no-progress"),
    # docs/scaling.md
    'llm_runs.tools.smoke.SHAPES["qwen3-8b"]': run("'vocab_size': 151936", "'hidden_size': 4096", "'head_dim': 128",
                                                   "'intermediate_size': 12288", "'num_hidden_layers': 36",
                                                   "'num_attention_heads': 32", "'num_key_value_heads': 8",
                                                   "'tie_word_embeddings': False"),
    "python -m llm_runs smoke --shape qwen3-8b --layers 1 --steps 1 --response-tokens 16 --device cpu":
        slow('"parameters": 1437610240'),
    # the two-process check: 2 FSDP2 processes against 1, the repository's own test file, and by hand on the
    # same rollouts (one folder: the second run replays the first's)
    "pytest tests/llm_runs/test_distributed.py": slow(" passed", folder="repo"),
    REPLAY_ONE: slow("run folder: runs/one", folder="replay", files=("runs/one/metrics.jsonl",)),
    "torchrun --standalone --nproc_per_node 2 -m llm_runs train --config tiny_cpu train.run_name=two train.steps=3 "
    "rollout.engine=replay rollout.replay=runs/one":
        slow(_same_rows("runs/one/metrics.jsonl", "runs/two/metrics.jsonl", rel=1e-5), folder="replay"),
    # vLLM's CPU build lives in .venv-vllm (`make vllm-env`): these run under `make test-vllm`
    ".venv-vllm/bin/python -m llm_runs train --config llm_runs/configs/tiny_cpu.yaml rollout.engine=vllm":
        slow("run folder", vllm=True),
    ".venv-vllm/bin/torchrun --standalone --nproc_per_node 2 -m llm_runs train --config llm_runs/configs/tiny_cpu.yaml "
    "rollout.engine=vllm": slow("run folder", vllm=True),
    ".venv-vllm/bin/python -m llm_runs smoke --shape tiny --engine vllm --dtype float32 --device cpu":
        slow('"logprob_gap_mean"', vllm=True),
    # illustrative: what cannot run as it stands
    "torchrun --nproc_per_node 2": illustrative("a launcher's options quoted in prose, no program"),
    "torchrun --nproc_per_node N -m llm_runs train --config …": illustrative("a synopsis: N processes, any config"),
    "hf download hicai-zju/SciKnowEval --repo-type dataset --local-dir DIR":
        illustrative("huggingface_hub's own command, a hub download and nothing of this project: offline it can "
                     "only fail, in that tool's words; `data sciknoweval --source` reads what it downloads"),
}


# ---------------------------------------------------------------------------------------------- running them

ENV = {**{k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                            "MASTER_PORT", "PYTEST_CURRENT_TEST")},
       "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",  # `python` is this one
       "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "CUDA_VISIBLE_DEVICES": "",  # no hub, no GPU: here
       "MPLBACKEND": "Agg", "TOKENIZERS_PARALLELISM": "false", "GLOO_SOCKET_IFNAME": "lo", "WANDB_MODE": "offline",
       "PYTEST_ADDOPTS": "-p no:cacheprovider", "PYTHONDONTWRITEBYTECODE": "1"}  # nothing left in the repository
TIMEOUT = 900

# Runs a Python snippet as a reader would type it at a prompt: statement by statement, an expression's value
# printed; a bare expression on a package (`sde_lab.sme.models_and_orders()`) imports the modules it names.
SNIPPET_RUNNER = """
import ast, importlib, sys
source, setup = (open(p).read() for p in sys.argv[1:3])
ns = {"__name__": "__main__"}
exec(compile(setup, "<the snippet's inputs>", "exec"), ns)
tree = ast.parse(source)
if not any(isinstance(n, (ast.Import, ast.ImportFrom)) for n in tree.body):
    for node in ast.walk(tree):
        parts = []
        while isinstance(node, ast.Attribute):
            parts, node = [node.attr, *parts], node.value
        if isinstance(node, ast.Name) and parts:
            for i in range(len(parts), -1, -1):
                try:
                    importlib.import_module(".".join([node.id, *parts[:i]]))
                    break
                except ImportError:
                    continue
            ns[node.id] = sys.modules[node.id]
for node in tree.body:
    if isinstance(node, ast.Expr):
        value = eval(compile(ast.Expression(node.value), "<doc>", "eval"), ns)
        if value is not None:
            print(repr(value))
    else:
        exec(compile(ast.Module([node], []), "<doc>", "exec"), ns)
"""


def is_python(command: str) -> bool:
    """A snippet or an expression, not a shell command."""
    words = [w for w in command.split() if not ASSIGNMENT.match(w)][:1]
    return not (words and (words[0] in (*PROGRAMS, "for", "while", "if") or VENV_PROGRAM.match(words[0])))


@dataclass
class Done:
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def execute(command: str, check: Check, folder: Path) -> Done:
    """`check.runs` or the doc's command, in `folder`."""
    text = check.runs or command
    if is_python(text):
        (folder / "snippet.py").write_text(text + "\n")
        (folder / "snippet_inputs.py").write_text(check.setup)
        argv = [sys.executable, "-c", SNIPPET_RUNNER, "snippet.py", "snippet_inputs.py"]
    else:
        argv = ["bash", "-c", text]
    if check.server:  # read until it says where it serves (its last expected text), then stop it
        with subprocess.Popen(argv, cwd=folder, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) as server:
            deadline = threading.Timer(120, server.kill)  # silent for two minutes: its output ends, the test fails
            deadline.start()
            lines = []
            try:
                while (line := server.stdout.readline()) and check.expect[-1] not in line:
                    lines.append(line)
                lines.append(line)
            finally:
                deadline.cancel()
                server.terminate()
            return Done(0 if line else server.wait(), "".join(lines), "")
    done = subprocess.run(argv, cwd=folder, env=ENV, capture_output=True, text=True, timeout=TIMEOUT)
    return Done(done.returncode, done.stdout, done.stderr)


# The folders that outlive one test: the commands that make what the others read, in the docs' order.
SETUP = {"tiny": ["python -m llm_runs train --config tiny_cpu",
                  "python -m llm_runs train --resume runs/tiny_cpu-seed0 train.steps=12"],
         "demo": ["python -m llm_runs demo --quick"],
         "replay": [REPLAY_ONE]}


class Folders:
    """Where each command runs: `empty` (a fresh folder), `figures` (a fresh folder holding a copy of the
    committed figures' JSON, which the replots read), `tiny`, `demo` and `replay` (one each per session, made
    by the commands in SETUP, run once each) and `repo` (the repository itself, for a command that only reads
    it). Two entries that run the same text in fresh folders run it once."""

    def __init__(self, factory):
        self.factory, self.kept, self.done = factory, {}, {}

    def run(self, command: str, tmp_path: Path) -> tuple[Done, Path]:
        """The command's result, and the folder it ran in."""
        check = REGISTRY[command]
        if check.folder in SETUP:
            if check.folder not in self.kept:
                self.kept[check.folder] = self.factory.mktemp(check.folder)
            folder = self.kept[check.folder]
            before = SETUP[check.folder]
            for earlier in before[:before.index(command)] if command in before else before:
                done, _ = self._once(earlier, folder)
                assert done.returncode == 0, f"{earlier} (setting up {check.folder}):\n{done.stderr[-3000:]}"
            return self._once(command, folder)
        if check.folder == "repo":
            return execute(command, check, ROOT), ROOT
        if check.folder == "figures":
            (tmp_path / "figures").mkdir()
            for data in (ROOT / "figures").glob("*.json"):
                shutil.copy(data, tmp_path / "figures")
        if check.vllm:
            (tmp_path / ".venv-vllm").symlink_to(ROOT / ".venv-vllm", target_is_directory=True)
        if "llm_runs/configs/" in (check.runs or command):  # as at the repository's root; the package stays the
            (tmp_path / "llm_runs").mkdir()                    # installed one (a folder without __init__.py)
            (tmp_path / "llm_runs" / "configs").symlink_to(ROOT / "llm_runs" / "configs", target_is_directory=True)
        return self._once(command, tmp_path)

    def _once(self, command: str, folder: Path) -> tuple[Done, Path]:
        check = REGISTRY[command]
        key = (check.folder, check.runs or command, check.setup)
        if key not in self.done:
            self.done[key] = execute(command, check, folder), folder
        return self.done[key]


@pytest.fixture(scope="session")
def folders(tmp_path_factory):
    return Folders(tmp_path_factory)


def _params(*kinds):
    """The registry's entries of these kinds, marked slow or vllm where they are."""
    params = []
    for command, check in REGISTRY.items():
        if check.kind in kinds:
            marks = [pytest.mark.slow] if check.kind == SLOW or check.slow else []
            if check.vllm:
                marks += [pytest.mark.vllm, pytest.mark.skipif(
                    not (ROOT / ".venv-vllm" / "bin" / "python").exists() or importlib.util.find_spec("vllm") is None,
                    reason="vLLM's CPU build, in .venv-vllm: make test-vllm")]
            first = command.splitlines()[0]
            params.append(pytest.param(command, id=first if len(first) <= 80 else first[:77] + "...", marks=marks))
    return params


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


# ---------------------------------------------------------------------------------------------- the tests


def test_every_doc_command_is_classified():
    """A new or changed command in the docs fails here until REGISTRY says how it is checked; an entry whose
    command no doc holds any more fails too."""
    found = doc_commands()
    unclassified = {c: where for c, where in found.items() if c not in REGISTRY}
    assert not unclassified, f"commands in the docs with no entry in tests/test_docs.py's REGISTRY: {unclassified}"
    stale = [c for c in REGISTRY if c not in found]
    assert not stale, f"REGISTRY entries no doc holds any more: {stale}"


def test_the_rule_finds_commands_in_every_form():
    """The extraction rule itself, on a made-up page: fenced bash with a continuation and a loop, python, spans."""
    block = "make x   # a comment\npython -m a \\\n  --b 'c # d'\nfor i in 1 2; do\n  echo $i\ndone\n"
    assert bash_commands(block) == ["make x", "python -m a --b 'c # d'", "for i in 1 2; do echo $i done"]
    assert _is_command_span("python -m sde_lab verify --quick") and _is_command_span("A=1 B=2 python x.py")
    assert _is_command_span("sde_lab.sme.models_and_orders()") and _is_command_span('llm_runs.x.SHAPES["y"]')
    assert not any(map(_is_command_span, ["pgpo.alpha", "pgpo.step_method(optimizer)", 'm.SHAPES["x"]',
                                          "--only NAME", "hf", "sde_lab/brownian.py", "make"]))


def test_illustrative_entries_are_few_and_say_why():
    """Only what cannot run as it stands, each with its reason."""
    illustrative = {c: check.why for c, check in REGISTRY.items() if check.kind == ILLUSTRATIVE}
    assert len(illustrative) <= 5 and all(why for why in illustrative.values())


@pytest.mark.parametrize("command", _params(RUN, SLOW))
def test_runs_as_documented(command, folders, tmp_path):
    """It runs here and exits 0; what the doc says it prints is printed, what it writes is there."""
    check = REGISTRY[command]
    done, folder = folders.run(command, tmp_path)
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    for expected in check.expect:
        if callable(expected):
            expected(done.output, folder)
        else:
            assert expected in done.output, f"{expected!r} is not in the output:\n{done.output[-3000:]}"
    missing = [f for f in check.files if not (folder / f).exists()]
    assert not missing, f"not written: {missing}"


TORCHRUN_LOG = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ ")  # torchrun's own log lines


def _workers_stderr(stderr: str) -> str:
    """torchrun's stderr without torchrun's own lines: its log lines, and the report it raises (a traceback of
    torchrun itself ending in ChildFailedError) when a worker fails."""
    head, sep, report = stderr.partition("Traceback (most recent call last):")
    if sep:
        assert re.match(r'\s*File "[^"]*torchrun"', report) and "ChildFailedError" in report, \
            f"a traceback that is not torchrun's report:\n{sep}{report[:3000]}"
    return "\n".join(line for line in head.splitlines() if not TORCHRUN_LOG.match(line))


@pytest.mark.parametrize("command", _params(GPU_OR_HUB))
def test_fails_here_in_one_error_line(command, folders, tmp_path):
    """Needs a GPU or the hub: here (no GPU, offline) it ends in one `error:` line saying what is missing, the
    last on stderr, with no traceback. A Python snippet of this kind fails in its exception's message instead,
    on the GPU or the hub and nothing before it."""
    check = REGISTRY[command]
    done, _ = folders.run(command, tmp_path)
    assert done.returncode != 0, f"it ran here:\n{done.output[-3000:]}"
    if is_python(check.runs or command):
        assert all(text in _lines(done.stderr)[-1] for text in check.expect), done.stderr[-3000:]
        return
    stderr = _workers_stderr(done.stderr) if (check.runs or command).startswith("torchrun") else done.stderr
    assert "Traceback" not in stderr, stderr[-4000:]
    lines = _lines(stderr)
    assert lines and lines[-1].startswith("error: "), stderr[-3000:]
    assert {line for line in lines if line.startswith("error:")} == {lines[-1]}, stderr[-3000:]  # one (per worker)
    assert all(text in lines[-1] for text in check.expect), lines[-1]


def _make_variable(makefile: str, name: str) -> str:
    return re.search(rf"^{name}\s*\??=\s*(.+)$", makefile, re.M).group(1).strip()


@pytest.mark.parametrize("command", _params(INSTALL))
def test_install_line_matches_the_project(command):
    """Not run (it installs): every extra it names is one of pyproject.toml's, every make target is the
    Makefile's, and what it pins or names is what the Makefile and pyproject.toml say."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    makefile = (ROOT / "Makefile").read_text()
    checked = []
    for extras in re.findall(r"\.\[([\w,-]+)\]", command) + re.findall(r"EXTRAS=([\w,-]+)", command):
        assert set(extras.split(",")) <= set(pyproject["optional-dependencies"]), extras
        checked.append("extras")
    for target in re.findall(r"(?:^|&& )make ([\w-]+)", command):
        assert re.search(rf"^{re.escape(target)}:", makefile, re.M), f"the Makefile has no target {target}"
        checked.append("target")
    if command == "make demo":  # the README lists what it runs
        recipe = makefile.split("\ndemo:", 1)[1].split("\n\n", 1)[0]
        for part in ("-m pgpo", "-m sde_lab verify --quick", "-m sde_lab figures --quick --out .demo/figures",
                     "-m llm_runs demo --quick"):
            assert part in recipe, part
    if pin := re.search(r"pip install (torch==\S+)", command):  # the CPU wheel the Makefile installs first
        from packaging.specifiers import SpecifierSet

        assert _make_variable(makefile, "TORCH_CPU") == pin.group(1)
        torch_range = next(d for d in pyproject["dependencies"] if d.startswith("torch"))[len("torch"):]
        assert pin.group(1).split("==")[1] in SpecifierSet(torch_range)
        checked.append("pin")
    if venv := re.search(r"-m venv (\S+) && \. (\S+)/bin/activate", command):  # the folder the Makefile makes
        assert venv.group(1) == venv.group(2) == _make_variable(makefile, "VENV")
        checked.append("venv")
    if command == "pip install -e .":  # "pulls numpy at most" beside torch
        assert {re.split(r"[<>=!~ \[;]", d)[0] for d in pyproject["dependencies"]} == {"torch", "numpy"}
        checked.append("base")
    if clone := re.fullmatch(r"git clone <this repository> && cd (\S+)", command):
        assert clone.group(1) == pyproject["name"]
        checked.append("name")
    assert checked, "an install line this test cannot check yet: add its check"


def test_loops_name_shipped_configs():
    """The loops over the paper's runs, checked above by their first run, name 16 shipped configs each."""
    shipped = sorted(p.stem for p in (ROOT / "llm_runs" / "configs").glob("qwen3_8b_*.yaml"))
    assert len(shipped) == 16
    assert sorted(Path(p).stem for p in glob.glob(str(ROOT / "llm_runs/configs/qwen3_8b_*.yaml"))) == shipped
    braces = [f"qwen3_8b_{d}_{m}" for d in ("biology", "chemistry", "material", "physics")
              for m in ("sdpo", "pgpo_a0.5", "pgpo_a1", "pgpo_a2")]
    assert sorted(braces) == shipped
    loops = [c for c in REGISTRY if c.startswith("for ")]
    assert len(loops) == 2 and any("qwen3_8b_{biology,chemistry,material,physics}_{sdpo,pgpo_a0.5,pgpo_a1,pgpo_a2}" in c
                                   for c in loops)
