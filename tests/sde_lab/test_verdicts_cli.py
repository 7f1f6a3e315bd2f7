"""`python -m sde_lab`'s edges: a request it cannot meet ends in exactly one `error:` line (the last on stderr, no
traceback, exit status 2) before anything is computed, or it does what the user meant. The edges of issue 33 run
as a user runs them, in a process of their own; the others call `main` in this one (a second each saved)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sde_lab.__main__ import main

ROOT = Path(__file__).resolve().parents[2]


def sde_lab(*args, cwd):
    """Run `python -m sde_lab ARGS` in `cwd` on a machine that looks like it has no GPU."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "sde_lab", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def ends_in_one_error_line(returncode, stdout, stderr, *fragments):
    lines = stderr.strip().splitlines()
    assert returncode == 2, (returncode, stderr)
    assert "Traceback" not in stderr and lines and "error:" in lines[-1], stderr
    assert sum("error:" in line for line in lines) == 1, stderr
    for fragment in fragments:
        assert fragment in lines[-1], (fragment, lines[-1])
    assert stdout == "", stdout  # nothing was computed (no table, no figure count)


def in_process(capsys, monkeypatch, tmp_path, *args):
    """`main(args)` run in `tmp_path`: (exit status, stdout, stderr)."""
    monkeypatch.chdir(tmp_path)
    try:
        code = main(list(args))
    except SystemExit as stop:
        code = stop.code
    out = capsys.readouterr()
    return code, out.out, out.err


# ------------------------------------------------------------------------------------------------
# the edges of the issue, each in a process of its own


def test_bench_on_a_cuda_device_this_machine_lacks(tmp_path):
    done = sde_lab("bench", "--device", "cuda", cwd=tmp_path)
    ends_in_one_error_line(done.returncode, done.stdout, done.stderr, "--device", "CUDA is not available", "--device cpu")


def test_figures_only_with_no_match(tmp_path):
    done = sde_lab("figures", "--only", "no_such_figure", "--out", "out", cwd=tmp_path)
    ends_in_one_error_line(done.returncode, done.stdout, done.stderr, "--only 'no_such_figure' names no figure",
                           "exact_orders")
    assert not (tmp_path / "out").exists()


def test_figures_replot_of_an_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    done = sde_lab("figures", "--replot", "--out", "empty", cwd=tmp_path)
    ends_in_one_error_line(done.returncode, done.stdout, done.stderr, "--replot: no saved figure data",
                           "run without --replot first")


def test_verify_json_into_a_missing_folder_makes_the_folder(tmp_path):
    done = sde_lab("verify", "--quick", "--only", "quadratic SGD/SME-1", "--jobs", "1", "--json", "new/deeper/rows.json",
                   cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    rows = json.loads((tmp_path / "new" / "deeper" / "rows.json").read_text())
    assert [r["verdict"] for r in rows] == ["order 1 holds"]


def test_verify_only_with_no_match_is_an_error_not_an_empty_table(tmp_path):
    done = sde_lab("verify", "--only", "no such claim", cwd=tmp_path)
    ends_in_one_error_line(done.returncode, done.stdout, done.stderr, "--only 'no such claim' matches no claim",
                           "quadratic SGD/SME-1")


# ------------------------------------------------------------------------------------------------
# more of the same, in this process


@pytest.mark.parametrize("args, fragments", [
    (("bench", "--device", "gpu0"), ("--device: 'gpu0' is not a torch device",)),
    (("bench", "--paths", "0"), ("--paths: expected a whole number of paths >= 1",)),
    (("verify", "--json", "."), ("--json .: is a folder",)),
    (("verify", "--quick", "--only", "self_distillation PGPO/paper"), ("matches only claims of the full run", "drop --quick")),
    (("figures", "--replot", "--only", "multiplier", "--out", "missing"), ("(multiplier.json)", "run without --replot")),
])
def test_requests_the_command_cannot_meet(capsys, monkeypatch, tmp_path, args, fragments):
    ends_in_one_error_line(*in_process(capsys, monkeypatch, tmp_path, *args), *fragments)
    assert not (tmp_path / "missing").exists()  # a replot makes no folder


def test_a_result_file_that_cannot_be_written_fails_before_anything_is_computed(capsys, monkeypatch, tmp_path):
    (tmp_path / "a_file").write_text("")
    for command in ("verify", "bench"):
        ends_in_one_error_line(*in_process(capsys, monkeypatch, tmp_path, command, "--json", f"a_file/{command}.json"),
                               f"--json a_file/{command}.json: cannot make the folder a_file, a file stands in its way")


def test_figures_replot_redraws_what_was_saved_names_the_rest_and_refuses_data_that_is_not_a_figures(
        capsys, monkeypatch, tmp_path):
    code, _, err = in_process(capsys, monkeypatch, tmp_path, "figures", "--only", "multiplier", "--out", "out", "--jobs", "1")
    assert code == 0, err
    code, out, err = in_process(capsys, monkeypatch, tmp_path, "figures", "--replot", "--out", "out", "--jobs", "1")
    assert code == 0, err
    assert "1 figures written to out/" in out and "not replotted, no saved data in out/: exact_orders," in out
    (tmp_path / "out" / "multiplier.json").write_text("{not json")
    ends_in_one_error_line(*in_process(capsys, monkeypatch, tmp_path, "figures", "--replot", "--out", "out", "--jobs", "1"),
                           "out/multiplier.json is not figure data", "run without --replot")
