"""Teacher contexts (SDPO's sibling rule, the ground-truth option) and the EMA / live / frozen weights.

The trainer builds a teacher's prompt as `render(tokenizer, example, template, demonstration, enable_thinking)`
from each of `demonstrations(...)`; a None demonstration is no teacher (the sample is masked out)."""

import pytest
import torch

from llm_runs.data import Example, render
from llm_runs.teacher import TeacherWeights, demonstrations, strip_think

EX = Example(7, "Q?\n\nA: x\nB: y\nPlease reason step by step.", "B", "sys")


@pytest.fixture(scope="module")
def tokenizer():
    """The tiny model's tokenizer with its Qwen3-like chat template (trained here in milliseconds)."""
    from llm_runs import tiny

    return tiny.build_tokenizer([EX.prompt, "Correct solution: \\boxed{B} Correctly solve the original question."])


def test_sibling_rule_first_other_success_never_itself():
    responses = ["r0", "r1 \\boxed{B}", "r2", "r3 \\boxed{B}"]
    demos = demonstrations(responses, [0.0, 1.0, 0.0, 1.0], EX)
    assert demos == ["r1 \\boxed{B}", "r3 \\boxed{B}", "r1 \\boxed{B}", "r1 \\boxed{B}"]


def test_lone_success_teaches_its_siblings_but_gets_no_teacher():
    demos = demonstrations(["a", "b", "c"], [0.0, 1.0, 0.0], EX)
    assert demos == ["b", None, "b"]


def test_no_success_no_teacher(tokenizer):
    assert demonstrations(["a", "b"], [0.0, 0.0], EX) == [None, None]
    # without a demonstration, render gives the student's own prompt: no "Correct solution" in any context
    for template in ("boxed", "answer_tag"):
        assert "Correct solution" not in render(tokenizer, EX, template, None)


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


def test_teacher_prompts_use_the_template(tokenizer):
    (demo,) = demonstrations(["a"], [0.0], EX, "boxed", "ground_truth")
    boxed = render(tokenizer, EX, "boxed", demo)
    assert "Correct solution: \\boxed{B} Correctly solve" in boxed
    assert boxed.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")  # thinking off, the response next
    tag = render(tokenizer, EX, "answer_tag", "<answer>B</answer>")
    assert tag.startswith("<|im_start|>system\nsys<|im_end|>")  # SDPO's template keeps the system message
    assert "Correct solution:\n\n<answer>B</answer>\n\n" in tag


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
