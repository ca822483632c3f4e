"""The flags that several verbs share, built by the same functions so that each means the same thing,
has the same spelling, help and type, and the typed values every verb's flags are parsed with.

Every number a flag takes is parsed by one of the callables below (``count``, ``positive``,
``number``, ``probability``, ``int_list``), so that a value out of its range is refused by argparse
itself, in one line that names the flag and the value (``argument --log_every: must be >= 1, got
'0'``), before anything is imported, read or written. ``check(args)`` adds what needs more than one
flag: ``--input_size`` against the model's patch size, and ``--device`` against this machine.

This module must stay importable without torch: ``-h`` and flag errors are answered before the
heavy imports.
"""
from __future__ import annotations

import argparse
import math
from collections.abc import Callable

from .cli import UsageError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
LOADERS = ("auto", "dali", "torch")  # pretraining's --loader (data/loaders.py)
RUNTIMES = ("auto", "torch", "onnx")  # evaluate's and predict's --runtime (onnx_runtime.py)


def _num(x: float) -> str:
    return str(x) if isinstance(x, int) else f"{x:g}"


def _bounds(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    lo = "" if low is None else f"{'>' if low_open else '>='} {_num(low)}"
    hi = "" if high is None else f"{'<' if high_open else '<='} {_num(high)}"
    if lo and hi:
        return f"in {'(' if low_open else '['}{_num(low)}, {_num(high)}{')' if high_open else ']'}"
    return lo or hi or "finite"


def _within(value: float, low, high, low_open: bool, high_open: bool) -> bool:
    if low is not None and not (value > low if low_open else value >= low):
        return False
    return high is None or (value < high if high_open else value <= high)


def integer(low: int | None = None, high: int | None = None) -> Callable[[str], int]:
    """An ``int`` flag's type: a whole number in [low, high]."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"takes a whole number, got {text!r}") from None
        if not _within(value, low, high, False, False):
            raise argparse.ArgumentTypeError(f"must be {_bounds(low, high, False, False)}, got {text!r}")
        return value
    parse.__name__ = "integer"  # argparse names the type in its own messages
    return parse


def number(low: float | None = None, high: float | None = None, *, low_open: bool = False,
           high_open: bool = False) -> Callable[[str], float]:
    """A ``float`` flag's type: finite (``inf`` and ``nan`` are refused everywhere: a learning rate
    of inf trains to NaN and fails much later, far from the flag), within its interval."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"takes a number, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
        if not _within(value, low, high, low_open, high_open):
            raise argparse.ArgumentTypeError(f"must be {_bounds(low, high, low_open, high_open)}, got {text!r}")
        return value
    parse.__name__ = "number"
    return parse


count = integer(0)  # sizes, counts and periods where 0 has a documented meaning ("off", "all", "auto")
positive = integer(1)  # sizes and periods that must be at least one
seed = integer(0, 2**32 - 1)  # NumPy's generators take seeds in [0, 2**32)
non_negative = number(0.0)
learning_rate = number(0.0, low_open=True)
probability = number(0.0, 1.0)


def int_list(each: Callable[[str], int] = seed) -> Callable[[str], str]:
    """A comma-separated list of distinct integers, each checked by ``each``; the text is kept as given
    (the verbs split it), so that defaults and the help read the same."""
    def parse(text: str) -> str:
        items = [s.strip() for s in text.split(",") if s.strip()]
        if not items:
            raise argparse.ArgumentTypeError(f"takes integers separated by commas, got {text!r}")
        try:
            values = [each(s) for s in items]
        except argparse.ArgumentTypeError as exc:
            raise argparse.ArgumentTypeError(f"{exc} (in {text!r})" if len(items) > 1 else str(exc)) from None
        if len(set(values)) != len(values):
            raise argparse.ArgumentTypeError(f"must be distinct, got {text!r}")
        return text
    parse.__name__ = "int_list"
    return parse


