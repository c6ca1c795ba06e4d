"""rewards/parsing.py: text extraction, number normalisation and answer extraction, the safe expression evaluator,
and properties of these parsers on hostile text (never raise, stay fast, exact).
"""

import time
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rewards.parsing import (
    MAX_ANSWER_CHARS,
    MAX_NUMBER_DIGITS,
    completion_text,
    extract_answer,
    extract_tag,
    format_number,
    is_digits,
    last_number,
    parse_number,
    safe_eval,
)

# --- text extraction and the safe expression evaluator --------------------------------------------


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


# --- answer normalisation (parse_number, format_number, is_digits) and extraction (extract_answer) ---


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


# --- properties: safe_eval and parse_number never raise on hostile text, stay fast and are exact ----

CALL_BUDGET_S = 0.05  # per call; generous so a loaded machine does not flake
EXPR_ALPHABET = "0123456789+-*/() \t\n.eEx_j%<>=!~&|^,[]{}'\""

# Text that looks like arithmetic: operators, parentheses, digits and near-miss syntax.
expression_like = st.text(alphabet=EXPR_ALPHABET, max_size=400)
nested = st.builds(
    lambda depth, inner: "(" * depth + inner + ")" * depth,
    st.integers(0, 600),
    st.sampled_from(["1", "1+2", "-1", "9**9", "", "(", "2*3/0"]),
)
huge_literal = st.builds(
    lambda digits, suffix: "9" * digits + suffix, st.integers(1, 6000), st.sampled_from(["", "+1", "*9", "/3"])
)
power_towers = st.builds(lambda n, base: "**".join([base] * n), st.integers(1, 300), st.sampled_from(["9", "99", "(9)", "-9"]))
unary_chains = st.builds(lambda n, op: op * n + "1", st.integers(1, 5000), st.sampled_from(["-", "+", "- ", "~", "not "]))
long_sums = st.builds(lambda n, op: op.join(["7"] * n), st.integers(1, 500), st.sampled_from(["+", "*", "-", "/", " * -"]))
hostile = st.one_of(st.text(max_size=500), expression_like, nested, huge_literal, power_towers, unary_chains, long_sums)


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    assert time.perf_counter() - start < CALL_BUDGET_S, f"{fn.__name__} took too long on {args[0][:80]!r}"
    return result


def assert_eval_shape(result):
    assert result is None or (
        isinstance(result, tuple) and isinstance(result[0], Fraction) and all(type(n) is int and n >= 0 for n in result[1])
    )


@settings(max_examples=500, deadline=None)
@given(text=hostile, allow_div=st.booleans())
def test_safe_eval_never_raises_and_is_fast(text, allow_div):
    result = timed(safe_eval, text, allow_div=allow_div)
    assert_eval_shape(result)
    if result is not None:
        value, literals = result
        assert abs(value) <= 10**12 and all(n <= 10**12 for n in literals)


# --- random valid expression trees, evaluated independently with Fraction ---------------------------
# Each node is (source text, exact value or None after a division by zero, literals left to right).

leaves = st.integers(0, 1000).map(lambda n: (str(n), Fraction(n), [n]))


def _binary(op):
    def combine(left, right):
        (ls, lv, ll), (rs, rv, rl) = left, right
        if lv is None or rv is None:
            value = None
        elif op == "+":
            value = lv + rv
        elif op == "-":
            value = lv - rv
        elif op == "*":
            value = lv * rv
        else:
            value = None if rv == 0 else lv / rv
        return (f"({ls} {op} {rs})", value, ll + rl)

    return combine


def _extend(children):
    binaries = [st.builds(_binary(op), children, children) for op in "+-*/"]
    negated = children.map(lambda node: ("-" + node[0], None if node[1] is None else -node[1], node[2]))
    return st.one_of(*binaries, negated)


trees = st.recursive(leaves, _extend, max_leaves=20)
LOOSE = {"max_len": 10**6, "max_depth": 10**3, "max_abs": 10**200}  # bounds no generated tree reaches


@settings(max_examples=500, deadline=None)
@given(tree=trees)
def test_safe_eval_agrees_with_fraction_arithmetic(tree):
    source, value, literals = tree
    expected = None if value is None else (value, literals)
    assert timed(safe_eval, source, allow_div=True, **LOOSE) == expected
    bounded = timed(safe_eval, source, allow_div=True)  # default bounds may only reject, never change a value
    assert bounded is None or bounded == expected
    no_div = timed(safe_eval, source, **LOOSE)
    assert no_div == (None if "/" in source else expected)


@settings(max_examples=300, deadline=None)
@given(tree=trees, spaces=st.sampled_from([" ", "  ", "\n", "\t"]))
def test_safe_eval_ignores_whitespace_layout(tree, spaces):
    source, value, literals = tree
    assert safe_eval(source.replace(" ", spaces), allow_div=True, **LOOSE) == (None if value is None else (value, literals))


# --- parse_number ---------------------------------------------------------------------------------

number_like = st.text(alphabet="0123456789$,.-/%\\boxed{}frac answer is:\u2212 \n", max_size=1200)


@settings(max_examples=500, deadline=None)
@given(text=st.one_of(st.text(max_size=1200), number_like, huge_literal, nested), strict=st.booleans())
def test_parse_number_never_raises_and_is_fast(text, strict):
    result = timed(parse_number, text, strict=strict)
    assert result is None or isinstance(result, Fraction)


@settings(max_examples=300, deadline=None)
@given(n=st.integers(-(10**15), 10**15))
def test_parse_number_round_trips_formatted_integers(n):
    for text in (
        f"${n:,}.00",
        f"{n:,}",
        f"{n}.",
        f"{n}.000",
        f"\\boxed{{{n}}}",
        f"The answer is {n}.",
        f"After 3 steps and 4 checks: \\boxed{{{n}}}",
        f"I compute 12 things. Answer: {n}",
    ):
        assert timed(parse_number, text) == n, text
    assert parse_number(f"${n:,}.00", strict=True) == n


@settings(max_examples=300, deadline=None)
@given(value=st.fractions(min_value=-(10**12), max_value=10**12, max_denominator=10**6))
def test_format_number_round_trips_exactly(value):
    text = format_number(value)
    assert parse_number(text, strict=True) == value
    assert parse_number(f"so the answer is {text}") == value
