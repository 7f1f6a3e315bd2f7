"""PGPO with TRL's teacher server (`use_teacher_server`: the teacher's log-probabilities come from vLLM).

No vLLM server here: as TRL's own test of that path does, a stand-in client answers `get_sequence_logprobs`.
It answers with the local teacher's own log-probabilities on the same micro-batch, so that the server path's I
can be held against the local path's (the sampled token) or against TRL's divergence on the teacher's top-k."""

import os

import pytest
import torch

pytest.importorskip("trl")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from trl.experimental.sdpo.loss_utils import add_tail_bucket, compute_divergence  # noqa: E402

from pgpo.trl import PGPOConfig, PGPOTrainer  # noqa: E402

from .test_trl import DATA, SETTINGS, reward  # noqa: E402

K = 4


class TeacherClient:
    """Answers as vLLM's server would, from the local teacher's temperature-scaled logits: per sequence, for
    each completion token, its log-probability and the teacher's top-k."""

    def __init__(self, teacher_logits, completion_ids, completion_mask):
        self.log_q = teacher_logits.float().log_softmax(-1)
        self.ids, self.lengths = completion_ids, completion_mask.sum(-1).tolist()

    def get_sequence_logprobs(self, sequences, prompt_lengths, top_logprobs, temperature):
        actual = self.log_q.gather(-1, self.ids[..., None])
        top = self.log_q.topk(top_logprobs, dim=-1)
        return {"actual_logprobs": [actual[i, :n].tolist() for i, n in enumerate(self.lengths)],
                "logprobs": [top.values[i, :n].tolist() for i, n in enumerate(self.lengths)],
                "logprob_token_ids": [top.indices[i, :n].tolist() for i, n in enumerate(self.lengths)]}


class ServerTwin(PGPOTrainer):
    """On each training micro-batch, also runs TRL's server loss on the same inputs and weights, with the stand-in
    client, and keeps the (Σ m·D, Σ m) it adds beside the local path's; the step's I stays the local path's."""

    def _compute_self_distillation_loss(self, model, inputs, logits):
        if not model.training:
            return super()._compute_self_distillation_loss(model, inputs, logits)
        before = [float(x) for x in self._information_sums]
        loss = super()._compute_self_distillation_loss(model, inputs, logits)
        local = [float(x) - b for x, b in zip(self._information_sums, before)]
        kept = [x.clone() if torch.is_tensor(x) else x for x in self._information_sums]  # sums grow in place
        self.teacher_client = TeacherClient(logits.teacher_logits, logits.completion_ids, logits.completion_mask)
        self._compute_server_distillation_loss(model, inputs)
        server = [float(x) - float(k) for x, k in zip(self._information_sums, kept)]
        self._information_sums = kept
        self.pairs.append((local, server, logits.student_logits.detach().float(), logits.teacher_logits.float(),
                           logits.loss_mask))
        return loss


def _twin(model_dir, tmp_path, cls=ServerTwin, **overrides):
    from transformers import AutoTokenizer

    args = PGPOConfig(output_dir=str(tmp_path / "out"), **{**SETTINGS, **overrides})
    trainer = cls(model=str(model_dir), reward_funcs=reward, args=args, train_dataset=DATA,
                  processing_class=AutoTokenizer.from_pretrained(model_dir, padding_side="left",
                                                                     truncation_side="left"))
    trainer.pairs = []
    trainer.train()
    return trainer


def test_sampled_token_from_the_server_is_the_local_estimate(tiny_model_dir, tmp_path):
    """The server's log-probability of each sampled token is the local teacher's: the same I, micro-batch by
    micro-batch."""
    trainer = _twin(tiny_model_dir, tmp_path, distillation_mode="sampled_token", distillation_alpha=1.0)
    assert len(trainer.pairs) == 2
    for local, server, *_ in trainer.pairs:
        assert local[1] == server[1] > 0
        assert server[0] == pytest.approx(local[0], rel=1e-6)


@pytest.mark.parametrize("tail", [True, False])
def test_topk_from_the_server_is_trls_divergence_on_the_teachers_topk(tiny_model_dir, tmp_path, tail):
    """The server's top-k is the teacher's own: I is KL(q ‖ p) on those k tokens plus a tail bucket (or
    renormalised), as TRL's server loss builds them, pooled over the loss's mask."""
    trainer = _twin(tiny_model_dir, tmp_path, distillation_topk=K, distillation_add_tail=tail)
    for local, server, student, teacher, mask in trainer.pairs:
        log_q, ids = teacher.log_softmax(-1).topk(K, dim=-1)
        log_p = student.log_softmax(-1).gather(-1, ids)
        if tail:
            log_p, log_q = add_tail_bucket(log_p), add_tail_bucket(log_q)
        else:
            log_p, log_q = log_p.log_softmax(-1), log_q.log_softmax(-1)
        per_token = compute_divergence(log_p, log_q, 0.0)  # TRL's KL(teacher ‖ student)
        assert server[1] == mask.sum().item()
        assert server[0] == pytest.approx((per_token.double() * mask).sum().item(), rel=1e-5)
        assert server[0] != pytest.approx(local[0], rel=1e-3)  # another support than the student's top-k


class NoLogprobs(PGPOTrainer):
    """A subclass fetching the teacher's log-probabilities its own way, past PGPO's view of the server's answer."""

    def _compute_self_distillation_loss(self, model, inputs, logits):
        if model.training:
            self.use_teacher_server = True
            self.answer = TeacherClient(logits.teacher_logits, logits.completion_ids, logits.completion_mask)
            return self._compute_server_distillation_loss(model, inputs)
        return super()._compute_self_distillation_loss(model, inputs, logits)

    def _get_teacher_token_logprobs_from_server(self, inputs, logits_to_keep):
        answer = self.answer.get_sequence_logprobs(None, None, 1, 1.0)
        actual = torch.full(inputs["completion_ids"].shape, float("-inf"))
        for i, row in enumerate(answer["actual_logprobs"]):
            actual[i, :len(row)] = torch.tensor(row)[:, 0]
        return {"actual_logprobs": actual}


def test_without_the_teachers_logprobs_alpha_above_zero_is_refused_and_zero_logs_no_i(tiny_model_dir, tmp_path):
    """Where PGPO never sees the teacher's log-probabilities there is no estimator of I: at α > 0 it stops,
    saying what to set; at α = 0 (SDPO) it trains, and logs I as unknown rather than as a number."""
    sampled = dict(distillation_mode="sampled_token", distillation_alpha=1.0)
    with pytest.raises(ValueError, match="use_teacher_server=False.*pgpo_alpha=0"):
        _twin(tiny_model_dir, tmp_path, NoLogprobs, **sampled)
    trainer = _twin(tiny_model_dir, tmp_path, NoLogprobs, pgpo_alpha=0.0, **sampled)
    rows = [row for row in trainer.state.log_history if "pgpo/rho_last" in row]
    assert [(r["pgpo/rho_last"], r["pgpo/information_last"], r["pgpo/information_nonfinite_steps"]) for r in rows] == \
        [(1.0, None, 1)]
