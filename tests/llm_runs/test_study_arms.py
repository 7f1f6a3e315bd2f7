"""The study's arms as trainer settings, on a tiny random Qwen3 on CPU: the replayed ρ_t and its mean, ρ per
sequence, I normalised by its running mean, and the keys' refusals."""

import json
import math

import pytest
import torch

from llm_runs.config import ConfigError
from llm_runs.metrics import StepMetrics
from llm_runs.trainer import Trainer, TeacherContexts
from llm_runs.variants import normalised_information
from pgpo import Multiplier

from tests.llm_runs.test_trainer import config


def rows_of(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def pgpo_run(tiny_model_dir, tmp_path_factory):
    """A 3-step PGPO α = 1 run whose ρ_t the replay arms read."""
    out = tmp_path_factory.mktemp("pgpo")
    Trainer(config(tiny_model_dir, out, "pgpo.enabled=true", "pgpo.alpha=1.0", "train.steps=3"), out / "pgpo",
            progress=False).train()
    return out / "pgpo"


def test_replayed_schedule_reproduces_the_pgpo_runs_effective_lr_step_by_step(tiny_model_dir, tmp_path, pgpo_run):
    run = Trainer(config(tiny_model_dir, tmp_path, "pgpo.enabled=false", f"pgpo.replay_rho={pgpo_run}",
                         "train.steps=3"), tmp_path / "replay", progress=False)
    run.train()
    source, replay = rows_of(pgpo_run), rows_of(tmp_path / "replay")
    assert [r["effective_lr"] for r in replay] == [r["effective_lr"] for r in source]
    assert [r["rho"] for r in replay] == [r["rho"] for r in source]
    assert any(r["rho"] != 1.0 for r in replay)  # else the test could not tell a replay from SDPO
    assert replay[-1]["sde_time"] == pytest.approx(source[-1]["sde_time"], rel=1e-12)


def test_replayed_mean_is_sdpo_at_lr_times_the_runs_mean_rho(tiny_model_dir, tmp_path, pgpo_run):
    Trainer(config(tiny_model_dir, tmp_path, "pgpo.enabled=false", f"pgpo.replay_rho={pgpo_run}",
                   "pgpo.replay_rho_mode=mean", "train.steps=3"), tmp_path / "mean", progress=False).train()
    mean = sum(r["rho"] for r in rows_of(pgpo_run)) / 3
    assert all(r["rho"] == pytest.approx(mean, rel=1e-15) for r in rows_of(tmp_path / "mean"))


def test_a_replayed_run_shorter_than_this_one_is_refused_by_name(tiny_model_dir, tmp_path, pgpo_run):
    with pytest.raises(ConfigError, match=r"pgpo\.replay_rho: .*train\.steps=4.*first missing step 4"):
        Trainer(config(tiny_model_dir, tmp_path, "pgpo.enabled=false", f"pgpo.replay_rho={pgpo_run}",
                       "train.steps=4"), tmp_path / "long", progress=False)
    with pytest.raises(ConfigError, match=r"pgpo\.replay_rho: .*does not exist"):
        Trainer(config(tiny_model_dir, tmp_path, "pgpo.enabled=false", f"pgpo.replay_rho={tmp_path / 'none'}"),
                tmp_path / "missing", progress=False)


@pytest.mark.parametrize("overrides, key", [
    (["pgpo.enabled=true", "pgpo.replay_rho=x"], "pgpo.replay_rho"),
    (["pgpo.enabled=false", "pgpo.per_sequence=true"], "pgpo.per_sequence"),
    (["pgpo.enabled=false", "pgpo.normalize_information=true"], "pgpo.normalize_information"),
])
def test_a_variant_without_its_method_is_refused_naming_the_key(tiny_model_dir, tmp_path, overrides, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        Trainer(config(tiny_model_dir, tmp_path, *overrides), tmp_path / "run", progress=False)


def gradient(model) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]).double()


