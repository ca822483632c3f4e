"""Work functions for the prepare runner's stop tests; importable by spawned worker processes."""
import time
from pathlib import Path

from fsfm_fast.prepare import runner


def busy_until_stopped(item):
    """Stand in for a long input: mark that it started, then work in small steps until the run says stop.
    Which way it ended is left in a file, since a stopped run drops its workers' results."""
    folder = Path(item.path)
    (folder / f"started-{item.stem}").touch()
    deadline = time.monotonic() + 300  # a guard against a hang, never reached when the stop arrives
    while time.monotonic() < deadline:
        if runner._WORKER["stopped"]():
            (folder / f"interrupted-{item.stem}").touch()
            raise runner.Interrupted(item.key)
        time.sleep(0.01)
    (folder / f"finished-{item.stem}").touch()
    return runner.new_entry(item)
