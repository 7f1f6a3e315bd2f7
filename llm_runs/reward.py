"""The rule-based 0/1 reward of the Science Q&A runs (`docs/method.md` §1).

The extracted answer — the content of the last `\\boxed{…}` (nested braces allowed) for the PGPO
template, or of the last `<answer>…</answer>` for SDPO's — must equal the correct letter exactly after
stripping whitespace. Any string is scored without raising, in time linear in its length.

Decisions:
- the *last* `\\boxed` decides; if its braces never close (a truncated response) the score is 0, even
  when an earlier box is complete: the model's final answer is missing;
- `\\boxed {A}` (space before the brace) counts; `\\boxed A` does not;
- an unclosed `<answer>` scores 0.
"""

from __future__ import annotations

FORMATS = ("boxed", "answer_tag")


def extract_boxed(text: str) -> str | None:
    """The content of the last `\\boxed{…}`, or None when there is none or its braces do not close."""
    start = text.rfind("\\boxed")
    if start < 0:
        return None
    i = start + len("\\boxed")
    while i < len(text) and text[i].isspace():
        i += 1
    if i >= len(text) or text[i] != "{":
        return None
    depth = 0
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j]
    return None


def extract_answer_tag(text: str) -> str | None:
    """The content of the last `<answer>…</answer>`, or None."""
    start = text.rfind("<answer>")
    if start < 0:
        return None
    end = text.find("</answer>", start)
    return None if end < 0 else text[start + len("<answer>") : end]


def extract(text: str, fmt: str = "boxed") -> str | None:
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    return extract_boxed(text) if fmt == "boxed" else extract_answer_tag(text)


def score(text: str, answer: str, fmt: str = "boxed") -> float:
    """1.0 when the extracted answer equals `answer` (both stripped of whitespace), else 0.0."""
    found = extract(text, fmt)
    return float(found is not None and found.strip() == str(answer).strip() and found.strip() != "")
