"""Answer normalisation (parse_number, format_number, is_digits) and answer extraction (extract_answer)."""

import time
from fractions import Fraction

import pytest

from rewards.parsing import (
    MAX_ANSWER_CHARS,
    MAX_NUMBER_DIGITS,
    extract_answer,
    format_number,
    is_digits,
    parse_number,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1080", Fraction(1080)),
        ("$1,080.00", Fraction(1080)),
        ("1080.", Fraction(1080)),
        ("1,080", Fraction(1080)),
        ("1080.00", Fraction(1080)),
        ("The answer is 1080", Fraction(1080)),
        ("The answer is: $1,080.", Fraction(1080)),
        ("Answer: 1080 dollars", Fraction(1080)),
        ("\\boxed{1080}", Fraction(1080)),
        ("so \\boxed{1{,}080} in all", Fraction(1080)),
        ("\\boxed{\\frac{3}{4}}", Fraction(3, 4)),
        ("-3", Fraction(-3)),
        ("-$5", Fraction(-5)),
        ("$-5", Fraction(-5)),
        ("\u22127", Fraction(-7)),  # Unicode minus sign
        ("1/2", Fraction(1, 2)),
        ("-1/2", Fraction(-1, 2)),
        ("2.5", Fraction(5, 2)),
        ("0.125", Fraction(1, 8)),
        ("50%", Fraction(50)),  # percentages are the bare number, as GSM8K writes them
        ("  42\n", Fraction(42)),
        ("5-3", Fraction(3)),  # a hyphen between numbers is no sign
        ("x2", None),
        ("twelve", None),
        ("", None),
        ("1/0", None),
        ("\u0661\u0662", None),  # Arabic-Indic digits are not ASCII numbers
    ],
)
def test_parse_number_forms(text, expected):
    assert parse_number(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("I got 7, then \\boxed{12}, and 3 more checks", 12),  # \boxed{} wins over later numbers
        ("\\boxed{1} first, finally \\boxed{2} then 9", 2),  # the last \boxed{}
        ("\\boxed{} is empty; 7", 7),  # an empty box falls through
        ("The answer is 18 because 9 * 2 = 18 and 3 < 4", 18),  # "answer is" wins over the last number
        ("The answer is 5. No wait, the answer is 6, not 4", 6),  # the last "answer is"
        ("the answer is unclear; 2 + 2 = 4", 4),  # nothing after "answer is": the last number
        ("The answer is **$18**. Check: 9 * 2 = 18, 3 left", 18),
        ("The answer is therefore 5 or 6", 6),  # no number right after "answer is": the last number
        ("first 7 then 12", 12),
        ("1,2,3", 3),
    ],
)
def test_parse_number_prefers_boxed_then_answer_is_then_last(text, expected):
    assert parse_number(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1080", 1080),
        (" $1,080.00 ", 1080),
        ("1080.", 1080),
        ("\\boxed{-3}", -3),
        ("1/2", Fraction(1, 2)),
        ("The answer is 1080", None),
        ("12 apples", None),
        ("1 2", None),
        ("\\boxed{1} \\boxed{2}", None),
        ("", None),
    ],
)
def test_parse_number_strict_wants_one_number(text, expected):
    assert parse_number(text, strict=True) == expected


def test_parse_number_bounds():
    assert parse_number("1" * MAX_NUMBER_DIGITS) == int("1" * MAX_NUMBER_DIGITS)
    assert parse_number("1" * (MAX_NUMBER_DIGITS + 1)) is None
    assert parse_number("0." + "1" * (MAX_NUMBER_DIGITS + 1)) is None
    assert parse_number("1/" + "1" * (MAX_NUMBER_DIGITS + 1)) is None
    padded = " " * (MAX_ANSWER_CHARS - 2) + "42"
    assert parse_number(padded) == 42
    assert parse_number(" " + padded) is None  # over the length cap
    assert parse_number(None) is None
    assert parse_number(42) is None


@pytest.mark.parametrize(
    "text",
    [
        "9" * 5000,
        "1" + ",111" * 5000,
        "$-" * 5000,
        "1/" * 5000,
        "\\boxed{" * 5000,
        "{" * 5000,
        "answer is " * 5000,
        "-" * 5000 + "1",
    ],
)
def test_parse_number_hostile_is_fast(text):
    start = time.perf_counter()
    for candidate in (text, text[:MAX_ANSWER_CHARS]):
        result = parse_number(candidate)
        assert result is None or isinstance(result, Fraction)
        strict = parse_number(candidate, strict=True)
        assert strict is None or isinstance(strict, Fraction)
    assert time.perf_counter() - start < 0.1


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (Fraction(1080), "1080"),
        (Fraction(-3), "-3"),
        (Fraction(0), "0"),
        (Fraction(5, 2), "2.5"),
        (Fraction(-1, 4), "-0.25"),
        (Fraction(-7, 20), "-0.35"),
        (Fraction(1, 1024), "0.0009765625"),
        (Fraction(1, 3), "1/3"),
        (Fraction(-2, 7), "-2/7"),
    ],
)
def test_format_number_round_trips(value, text):
    assert format_number(value) == text
    assert parse_number(text, strict=True) == value


def test_is_digits():
    assert is_digits("1080")
    assert is_digits(" 007\n")
    assert not is_digits("-3")
    assert not is_digits("1,080")
    assert not is_digits("2.5")
    assert not is_digits("")
    assert not is_digits("\u0661\u0662")  # str.isdigit() would accept these
    assert not is_digits("1" * (MAX_ANSWER_CHARS + 1))


def test_extract_answer_blocks():
    text = "<answer>1</answer> so <answer>\n 2\n</answer> tail 3"
    assert extract_answer(text) == "2"
    assert extract_answer(text, which="first") == "1"
    assert extract_answer(text, fallback="last_number") == "2"  # a block wins over the fallback
    assert extract_answer("<answer></answer> 5", fallback="last_number") == ""  # an empty block is still an answer
    assert extract_answer("no tags, 5 then $1,080.00.") is None
    assert extract_answer("<answer>5", fallback="none") is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("no tags, 5 then $1,080.00.", "$1,080.00"),
        ("x = -3", "-3"),
        ("half is 1/2", "1/2"),
        ("<answer>unclosed 7", "7"),
        ("nothing numeric", None),
        ("", None),
    ],
)
def test_extract_answer_last_number_fallback(text, expected):
    answer = extract_answer(text, fallback="last_number")
    assert answer == expected
    if expected is not None:
        assert parse_number(answer) == parse_number(expected, strict=True)


def test_extract_answer_rejects_unknown_options():
    with pytest.raises(ValueError, match="fallback must be"):
        extract_answer("1", fallback="first_number")
    with pytest.raises(ValueError, match="which must be"):
        extract_answer("1", which="middle")


def test_extract_answer_on_huge_text_is_fast():
    huge = "word 12 " * 130_000 + "<answer>\n7\n</answer>"  # about 1 MB
    start = time.perf_counter()
    assert extract_answer(huge) == "7"
    assert extract_answer(huge.removesuffix("</answer>"), fallback="last_number") == "7"
    assert extract_answer("9" * 1_000_000, fallback="last_number") == "9" * 1_000_000
    assert time.perf_counter() - start < 1.0
