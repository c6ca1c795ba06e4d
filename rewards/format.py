"""Format rewards: credit for writing the tags a task asks for."""

from __future__ import annotations

from typing import Any

from rewards.errors import ConfigError
from rewards.parsing import completion_text, extract_tag
from rewards.registry import register


@register("format_tags")
def format_tags(
    prompts: list,
    completions: list,
    *,
    think: float = 0.1,
    answer: float = 0.1,
    both: float = 0.0,
    **kwargs: Any,
) -> list[float | None]:
    """``think`` for a ``<think>...</think>`` block, ``answer`` for an ``<answer>...</answer>`` block,
    and ``both`` more when both are there (the GSM8K seed: think 0, answer 0.25, both 0.25)."""
    rewards: list[float | None] = []
    for completion in completions:
        text = completion_text(completion)
        has_think = extract_tag(text, "think") is not None
        has_answer = extract_tag(text, "answer") is not None
        rewards.append(think * has_think + answer * has_answer + both * (has_think and has_answer))
    return rewards


@register("xml_count")
def xml_count(
    prompts: list,
    completions: list,
    *,
    per_tag: float = 0.125,
    trailing: float = 0.001,
    tags: str = "answer",
    **kwargs: Any,
) -> list[float | None]:
    """The seeds' ``count_xml``: ``per_tag`` for each tag line placed as asked, less ``trailing`` per
    character written after the last tag's closing line.

    For each tag in ``tags`` (comma-separated) the opening ``<tag>`` and the closing ``</tag>``
    each earn ``per_tag`` when they occur exactly once and stand on a line of their own (the
    closing one may end the text). Once the last tag's closing line is credited, every character
    after it (bar one newline) costs ``trailing``; like the original, this is not capped, so long
    tails go negative.
    """
    names = [t.strip() for t in tags.split(",") if t.strip()]
    if not names or any(not t.replace("_", "").replace("-", "").isalnum() for t in names):
        raise ConfigError(f"reward parameter 'xml_count.tags' must be comma-separated tag names, got {tags!r}")
    return [_count_xml(completion_text(c), names, per_tag, trailing) for c in completions]


def _count_xml(text: str, tags: list[str], per_tag: float, trailing: float) -> float:
    score = 0.0
    for tag in tags:
        opening, closing = f"<{tag}>", f"</{tag}>"
        if text.count(opening) == 1:
            at = text.find(opening)
            end = at + len(opening)
            if (at == 0 or text[at - 1] == "\n") and text.startswith("\n", end):
                score += per_tag
        if text.count(closing) == 1:
            at = text.find(closing)
            end = at + len(closing)
            if at > 0 and text[at - 1] == "\n" and (end == len(text) or text[end] == "\n"):
                score += per_tag
                if tag == tags[-1]:
                    score -= trailing * (len(text) - end - text.startswith("\n", end))
    return score
