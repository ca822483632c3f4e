"""Work functions for the prepare runner's pool tests; importable by spawned worker processes."""
import os
import signal

from fsfm_fast.prepare.runner import new_entry


def crash_on_marked(item):
    """Kill the worker process on inputs named ``crash*`` (a decoder's segfault), else succeed."""
    if item.stem.startswith("crash"):
        os.kill(os.getpid(), signal.SIGKILL)
    entry = new_entry(item)
    entry["outputs"].append(item.stem)
    return entry
