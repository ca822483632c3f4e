"""What every ``python -m fsfm_fast.<verb>`` shares at its edges: errors the user can act on print
as one line (no traceback) and exit with status 2, and flags parse without abbreviations."""
from __future__ import annotations

import argparse
import errno
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path


class UsageError(Exception):
    """A problem with the user's input (a flag, a path, a file): reported as one line, exit status 2."""


def describe_os_error(exc: OSError, path: str | os.PathLike | None = None) -> str:
    """``<path>: <cause>`` for an OSError, naming the file even when the error itself does not."""
    where = path if path is not None else (exc.filename or "")
    if exc.errno == errno.ENOSPC:
        cause = "no space left on device"
    elif exc.errno in (errno.EACCES, errno.EPERM):
        cause = "permission denied"
    elif exc.errno == errno.EROFS:
        cause = "read-only file system"
    else:
        cause = exc.strerror or str(exc)
    return f"{where}: {cause}" if where else cause


def say(text: str) -> None:
    """A plain line on stdout, out at once (before a long step begins, and in order with stderr)."""
    print(text, flush=True)


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity mask where the platform has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def workers_for(requested: int) -> int:
    """``requested`` worker processes, or every available CPU for 0."""
    return requested if requested > 0 else available_cpus()


def ensure_writable_dir(path: str | os.PathLike, flag: str = "--output_dir") -> Path:
    """Create ``path`` if needed and prove a file can be written there, before any expensive work."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UsageError(f"{flag} {path} is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise UsageError(f"{flag} {path} cannot be written: {describe_os_error(exc, path)}") from None
    return path


def argument_parser(prog: str, description: str | None) -> argparse.ArgumentParser:
    # allow_abbrev=False: an abbreviated flag must not silently pass for another one
    return argparse.ArgumentParser(prog, description=description, allow_abbrev=False,
                                   formatter_class=argparse.ArgumentDefaultsHelpFormatter)


def run(main: Callable[[Sequence[str] | None], int], prog: str, argv: Sequence[str] | None = None) -> int:
    """Run a verb's ``main``: a UsageError, or an OSError about a path, becomes ``prog: error: ...``."""
    try:
        return int(main(argv) or 0)
    except UsageError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        if exc.filename is None and exc.errno not in (errno.ENOSPC, errno.EROFS, errno.EACCES):
            raise
        print(f"{prog}: error: {describe_os_error(exc)}", file=sys.stderr)
        return 2
