"""The suite's signal guard (tests/_signal_guard.py): a stop signal that a test's run handler takes still
ends pytest after that test, and a test that leaves a handler installed fails, its handler removed."""
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent

INTERRUPTED_RUN = """
import os, signal, subprocess
from fsfm_fast.runtime.signals import StopSignal

def test_a_signal_a_test_sends_itself_is_not_sent_again():
    with StopSignal() as stop:
        os.kill(os.getpid(), signal.{name})
        assert stop.requested
    open("self", "w").close()

def test_training_stopped_by_a_signal():
    with StopSignal() as stop:
        # from another process, as Ctrl-C or a CI timeout comes
        subprocess.run(["kill", "-{short}", str(os.getpid())], check=True)
        while not stop.requested:  # the handler runs between two bytecodes of this thread
            pass
    open("stopped", "w").close()

def test_after():
    open("after", "w").close()
"""

LEAKY = """
import signal

def test_leaves_a_handler():
    signal.signal(signal.SIGTERM, lambda *_: None)

def test_next_finds_the_default():
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
"""


def _pytest(tmp_path: Path, source: str) -> subprocess.CompletedProcess:
    (tmp_path / "test_inner.py").write_text(source)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "_signal_guard", "-p", "no:cacheprovider", "-q",
                           "test_inner.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("name", ["SIGINT", "SIGTERM"])
def test_a_stop_signal_taken_by_a_run_still_stops_pytest(tmp_path, name):
    run = _pytest(tmp_path, INTERRUPTED_RUN.format(name=name, short=name[3:]))
    assert (tmp_path / "self").exists(), run.stdout + run.stderr  # a handler's own test goes on as before
    assert (tmp_path / "stopped").exists(), run.stdout + run.stderr  # the run's handler had it first
    assert not (tmp_path / "after").exists(), run.stdout + run.stderr  # ... and then the suite stopped
    if name == "SIGINT":
        assert run.returncode == 2 and "KeyboardInterrupt" in run.stdout, run.stdout + run.stderr
    else:
        assert run.returncode == -signal.SIGTERM, run.stdout + run.stderr


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_a_test_that_leaves_a_handler_fails_and_the_next_one_is_clean(tmp_path):
    run = _pytest(tmp_path, LEAKY)
    # the leaky test itself passes and then errors at teardown; the next one runs with the default back
    assert run.returncode == 1 and "2 passed, 1 error" in run.stdout, run.stdout + run.stderr
    assert "ERROR at teardown of test_leaves_a_handler" in run.stdout
    assert "the test left a handler installed for SIGTERM;" in run.stdout


def test_handlers_are_the_suites_own_outside_a_run():
    """In this very suite: the guard is active and nothing is left installed by earlier tests."""
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
