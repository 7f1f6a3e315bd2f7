"""`python -m llm_runs compare`: on real tiny runs (SDPO and PGPO α=1 × seeds 0, 1) made by the trainer from a short
warm start (so validation accuracy is not stuck at 0), checked against what the run folders hold."""

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from llm_runs import compare as cmp
from llm_runs.__main__ import main
from llm_runs.config import ConfigError, RunConfig, load, load_for_resume
from llm_runs.experiment.config import DemoConfig
from llm_runs.experiment.warm_start import warm_start
from llm_runs.trainer import Trainer

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "llm_runs" / "configs" / "tiny_cpu.yaml"
DEMO = ROOT / "llm_runs" / "configs" / "demo_cpu.yaml"
FIXTURES = ROOT / "llm_runs" / "fixtures" / "toy_science"
DATA = [f"data.train={FIXTURES / 'train.jsonl'}", f"data.test={FIXTURES / 'test.jsonl'}"]
METHODS = {"sdpo": "pgpo.enabled=false", "pgpo_a1": "pgpo.enabled=true"}  # tiny_cpu.yaml: α = 1, ρ_max = 2


def _train(model, out, name, seed, *overrides):
    config = load(TINY, [f"model.path={model}", "model.tiny=false", *DATA, f"train.output_dir={out}",
                         f"train.seed={seed}", "train.steps=3", "train.eval_every=1", "train.checkpoint_every=0",
                         "eval.samples=2", "eval.max_questions=4", *overrides])
    return Trainer(config, out / f"{name}-seed{seed}", progress=False).train()


@pytest.fixture(scope="module")
def runs(tiny_model_dir, tmp_path_factory):
    """out/runs/{sdpo,pgpo_a1}-seed{0,1}: 3 steps, validated at each; out/novalid/sdpo-seed5: 1 step, never
    validated."""
    out = tmp_path_factory.mktemp("compare")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model gains nothing from 2 threads, and they crawl on a CPU shared with others
    try:
        _make_runs(tiny_model_dir, out)
    finally:
        torch.set_num_threads(threads)
    return out


def _make_runs(tiny_model_dir, out):
    # 30 supervised steps teach the \boxed{} format (held-out accuracy near chance, 25%, instead of 0)
    ws = load(DEMO, [*DATA, "model.tiny=false", f"model.path={tiny_model_dir}", "warm_start.steps=30",
                     "warm_start.batch_size=8", "eval.samples=2", "eval.max_questions=4"], schema=DemoConfig)
    model = Path(warm_start(ws, out / "warm_start", progress=False)["checkpoint"])
    for name, method in METHODS.items():
        for seed in (0, 1):
            _train(model, out / "runs", name, seed, method)
    _train(model, out / "novalid", "sdpo", 5, METHODS["sdpo"], "train.steps=1", "train.eval_every=0")


def rows(run):
    return [json.loads(line) for line in (Path(run) / "metrics.jsonl").read_text().splitlines()]


def vals(run):
    """[mean@k in percent] of a run's validation rows, in step order."""
    return [100 * r["val_mean_at_k"] for r in rows(run) if "val_mean_at_k" in r]


