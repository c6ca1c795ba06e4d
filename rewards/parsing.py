"""Parsing helpers for model output, which is hostile input: nothing here evaluates it as code."""

from __future__ import annotations

import ast
import re
from collections import deque
from fractions import Fraction
from typing import Any, Literal

_NUMBER = re.compile(r"(?<![0-9A-Za-z_.])-?(?:[0-9]{1,3}(?:,[0-9]{3})+|[0-9]+)(?:\.[0-9]+)?")
_MAX_INT_DIGITS = 1000
_EXPR_CHARS = frozenset("0123456789+-*() \t\r\n")

# One answer-like number: an optional sign and/or dollar sign, digits (optionally grouped by commas),
# then a decimal part or a "/denominator", then an optional percent sign. No nested quantifiers, so
# matching is linear in the text length.
_ANSWER_NUMBER = re.compile(
    r"(?<![0-9A-Za-z_.])"
    r"(?:(?P<neg>[-\u2212])\$?|\$(?P<neg_after>[-\u2212])?)?"
    r"(?P<int>[0-9]{1,3}(?:,[0-9]{3})+(?![0-9])|[0-9]+)"
    r"(?:\.(?P<dec>[0-9]+)|/(?P<den>[0-9]+))?"
    r"%?"
)
_ANSWER_IS = re.compile(r"answer(?: is|:)[\s:*=]*", re.IGNORECASE)  # then the number, maybe in **bold**
_LATEX_FRAC = re.compile(r"\\d?frac\{([^{}]*)\}\{([^{}]*)\}")
_DIGITS = re.compile(r"[0-9]+")
MAX_ANSWER_CHARS = 1000  # longer text is no single answer: parse_number returns None
MAX_NUMBER_DIGITS = 100  # digits in an integer part, decimal part or denominator


