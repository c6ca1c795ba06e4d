"""Parsing helpers: text extraction, number normalisation and the safe expression evaluator."""

import time
from fractions import Fraction

import pytest

from rewards.parsing import completion_text, extract_tag, last_number, safe_eval


def test_completion_text_forms():
    assert completion_text("plain") == "plain"
    assert completion_text({"role": "assistant", "content": "one"}) == "one"
    chat = [
        {"role": "user", "content": "ignored"},
        {"role": "assistant", "content": "a"},
        {"role": "assistant", "content": None},
        {"role": "assistant", "content": "b"},
    ]
    assert completion_text(chat) == "ab"
    assert completion_text([]) == ""
    with pytest.raises(TypeError):
        completion_text(42)


def test_extract_tag_first_last_and_multiline():
    text = "<answer> 1 </answer> junk <answer>\n2 +\n3\n</answer> tail"
    assert extract_tag(text, "answer") == "2 +\n3"
    assert extract_tag(text, "answer", which="first") == "1"
    assert extract_tag("<answer>1", "answer") is None
    assert extract_tag("1</answer>", "answer") is None
    assert extract_tag("</answer><answer>", "answer") is None
    assert extract_tag("<answer></answer>", "answer") == ""
    assert extract_tag("<answer>x<answer>y</answer>", "answer") == "y"
    with pytest.raises(ValueError):
        extract_tag("", "answer", which="middle")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The answer is 42.", 42),
        ("x = -3", -3),
        ("5-3 gives 2", 2),
        ("5-3", 3),
        ("$1,080", 1080),
        ("about 2.5 units", 2.5),
        ("1080.00", 1080.0),
        ("first 7 then 12", 12),
        ("1,2,3", 3),
        ("no digits here", None),
        ("", None),
        ("\u0661\u0662", None),  # Arabic-Indic digits are not ASCII numbers
        ("9" * 5000, None),  # more digits than int() accepts
        ("1" * 5000 + " so 7", 7),
    ],
)
def test_last_number(text, expected):
    result = last_number(text)
    assert result == expected
    if expected is not None:
        assert type(result) is type(expected)


@pytest.mark.parametrize(
    ("expr", "value", "literals"),
    [
        ("5 * 2 + 3", 13, [5, 2, 3]),
        ("(3 + 5) * 2", 16, [3, 5, 2]),
        ("-3 + 10", 7, [3, 10]),
        ("+4 - (-2)", 6, [4, 2]),
        ("  7 *\n 6 ", 42, [7, 6]),
        ("0", 0, [0]),
    ],
)
def test_safe_eval_valid(expr, value, literals):
    assert safe_eval(expr) == (Fraction(value), literals)


def test_safe_eval_division_only_when_allowed():
    assert safe_eval("7 / 2") is None
    assert safe_eval("7 / 2", allow_div=True) == (Fraction(7, 2), [7, 2])
    assert safe_eval("1 / 0") is None
    assert safe_eval("1 / 0", allow_div=True) is None
    assert safe_eval("1 / (2 - 2)", allow_div=True) is None
    assert safe_eval("7 // 2", allow_div=True) is None


HOSTILE = [
    "__import__('os')",
    "__import__('os').system('true')",
    "().__class__",
    "().__class__.__bases__[0].__subclasses__()",
    "9**9**9",
    "2 ** 10",
    "'9'*5000",
    "9" * 5000,
    "9" * 150,
    "(" * 500 + "1" + ")" * 500,
    "(" * 90 + "1" + ")" * 90,
    "-" * 150 + "1",
    "1e308",
    "1.5 + 1",
    "True",
    "True + 1",
    "None",
    "lambda: 1",
    "x",
    "x + 1",
    "nums[0]",
    "(1).real",
    "f'{1}'",
    "'1'",
    "[1, 2]",
    "1, 2",
    "1 if 1 else 2",
    "1 < 2",
    "1 % 2",
    "1 << 40",
    "1 & 1",
    "~1",
    "1_000",
    "0x10",
    "05",
    "1 +",
    "",
    "   ",
    "()",
    "\u0661 + 1",  # Arabic-Indic one
    "\uff11 + 1",  # full-width one
    "1\x00+1",
    "*".join(["999999"] * 30),  # product far beyond max_abs, short enough to parse
    "+".join(["1"] * 60),  # 60 terms nest deeper than max_depth
]


@pytest.mark.parametrize("expr", HOSTILE)
def test_safe_eval_rejects_hostile_input(expr):
    start = time.perf_counter()
    assert safe_eval(expr) is None
    assert safe_eval(expr, allow_div=True) is None
    assert time.perf_counter() - start < 0.1


def test_safe_eval_bounds_are_parameters():
    assert safe_eval("1000 * 1000", max_abs=10**5) is None
    assert safe_eval("1000 * 1000", max_abs=10**6) == (Fraction(10**6), [1000, 1000])
    assert safe_eval("123456", max_abs=10**5) is None
    assert safe_eval("99999 * 99999 * 99999") is None  # 1e15 > default max_abs, well under max_len and max_depth
    assert safe_eval("9999999999999") is None  # a 13-digit literal
    assert safe_eval("999999999999") == (Fraction(999999999999), [999999999999])
    assert safe_eval("9999999 * 9999999 * 0") is None  # an intermediate overflows even if the result would not
    assert safe_eval("1 + 2", max_len=4) is None
    assert safe_eval("((1))", max_depth=1) is None
    assert safe_eval("((1))", max_depth=2) == (Fraction(1), [1])
    assert safe_eval("1 + 2 + 3", max_depth=2) is None
    assert safe_eval("1 + 2 + 3", max_depth=3) == (Fraction(6), [1, 2, 3])


@pytest.mark.parametrize(
    ("expr", "limits"),
    [
        ("-" * 100_000 + "1", {}),  # the parser itself gives up on this nesting
        ("(" * 300 + "1" + ")" * 300, {"max_depth": 10**6}),  # too many nested parentheses for the parser
        ("9" * 5000, {"max_abs": 10**6000}),  # beyond Python's int-from-string digit limit
    ],
)
def test_safe_eval_catches_parser_failures(expr, limits):
    assert safe_eval(expr, max_len=10**6, **limits) is None
