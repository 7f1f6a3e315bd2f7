"""What a PGPOTrainer user reads: the first log line says whether PGPO is on, ρ and I are logged from step 1,
and with logging_steps > 1 each log holds the last step's ρ and I and their window means, named as such."""

import logging
import math
import os

import pytest

pytest.importorskip("trl")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from trl.experimental.sdpo import SDPOConfig  # noqa: E402

from pgpo.trl import PGPOConfig, PGPOTrainer, window_metrics  # noqa: E402

from .test_trl import DATA, SETTINGS, reward  # noqa: E402


class Stepping(PGPOTrainer):
    """Keeps every optimizer step's (I, ρ)."""

    def _rho(self):
        rho = super()._rho()
        self.steps.append((self.last_information, rho))
        return rho


def _train(model_dir, tmp_path, drop=(), **overrides):
    from transformers import AutoTokenizer

    settings = {k: v for k, v in SETTINGS.items() if k not in drop}
    args = PGPOConfig(output_dir=str(tmp_path / "out"), **{**settings, **overrides})
    trainer = Stepping(model=str(model_dir), reward_funcs=reward, args=args, train_dataset=DATA,
                       processing_class=AutoTokenizer.from_pretrained(model_dir, padding_side="left",
                                                                     truncation_side="left"))
    trainer.steps = []
    trainer.train()
    return trainer


def _rows(trainer):
    return [row for row in trainer.state.log_history if "pgpo/rho_last" in row]


def test_each_log_holds_the_last_step_and_the_window_mean(tiny_model_dir, tmp_path):
    """logging_steps = 2 over 4 steps, PGPO acting (ρ varies): logs at step 1 (the first step), 2 and 4, each with
    the last step's ρ and I and the means over the steps since the previous log; no unnamed average."""
    trainer = _train(tiny_model_dir, tmp_path, max_steps=4, logging_steps=2, gradient_accumulation_steps=1,
                     pgpo_alpha=20.0, pgpo_rho_max=5.0)
    (i1, r1), (i2, r2), (i3, r3), (i4, r4) = trainer.steps
    assert r3 != r4 and i3 != i4  # the window's mean is not its last value
    rows = _rows(trainer)
    assert [row["step"] for row in rows] == [1, 2, 4]
    expected = [(r1, r1, i1, i1, 1), (r2, r2, i2, i2, 1), (r4, (r3 + r4) / 2, i4, (i3 + i4) / 2, 2)]
    for row, (rho_last, rho_mean, i_last, i_mean, n) in zip(rows, expected):
        assert row["pgpo/rho_last"] == rho_last and row["pgpo/information_last"] == i_last
        assert row["pgpo/rho_window_mean"] == pytest.approx(rho_mean, rel=1e-12)
        assert row["pgpo/information_window_mean"] == pytest.approx(i_mean, rel=1e-12)
        assert row["pgpo/window_steps"] == n and row["pgpo/information_nonfinite_steps"] == 0
    assert not any(key in row for row in trainer.state.log_history for key in ("pgpo/rho", "pgpo/information"))


def test_pgpo_on_by_default_says_so_first_and_logs_at_step_1(tiny_model_dir, tmp_path, caplog):
    """The rename alone turns PGPO on (pgpo_alpha = 1): train()'s first log line says so, with ρ's formula and how
    to turn it off, and step 1 is logged (logging_first_step, True here) though TRL logs every 10 steps."""
    assert PGPOConfig.__dataclass_fields__["pgpo_alpha"].default == 1.0
    assert PGPOConfig(output_dir=str(tmp_path), use_cpu=True).logging_first_step is True
    assert SDPOConfig(output_dir=str(tmp_path), use_cpu=True).logging_first_step is False  # what changed
    with caplog.at_level(logging.WARNING, logger="pgpo.trl"):
        trainer = _train(tiny_model_dir, tmp_path, drop=("logging_steps",), max_steps=2)  # TRL's logging_steps
    first = [r.getMessage() for r in caplog.records if r.name == "pgpo.trl"][0]
    assert first.startswith("PGPO is on (pgpo_alpha=1): every optimizer step is SDPO's times ρ = min(1 + 1·I, 2)")
    assert "logged from step 1" in first and "pgpo_alpha=0 gives SDPOTrainer's steps exactly" in first
    assert trainer.args.logging_steps == 10
    assert _rows(trainer)[0]["step"] == 1 and _rows(trainer)[0]["pgpo/rho_last"] == trainer.steps[0][1] > 1


def test_alpha_zero_says_pgpo_is_off(tiny_model_dir, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="pgpo.trl"):
        _train(tiny_model_dir, tmp_path, pgpo_alpha=0.0)
    assert [r.getMessage() for r in caplog.records if r.name == "pgpo.trl"][0].startswith(
        "PGPO is off (pgpo_alpha=0): SDPO's steps exactly")


def test_window_metrics_with_an_unknown_information():
    """A non-finite I (ρ = 1 that step) is logged as None, left out of the window's mean, and counted."""
    metrics = window_metrics([0.5, math.nan, 0.25], [1.5, 1.0, 1.25])
    assert metrics == {"pgpo/rho_last": 1.25, "pgpo/rho_window_mean": 1.25, "pgpo/information_last": 0.25,
                       "pgpo/information_window_mean": 0.375, "pgpo/window_steps": 3,
                       "pgpo/information_nonfinite_steps": 1}
    metrics = window_metrics([math.nan], [1.0])
    assert metrics["pgpo/information_last"] is None and metrics["pgpo/information_window_mean"] is None
