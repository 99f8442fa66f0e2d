from __future__ import annotations

import os
import signal
import time

import pytest

from mbsearch import interrupts


def test_signal_outside_a_region_waits_for_a_safe_point() -> None:
    with interrupts.deferred_signals():
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)  # a storage write would be running here: it must not be cut
        with pytest.raises(KeyboardInterrupt):
            interrupts.check()
        interrupts.check()  # consumed: nothing pending any more


def test_signal_inside_a_region_interrupts_at_once() -> None:
    with interrupts.deferred_signals(), pytest.raises(KeyboardInterrupt), interrupts.interruptible():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
        raise AssertionError("not interrupted")


def test_pending_signal_fires_when_the_next_region_starts_and_a_second_one_at_once() -> None:
    with interrupts.deferred_signals():
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)
        with pytest.raises(KeyboardInterrupt), interrupts.interruptible():
            raise AssertionError("the region must not start")
    with interrupts.deferred_signals():
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)  # the user insists
            time.sleep(5)


def test_previous_handlers_are_restored() -> None:
    before = signal.getsignal(signal.SIGINT)
    with interrupts.deferred_signals():
        assert signal.getsignal(signal.SIGINT) is not before
    assert signal.getsignal(signal.SIGINT) is before