def parse_tests(items: list[str], flag: str = "--test") -> dict[str, str]:
    """``["NAME=PATH[,PATH...]", ...]`` of a repeatable ``flag`` -> {NAME: PATH}."""
    tests = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise UsageError(f"{flag} takes NAME=PATH[,PATH...], got {item!r}")
        if name.strip() in tests:
            raise UsageError(f"{flag} {name.strip()} is given twice")
        tests[name.strip()] = path.strip()
    return tests


PATH_KINDS = {"file": ("is_file", "no such file"), "folder": ("is_dir", "no such folder"),
              "exists": ("exists", "no such file or folder")}


def path(kind: str) -> Callable[[str], str]:
    """A path flag's type: an existing ``file``, ``folder``, or either (``exists``), refused at parse time
    rather than after the data are read or the network is built. (Folders a verb writes are proved
    writable by ``cli.ensure_writable_dir`` when the verb starts: parsing must not create them.)"""
    test, problem = PATH_KINDS[kind]

    def parse(text: str) -> str:
        from pathlib import Path

        if not getattr(Path(text), test)():
            raise argparse.ArgumentTypeError(f"{problem}: {text!r}")
        return text
    parse.__name__ = f"{kind} path"
    return parse


def add_device_flags(group) -> None:
    group.add_argument("--device", default="auto", help="auto (this process's GPU if there is one), cpu, cuda, cuda:N")
    group.add_argument("--precision", default="auto", choices=PRECISIONS,
                       help="autocast dtype; auto: bf16 on CUDA, fp32 on CPU")


def add_step_flags(group, *, clip_grad: float, clip_help: str) -> None:
    """How micro-batches become optimizer steps, and when a run stops early or is declared diverging."""
    group.add_argument("--accum_iter", default=1, type=positive, help="micro-batches per optimizer step")
    group.add_argument("--clip_grad", default=clip_grad, type=non_negative, help=clip_help)
    group.add_argument("--max_steps", default=0, type=count,
                       help="stop after this many iterations, rounded up to whole --accum_iter cycles (schedules still "
                            "span the whole run); 0 = no cap")
    group.add_argument("--max_nonfinite", default=20, type=positive,
                       help="stop with an error after this many non-finite losses or gradients in a row "
                            "(checked when logging, every --log_every iterations)")


def add_batch_flag(group, default: int) -> None:
    group.add_argument("--batch_size", default=default, type=positive, help="images per batch, per process")


def add_worker_flag(group, default: int) -> None:
    group.add_argument("--num_workers", default=default, type=count,
                       help="data loading processes per process; 0 loads in the main process")


def add_run_flags(group, *, output_dir: str, keep_last: int, save_every: int, seed_flag: bool = True,
                  resume_help: str = "checkpoint to continue from, or 'auto' for the newest") -> None:
    """Where a run writes, how it saves and resumes, how often it logs."""
    group.add_argument("--output_dir", default=output_dir, help="folder of the run's checkpoints, logs and results")
    group.add_argument("--resume", default="", help=resume_help)
    group.add_argument("--overwrite", action="store_true", help="replace the results of another run in --output_dir")
    group.add_argument("--save_every", default=save_every, type=count,
                       help="resume checkpoint every N iterations, rounded up to whole --accum_iter cycles; 0 = only "
                            "at each validation, at the end and on a stop signal")
    group.add_argument("--keep_last", default=keep_last, type=positive, help="numbered checkpoints to keep")
    group.add_argument("--log_every", default=20, type=positive, help="log (and read the losses back) every N iterations")
    if seed_flag:
        group.add_argument("--seed", default=0, type=seed, help="seed of initialisation, data order and augmentation")


def check(args: argparse.Namespace) -> None:
    """What the typed flags cannot check alone: ``--device`` one this machine has (the one check here that
    imports torch, so it is imported when the flags have parsed). The input size against the model is
    ``models.configs.check_input_size``, called by the verbs that have both."""
    if hasattr(args, "device"):
        from .devices import check_device

        check_device(args.device)
