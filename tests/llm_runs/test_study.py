"""`python -m llm_runs study` end to end through the command line (a shortened --quick in a temporary folder),
its resume, and the report's definitions on made-up rows."""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from llm_runs.experiment import study

ROOT = Path(__file__).resolve().parents[2]
# --quick cut further (the test's own budget): its overrides come after the preset's
SHORT = ["train.steps=2", "train.eval_every=2", "train.checkpoint_every=1", "warm_start.steps=5", "eval.max_questions=4"]


def cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "llm_runs", "study", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=900, env={"HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": "",
                                                       "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)})


def check_report(data, arms, settings, seeds):
    assert list(data["results"]) == settings and data["seeds"] == seeds
    for setting in settings:
        result = data["results"][setting]
        assert list(result["summary"]) == arms
        for arm, entry in result["summary"].items():
            assert entry["final"]["n"] == len(seeds) and 0 <= entry["final"]["mean"] <= 1
            assert entry["collapse"]["n"] == len(seeds)
            assert ("minus SDPO" in entry) == (arm != "SDPO" and "SDPO" in arms)
            for control in study.CONTROLS:
                assert (f"minus {control}" in entry) == (arm != control and control in arms)
            assert [r["seed"] for r in result["runs"][arm]] == seeds
        assert "collapsed_runs" in result["precursors"]


@pytest.mark.slow  # 22–54 s measured, over a minute on a loaded machine
def test_quick_study_runs_every_arm_in_both_settings_writes_only_to_out_and_resumes(tmp_path):
    out = tmp_path / "study"
    first = cli("--quick", "--jobs", "2", "--out", str(out), *SHORT, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    data = json.loads((out / "llm_study_quick.json").read_text())
    check_report(data, list(study.ARMS), list(study.SETTINGS), [0])
    assert len(data["trained"]) == len(study.ARMS) * len(study.SETTINGS) and not data["reused"]
    assert all((out / f"llm_study_quick.{ext}").exists() for ext in ("png", "pdf", "md"))
    assert not (tmp_path / "figures").exists()  # --quick never writes the committed figures/
    # a replay arm's ρ is its donor run's, step by step (one seed: the "next" seed is seed 0 itself)
    rows = {arm: [json.loads(x)["effective_lr"] for x in
                  (study.run_dir(out, "demo", arm, 0) / "metrics.jsonl").read_text().splitlines()]
            for arm in ("PGPO α=1", "PGPO α=2", "SDPO ρ-replay", "SDPO α=2 ρ-replay next seed")}
    assert rows["SDPO ρ-replay"] == rows["PGPO α=1"] != rows["PGPO α=2"] == rows["SDPO α=2 ρ-replay next seed"]
    stamps = {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("metrics.jsonl")}
    second = cli("--quick", "--jobs", "2", "--out", str(out), *SHORT, cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    again = json.loads((out / "llm_study_quick.json").read_text())
    assert not again["trained"] and len(again["reused"]) == len(data["trained"])
    assert {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("metrics.jsonl")} == stamps
    assert again["results"]["demo"]["summary"] == data["results"]["demo"]["summary"]


def test_a_control_alone_brings_its_reference_run_and_a_killed_run_resumes(tmp_path):
    out = tmp_path / "study"
    args = ["--quick", "--jobs", "1", "--out", str(out), "--arms", "SDPO ρ-replay", "--settings", "demo", *SHORT]
    first = cli(*args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    data = json.loads((out / "llm_study_quick.json").read_text())
    check_report(data, [a for a in study.ARMS if a in ("SDPO ρ-replay", "PGPO α=1")], ["demo"], [0])  # ARMS' order
    # a run killed after its step-1 checkpoint: no summary, metrics cut back to the checkpoint
    folder = study.run_dir(out, "demo", "SDPO ρ-replay", 0)
    rows = folder.joinpath("metrics.jsonl").read_text().splitlines()
    (folder / "summary.json").unlink()
    folder.joinpath("metrics.jsonl").write_text(rows[0] + "\n")
    second = cli(*args, cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    again = json.loads((out / "llm_study_quick.json").read_text())
    assert again["trained"] == [str(folder.relative_to(out))] and len(again["reused"]) == 1
    assert [json.loads(x)["step"] for x in folder.joinpath("metrics.jsonl").read_text().splitlines()] == [1, 2]
    assert "resum" in (second.stdout + second.stderr).lower()


def test_the_next_seed_replay_reads_the_next_seeds_rho_and_report_goes_where_asked(tmp_path):
    out, report = tmp_path / "study", tmp_path / "elsewhere" / "next"
    args = ["--quick", "--jobs", "2", "--seeds", "2", "--out", str(out), "--arms", "SDPO ρ-replay next seed",
            "--settings", "demo", "--report", str(report), *SHORT]
    first = cli(*args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    data = json.loads(report.with_suffix(".json").read_text())
    check_report(data, ["SDPO ρ-replay next seed", "PGPO α=1"], ["demo"], [0, 1])  # ARMS' order
    assert data["reference_seeds"] == {"SDPO ρ-replay next seed": {"0": 1, "1": 0}}
    assert not (out / "llm_study_quick.json").exists() and all(report.with_suffix(f".{e}").exists() for e in ("md", "png"))

    def lrs(arm, seed):
        lines = (study.run_dir(out, "demo", arm, seed) / "metrics.jsonl").read_text().splitlines()
        return [json.loads(x)["effective_lr"] for x in lines]
    for seed, donor in ((0, 1), (1, 0)):  # the schedule is the other seed's PGPO run's, not its own seed's
        assert lrs("SDPO ρ-replay next seed", seed) == lrs("PGPO α=1", donor) != lrs("PGPO α=1", seed)
    assert "− ρ-replay next seed (points)" in first.stdout
    replot = cli("--replot", "--report", str(report), cwd=tmp_path)
    assert replot.returncode == 0 and "− ρ-replay next seed (points)" in replot.stdout, replot.stderr[-2000:]


def test_reference_seeds_are_the_same_seed_or_the_next_one_cyclically():
    seeds = [0, 1, 2, 3]
    assert [study.reference_seed("SDPO ρ-replay", k, seeds) for k in seeds] == seeds
    assert [study.reference_seed("SDPO ρ-replay next seed", k, seeds) for k in seeds] == [1, 2, 3, 0]
    assert study.reference_seed("SDPO", 0, seeds) is None and study.reference_seed("PGPO α=2", 3, seeds) is None
    # every reading arm is planned after its reference arm, whichever seed it reads
    order = study.plan(["SDPO ρ-replay next seed"], ["demo"], seeds)
    assert {a for _, a, _ in order} == {"PGPO α=1", "SDPO ρ-replay next seed"} and len(order) == 8


def test_a_control_reads_its_own_donor_arm_and_the_full_study_leaves_the_follow_ups_out(tmp_path):
    seeds = [3, 4, 5]
    for arm, donor in (("SDPO ρ-replay next seed", "PGPO α=1"), ("SDPO α=2 ρ-replay next seed", "PGPO α=2"),
                       ("SDPO ρ-replay", "PGPO α=1")):
        assert study.donor_arm(arm) == donor
        config, folder = study.run_config(tmp_path, "demo", arm, 5, tmp_path / "ckpt", [], seeds)
        read = seeds[0] if "next" in arm else 5  # the last seed's next is the first, cyclically
        assert config.pgpo.replay_rho == str(study.run_dir(tmp_path, "demo", donor, read).resolve())
        assert folder == study.run_dir(tmp_path, "demo", arm, 5)
    # a follow-up alone brings its own donor (not PGPO α = 1), planned before it for every seed it reads
    order = study.plan(["SDPO α=2 ρ-replay next seed"], ["demo", "collapse"], seeds)
    assert {a for _, a, _ in order} == {"PGPO α=2", "SDPO α=2 ρ-replay next seed"} and len(order) == 12
    assert all(a == "PGPO α=2" for _, a, _ in order[:2])
    assert set(study.FOLLOW_UPS) <= set(study.ARMS) and not set(study.FOLLOW_UPS) & set(study.STUDY_ARMS)
    assert all(study.donor_arm(a) in study.STUDY_ARMS for a in study.ARMS)


def test_replot_redraws_from_the_json_and_bad_flags_are_one_error_line(tmp_path):
    missing = cli("--quick", "--replot", "--out", str(tmp_path / "none"), cwd=tmp_path)
    assert missing.returncode == 2 and missing.stderr.strip().splitlines()[-1].startswith("error: --replot needs")
    bad = cli("--quick", "--jobs", "0", "--out", str(tmp_path / "x"), cwd=tmp_path)
    assert bad.returncode == 2 and "--jobs" in bad.stderr and "Traceback" not in bad.stderr
    unknown = cli("--quick", "--arms", "SGD", "--out", str(tmp_path / "y"), cwd=tmp_path)
    assert unknown.returncode == 2 and "SGD" in unknown.stderr and "Traceback" not in unknown.stderr


def rows(rewards, entropies):
    return [{"step": i + 1, "reward_mean": r, "entropy": e} for i, (r, e) in enumerate(zip(rewards, entropies))]


def test_collapse_is_the_first_step_a_running_mean_crosses_its_threshold():
    w = study.COLLAPSE["window"]
    stable = rows([0.5] * 30, [1.0] * 30)
    assert study.collapse_onset(stable, final=0.6, warmup=5) is None
    assert study.collapse_onset(stable, final=study.COLLAPSE["final_below"] / 2, warmup=5) == 30  # final only
    falling = rows([0.5] * 10 + [0.0] * 20, [1.0] * 30)
    # the mean of the last w rewards falls below the threshold once enough of them are 0
    need = math.ceil(w * (1 - study.COLLAPSE["reward_below"] / 0.5) + 1e-9)
    assert study.collapse_onset(falling, final=0.6, warmup=5) == 10 + need
    frozen = rows([0.5] * 30, [1.0] * 15 + [0.0] * 15)
    assert study.collapse_onset(frozen, final=0.6, warmup=5) > 15


def test_intervals_are_t_for_means_and_wilson_for_rates():
    from scipy import stats

    x = np.array([0.1, 0.4, 0.35, 0.2])
    e = study.t_interval(x)
    half = stats.t.ppf(0.975, 3) * x.std(ddof=1) / 2
    assert e["mean"] == pytest.approx(x.mean()) and e["high"] - e["mean"] == pytest.approx(half)
    w = study.wilson(0, 10)
    assert w["rate"] == 0 and w["low"] == 0 and 0.2 < w["high"] < 0.35
    assert study.wilson(10, 10)["high"] == 1.0


def test_values_equal_but_for_rounding_give_a_tight_interval_without_a_warning():
    import warnings

    x = [1.4, np.nextafter(1.4, 2.0), 1.4, 1.4]  # mean ρ's that differ in the last bit, as replays' can
    assert np.ptp(x) > 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # scipy's "Precision loss" warning on such data would be an error here
        e = study.t_interval(x)
    assert e["low"] <= e["mean"] <= e["high"] and e["high"] - e["low"] < 1e-12


def test_controls_wait_for_their_reference_in_the_plan():
    tasks = study.plan(list(study.ARMS), list(study.SETTINGS), [0, 1])
    for seed in (0, 1):
        for setting in study.SETTINGS:
            order = [a for s, a, k in tasks if k == seed and s == setting]
            assert order.index("PGPO α=1") < order.index("SDPO ρ-replay") and order.index("PGPO α=1") < order.index("SDPO lr×ρ̄")
    assert len(tasks) == len(study.ARMS) * len(study.SETTINGS) * 2


def test_the_report_gives_the_collapse_onset_and_how_much_later_it_comes_than_sdpos(monkeypatch, tmp_path):
    """Made-up runs: SDPO collapses at steps 20, 30, 40; PGPO α=1 at 25, 45 and not at all on seed 2. The onset is
    the mean over the collapsed runs; "onset minus SDPO" pairs the seeds where both collapsed: (5, 15)."""
    onsets = {"SDPO": [20, 30, 40], "PGPO α=1": [25, 45, None]}

    def made_up(folder, warmup):
        arm = next(a for a in onsets if study.slug(a) == folder.name.rsplit("-seed", 1)[0])
        onset = onsets[arm][int(folder.name.rsplit("-seed", 1)[1])]
        return {"final": 0.5, "collapsed": onset is not None, "onset": onset, "rho_mean": 1.0, "sde_time": 1.0,
                "diagnostics": {key: [1.0] * 60 for key in study.DIAGNOSTICS}}

    monkeypatch.setattr(study, "summarise_run", made_up)
    summary = study.report(tmp_path, list(onsets), ["collapse"], [0, 1, 2], 10)["collapse"]["summary"]
    assert summary["SDPO"]["onset"]["mean"] == 30 and summary["SDPO"]["onset"]["n"] == 3
    assert summary["PGPO α=1"]["onset"]["mean"] == 35 and summary["PGPO α=1"]["onset"]["n"] == 2
    later = summary["PGPO α=1"]["onset minus SDPO"]
    assert later["n"] == 2 and later["mean"] == 10 and later["low"] < 10 < later["high"]
    from llm_runs.experiment.study_report import table

    text = table({"k": 8, "seeds": [0, 1, 2], "results": {"collapse": {"summary": summary}}})
    assert "collapse onset (step)" in text and "| 35.0 [" in text


def test_the_coupling_of_rho_to_I_ignores_their_shared_trend():
    rng = np.random.default_rng(0)
    steps = np.arange(300)
    trend = 0.3 * np.exp(-steps / 100)  # I falls over training in every run
    own, other = trend + 0.02 * rng.standard_normal(300), trend + 0.02 * rng.standard_normal(300)
    rho = np.minimum(1 + own, 2.0)
    assert study.fluctuation_correlation(rho, own) == pytest.approx(1.0)  # PGPO: ρ = g(I)
    # another run's ρ shares the trend, not the batch-to-batch part: without the trend removed it would read ~0.9
    assert np.corrcoef(np.minimum(1 + other, 2.0), own)[0, 1] > 0.8
    assert abs(study.fluctuation_correlation(np.minimum(1 + other, 2.0), own)) < 0.15
    assert study.fluctuation_correlation(np.ones(300), own) is None  # SDPO: ρ = 1
    assert study.fluctuation_correlation(rho[:10], own[:10]) is None  # too short to take a trend off
