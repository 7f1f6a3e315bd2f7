"""The self-teacher: its contexts (SDPO's sibling rule, or the ground truth) and its weights (EMA, live, frozen).

Sibling rule (METHOD.md §1): for response i of a group, the demonstration is the first *other*
response of the group with reward 1, with `<think>…</think>` blocks removed; without one the sample
has no teacher (m_i = 0). A lone success therefore teaches its siblings but gets no teacher itself.
"""

from __future__ import annotations

import copy
import re

import torch

from llm_runs.data import Example, answer_text, messages

DEMONSTRATIONS = ("sibling", "ground_truth")
_THINK = re.compile(r"<think>.*?</think>", flags=re.DOTALL)


def strip_think(text: str) -> str:
    """Remove every `<think>…</think>` block; an unclosed `<think>` drops the rest of the text."""
    text = _THINK.sub("", text)
    start = text.find("<think>")
    return (text if start < 0 else text[:start]).strip()


def demonstrations(responses: list[str], rewards: list[float], example: Example, template: str = "boxed",
                   kind: str = "sibling", strip: bool = True) -> list[str | None]:
    """One demonstration (or None: no teacher) per response of one group."""
    if kind not in DEMONSTRATIONS:
        raise ValueError(f"demonstration must be one of {DEMONSTRATIONS}, got {kind!r}")
    if len(responses) != len(rewards):
        raise ValueError(f"{len(responses)} responses but {len(rewards)} rewards")
    if kind == "ground_truth":
        return [answer_text(example.answer, template)] * len(responses)
    successes = [j for j, r in enumerate(rewards) if r == 1.0]
    out = []
    for i in range(len(responses)):
        j = next((j for j in successes if j != i), None)
        out.append(None if j is None else (strip_think(responses[j]) if strip else responses[j]))
    return out


def teacher_messages(example: Example, demos: list[str | None], template: str = "boxed") -> list[list[dict] | None]:
    return [None if d is None else messages(example, template, d) for d in demos]


class TeacherWeights:
    """The teacher's network: "live" (the student itself), "frozen" (the base model) or "ema"
    (T ← (1 − τ)T + τθ after every optimizer step, kept in float32, initialised to the base)."""

    def __init__(self, student: torch.nn.Module, kind: str = "ema", tau: float = 0.05):
        if kind not in ("ema", "live", "frozen"):
            raise ValueError(f"teacher kind must be ema, live or frozen, got {kind!r}")
        self.kind, self.tau, self.student = kind, tau, student
        self.model = None
        if kind != "live":
            self.model = copy.deepcopy(student)
            if kind == "ema":
                self.model.float()
            self.model.requires_grad_(False).eval()

    @property
    def network(self) -> torch.nn.Module:
        return self.student if self.model is None else self.model

    @torch.no_grad()
    def update(self) -> None:
        if self.kind != "ema":
            return
        for t, s in zip(self.model.parameters(), self.student.parameters()):
            t.lerp_(s.detach().to(t.dtype), self.tau)

    def state_dict(self) -> dict:
        return {} if self.model is None else {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}

    def load_state_dict(self, state: dict) -> None:
        if self.model is not None:
            self.model.load_state_dict(state)
