"""What every ``python -m fsfm_fast.<verb>`` shares at its edges: errors the user can act on print
as one line (no traceback) and exit with status 2, and flags parse without abbreviations."""
from __future__ import annotations

import argparse
import ast
import errno
import importlib
import importlib.util
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


def _no_default(value) -> bool:
    # identity for False: a default of 0 is worth showing, a switch that is off is not
    return value is None or value is False or value is argparse.SUPPRESS or value == "" or value == []


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The description keeps its lines (its examples and lists stay readable), and each flag's help ends
    with its default once: not when the help already speaks of its default, not for a switch (the
    default of ``--global_pool``/``--cls_token`` is the value of both), and not when there is none.
    A default that a demo run replaces (``demo.note_defaults``) is shown beside it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        notes = []
        if action.nargs != 0 and not _no_default(action.default) and "default" not in text.lower():
            notes.append("default: %(default)s")
        if hasattr(action, "demo_default") and "demo" not in text.lower():
            value = action.demo_default
            shown = ("on" if value else "off") if action.nargs == 0 else value
            notes.append(f"demo: {shown}".replace("%", "%%"))
        return f"{text} ({'; '.join(notes)})" if notes else text


class ArgumentParser(argparse.ArgumentParser):
    """A flag error is one line naming the flag and the value, as every other usage error (the usage
    summary of forty flags above it would hide it); ``-h`` has the rest."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog.split()[0]} -h)\n")


def module_doc(module: str) -> str | None:
    """The docstring of ``module`` read from its source, without running it: a verb's description for
    its parser, which must not import the verb's torch-heavy module."""
    spec = importlib.util.find_spec(module)
    return ast.get_docstring(ast.parse(Path(spec.origin).read_text(encoding="utf-8")), clean=True)


def argument_parser(prog: str, description: str | None, **kwargs) -> argparse.ArgumentParser:
    # allow_abbrev=False: an abbreviated flag must not silently pass for another one
    return ArgumentParser(prog, description=description, allow_abbrev=False, formatter_class=HelpFormatter, **kwargs)


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


def run_verb(prog: str, parse: Callable[[Sequence[str] | None], argparse.Namespace], body: str,
             argv: Sequence[str] | None = None) -> int:
    """The entry of ``python -m fsfm_fast.<verb>``: the flags are parsed and checked by ``parse`` (a
    torch-free module) first, so that ``-h`` and a bad flag answer at once, and only then is the
    verb's module ``body`` imported (torch, timm: seconds on a busy machine) and its ``main`` run.
    ``main`` parses the same flags again, which costs nothing next to the imports, so that it stays
    callable on its own (tests, other verbs)."""
    def main(args: Sequence[str] | None) -> int:
        parse(args)
        return importlib.import_module(body).main(args)
    return run(main, prog, argv)
