"""`StopSignals`: handlers installed and restored, and a process that has stopped on a signal survives a
late one while it shuts down (the race a scheduler signalling each process in turn would lose)."""

from __future__ import annotations

import os
import signal

import pytest

from seqjax.train.preemption import StopSignals


@pytest.fixture
def recorded_sigterm():
    """A Python SIGTERM handler that records, installed for the test and removed after it."""
    received: list[int] = []

    def handler(signum, frame):
        received.append(signum)

    previous = signal.signal(signal.SIGTERM, handler)
    yield handler, received
    signal.signal(signal.SIGTERM, previous)


@pytest.mark.parametrize("ignore_after_stop", [False, True])
def test_without_a_stop_the_previous_handler_comes_back(recorded_sigterm, ignore_after_stop):
    handler, received = recorded_sigterm
    with StopSignals(agree=None, ignore_after_stop=ignore_after_stop) as stop:
        assert stop.stop_signal() == 0
    assert signal.getsignal(signal.SIGTERM) is handler
    os.kill(os.getpid(), signal.SIGTERM)
    assert received == [signal.SIGTERM]


def test_after_a_stop_the_previous_handler_comes_back_by_default(recorded_sigterm):
    handler, received = recorded_sigterm
    with StopSignals(agree=None) as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.stop_signal() == signal.SIGTERM
    assert received == []  # the stop request went to StopSignals, not to the previous handler
    assert signal.getsignal(signal.SIGTERM) is handler


def test_after_a_stop_late_signals_are_ignored_when_asked(recorded_sigterm):
    _, received = recorded_sigterm
    previous_sigint = signal.getsignal(signal.SIGINT)
    with StopSignals(agree=None, ignore_after_stop=True) as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.stop_signal() == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    os.kill(os.getpid(), signal.SIGTERM)  # the late signal: neither kills nor reaches the old handler
    assert received == []
    signal.signal(signal.SIGINT, previous_sigint)  # pytest's Ctrl-C again


def test_a_stop_agreed_with_a_peer_also_ignores_late_signals(recorded_sigterm):
    """In a multi-process run the stop may come from a peer's signal (the agreement), with none received
    here; this process then exits too, and a late signal to it must not kill that exit."""
    _, received = recorded_sigterm
    previous_sigint = signal.getsignal(signal.SIGINT)
    with StopSignals(agree=lambda local: max(local, signal.SIGTERM), ignore_after_stop=True) as stop:
        assert stop.requested == 0
        assert stop.stop_signal() == signal.SIGTERM  # the peer's signal, agreed
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
    os.kill(os.getpid(), signal.SIGTERM)
    assert received == []
    signal.signal(signal.SIGINT, previous_sigint)
