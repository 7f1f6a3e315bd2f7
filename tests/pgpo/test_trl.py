"""PGPO inside TRL's real SDPO trainer (trl 1.16.0, CPU, the tiny Qwen3 built by `llm_runs.tiny`).

TRL is the oracle, in each of its distillation modes (top-k + tail, the vocabulary, the sampled token): α = 0
is its SDPO bit for bit, PGPO's update is ρ × its update from the same state, and I is its own per-token
divergence pooled over the step's micro-batches (top-k and vocabulary: its loss at distillation_alpha = 0; the
sampled token: the single-sample estimate recomputed here from the logits, with the loss's importance weight).
The estimator itself is tested in test_trl_sampled.py, the logs in test_trl_logging.py."""

import os

import numpy as np
import pytest
import torch

pytest.importorskip("trl")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from trl.experimental.sdpo import SDPOConfig, SDPOTrainer  # noqa: E402
from trl.experimental.sdpo.loss_utils import (compute_full_logit_self_distillation_loss,  # noqa: E402
                                              compute_topk_self_distillation_loss)

from pgpo.trl import PGPOConfig, PGPOTrainer, support_logprobs  # noqa: E402

DATA = [{"prompt": [{"role": "user", "content": f"What is {i} plus {i}?"}], "privileged_context": f"The answer is {2 * i}."}
        for i in range(8)]
SETTINGS = dict(use_cpu=True, bf16=False, gradient_checkpointing=False, use_vllm=False, per_device_train_batch_size=4,
                gradient_accumulation_steps=2, num_generations=4, max_completion_length=8, max_prompt_length=32,
                max_steps=1, logging_steps=1, report_to="none", save_strategy="no", learning_rate=1e-3,
                distillation_mode="topk_logits", distillation_topk=5, distillation_add_tail=True, distillation_alpha=0.0,
                success_reward_threshold=1.0, include_environment_feedback=True, teacher_model_kind="ema", seed=0)


def reward(prompts, completions, completion_ids, **kwargs):
    """Half the samples succeed: those become the demonstrations that make the teacher differ from the student."""
    return [float(i % 2) for i in range(len(prompts))]


def _train(model_dir, tmp_path, trainer_cls=PGPOTrainer, config_cls=PGPOConfig, **overrides):
    from transformers import AutoTokenizer

    args = config_cls(output_dir=str(tmp_path / trainer_cls.__name__), **{**SETTINGS, **overrides})
    tokenizer = AutoTokenizer.from_pretrained(model_dir, padding_side="left", truncation_side="left")
    trainer = trainer_cls(model=str(model_dir), reward_funcs=reward, args=args, train_dataset=DATA,
                          processing_class=tokenizer)
    before = {k: v.detach().clone() for k, v in trainer.model.named_parameters()}
    trainer.train()
    after = {k: v.detach().clone() for k, v in trainer.model.named_parameters()}
    return trainer, before, after


MODES = {"topk_logits": {}, "full_logits": {},
         # TRL's default mode (and its only divergence there: distillation_alpha = 1, the reverse KL)
         "sampled_token": dict(distillation_mode="sampled_token", distillation_alpha=1.0)}


def _mode(mode):
    return {"distillation_mode": mode, **MODES[mode]}


def _logged(trainer, key):
    return [row[key] for row in trainer.state.log_history if key in row]


@pytest.mark.parametrize("mode", MODES)
def test_alpha_zero_is_sdpo_bit_for_bit(tiny_model_dir, tmp_path, mode):
    sdpo, start, plain = _train(tiny_model_dir, tmp_path, SDPOTrainer, SDPOConfig, max_steps=2, **_mode(mode))
    pgpo, start2, zero = _train(tiny_model_dir, tmp_path, pgpo_alpha=0.0, max_steps=2, **_mode(mode))
    assert all(torch.equal(start[k], start2[k]) for k in start)
    assert all(torch.equal(plain[k], zero[k]) for k in plain)
    assert max((plain[k] - start[k]).abs().max().item() for k in plain) > 1e-4  # it trained
    assert _logged(pgpo, "pgpo/rho_last") == [1.0, 1.0]
    assert all(i > 0 for i in _logged(pgpo, "pgpo/information_last"))


