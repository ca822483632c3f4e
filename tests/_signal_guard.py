"""A pytest plugin (tests/conftest.py loads it): a test never keeps the suite's stop signals.

Tests that train in-process install the runs' stop handler (``StopSignal``), which turns Ctrl-C into
"save and stop": the test under way would end and the suite go on, so Ctrl-C could not stop pytest.
Here every handler a test installs for SIGINT or SIGTERM is wrapped so that the signal is noted; the
run reacts as it would anyway, and when the test is over a signal that came from outside goes again to
the handler the suite had before the test (Ctrl-C: KeyboardInterrupt, and pytest stops). Signals a test
sends to its own process on purpose (to test a handler) are counted and not sent again. A test that
leaves a handler installed, or a stop signal blocked, fails and the suite's handlers are restored.
"""
import os
import signal
from collections import Counter

import pytest

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _own(pid: int) -> bool:
    return pid in (0, os.getpid())


@pytest.fixture(autouse=True)
def stop_signals_reach_the_suite(monkeypatch):
    before = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    received, sent = Counter(), Counter()
    install, kill, killpg, raise_signal = signal.signal, os.kill, os.killpg, signal.raise_signal

    def noting(sig, handler):
        if sig in STOP_SIGNALS and callable(handler) and handler is not before[sig] \
                and not getattr(handler, "notes_stop_signals", False):
            run_handler = handler

            def handler(signum, frame):
                received[signum] += 1
                return run_handler(signum, frame)

            handler.notes_stop_signals = True
        return install(sig, handler)

    def count(signum, to_self: bool) -> None:
        if to_self and signum in STOP_SIGNALS:
            sent[signum] += 1

    monkeypatch.setattr(signal, "signal", noting)
    monkeypatch.setattr(os, "kill", lambda pid, sig: (count(sig, _own(pid)), kill(pid, sig))[1])
    monkeypatch.setattr(os, "killpg", lambda pg, sig: (count(sig, pg in (0, os.getpgrp())), killpg(pg, sig))[1])
    monkeypatch.setattr(signal, "raise_signal", lambda sig: (count(sig, True), raise_signal(sig))[1])
    yield
    left = [signal.Signals(sig).name for sig in STOP_SIGNALS if signal.getsignal(sig) is not before[sig]]
    blocked = [signal.Signals(sig).name for sig in signal.pthread_sigmask(signal.SIG_BLOCK, []) if sig in STOP_SIGNALS]
    for sig, handler in before.items():
        install(sig, handler)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    for signum in STOP_SIGNALS:
        if received[signum] > sent[signum]:  # one came from outside: Ctrl-C, `kill`, a CI timeout
            kill(os.getpid(), signum)
    if left:
        pytest.fail(f"the test left a handler installed for {', '.join(left)}; restore it (a with StopSignal() "
                    "block does)", pytrace=False)
    if blocked:
        pytest.fail(f"the test left {', '.join(blocked)} blocked; unblock it (stop_signals_held does)", pytrace=False)