def copy_with(run, dest, **settings):
    """A copy of a run folder whose config.yaml has `settings` ({"section.key": value}) changed."""
    dest = shutil.copytree(run, dest)
    config = load(dest / "config.yaml", [f"{k}={json.dumps(v)}" for k, v in settings.items()])
    (dest / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    return dest


def group(data, domain, method):
    (g,) = [g for g in data["groups"] if (g["domain"], g["method"]) == (domain, method)]
    return g


def test_groups_seeds_and_numbers_match_the_run_folders(runs):
    data = cmp.compare([runs / "runs"])  # a folder of run folders expands to them
    assert data["domains"] == ["toy_science"] and data["methods"] == ["SDPO", "PGPO α=1"]
    assert any(v > 0 for name in METHODS for s in (0, 1) for v in vals(runs / "runs" / f"{name}-seed{s}"))
    text = cmp.table(data)
    for name, method in (("sdpo", "SDPO"), ("pgpo_a1", "PGPO α=1")):
        g = group(data, "toy_science", method)
        folders = [runs / "runs" / f"{name}-seed{s}" for s in (0, 1)]
        assert g["seeds"] == g["seeds_validated"] == [0, 1] and g["k"] == [2]
        best, final = [max(vals(f)) for f in folders], [vals(f)[-1] for f in folders]
        for f, b, last in zip(folders, best, final):  # the trainer's own summary agrees
            summary = json.loads((f / "summary.json").read_text())
            assert b == pytest.approx(100 * summary["best_val_mean_at_k"])
            assert last == pytest.approx(100 * summary["final_val_mean_at_k"])
        for key, values in (("best", best), ("final", final)):
            assert g[key]["values"] == pytest.approx(values)
            assert g[key]["mean"] == pytest.approx(np.mean(values))
            assert g[key]["std"] == pytest.approx(np.std(values, ddof=1))
        assert [r["best_step"] for r in g["runs"]] == [
            next(r["step"] for r in rows(f) if "val_mean_at_k" in r and 100 * r["val_mean_at_k"] == b)
            for f, b in zip(folders, best)]
        assert g["steps_done"] == g["steps_planned"] == [3, 3] and g["finished"]
        seconds = sum(r["seconds_step"] if "seconds_step" in r else
                      sum(v for k, v in r.items() if k.startswith("seconds_") and k != "seconds_eval")
                      for f in folders for r in rows(f))
        seconds += sum(r.get("seconds_eval", 0) for f in folders for r in rows(f))
        assert g["hours"] == pytest.approx(seconds / 3600) and g["hours_estimate"] == pytest.approx(g["hours"])
        assert g["paper"] is None  # not a SciKnowEval domain: no paper column
        line = next(x for x in text.splitlines() if x.startswith(f"| {method} "))
        assert f"{np.mean(best):.2f} ± {np.std(best, ddof=1):.2f}" in line
        assert f"{np.mean(final):.2f} ± {np.std(final, ddof=1):.2f}" in line
    (delta,) = data["improvements"]
    sdpo, pgpo = group(data, "toy_science", "SDPO"), group(data, "toy_science", "PGPO α=1")
    assert delta["best"] == pytest.approx(pgpo["best"]["mean"] - sdpo["best"]["mean"])
    assert delta["final"] == pytest.approx(pgpo["final"]["mean"] - sdpo["final"]["mean"])
    assert "Δ PGPO α=1 − SDPO" in text and "paper" not in text.splitlines()[2]


def test_best_is_the_highest_validation_and_final_the_last(runs, tmp_path):
    # the tiny runs may happen to peak at their last validation: pin best ≠ final in a copy of one
    run = shutil.copytree(runs / "runs" / "sdpo-seed1", tmp_path / "sdpo-seed1")
    edited = rows(run)
    edited[0]["val_mean_at_k"], edited[-1]["val_mean_at_k"] = 1.0, 0.0
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in edited))
    g = group(cmp.compare([runs / "runs" / "sdpo-seed0", run]), "toy_science", "SDPO")
    other = vals(runs / "runs" / "sdpo-seed0")
    assert (g["runs"][1]["best"], g["runs"][1]["best_step"], g["runs"][1]["final"]) == (100.0, 1, 0.0)
    assert g["best"]["std"] == pytest.approx(np.std([max(other), 100.0], ddof=1))
    assert g["final"]["mean"] == pytest.approx((other[-1] + 0.0) / 2)


