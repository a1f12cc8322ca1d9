"""Tests for nccidfs.budget: work never holds more than the budget at once, work over the whole budget is
refused, and work that cannot fit in time fails instead of waiting for ever."""

from __future__ import annotations

import threading
import time

import pytest

from nccidfs import deadline
from nccidfs.budget import MemoryBudget
from nccidfs.errors import TransientError


def test_reservations_never_pass_the_budget_together() -> None:
    budget = MemoryBudget(100, timeout=5.0)
    peak, lock = [0], threading.Lock()

    def work() -> None:
        with budget.reserve(40, "work"):
            with lock:
                peak[0] = max(peak[0], budget.used)
            time.sleep(0.02)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert peak[0] == 80 and budget.used == 0


def test_work_over_the_whole_budget_is_refused() -> None:
    with pytest.raises(ValueError, match="over the 100 allowed"), MemoryBudget(100, timeout=5.0).reserve(101, "x"):
        pass


def test_work_that_does_not_fit_within_the_call_fails() -> None:
    budget = MemoryBudget(100, timeout=5.0)
    with budget.reserve(60, "first"), deadline.bounded(0.05), pytest.raises(TransientError), \
            budget.reserve(60, "second"):
        pass
    assert budget.used == 0


def test_a_failure_inside_gives_the_reservation_back() -> None:
    budget = MemoryBudget(100, timeout=5.0)
    with pytest.raises(RuntimeError), budget.reserve(100, "work"):
        raise RuntimeError("decoding failed")
    assert budget.used == 0
