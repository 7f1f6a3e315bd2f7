"""Teacher contexts (SDPO's sibling rule, the ground-truth option) and the EMA / live / frozen weights."""

import pytest
import torch

from llm_runs.data import Example
from llm_runs.teacher import TeacherWeights, demonstrations, strip_think, teacher_messages

EX = Example(7, "Q?\n\nA: x\nB: y\nPlease reason step by step.", "B", "sys")


def test_sibling_rule_first_other_success_never_itself():
    responses = ["r0", "r1 \\boxed{B}", "r2", "r3 \\boxed{B}"]
    demos = demonstrations(responses, [0.0, 1.0, 0.0, 1.0], EX)
    assert demos == ["r1 \\boxed{B}", "r3 \\boxed{B}", "r1 \\boxed{B}", "r1 \\boxed{B}"]


def test_lone_success_teaches_its_siblings_but_gets_no_teacher():
    demos = demonstrations(["a", "b", "c"], [0.0, 1.0, 0.0], EX)
    assert demos == ["b", None, "b"]


def test_no_success_no_teacher():
    assert demonstrations(["a", "b"], [0.0, 0.0], EX) == [None, None]
    assert teacher_messages(EX, [None, "d"])[0] is None


def test_think_blocks_are_stripped_from_the_demonstration():
    assert strip_think("<think>long\nmusing</think>\nSo \\boxed{B}") == "So \\boxed{B}"
    assert strip_think("a<think>x</think>b<think>y</think>c") == "abc"
    assert strip_think("answer first <think>never closed") == "answer first"
    demos = demonstrations(["<think>hmm</think>ok", "<think>z</think>\\boxed{B}"], [0.0, 1.0], EX)
    assert demos[0] == "\\boxed{B}"
    assert demonstrations(["a", "<think>z</think>B"], [0.0, 1.0], EX, strip=False)[0] == "<think>z</think>B"


def test_ground_truth_gives_every_sample_a_teacher_in_the_template_format():
    assert demonstrations(["a", "b"], [0.0, 0.0], EX, "boxed", "ground_truth") == ["\\boxed{B}"] * 2
    assert demonstrations(["a"], [0.0], EX, "answer_tag", "ground_truth") == ["<answer>\nB\n</answer>"]


def test_teacher_messages_use_the_template():
    (boxed,) = teacher_messages(EX, ["\\boxed{B}"], "boxed")
    assert "Correct solution: \\boxed{B} Correctly solve" in boxed[-1]["content"]
    (tag,) = teacher_messages(EX, ["<answer>B</answer>"], "answer_tag")
    assert tag[0]["role"] == "system" and "Correct solution:\n\n<answer>B</answer>\n\n" in tag[-1]["content"]


def test_bad_input():
    with pytest.raises(ValueError, match="responses but"):
        demonstrations(["a"], [1.0, 0.0], EX)
    with pytest.raises(ValueError, match="demonstration must be"):
        demonstrations(["a"], [1.0], EX, kind="oracle")


def test_ema_live_frozen_weights():
    student = torch.nn.Linear(3, 2).to(torch.bfloat16)
    ema, live, frozen = (TeacherWeights(student, k, tau=0.25) for k in ("ema", "live", "frozen"))
    assert live.network is student and ema.network is not student
    assert ema.network.weight.dtype == torch.float32 and frozen.network.weight.dtype == torch.bfloat16
    before = ema.network.weight.detach().clone()
    base = student.weight.detach().clone()
    with torch.no_grad():
        student.weight.add_(1.0)
    for t in (ema, live, frozen):
        t.update()
    torch.testing.assert_close(ema.network.weight, before + 0.25 * (student.weight.float() - before), rtol=0, atol=1e-6)
    assert torch.equal(frozen.network.weight, base)
    assert not any(p.requires_grad for p in ema.network.parameters())
    state = ema.state_dict()
    ema2 = TeacherWeights(student, "ema", 0.25)
    ema2.load_state_dict(state)
    assert torch.equal(ema2.network.weight, ema.network.weight)
