"""A circuit breaker: stop calling a backend that keeps failing to connect, and probe it now and then.

Pure state machine (no I/O, an injectable clock) so it is unit-tested without a server:

* ``closed``: calls pass; ``failure_threshold`` consecutive failures open it.
* ``open``: calls are refused at once (callers fail fast) until ``reset_timeout_s`` has passed.
* ``half_open``: the cool-down is over; exactly one call (the probe) is let through. Its success closes
  the breaker, its failure opens it again for another cool-down.

Only connection-level failures should be recorded (server unreachable); a bad request is the caller's
fault and says nothing about the backend's health.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal

BreakerState = Literal["closed", "open", "half_open"]


class CircuitBreaker:
    """Counts consecutive failures; ``allow()`` says whether a call may go to the backend now."""

    def __init__(
        self,
        failure_threshold: int = 5,
        reset_timeout_s: float = 2.0,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be at least 1")
        if reset_timeout_s < 0:
            raise ValueError("reset_timeout_s must not be negative")
        self.failure_threshold = failure_threshold
        self.reset_timeout_s = reset_timeout_s
        self._clock = clock
        self._state: BreakerState = "closed"
        self._failures = 0
        self._opened_at = 0.0
        self._probe_in_flight = False

    @property
    def state(self) -> BreakerState:
        """The state now; an open breaker whose cool-down has passed reads as ``half_open``."""
        if self._state == "open" and self._clock() - self._opened_at >= self.reset_timeout_s:
            return "half_open"
        return self._state

    @property
    def consecutive_failures(self) -> int:
        return self._failures

    def retry_after_s(self) -> float:
        """Seconds until an open breaker lets a probe through (0 when calls may go now)."""
        if self._state != "open":
            return 0.0
        return max(0.0, self.reset_timeout_s - (self._clock() - self._opened_at))

    def allow(self) -> bool:
        """True if a call may go to the backend now. In ``half_open`` only the first caller (the probe)
        gets True until that probe's outcome is recorded."""
        state = self.state
        if state == "closed":
            return True
        if state == "open":
            return False
        if self._probe_in_flight:
            return False
        self._state = "half_open"
        self._probe_in_flight = True
        return True

    def record_success(self) -> None:
        """The backend answered: close the breaker and forget past failures."""
        self._state = "closed"
        self._failures = 0
        self._probe_in_flight = False

    def record_failure(self) -> None:
        """A connection-level failure: a failed probe re-opens at once; otherwise open at the threshold."""
        self._failures += 1
        if self._state == "half_open" or self._failures >= self.failure_threshold:
            self._open()

    def release_probe(self) -> None:
        """The probe ended without telling anything about the backend's health (e.g. a bad request was
        refused client side): let the next caller probe instead."""
        self._probe_in_flight = False
        if self._state == "half_open":
            self._state = "open"
            self._opened_at = self._clock() - self.reset_timeout_s

    def trip(self) -> None:
        """Open now, whatever the count (e.g. a health probe saw the server down)."""
        self._failures = max(self._failures, self.failure_threshold)
        self._open()

    def reset(self) -> None:
        """Back to ``closed`` (e.g. a health probe saw the server up again)."""
        self.record_success()

    def _open(self) -> None:
        self._state = "open"
        self._opened_at = self._clock()
        self._probe_in_flight = False