# α and ρ_max per mode, so that ρ lands strictly between 1.2 and the cap on the tiny model's first step
RHO_SETTINGS = {"topk_logits": dict(pgpo_alpha=20.0, pgpo_rho_max=5.0), "full_logits": dict(pgpo_alpha=2.0, pgpo_rho_max=5.0),
                "sampled_token": dict(pgpo_alpha=1.0, pgpo_rho_max=20.0)}


@pytest.mark.parametrize("mode,method", [("topk_logits", "auto"), ("topk_logits", "delta"), ("full_logits", "auto"),
                                         ("sampled_token", "auto")])
def test_update_is_rho_times_sdpo_update(tiny_model_dir, tmp_path, mode, method):
    """One step from the same state and the same rollouts: Δθ(PGPO) = ρ · Δθ(SDPO), AdamW with weight decay.

    Exact up to float32 rounding: AdamW rounds each parameter twice per step (after the decay, after the
    update), half an ulp each, and the SDPO step's rounding is amplified by ρ; plus the update's own
    arithmetic (1e-6 relative)."""
    overrides = dict(weight_decay=0.1, **_mode(mode))
    _, start, plain = _train(tiny_model_dir, tmp_path, SDPOTrainer, SDPOConfig, **overrides)
    settings = RHO_SETTINGS[mode]
    pgpo, _, scaled = _train(tiny_model_dir, tmp_path, pgpo_step_method=method, **settings, **overrides)
    rho = pgpo.last_rho
    assert 1.2 < rho < settings["pgpo_rho_max"], rho  # PGPO acts, below the cap: the check is not trivial
    assert _logged(pgpo, "pgpo/rho_last") == [rho]
    eps = torch.finfo(torch.float32).eps
    for k in start:
        delta = plain[k] - start[k]
        error = ((scaled[k] - start[k]) - rho * delta).abs()
        bound = eps * (rho * plain[k].abs() + scaled[k].abs()) + 1e-6 * rho * delta.abs()
        assert (error <= bound).all(), (k, (error - bound).max().item())
    assert max((plain[k] - start[k]).abs().max().item() for k in start) > 1e-4  # SDPO moved the weights


class _Recording(PGPOTrainer):
    """Keeps each training micro-batch's logits, tokens and rollout log-probs, to recompute I from them."""

    def _compute_self_distillation_loss(self, model, inputs, distillation_logits):
        if model.training:
            old = inputs.get("old_per_token_logps")
            self.seen = getattr(self, "seen", []) + [(distillation_logits.student_logits.detach().clone(),
                                                      distillation_logits.teacher_logits.detach().clone(),
                                                      distillation_logits.loss_mask.clone(),
                                                      distillation_logits.completion_ids.clone(),
                                                      None if old is None else old.clone())]
        return super()._compute_self_distillation_loss(model, inputs, distillation_logits)


@pytest.mark.parametrize("mode", ["topk_logits", "full_logits"])
def test_information_is_trl_kl_pooled_over_accumulation(tiny_model_dir, tmp_path, mode):
    """At distillation_alpha = 0 TRL's per-token loss is KL(teacher ‖ student) on the loss's support: I is its
    mask-weighted sum over both accumulated micro-batches over their summed mask (not a mean of means)."""
    trainer, _, _ = _train(tiny_model_dir, tmp_path, _Recording, distillation_mode=mode)
    assert len(trainer.seen) == 2  # gradient_accumulation_steps
    numerator = denominator = 0.0
    for student, teacher, mask, _, _ in trainer.seen:
        if mode == "topk_logits":
            per_token = compute_topk_self_distillation_loss(student, teacher, distillation_topk=5, distillation_alpha=0.0,
                                                            distillation_add_tail=True)
        else:
            per_token = compute_full_logit_self_distillation_loss(student, teacher, distillation_alpha=0.0)
        numerator += (per_token.double() * mask).sum().item()
        denominator += mask.sum().item()
    assert trainer.last_information == pytest.approx(numerator / denominator, rel=1e-5)
    assert _logged(trainer, "pgpo/information_last") == [trainer.last_information]