@pytest.mark.parametrize("implementation", ["chunked", "plain"])
def test_per_sequence_gradient_is_each_sequences_gradient_weighted_by_its_rho_over_their_mean(tiny_model_dir, tmp_path,
                                                                                             implementation):
    t = Trainer(config(tiny_model_dir, tmp_path, "pgpo.enabled=true", "pgpo.alpha=2.0",
                       f"loss.implementation={implementation}"), tmp_path / "run", progress=False)
    prompts = t.draw_prompts()
    rollouts = t.generate(prompts)
    contexts = t.teacher_contexts(prompts, rollouts, t.score(prompts, rollouts))
    g = Multiplier(2.0, t.config.pgpo.rho_max)
    grads, rhos = [], []
    for i in range(len(rollouts)):  # each sequence alone: its gradient g_i / B and its own I_i
        m = StepMetrics(t.device)
        t.forward_backward(prompts, rollouts[i:i + 1], TeacherContexts(contexts.ids[i:i + 1], contexts.mask[i:i + 1]), m)
        num, den = m.information_pair()
        grads.append(gradient(t.model))
        rhos.append(float(g(float(num / den))) if float(den) > 0 else 1.0)
    mask = torch.tensor(contexts.mask, dtype=torch.float64)
    rho = torch.tensor(rhos, dtype=torch.float64)  # (P·n,)
    mean = float((mask * rho).sum() / mask.sum())
    assert len(set(rhos)) > 1  # the weights differ, or the test could not see them
    expected = sum(w * gi for w, gi in zip(mask * rho / mean, grads))
    weights = mask * rho / mean
    assert float(weights[mask > 0].mean()) == pytest.approx(1.0, rel=1e-12)  # so the mean weight × ρ is ρ

    t.config.pgpo.per_sequence = True
    m = StepMetrics(t.device)
    t.forward_backward(prompts, rollouts, contexts, m)
    assert t.step_extra["rho_sequence_mean"] == pytest.approx(mean, rel=1e-6)  # batched vs one-by-one forwards
    torch.testing.assert_close(gradient(t.model), expected, rtol=1e-4, atol=1e-9)
    plain = StepMetrics(t.device)
    t.config.pgpo.per_sequence = False
    t.forward_backward(prompts, rollouts, contexts, plain)
    assert not torch.allclose(gradient(t.model), expected, rtol=1e-4, atol=1e-9)  # the weighting did something
    # the batch's I is the unweighted one in both
    assert float(global_i(m)) == pytest.approx(float(global_i(plain)), rel=1e-12)


def global_i(metrics):
    num, den = metrics.information_pair()
    return num / den


def test_per_sequence_step_logs_the_batch_rho_and_the_mean_of_the_sequences(tiny_model_dir, tmp_path):
    t = Trainer(config(tiny_model_dir, tmp_path, "pgpo.enabled=true", "pgpo.per_sequence=true", "train.steps=2"),
                tmp_path / "run", progress=False)
    t.train()
    rows = rows_of(tmp_path / "run")
    g = Multiplier(t.config.pgpo.alpha, t.config.pgpo.rho_max)
    for r in rows:
        assert r["rho"] == pytest.approx(float(g(r["information"])), rel=1e-12)  # the step's ρ is the batch's
        assert 1.0 <= r["rho_sequence_mean"] <= t.config.pgpo.rho_max


def test_normalised_information_is_i_over_the_mean_of_the_earlier_steps():
    assert normalised_information(0.3, {"information_sum": 0.0, "information_count": 0}) == 1.0  # the first step
    assert normalised_information(0.3, {"information_sum": 0.4, "information_count": 2}) == pytest.approx(1.5)
    assert normalised_information(0.3, {"information_sum": 0.0, "information_count": 3}) == 1.0  # Ī = 0
    assert math.isnan(normalised_information(math.nan, {"information_sum": 0.4, "information_count": 2}))


def test_normalised_run_gives_rho_from_i_over_its_running_mean(tiny_model_dir, tmp_path):
    t = Trainer(config(tiny_model_dir, tmp_path, "pgpo.enabled=true", "pgpo.alpha=0.5",
                       "pgpo.normalize_information=true", "train.steps=3"), tmp_path / "run", progress=False)
    t.train()
    rows = rows_of(tmp_path / "run")
    g = Multiplier(0.5, t.config.pgpo.rho_max)
    assert rows[0]["rho"] == float(g(1.0))  # I / Ī := 1 at the first step
    for i, r in enumerate(rows[1:], start=1):
        earlier = [x["information"] for x in rows[:i]]
        expected = r["information"] / (sum(earlier) / len(earlier))
        assert r["information_normalised"] == pytest.approx(expected, rel=1e-12)
        assert r["rho"] == pytest.approx(float(g(expected)), rel=1e-12)