def test_a_sciknoweval_domain_gets_the_paper_column(runs, tmp_path):
    test = "data/sciknoweval/chemistry/test.json"  # need not exist: compare reads only the run folder
    papers = {"data.test": test, "model.path": "Qwen/Qwen3-8B"}  # the paper's model: its column stands beside
    sdpo = copy_with(runs / "runs" / "sdpo-seed0", tmp_path / "a", **papers)
    pgpo = copy_with(runs / "runs" / "pgpo_a1-seed0", tmp_path / "b", **papers)
    data = cmp.compare([sdpo, pgpo])
    assert data["domains"] == ["chemistry"]
    assert group(data, "chemistry", "SDPO")["paper"] == 72.57
    assert group(data, "chemistry", "PGPO α=1")["paper"] == 76.02  # Table 1's "PGPO (best α)"
    assert group(data, "chemistry", "SDPO")["best"]["std"] is None  # one seed: no std
    (delta,) = data["improvements"]
    assert delta["paper"] == pytest.approx(76.02 - 72.57)
    text = cmp.table(data)
    assert "| method" in text and "Chemistry best" in text and "Chemistry final" in text and "paper" in text
    sdpo_line = next(x for x in text.splitlines() if x.startswith("| SDPO "))
    pgpo_line = next(x for x in text.splitlines() if x.startswith("| PGPO α=1 "))
    assert "72.57" in sdpo_line and "76.02†" in pgpo_line and "+3.45" in text
    cells = [c.strip() for c in sdpo_line.strip("|").split("|")]
    assert cells == ["SDPO", f"{max(vals(sdpo)):.2f}", f"{vals(sdpo)[-1]:.2f}", "72.57"]  # one seed: no ± std
    assert "does not say which α" in text and "best or the final" in text


def test_runs_of_another_model_name_it_and_stand_without_the_papers_table(runs, tmp_path):
    test = "data/sciknoweval/chemistry/test.json"
    sdpo = copy_with(runs / "runs" / "sdpo-seed0", tmp_path / "a", **{"data.test": test})
    pgpo = copy_with(runs / "runs" / "pgpo_a1-seed0", tmp_path / "b", **{"data.test": test})
    data = cmp.compare([sdpo, pgpo])
    text = cmp.table(data)
    model = load(sdpo / "config.yaml").model.path
    assert data["models"] == [model] and not data["paper_beside"]
    assert f"Model: {model} — not the paper's Qwen3-8B, so its Table 1 is not shown" in text
    assert "72.57" not in text and "| paper" not in text and "arXiv" not in text


def test_domain_comes_from_the_hub_or_the_test_files_folder_or_its_stem():
    config = RunConfig()
    config.data.test = "data/sciknoweval/biology/test.json"
    assert cmp.domain_of(config) == "biology"
    config.data.hub, config.data.hub_domain = "hicai-zju/SciKnowEval", "physics"
    assert cmp.domain_of(config) == "physics"
    config.data.hub, config.data.test = None, "material.jsonl"
    assert cmp.domain_of(config) == "material"


def test_rho_max_joins_the_label_only_where_runs_of_a_domain_differ(runs, tmp_path):
    other = copy_with(runs / "runs" / "pgpo_a1-seed0", tmp_path / "rho3", **{"pgpo.rho_max": 3.0})
    data = cmp.compare([runs / "runs" / "sdpo-seed0", runs / "runs" / "pgpo_a1-seed0", other])
    assert data["methods"] == ["SDPO", "PGPO α=1, ρ_max=2", "PGPO α=1, ρ_max=3"]
    assert group(data, "toy_science", "PGPO α=1, ρ_max=3")["runs"][0]["folder"] == str(other)
    assert cmp.compare([runs / "runs"])["methods"] == ["SDPO", "PGPO α=1"]