def _sampled_estimate(student, teacher, ids, old, clip):
    """KL(teacher ‖ student) from the sampled tokens, written out independently of pgpo.sampled: per token
    r·log r − r + 1 with r = q(y)/p(y) (p, q the log-softmaxed logits at the sampled token y), times the loss's
    weight min(exp(log p(y) − log p_old(y)), clip) where the rollout log-probs are there."""
    log_p = torch.log_softmax(student.double(), -1).gather(-1, ids[..., None])[..., 0].numpy()
    log_q = torch.log_softmax(teacher.double(), -1).gather(-1, ids[..., None])[..., 0].numpy()
    r = np.exp(log_q - log_p)
    value = r * (log_q - log_p) - r + 1
    if old is not None:
        value = value * np.minimum(np.exp(log_p - old.double().numpy()), clip)
    return value


@pytest.mark.parametrize("rollouts", ["on_policy", "reused"])
def test_sampled_token_information_against_an_independent_computation(tiny_model_dir, tmp_path, rollouts):
    """TRL's default mode: I = Σ m·ŵ·(r log r − r + 1) / Σ m over both micro-batches of each step. "reused": each
    rollout trains two steps (num_iterations = 2), so TRL keeps the rollout log-probs and its loss weights each
    token by the clipped ratio to them; I must carry the same weight, and the second step's weights are not 1."""
    extra = dict(num_iterations=2, max_steps=2, distillation_is_clip=1.05) if rollouts == "reused" else {}
    trainer, _, _ = _train(tiny_model_dir, tmp_path, _Recording, **_mode("sampled_token"), **extra)
    steps = 2 if rollouts == "reused" else 1
    assert len(trainer.seen) == 2 * steps
    expected = []
    for step in range(steps):
        numerator = denominator = 0.0
        for student, teacher, mask, ids, old in trainer.seen[2 * step:2 * step + 2]:
            assert (old is not None) == (rollouts == "reused")
            value = _sampled_estimate(student, teacher, ids, old, 1.05)
            numerator += (value * mask.double().numpy()).sum()
            denominator += mask.sum().item()
        expected.append(numerator / denominator)
    assert _logged(trainer, "pgpo/information_last") == pytest.approx(expected, rel=1e-6)
    if rollouts == "reused":  # the weights acted: without them the second step's I differs
        student, teacher, mask, ids, old = trainer.seen[2]
        ratio = torch.exp(torch.log_softmax(student, -1).gather(-1, ids[..., None])[..., 0] - old)
        assert ((ratio - 1).abs() * mask).max() > 1e-3


def test_support_is_trls_own():
    """Top-k + tail, top-k renormalised, vocabulary: the same KL(q ‖ p) as TRL's loss at distillation_alpha = 0."""
    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(2, 3, 50, generator=g) * 2, torch.randn(2, 3, 50, generator=g) * 2
    for mode, tail in (("topk_logits", True), ("topk_logits", False), ("full_logits", True)):
        log_p, log_q = support_logprobs(student, teacher, mode, 7, tail)
        mine = (log_q.exp() * (log_q - log_p)).sum(-1)
        if mode == "topk_logits":
            theirs = compute_topk_self_distillation_loss(student, teacher, distillation_topk=7, distillation_alpha=0.0,
                                                         distillation_add_tail=tail)
        else:
            theirs = compute_full_logit_self_distillation_loss(student, teacher, distillation_alpha=0.0)
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-6)
    # a confident student: the top-k holds all but ~e^-40 of the mass, and the tail's log-mass stays finite
    confident = student.clone()
    confident[..., 0] += 60.0
    log_p, _ = support_logprobs(confident, teacher, "topk_logits", 7, True)
    assert torch.isfinite(log_p).all() and (log_p[..., -1] < -40).all()


