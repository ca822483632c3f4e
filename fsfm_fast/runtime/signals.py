"""Stop signals: SIGTERM/SIGINT (SLURM, ``timeout``, Ctrl-C) become a request to save and exit cleanly.

A signal sent to the whole process group also reaches DataLoader workers. They ignore it
(``ignore_stop_signals`` as their ``worker_init_fn``) and leave the decision to the main process,
which saves at the next safe point and then shuts the workers down itself. Workers are started
inside ``stop_signals_held``, so a signal cannot reach one before its ``worker_init_fn`` ran: it
would die, and torch's worker watchdog would raise in the main process wherever it happens to be.
"""
from __future__ import annotations

import signal
from contextlib import contextmanager

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopSignal:
    """Context manager: while active, a stop signal sets ``requested`` instead of killing the process.

    A second Ctrl-C raises KeyboardInterrupt, for a user who does not want to wait for the save.
    """

    def __init__(self):
        self.requested = False
        self.signum: int | None = None
        self._previous = {}

    def __enter__(self) -> StopSignal:
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        self.signum = signum

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


def ignore_stop_signals(worker_id: int | None = None) -> None:
    """``worker_init_fn`` for data workers: the main process alone decides when to stop. A stop
    signal held since the worker was forked is discarded, then stop signals are let through again."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


@contextmanager
def stop_signals_held():
    """Block stop signals while data workers are forked (they inherit the block until
    ``ignore_stop_signals`` lifts it); a signal that arrived meanwhile is delivered when this ends."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def shutdown_workers(batches) -> None:
    """Stop the data workers of a DataLoader iterator now (a no-op for anything else).

    Call it in a ``finally`` around the loop: after an exception the traceback keeps the iterator, and
    its workers, alive until the interpreter exits, where multiprocessing stops children with SIGTERM,
    which workers started with ``ignore_stop_signals`` ignore, so the exit would wait for them forever.
    """
    stop = getattr(batches, "_shutdown_workers", None)
    if stop is not None:
        stop()