def test_an_unfinished_run_uses_its_rows_so_far_and_estimates_the_total(runs, tmp_path):
    run = shutil.copytree(runs / "runs" / "pgpo_a1-seed1", tmp_path / "pgpo_a1-seed1")
    (run / "summary.json").unlink()
    kept = rows(run)[:2]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept) + '{"step": 3, "epo')  # cut short
    load_for_resume(run, ["train.steps=5"])  # as `train --resume RUN train.steps=5` records it (resumed.yaml)
    data = cmp.compare([runs / "runs" / "pgpo_a1-seed0", run])
    g = group(data, "toy_science", "PGPO α=1")
    mine = g["runs"][1]
    assert mine["best"] == pytest.approx(max(100 * r["val_mean_at_k"] for r in kept))
    assert mine["final"] == pytest.approx(100 * kept[-1]["val_mean_at_k"]) and mine["final_step"] == 2
    assert (mine["steps_done"], mine["steps_planned"], mine["finished"]) == (2, 5, False)
    step = [r["seconds_step"] for r in kept] if "seconds_step" in kept[0] else [
        sum(v for k, v in r.items() if k.startswith("seconds_") and k != "seconds_eval") for r in kept]
    evals = [r["seconds_eval"] for r in kept]
    so_far = sum(step) + sum(evals)
    assert mine["hours"] == pytest.approx(so_far / 3600)
    # 3 steps and 3 validations (eval_every = 1) to go, at this run's mean step and validation time
    assert mine["hours_estimate"] == pytest.approx((so_far + 3 * np.mean(step) + 3 * np.mean(evals)) / 3600)
    assert not g["finished"] and g["steps_done"] == [3, 2] and g["steps_planned"] == [3, 5]
    line = next(x for x in cmp.table(data).splitlines() if "| toy_science | PGPO α=1" in x)
    assert "2–3/3–5" in line and " of ~" in line


def test_a_run_without_validation_is_listed_as_such(runs):
    novalid = runs / "novalid" / "sdpo-seed5"
    data = cmp.compare([novalid])
    g = group(data, "toy_science", "SDPO")
    assert g["seeds"] == [5] and g["seeds_validated"] == [] and g["best"]["mean"] is None
    assert "no validation yet" in cmp.table(data)
    data = cmp.compare([runs / "runs" / "sdpo-seed0", runs / "runs" / "sdpo-seed1", novalid])
    g = group(data, "toy_science", "SDPO")
    assert g["seeds"] == [0, 1, 5] and g["seeds_validated"] == [0, 1]
    best = [max(vals(runs / "runs" / f"sdpo-seed{s}")) for s in (0, 1)]
    assert g["best"]["mean"] == pytest.approx(np.mean(best))  # over the validated seeds only
    assert "3: 0, 1, 5 (no validation yet: 5)" in cmp.table(data)


def test_bad_input_is_one_error_line_naming_the_folder(runs, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    for bad in (empty, tmp_path / "missing", runs / "runs" / "sdpo-seed0" / "metrics.jsonl"):
        with pytest.raises(ConfigError, match=re.escape(str(bad))):
            cmp.compare([runs / "runs" / "sdpo-seed0", bad])
    twin = shutil.copytree(runs / "runs" / "sdpo-seed0", tmp_path / "twin")
    with pytest.raises(ConfigError, match=re.escape(f"{runs / 'runs' / 'sdpo-seed0'} and {twin} are both SDPO on "
                                                    f"toy_science with seed 0")):
        cmp.compare([runs / "runs", twin])
    with pytest.raises(SystemExit) as exit_:
        main(["compare", str(empty)])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1 and err.startswith(f"error: {empty}: not a run folder")


def test_cli_writes_the_table_the_json_and_the_figure(runs, tmp_path, capsys):
    assert main(["compare", str(runs / "runs"), "--json", str(tmp_path / "c.json"),
                 "--figure", str(tmp_path / "fig" / "compare")]) == 0
    out = capsys.readouterr().out
    assert "| SDPO " in out and "| PGPO α=1 " in out and "| toy_science | SDPO " in out
    for ext in ("png", "pdf"):
        assert (tmp_path / "fig" / f"compare.{ext}").stat().st_size > 1000
    saved = json.loads((tmp_path / "c.json").read_text())
    assert saved == json.loads(json.dumps(cmp.compare([runs / "runs"])))
    for g in saved["groups"]:
        for run in g["runs"]:
            assert [v for _, v in run["validations"]] == pytest.approx(vals(run["folder"]))
    assert saved["paper"]["table_1"]["SDPO"]["biology"] == 61.62
    files = cmp.save_figure(cmp.compare([runs / "runs"]), tmp_path / "one.svg")  # a suffix: that file alone
    assert files == [tmp_path / "one.svg"] and files[0].stat().st_size > 1000
    assert not (tmp_path / "one.svg.png").exists()