def test_config_takes_trls_defaults(tmp_path):
    """TRL's own defaults (distillation_mode="sampled_token", a teacher server) are accepted, at α = 0 and above."""
    for alpha in (0.0, 1.0):
        args = PGPOConfig(output_dir=str(tmp_path), use_cpu=True, pgpo_alpha=alpha)
        assert args.distillation_mode == SDPOConfig(output_dir=str(tmp_path), use_cpu=True).distillation_mode == "sampled_token"
        assert PGPOConfig(output_dir=str(tmp_path), use_cpu=True, pgpo_alpha=alpha, use_teacher_server=True).use_teacher_server


@pytest.mark.parametrize("bad,match", [(dict(pgpo_alpha=-1.0), "alpha"), (dict(pgpo_rho_max=0.5), "rho_max"),
                                       (dict(pgpo_divergence="l2"), "pgpo_divergence"),
                                       (dict(pgpo_step_method="fast"), "pgpo_step_method")])
def test_config_refuses_what_pgpo_cannot_do(tmp_path, bad, match):
    with pytest.raises(ValueError, match=match):
        PGPOConfig(output_dir=str(tmp_path), **{**SETTINGS, **bad})


def test_trainer_needs_a_pgpo_config(tiny_model_dir, tmp_path):
    with pytest.raises(TypeError, match="PGPOConfig"):
        _train(tiny_model_dir, tmp_path, PGPOTrainer, SDPOConfig)


RANKS_SCRIPT = """
import json, os, sys
sys.path.insert(0, os.path.dirname(sys.argv[0]))
from test_trl_data import DATA, SETTINGS, reward
from transformers import AutoTokenizer
from pgpo.trl import PGPOConfig, PGPOTrainer

class Local(PGPOTrainer):
    def _rho(self):
        local = [float(x) for x in self._information_sums]
        rho = super()._rho()
        self.record.append({"local": local, "information": self.last_information, "rho": rho})
        return rho

model_dir, out = sys.argv[1:3]
args = PGPOConfig(output_dir=out, **{**SETTINGS, "per_device_train_batch_size": 2, "max_steps": 2})
trainer = Local(model=model_dir, reward_funcs=reward, args=args, train_dataset=DATA,
                processing_class=AutoTokenizer.from_pretrained(model_dir, padding_side="left", truncation_side="left"))
trainer.record = []
trainer.train()
open(os.path.join(out, f"rank{trainer.accelerator.process_index}.json"), "w").write(json.dumps(trainer.record))
"""


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
def test_information_is_reduced_over_ranks(tiny_model_dir, tmp_path):
    """torchrun, 2 CPU processes (gloo): every rank steps with I = Σ_ranks Σ m·D / Σ_ranks Σ m, so the same ρ."""
    import inspect
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    (tmp_path / "test_trl_data.py").write_text(
        f"DATA = {DATA!r}\nSETTINGS = {SETTINGS!r}\n" + inspect.getsource(reward))
    (tmp_path / "ranks.py").write_text(RANKS_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(root), "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(tmp_path / "ranks.py"), str(tiny_model_dir), str(tmp_path)],
                          cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 2
    for a, b in zip(*ranks):
        assert a["rho"] == b["rho"] and a["information"] == b["information"]
        pooled = (a["local"][0] + b["local"][0]) / (a["local"][1] + b["local"][1])
        assert a["information"] == pytest.approx(pooled, rel=1e-12)
        assert a["local"] != b["local"]  # the ranks saw different samples: the reduction mattered
