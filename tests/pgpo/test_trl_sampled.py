"""I from the sampled tokens (`pgpo.sampled`, TRL's distillation_mode="sampled_token"): unbiased, its exact
variance right, and that variance measured against the full-support I on the tiny model's training batches.

`pytest tests/pgpo/test_trl_sampled.py -s -k variance` prints the measurement that docs/trl.md quotes."""

import math
import os

import pytest
import torch

pytest.importorskip("trl")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from trl.experimental.sdpo.loss_utils import compute_full_logit_self_distillation_loss  # noqa: E402

from pgpo.information import KINDS  # noqa: E402
from pgpo.sampled import CONTROL_VARIATE, estimator_moments, sampled_information, token_estimates  # noqa: E402

# TRL's generalised JSD at these mixing weights is the divergence of each kind (its loss at distillation_alpha)
TRL_ALPHA = {"kl": 0.0, "reverse_kl": 1.0, "jsd": 0.5}


def _logits(shape, scale, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * scale


@pytest.mark.parametrize("control_variate", [True, False])
@pytest.mark.parametrize("kind", KINDS)
def test_the_estimate_averages_to_the_full_support_divergence(kind, control_variate):
    """Σ_y p(y)·estimate(y) = D(p, q) on the whole vocabulary: the estimator is unbiased (TRL's loss is the oracle),
    from near distributions to far ones."""
    for scale in (0.1, 1.0, 3.0):
        student, teacher = _logits((4, 6, 40), scale, 0), _logits((4, 6, 40), scale, 1)
        mean, variance = estimator_moments(student.log_softmax(-1), teacher.log_softmax(-1), kind, control_variate)
        exact = compute_full_logit_self_distillation_loss(student, teacher, distillation_alpha=TRL_ALPHA[kind])
        torch.testing.assert_close(mean, exact, rtol=1e-10, atol=1e-12)
        assert (variance > 0).all()


@pytest.mark.parametrize("kind", KINDS)
def test_the_exact_variance_is_what_sampling_gives(kind):
    """Draw y ~ p 400 000 times at each of 3 positions: the sample mean and variance of the estimate agree with
    `estimator_moments` within 5 standard errors (the variance's error from the estimate's fourth moment)."""
    log_p, log_q = _logits((3, 12), 1.0, 2).log_softmax(-1), _logits((3, 12), 1.0, 3).log_softmax(-1)
    mean, variance = estimator_moments(log_p, log_q, kind)
    draws = torch.multinomial(log_p.exp(), 400_000, replacement=True, generator=torch.Generator().manual_seed(4))
    values = token_estimates(log_p.gather(-1, draws), log_q.gather(-1, draws), kind)
    n = values.shape[-1]
    assert ((values.mean(-1) - mean).abs() < 5 * (variance / n).sqrt()).all()
    fourth = ((values - mean[:, None]) ** 4).mean(-1)
    assert ((values.var(-1) - variance).abs() < 5 * ((fourth - variance**2) / n).sqrt()).all()


def test_estimates_at_the_edges():
    """Δ = log q − log p: zero at Δ = 0; second order near it, computed without cancellation; the teacher ruling a
    token out (Δ = −inf) gives the limits; the control-variate forms are never negative."""
    zero = torch.zeros(3)
    for kind in KINDS:
        for cv in (True, False):
            assert torch.equal(token_estimates(zero, zero, kind, cv), torch.zeros(3, dtype=torch.float64))
    small = torch.tensor([1e-6, -1e-6], dtype=torch.float64)
    torch.testing.assert_close(token_estimates(torch.zeros(2), small, "kl"), small**2 / 2, rtol=1e-5, atol=0)
    torch.testing.assert_close(token_estimates(torch.zeros(2), small, "reverse_kl", True), small**2 / 2,
                               rtol=1e-5, atol=0)
    torch.testing.assert_close(token_estimates(torch.zeros(2), small, "jsd"), small**2 / 8, rtol=1e-5, atol=0)
    ruled_out = torch.tensor([-float("inf")])
    assert token_estimates(torch.tensor([-0.5]), ruled_out, "kl").item() == 1.0  # r log r → 0, minus (0 − 1)
    assert token_estimates(torch.tensor([-0.5]), ruled_out, "kl", False).item() == 0.0
    assert token_estimates(torch.tensor([-0.5]), ruled_out, "jsd").item() == pytest.approx(0.5 * math.log(2))
    assert token_estimates(torch.tensor([-0.5]), ruled_out, "reverse_kl").item() == float("inf")
    log_p, log_q = _logits((1000,), 3.0, 5), _logits((1000,), 3.0, 6)
    for kind in ("kl", "jsd"):
        assert (token_estimates(log_p, log_q, kind, True) >= 0).all()
    assert (token_estimates(log_p, log_q, "reverse_kl", True) >= 0).all()


def test_the_defaults_are_the_documented_ones():
    assert CONTROL_VARIATE == {"kl": True, "reverse_kl": False, "jsd": False}
    log_p, log_q = torch.tensor([-1.0, -2.0]), torch.tensor([-1.5, -0.5])
    assert torch.equal(token_estimates(log_p, log_q, "reverse_kl"), (log_p - log_q).double())  # TRL's log-ratio


def test_the_weight_scales_the_estimate_and_the_mask_divides():
    """Σ m·w·f / Σ m: the importance weight multiplies each token's estimate and leaves the denominator alone
    (dividing by Σ m·w would bias it); padding (NaN, inf) where the mask is 0 does not reach the sum."""
    log_p = torch.tensor([[-1.0, -2.0, -0.5, 0.0]])
    log_q = torch.tensor([[-1.5, -0.5, -0.7, -float("inf")]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    weight = torch.tensor([[0.5, 2.0, 1.0, float("nan")]])
    f = token_estimates(log_p, log_q, "kl")[0, :3]
    numerator, denominator = sampled_information(log_p, log_q, mask, weight=weight, reduce="sum")
    assert denominator.item() == 3.0
    assert numerator.item() == pytest.approx((0.5 * f[0] + 2.0 * f[1] + f[2]).item(), rel=1e-12)
    assert sampled_information(log_p, log_q, mask).item() == pytest.approx(f.sum().item() / 3, rel=1e-12)


@pytest.mark.parametrize("call,match", [
    (lambda: token_estimates(torch.zeros(2), torch.zeros(2), "l2"), "kind"),
    (lambda: token_estimates(torch.zeros(2), torch.zeros(3)), "teacher_token_logprobs"),
    (lambda: token_estimates([0.0], torch.zeros(1)), "student_token_logprobs"),
    (lambda: sampled_information(torch.zeros(2), torch.zeros(2), torch.ones(3)), "mask"),
    (lambda: sampled_information(torch.zeros(2), torch.zeros(2), weight=torch.ones(3)), "weight"),
    (lambda: estimator_moments(torch.zeros(2, 3), torch.zeros(2, 4)), "teacher_logprobs")])
def test_errors_name_the_parameter(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()


# ------------------------------------------------------------------------------------ the measurement

MEASURE = dict(use_cpu=True, bf16=False, gradient_checkpointing=False, use_vllm=False, per_device_train_batch_size=8,
               gradient_accumulation_steps=1, num_generations=4, max_completion_length=16, max_prompt_length=32,
               max_steps=4, logging_steps=1, report_to="none", save_strategy="no", learning_rate=1e-3,
               distillation_mode="sampled_token", success_reward_threshold=1.0, include_environment_feedback=True,
               seed=0, pgpo_alpha=0.0)
DATA = [{"prompt": [{"role": "user", "content": f"What is {i} plus {i}?"}],
         "privileged_context": f"The answer is {2 * i}."} for i in range(8)]


def _reward(prompts, completions, completion_ids, **kwargs):
    return [float(i % 2) for i in range(len(prompts))]


def test_variance_against_the_full_support_on_training_batches(tiny_model_dir, tmp_path):
    """TRL's sampled-token training of the tiny model, 4 steps of 8 rollouts × 16 tokens: on each batch, the I
    PGPO logs (the sampled tokens' estimate) against I on the full vocabulary from the same logits, and the
    estimate's exact conditional variance Σ_t Var_t / N² (the tokens' errors are martingale differences given
    their prefixes). Printed as a table; asserted: the trainer logs exactly the estimate, the deviations are
    the size the variance says, and each kind's default estimator is the one with the lower variance here."""
    from transformers import AutoTokenizer

    from pgpo.information import divergence
    from pgpo.trl import PGPOConfig, PGPOTrainer

    class Recording(PGPOTrainer):
        def _compute_self_distillation_loss(self, model, inputs, logits):
            if model.training:
                self.seen.append((logits.student_logits.detach().double(), logits.teacher_logits.detach().double(),
                                  logits.completion_ids, logits.loss_mask.double()))
            return super()._compute_self_distillation_loss(model, inputs, logits)

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir, padding_side="left", truncation_side="left")
    trainer = Recording(model=str(tiny_model_dir), reward_funcs=_reward, train_dataset=DATA, processing_class=tokenizer,
                        args=PGPOConfig(output_dir=str(tmp_path), **MEASURE))
    trainer.seen = []
    trainer.train()
    logged = [row["pgpo/information_last"] for row in trainer.state.log_history if "pgpo/information_last" in row]
    assert len(trainer.seen) == len(logged) == 4

    lines = [f"{'I':<11}{'estimator':<18}{'I full':>8}{'Î':>8}{'mean(Î−I)':>11}{'rms(Î−I)':>10}{'sd(Î)':>8}"
             f"{'sd/I':>7}{'sd/token':>10}"]
    per_token_sd = {}
    for kind in KINDS:
        for cv in (True, False) if kind != "jsd" else (False,):
            rows = []
            for student, teacher, ids, mask in trainer.seen:
                log_p, log_q = student.log_softmax(-1), teacher.log_softmax(-1)
                full = divergence(log_p, log_q, kind)
                mean, variance = estimator_moments(log_p, log_q, kind, cv)
                torch.testing.assert_close(mean, full, rtol=1e-9, atol=1e-12)  # unbiased on the real batches
                estimate = token_estimates(log_p.gather(-1, ids[..., None])[..., 0],
                                           log_q.gather(-1, ids[..., None])[..., 0], kind, cv)
                n = mask.sum()
                rows.append([((full * mask).sum() / n).item(), ((estimate * mask).sum() / n).item(),
                             ((variance * mask).sum() / n**2).item(), ((variance * mask).sum() / n).item()])
            rows = torch.tensor(rows, dtype=torch.float64)
            i_full, i_hat, var_hat, var_token = rows.T
            error = i_hat - i_full
            assert (error.abs() < 5 * var_hat.sqrt()).all(), (kind, cv, error, var_hat.sqrt())
            if kind == "kl" and cv == CONTROL_VARIATE["kl"]:  # what the trainer logged: PGPO's default I
                assert logged == pytest.approx(i_hat.tolist(), rel=1e-6)
            per_token_sd[kind, cv] = var_token.mean().sqrt().item()
            sd = var_hat.mean().sqrt().item()
            name = {True: "control variate", False: "plain"}[cv] + (" *" if cv == CONTROL_VARIATE[kind] else "")
            lines.append(f"{kind:<11}{name:<18}{i_full.mean():>8.4f}{i_hat.mean():>8.4f}{error.mean():>+11.4f}"
                         f"{error.pow(2).mean().sqrt():>10.4f}{sd:>8.4f}{sd / i_full.mean():>7.3f}"
                         f"{per_token_sd[kind, cv]:>10.3f}")
    tokens = sum(mask.sum().item() for *_, mask in trainer.seen) / len(trainer.seen)
    print(f"\nsampled-token I against the full-support I: {len(trainer.seen)} batches, {tokens:.0f} tokens each "
          f"(* the default estimator)\n" + "\n".join(lines))
    for kind in ("kl", "reverse_kl"):
        assert per_token_sd[kind, CONTROL_VARIATE[kind]] < per_token_sd[kind, not CONTROL_VARIATE[kind]]
