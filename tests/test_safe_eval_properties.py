"""Properties of the parsers of hostile text: safe_eval and parse_number never raise, stay fast and are exact."""

import time
from fractions import Fraction

from hypothesis import given, settings
from hypothesis import strategies as st

from rewards.parsing import format_number, parse_number, safe_eval

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
power_towers = st.builds(
    lambda n, base: "**".join([base] * n), st.integers(1, 300), st.sampled_from(["9", "99", "(9)", "-9"])
)
unary_chains = st.builds(
    lambda n, op: op * n + "1", st.integers(1, 5000), st.sampled_from(["-", "+", "- ", "~", "not "])
)
long_sums = st.builds(
    lambda n, op: op.join(["7"] * n), st.integers(1, 500), st.sampled_from(["+", "*", "-", "/", " * -"])
)
hostile = st.one_of(st.text(max_size=500), expression_like, nested, huge_literal, power_towers, unary_chains, long_sums)


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    assert time.perf_counter() - start < CALL_BUDGET_S, f"{fn.__name__} took too long on {args[0][:80]!r}"
    return result


def assert_eval_shape(result):
    assert result is None or (
        isinstance(result, tuple)
        and isinstance(result[0], Fraction)
        and all(type(n) is int and n >= 0 for n in result[1])
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
    assert safe_eval(source.replace(" ", spaces), allow_div=True, **LOOSE) == (
        None if value is None else (value, literals)
    )


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
