"""The self-teacher: its contexts (SDPO's sibling rule, or the ground truth) and its weights (EMA, live, frozen).

Sibling rule (`docs/method.md` §1): for response i of a group, the demonstration is the first *other*
response of the group with reward 1, with `<think>…</think>` blocks removed; without one the sample
has no teacher (m_i = 0). A lone success therefore teaches its siblings but gets no teacher itself.

A demonstration becomes the teacher's prompt through `llm_runs.data.render(tokenizer, example, template,
demonstration, enable_thinking)`, as the trainer does; None means no teacher.
"""

from __future__ import annotations

import copy
import re
from contextlib import contextmanager

import torch

from llm_runs.data import Example, answer_text

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

    @contextmanager
    def forward(self):
        """The network to run the teacher's forward with (under no_grad, by the caller)."""
        yield self.network

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


class AdapterTeacher:
    """The teacher of a LoRA run: the same network with other adapter weights, so it costs no second model.

    "live": the adapter as it is; "frozen": the adapter switched off (the base model); "ema": an fp32
    exponential moving average of the adapter's weights, swapped in for the teacher's forward.
    """

    def __init__(self, student: torch.nn.Module, kind: str = "ema", tau: float = 0.05):
        if kind not in ("ema", "live", "frozen"):
            raise ValueError(f"teacher kind must be ema, live or frozen, got {kind!r}")
        self.kind, self.tau, self.student, self.model = kind, tau, student, None
        self.adapter = {n: p for n, p in student.named_parameters() if p.requires_grad}
        self.average = {n: p.detach().float().clone() for n, p in self.adapter.items()} if kind == "ema" else {}

    @property
    def network(self) -> torch.nn.Module:
        return self.student

    @contextmanager
    def forward(self):
        if self.kind == "frozen":
            with self.student.disable_adapter():
                yield self.student
        elif self.kind == "live":
            yield self.student
        else:
            saved = {n: p.detach().clone() for n, p in self.adapter.items()}
            with torch.no_grad():
                for n, p in self.adapter.items():
                    p.copy_(self.average[n])
            try:
                yield self.student
            finally:
                with torch.no_grad():
                    for n, p in self.adapter.items():
                        p.copy_(saved[n])

    @torch.no_grad()
    def update(self) -> None:
        for n, p in self.adapter.items() if self.kind == "ema" else ():
            self.average[n].lerp_(p.detach().float(), self.tau)

    def state_dict(self) -> dict:
        return {n: t.cpu().clone() for n, t in self.average.items()}

    def load_state_dict(self, state: dict) -> None:
        for n, t in state.items():
            self.average[n].copy_(t)
