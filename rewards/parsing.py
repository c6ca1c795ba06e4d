"""Parsing helpers for model output, which is hostile input: nothing here evaluates it as code."""

from __future__ import annotations

import ast
import re
from fractions import Fraction
from typing import Any, Literal

_NUMBER = re.compile(r"(?<![0-9A-Za-z_.])-?(?:[0-9]{1,3}(?:,[0-9]{3})+|[0-9]+)(?:\.[0-9]+)?")
_MAX_INT_DIGITS = 1000
_EXPR_CHARS = frozenset("0123456789+-*() \t\r\n")


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


def _eval_node(
    node: ast.AST, depth: int, allow_div: bool, max_depth: int, max_abs: int, literals: list[int]
) -> Fraction | None:
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
