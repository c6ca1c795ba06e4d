"""The phase timer: exclusive time per phase, absorbing phases, and the console line."""

from __future__ import annotations

import pytest

from training_with_unsloth.timing import PhaseTimer, overhead_per_phase, shares_line


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_nested_phases_are_exclusive_and_add_up():
    clock = Clock()
    timer = PhaseTimer(clock)
    with timer.phase("loss"):
        clock.now += 1.0
        with timer.phase("generation"):
            clock.now += 3.0
            with timer.phase("rewards"):
                clock.now += 0.5
        clock.now += 2.0
    assert timer.total == {"rewards": 0.5, "generation": 3.0, "loss": 3.0}
    assert sum(timer.total.values()) == clock.now
    assert timer.take() == timer.total and timer.take() == {}
    assert timer.calls == 3


def test_work_inside_an_absorbing_phase_is_counted_there():
    clock = Clock()
    timer = PhaseTimer(clock)
    with timer.phase("eval"):
        with timer.phase("generation"):  # Pass@K's generation is evaluation time
            clock.now += 4.0
    assert timer.total == {"eval": 4.0}


def test_start_and_stop_span_two_hooks():
    clock = Clock()
    timer = PhaseTimer(clock)
    timer.start("optimizer")
    clock.now += 0.25
    timer.stop("optimizer")
    timer.stop("optimizer")  # a second stop is harmless
    assert timer.total == {"optimizer": 0.25}


def test_shares_line_and_the_timer_cost():
    assert (
        shares_line({"generation": 6.0, "loss": 3.0, "other": 0.99, "plots": 0.01}, 10.0) == "generation 60%, loss 30%, other 10%"
    )
    assert shares_line({}, 0.0) == ""
    assert overhead_per_phase(200) == pytest.approx(0, abs=1e-4)  # microseconds, not milliseconds
