"""Warm-pool sizing policy (issue 10.17), sans-I/O: the clock is passed in by hand."""

from __future__ import annotations

from gateway.speech.hamsa.pool import ARRIVAL_WINDOW, PoolSizer


def test_idle_pool_keeps_the_burst_floor() -> None:
    sizer = PoolSizer(min_idle=2, burst=20, cap=400)
    assert sizer.target(0.0) == 20  # 20 calls at once each find a greeting socket


def test_min_idle_wins_over_a_smaller_burst() -> None:
    assert PoolSizer(min_idle=8, burst=3).target(0.0) == 8


def test_min_idle_zero_switches_pooling_off() -> None:
    sizer = PoolSizer(min_idle=0, burst=20)
    for i in range(50):
        sizer.arrival(i * 0.01)
    assert sizer.target(1.0) == 0


def test_target_grows_with_the_arrival_rate_and_the_connect_time() -> None:
    sizer = PoolSizer(min_idle=2, burst=0)
    # 30 calls/s for the window (two sockets each: greeting and reply requests) ...
    for i in range(600):
        sizer.arrival(i / 60.0)
    now = 600 / 60.0
    # 60 acquisitions/s over 10 s, refill horizon max(2 s, 2 x 1.2 s) = 2.4 s -> 144
    assert sizer.target(now) == 144
    for _ in range(30):
        sizer.connected(3.0)  # connects slowed to ~3 s: the refill horizon grows
    assert sizer.target(now) > 300


def test_target_decays_when_arrivals_stop_and_is_capped() -> None:
    sizer = PoolSizer(min_idle=2, burst=5, cap=40)
    for i in range(1000):
        sizer.arrival(i / 100.0)
    assert sizer.target(10.0) == 40  # capped at 2 x MAX_CALLS
    assert sizer.target(10.0 + ARRIVAL_WINDOW + 0.1) == 5  # back to the floor
