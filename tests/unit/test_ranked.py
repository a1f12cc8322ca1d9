"""Tests for nccidfs.ranked: the waiting call of lowest rank runs first, equal ranks in the order submitted,
no more workers than asked for, and waiting calls cancelled at shutdown."""

from __future__ import annotations

import threading
from concurrent.futures import CancelledError

import pytest

from nccidfs.ranked import RankedPool


def test_waiting_calls_run_lowest_rank_first_and_equal_ranks_in_order() -> None:
    pool = RankedPool(1, "test")
    gate = threading.Event()
    ran: list[str] = []
    blocker = pool.submit(0, gate.wait, 5.0)
    futures = [pool.submit(rank, ran.append, name) for rank, name in
               [(50, "part at 50"), (10, "part at 10, first"), (30, "part at 30"), (10, "part at 10, second")]]
    gate.set()
    for future in [blocker, *futures]:
        future.result(timeout=5)
    assert ran == ["part at 10, first", "part at 10, second", "part at 30", "part at 50"]
    pool.shutdown()


def test_no_more_calls_run_at_once_than_the_pool_has_workers() -> None:
    pool = RankedPool(3, "test")
    lock = threading.Lock()
    running, most = [0], [0]
    gate = threading.Event()

    def call() -> None:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        gate.wait(0.05)
        with lock:
            running[0] -= 1

    futures = [pool.submit(0, call) for _ in range(12)]
    for future in futures:
        future.result(timeout=5)
    assert most[0] == 3
    pool.shutdown()


def test_a_calls_error_reaches_its_future() -> None:
    pool = RankedPool(2, "test")
    with pytest.raises(ZeroDivisionError):
        pool.submit(0, lambda: 1 // 0).result(timeout=5)
    assert pool.submit(0, lambda: 7).result(timeout=5) == 7
    pool.shutdown()


def test_shutdown_cancels_waiting_calls_lets_running_ones_end_and_refuses_new_ones() -> None:
    pool = RankedPool(1, "test")
    started, gate = threading.Event(), threading.Event()

    def running() -> str:
        started.set()
        gate.wait(5.0)
        return "done"

    first = pool.submit(0, running)
    started.wait(5.0)
    waiting = pool.submit(0, lambda: "never")
    pool.shutdown()
    gate.set()
    assert first.result(timeout=5) == "done"
    with pytest.raises(CancelledError):
        waiting.result(timeout=5)
    with pytest.raises(RuntimeError):
        pool.submit(0, lambda: None)