def completion_text(completion: Any) -> str:
    """The text of one completion: a string, a chat list (assistant contents joined) or one message."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        return _content(completion)
    if isinstance(completion, list):
        return "".join(_content(m) for m in completion if m.get("role", "assistant") == "assistant")
    raise TypeError(f"completion must be a str, a message dict or a list of them, got {type(completion).__name__}")


def _content(message: dict) -> str:
    content = message.get("content")
    if content is None:
        return ""
    if not isinstance(content, str):
        raise TypeError(f"message content must be a str, got {type(content).__name__}")
    return content


def extract_tag(text: str, tag: str, which: Literal["first", "last"] = "last") -> str | None:
    """The stripped inside of the first or last ``<tag>...</tag>`` block (may span lines), or None."""
    open_, close = f"<{tag}>", f"</{tag}>"
    if which == "last":
        end = text.rfind(close)
        start = text.rfind(open_, 0, end) if end >= 0 else -1
    elif which == "first":
        start = text.find(open_)
        end = text.find(close, start + len(open_)) if start >= 0 else -1
    else:
        raise ValueError(f"which must be 'first' or 'last', got {which!r}")
    if start < 0 or end < 0:
        return None
    return text[start + len(open_) : end].strip()


def last_number(text: str) -> int | float | None:
    """The last number written in ``text`` ("-3", "1,080", "2.5"), or None when there is none."""
    matches = _NUMBER.findall(text)
    if not matches:
        return None
    token = matches[-1].replace(",", "")
    if "." in token:
        return float(token)
    if len(token.lstrip("-")) > _MAX_INT_DIGITS:
        return None  # int() refuses so many digits; no sensible answer is that long
    return int(token)


def extract_answer(
    text: str, *, which: Literal["first", "last"] = "last", fallback: Literal["none", "last_number"] = "none"
) -> str | None:
    """The inside of the first/last ``<answer>`` block; else, with ``fallback="last_number"``, the last number.

    The fallback returns the number as written ("$1,080.00"); ``parse_number`` normalises it. An
    empty ``<answer></answer>`` block counts as an answer (``""``), so it does not fall back.
    """
    if fallback not in ("none", "last_number"):
        raise ValueError(f"fallback must be 'none' or 'last_number', got {fallback!r}")
    block = extract_tag(text, "answer", which)
    if block is not None or fallback == "none":
        return block
    last = _last_match(_ANSWER_NUMBER, text)
    return None if last is None else last.group(0)


def parse_number(text: str, *, strict: bool = False) -> Fraction | None:
    """The exact number an answer string states, or None; never raises.

    Accepts ``1080``, ``-3``, ``1,080``, ``1080.00``, ``1080.``, ``$1,080.00``, ``2.5``, ``1/2``,
    ``-1/2`` and ``\\boxed{1080}`` (``\\frac{1}{2}`` inside it). A percent sign is dropped:
    ``50%`` is 50, as GSM8K writes percentages as the bare number. When the text holds several
    numbers, the last ``\\boxed{}`` wins, else the number right after the last "answer is" /
    "answer:", else the last number. With ``strict`` the whole text (after stripping blanks, a
    ``\\boxed{}`` wrapper and a final period) must be one number. Text over ``MAX_ANSWER_CHARS``
    characters and numbers over ``MAX_NUMBER_DIGITS`` digits give None.
    """
    if not isinstance(text, str) or len(text) > MAX_ANSWER_CHARS:
        return None
    if strict:
        return _whole_number(text)
    boxed = _boxed(text, text.rfind("\\boxed{"))
    if boxed is not None:
        value = _last_value(boxed[0])
        if value is not None:
            return value
    said = _last_match(_ANSWER_IS, text)
    if said is not None:
        match = _ANSWER_NUMBER.match(text, said.end())
        value = _number_value(match) if match else None
        if value is not None:
            return value
    return _last_value(text)


def is_digits(text: str) -> bool:
    """Whether ``text`` (blanks stripped) is only ASCII digits, at most ``MAX_ANSWER_CHARS`` of them."""
    return len(text) <= MAX_ANSWER_CHARS and _DIGITS.fullmatch(text.strip()) is not None


def format_number(value: Fraction) -> str:
    """Canonical text of an exact number: ``"1080"``, ``"-3"``, ``"2.5"``, or ``"1/3"`` when no decimal ends."""
    if value.denominator == 1:
        return str(value.numerator)
    denominator, twos, fives = value.denominator, 0, 0
    while denominator % 2 == 0:
        denominator, twos = denominator // 2, twos + 1
    while denominator % 5 == 0:
        denominator, fives = denominator // 5, fives + 1
    if denominator != 1:
        return f"{value.numerator}/{value.denominator}"
    places = max(twos, fives)
    scaled = abs(value.numerator) * 10**places // value.denominator
    sign = "-" if value < 0 else ""
    return f"{sign}{scaled // 10**places}.{scaled % 10**places:0{places}d}"


def _boxed(text: str, start: int) -> tuple[str, int] | None:
    """The inside of the ``\\boxed{...}`` at ``start`` (braces balanced; LaTeX fractions as ``a/b``) and
    the index of its closing brace, or None when there is none."""
    if start < 0 or not text.startswith("\\boxed{", start):
        return None
    depth, begin = 0, start + len("\\boxed{")
    for i in range(begin, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            if depth == 0:
                inside = _LATEX_FRAC.sub(r"\1/\2", text[begin:i])
                return inside.replace("{,}", ",").replace("\\,", ",").replace("\\$", "$"), i
            depth -= 1
    return None


def _whole_number(text: str) -> Fraction | None:
    text = text.strip()
    boxed = _boxed(text, 0)
    if boxed is not None and boxed[1] == len(text) - 1:
        text = boxed[0].strip()
    match = _ANSWER_NUMBER.fullmatch(text.removesuffix("."))
    return _number_value(match) if match else None


def _last_match(pattern: re.Pattern[str], text: str) -> re.Match[str] | None:
    matches = deque(pattern.finditer(text), maxlen=1)
    return matches[0] if matches else None


def _last_value(text: str) -> Fraction | None:
    last = _last_match(_ANSWER_NUMBER, text)
    return _number_value(last) if last else None


def _number_value(match: re.Match[str]) -> Fraction | None:
    """The exact value of one ``_ANSWER_NUMBER`` match; None when a part has too many digits."""
    digits, decimals, denominator = match["int"].replace(",", ""), match["dec"] or "", match["den"]
    if max(len(digits), len(decimals), len(denominator or "")) > MAX_NUMBER_DIGITS:
        return None
    value = Fraction(int(digits))
    if decimals:
        value += Fraction(int(decimals), 10 ** len(decimals))
    if denominator is not None:
        if int(denominator) == 0:
            return None
        value /= int(denominator)
    return -value if match["neg"] or match["neg_after"] else value


def safe_eval(
    expr: str,
    *,
    allow_div: bool = False,
    max_len: int = 200,
    max_depth: int = 20,
    max_abs: int = 10**12,
) -> tuple[Fraction, list[int]] | None:
    """Exact value and integer literals of an arithmetic expression, or None for anything else.

    Only non-negative integer literals, binary + - * (and / when ``allow_div``), unary +/- and
    parentheses are accepted. Length, nesting depth (of parentheses and of the syntax tree) and
    the magnitude of every literal and intermediate value are bounded, so no input can raise,
    hang or exhaust memory.
    """
    chars = (_EXPR_CHARS | {"/"}) if allow_div else _EXPR_CHARS
    if len(expr) > max_len or not set(expr) <= chars or _paren_depth(expr) > max_depth:
        return None
    source = " ".join(expr.split())
    if not source:
        return None
    try:
        tree = ast.parse(source, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    literals: list[int] = []
    value = _eval_node(tree.body, 1, allow_div, max_depth, max_abs, literals)
    return None if value is None else (value, literals)


def _paren_depth(expr: str) -> int:
    """Deepest parenthesis nesting, checked before parsing so the parser never recurses deeply."""
    depth = deepest = 0
    for char in expr:
        if char == "(":
            depth += 1
            deepest = max(deepest, depth)
        elif char == ")":
            depth -= 1
    return deepest


def _eval_node(node: ast.AST, depth: int, allow_div: bool, max_depth: int, max_abs: int, literals: list[int]) -> Fraction | None:
    if depth > max_depth:
        return None
    if isinstance(node, ast.Constant):
        value = node.value
        if type(value) is not int or value > max_abs:
            return None
        literals.append(value)
        return Fraction(value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.UAdd, ast.USub)):
        operand = _eval_node(node.operand, depth + 1, allow_div, max_depth, max_abs, literals)
        if operand is None:
            return None
        return -operand if isinstance(node.op, ast.USub) else operand
    if isinstance(node, ast.BinOp):
        left = _eval_node(node.left, depth + 1, allow_div, max_depth, max_abs, literals)
        if left is None:
            return None
        right = _eval_node(node.right, depth + 1, allow_div, max_depth, max_abs, literals)
        if right is None:
            return None
        result = _apply(node.op, left, right, allow_div)
        if result is None or abs(result) > max_abs:
            return None
        return result
    return None


def _apply(op: ast.operator, left: Fraction, right: Fraction, allow_div: bool) -> Fraction | None:
    if isinstance(op, ast.Add):
        return left + right
    if isinstance(op, ast.Sub):
        return left - right
    if isinstance(op, ast.Mult):
        return left * right
    if isinstance(op, ast.Div) and allow_div and right != 0:
        return left / right
    return None
