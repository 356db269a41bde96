"""CircuitBreaker as a pure state machine, driven by a fake clock."""

from __future__ import annotations

import pytest

from services.common.circuit import CircuitBreaker


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def breaker(clock: FakeClock) -> CircuitBreaker:
    return CircuitBreaker(failure_threshold=3, reset_timeout_s=5.0, clock=clock)


def test_starts_closed_and_allows(breaker: CircuitBreaker) -> None:
    assert breaker.state == "closed"
    assert breaker.allow()
    assert breaker.retry_after_s() == 0.0


def test_opens_after_threshold_consecutive_failures(breaker: CircuitBreaker) -> None:
    breaker.record_failure()
    breaker.record_failure()
    assert breaker.state == "closed"
    assert breaker.allow()
    breaker.record_failure()
    assert breaker.state == "open"
    assert not breaker.allow()
    assert breaker.retry_after_s() == pytest.approx(5.0)


def test_success_resets_the_count(breaker: CircuitBreaker) -> None:
    breaker.record_failure()
    breaker.record_failure()
    breaker.record_success()
    breaker.record_failure()
    breaker.record_failure()
    assert breaker.state == "closed"
    assert breaker.consecutive_failures == 2


def test_half_open_after_cooldown_lets_exactly_one_probe(breaker: CircuitBreaker, clock: FakeClock) -> None:
    for _ in range(3):
        breaker.record_failure()
    clock.advance(4.9)
    assert breaker.state == "open"
    assert not breaker.allow()
    assert breaker.retry_after_s() == pytest.approx(0.1)
    clock.advance(0.1)
    assert breaker.state == "half_open"
    assert breaker.allow()  # the probe
    assert not breaker.allow()  # everyone else still fails fast
    assert breaker.state == "half_open"


def test_successful_probe_closes(breaker: CircuitBreaker, clock: FakeClock) -> None:
    for _ in range(3):
        breaker.record_failure()
    clock.advance(5.0)
    assert breaker.allow()
    breaker.record_success()
    assert breaker.state == "closed"
    assert breaker.consecutive_failures == 0
    assert breaker.allow()
    assert breaker.allow()


def test_failed_probe_reopens_for_a_full_cooldown(breaker: CircuitBreaker, clock: FakeClock) -> None:
    for _ in range(3):
        breaker.record_failure()
    clock.advance(6.0)
    assert breaker.allow()
    breaker.record_failure()
    assert breaker.state == "open"
    assert not breaker.allow()
    clock.advance(4.0)
    assert not breaker.allow()
    clock.advance(1.0)
    assert breaker.allow()


def test_released_probe_lets_the_next_caller_probe(breaker: CircuitBreaker, clock: FakeClock) -> None:
    for _ in range(3):
        breaker.record_failure()
    clock.advance(5.0)
    assert breaker.allow()
    breaker.release_probe()
    assert breaker.state == "half_open"
    assert breaker.allow()


def test_trip_and_reset(breaker: CircuitBreaker, clock: FakeClock) -> None:
    breaker.trip()
    assert breaker.state == "open"
    assert not breaker.allow()
    breaker.reset()
    assert breaker.state == "closed"
    assert breaker.allow()


def test_threshold_of_one_opens_on_first_failure(clock: FakeClock) -> None:
    breaker = CircuitBreaker(failure_threshold=1, reset_timeout_s=0.0, clock=clock)
    breaker.record_failure()
    # A zero cool-down means every call is a probe: open, but immediately half-open.
    assert breaker.state == "half_open"
    assert breaker.allow()
    assert not breaker.allow()


def test_rejects_nonsense_parameters() -> None:
    with pytest.raises(ValueError):
        CircuitBreaker(failure_threshold=0)
    with pytest.raises(ValueError):
        CircuitBreaker(reset_timeout_s=-1)
