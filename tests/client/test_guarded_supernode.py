"""The SuperNode wrapper's shortened idle poll (client/guarded_supernode.py, issue 33 item 4)."""

import importlib
import time

import pytest

from client.guarded_supernode import PollClock, main, shorten_idle_poll


def test_poll_clock_caps_every_sleep_and_is_time_otherwise():
    clock = PollClock(0.02)
    t0 = time.perf_counter()
    clock.sleep(3)
    clock.sleep(0.5)
    assert time.perf_counter() - t0 < 0.5
    assert clock.monotonic() <= time.monotonic() and clock.time is time.time


def test_flowers_connection_loop_sleeps_no_longer_than_the_idle_poll(monkeypatch):
    loop = importlib.import_module("flwr.supernode.start_client_internal")
    monkeypatch.setattr(loop, "time", time)  # restored after the test
    assert shorten_idle_poll(0.02)
    assert isinstance(loop.time, PollClock)
    t0 = time.perf_counter()
    loop.time.sleep(3)  # what the loop calls after an empty pull
    assert time.perf_counter() - t0 < 0.5


def test_a_moved_loop_is_left_alone(monkeypatch):
    loop = importlib.import_module("flwr.supernode.start_client_internal")
    moved = PollClock(1.0)  # not the time module: the loop is not the one this was written for
    monkeypatch.setattr(loop, "time", moved)
    assert not shorten_idle_poll(0.02)
    assert loop.time is moved


def test_idle_poll_must_be_positive(capsys):
    with pytest.raises(SystemExit):
        main(["--account", "0", "--idle-poll", "0", "--", "--insecure"])
    assert "--idle-poll must be above 0" in capsys.readouterr().err


def test_a_loop_without_the_known_sleep_or_module_is_left_alone(monkeypatch):
    import sys

    loop = importlib.import_module("flwr.supernode.start_client_internal")
    monkeypatch.setattr(loop, "time", time)
    monkeypatch.setattr("client.guarded_supernode.FLOWER_IDLE_SLEEP", "time.sleep(30)")  # not in the loop
    assert not shorten_idle_poll(0.02) and loop.time is time
    monkeypatch.setitem(sys.modules, "flwr.supernode.start_client_internal", None)  # the module is gone
    assert not shorten_idle_poll(0.02)
