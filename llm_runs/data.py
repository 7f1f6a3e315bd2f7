"""Science Q&A examples, the two prompt templates, and the seeded, resumable prompt sampler.

Split files are JSON lines with `idx` (int), `prompt` (the question with lettered options, ending
"Please reason step by step."), `answer` (the correct letter) and `system` (SDPO's system prompt);
other fields are ignored. A malformed row is an error naming the file, the line and the field.

Templates (`docs/method.md` §1):
- "boxed" (the PGPO paper's, default): no system message; the user turn is the question (the file's
  trailing "Please reason step by step." removed) + "\\nPlease reason step by step, and put your final
  answer within \\boxed{}."; the teacher's adds "\\nCorrect solution: {demo} Correctly solve the
  original question."
- "answer_tag" (SDPO's): the file's system prompt and prompt as they are; the teacher's user turn is
  "{prompt}\\nCorrect solution:\\n\\n{demo}\\n\\nCorrectly solve the original question."
Both are rendered by the tokenizer's chat template with thinking disabled.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llm_runs import paths

TEMPLATES = ("boxed", "answer_tag")
CHOICE = re.compile(r"^([A-Z]): ", re.MULTILINE)  # a multiple-choice option's line in a prompt: "B: Nitrogen"
SDPO_SUFFIX = "Please reason step by step."
BOXED_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."


class DataError(ValueError):
    """A malformed split file or row; the message names the file, line and field."""


@dataclass(frozen=True)
class Example:
    idx: int
    prompt: str
    answer: str
    system: str | None = None
    source: str = ""  # "file:line", for messages


def _field(row: dict, name: str, kind, where: str, required: bool = True):
    if name not in row or row[name] is None:
        if required:
            raise DataError(f"{where}: field {name!r} is missing")
        return None
    value = row[name]
    if kind is int and isinstance(value, bool) or not isinstance(value, kind):
        raise DataError(f"{where}: field {name!r} must be {kind.__name__}, got {type(value).__name__}")
    if kind is str and required and not value.strip():
        raise DataError(f"{where}: field {name!r} is empty")
    return value


def _lines(f, path: Path):
    """The lines of a file opened in binary; a line that is not UTF-8 is an error naming the file and the line."""
    for number, raw in enumerate(f, start=1):
        try:
            yield raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise DataError(f"{path}:{number}: not UTF-8 text ({err.reason} at byte {err.start} of the line)") from None


def load_split(path: str | Path, limit: int | None = None) -> list[Example]:
    """Read a JSON-lines split file (a relative path as `llm_runs.paths.input_file` finds it); blank lines are
    skipped; `idx` must be unique."""
    path = paths.input_file(path)
    if not path.exists():
        hint = ""
        if "sciknoweval" in path.parts:  # the configs' Science Q&A splits: made by a command, not shipped
            hint = (f"; make the Science Q&A splits with `python -m llm_runs data sciknoweval --out "
                    f"{path.parent.parent}` (the `hub` extra and internet, or --source DIR with a copy of the dataset)")
        raise DataError(f"split file {path} does not exist{hint}")
    if not path.is_file():
        raise DataError(f"split file {path} is a {'directory' if path.is_dir() else 'special file'}, not a JSON-lines file")
    examples, seen = [], {}
    with path.open("rb") as f:
        for number, line in enumerate(_lines(f, path), start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{where}: not valid JSON ({err.msg} at column {err.colno})") from None
            if not isinstance(row, dict):
                raise DataError(f"{where}: a row must be a JSON object, got {type(row).__name__}")
            idx = _field(row, "idx", int, where)
            if idx in seen:
                raise DataError(f"{where}: field 'idx' = {idx} repeats line {seen[idx]}")
            seen[idx] = number
            prompt, answer = _field(row, "prompt", str, where), _field(row, "answer", str, where).strip()
            letters = CHOICE.findall(prompt)
            if len(letters) >= 2 and answer not in letters:  # a multiple-choice question whose key is not a choice
                raise DataError(f"{where}: answer {answer!r} is not one of the question's choices ({', '.join(letters)})")
            examples.append(Example(idx, prompt, answer, _field(row, "system", str, where, required=False), where))
            if limit is not None and len(examples) >= limit:
                break
    if not examples:
        raise DataError(f"split file {path} holds no rows")
    return examples


def question_of(example: Example) -> str:
    """The question without SDPO's trailing instruction (the boxed template adds its own)."""
    text = example.prompt.rstrip()
    return text[: -len(SDPO_SUFFIX)].rstrip() if text.endswith(SDPO_SUFFIX) else text


def messages(example: Example, template: str = "boxed", demonstration: str | None = None) -> list[dict]:
    """The chat messages of the student (demonstration None) or of the teacher."""
    if template == "boxed":
        user = f"{question_of(example)}\n{BOXED_INSTRUCTION}"
        if demonstration is not None:
            user += f"\nCorrect solution: {demonstration} Correctly solve the original question."
        return [{"role": "user", "content": user}]
    if template == "answer_tag":
        user = example.prompt
        if demonstration is not None:
            user += f"\nCorrect solution:\n\n{demonstration}\n\nCorrectly solve the original question."
        system = [{"role": "system", "content": example.system}] if example.system else []
        return system + [{"role": "user", "content": user}]
    raise ValueError(f"template must be one of {TEMPLATES}, got {template!r}")


def render(tokenizer, example: Example, template: str = "boxed", demonstration: str | None = None,
           enable_thinking: bool = False) -> str:
    """The prompt text through the tokenizer's chat template, ready for the response to follow."""
    return tokenizer.apply_chat_template(messages(example, template, demonstration), tokenize=False,
                                         add_generation_prompt=True, enable_thinking=enable_thinking)


def answer_text(answer: str, template: str) -> str:
    """A minimal correct response in the template's format (the ground-truth demonstration)."""
    return f"\\boxed{{{answer}}}" if template == "boxed" else f"<answer>\n{answer}\n</answer>"


class PromptSampler:
    """Epochs of seeded permutations; the state is (epoch, position), so a resumed run draws the same prompts."""

    def __init__(self, size: int, seed: int):
        if size < 1:
            raise ValueError("the prompt sampler needs at least one example")
        self.size, self.seed, self.epoch, self.position = size, seed, 0, 0
        self._order = self._permutation(0)

    def _permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.size)

    def draw(self, count: int) -> list[int]:
        out = []
        while len(out) < count:
            if self.position == self.size:
                self.epoch, self.position = self.epoch + 1, 0
                self._order = self._permutation(self.epoch)
            out.append(int(self._order[self.position]))
            self.position += 1
        return out

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed, "size": self.size}

    def load_state_dict(self, state: dict) -> None:
        if state["size"] != self.size or state["seed"] != self.seed:
            raise ValueError(f"sampler state is for {state['size']} examples with seed {state['seed']}, "
                             f"this run has {self.size} with seed {self.seed}")
        self.epoch, self.position = state["epoch"], state["position"]
        self._order = self._permutation(self.epoch)
