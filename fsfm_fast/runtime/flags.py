"""The flags that several verbs share, built by the same functions so that each means the same thing,
has the same spelling, help and type, and is checked by the same rule in every verb (``check``).

A verb adds the groups it needs with its own defaults (a pretraining run keeps 3 checkpoints, a
fine-tuning run 2); ``check(args)`` then refuses, in one line naming the flag, any shared flag out of
its range, before anything is read or written.
"""
from __future__ import annotations

import argparse

from .cli import UsageError
from .devices import PRECISIONS, check_device

# flag -> smallest allowed value; a flag a verb does not have is not checked
MINIMUM = {"batch_size": 1, "accum_iter": 1, "log_every": 1, "keep_last": 1, "max_nonfinite": 1,
           "eval_batch_size": 1, "save_every": 0, "max_steps": 0, "num_workers": 0, "clip_grad": 0.0}


def add_device_flags(group) -> None:
    group.add_argument("--device", default="auto", help="auto (this process's GPU if there is one), cpu, cuda, cuda:N")
    group.add_argument("--precision", default="auto", choices=PRECISIONS,
                       help="autocast dtype; auto: bf16 on CUDA, fp32 on CPU")


def add_step_flags(group, *, clip_grad: float, clip_help: str) -> None:
    """How micro-batches become optimizer steps, and when a run stops early or is declared diverging."""
    group.add_argument("--accum_iter", default=1, type=int, help="micro-batches per optimizer step")
    group.add_argument("--clip_grad", default=clip_grad, type=float, help=clip_help)
    group.add_argument("--max_steps", default=0, type=int,
                       help="stop after this many iterations (schedules still span the whole run); 0 = no cap")
    group.add_argument("--max_nonfinite", default=20, type=int,
                       help="stop with an error after this many non-finite losses or gradients in a row "
                            "(checked when logging, every --log_every iterations)")


def add_batch_flag(group, default: int) -> None:
    group.add_argument("--batch_size", default=default, type=int, help="per process")


def add_worker_flag(group, default: int) -> None:
    group.add_argument("--num_workers", default=default, type=int, help="data loading processes per process")


def add_run_flags(group, *, output_dir: str, keep_last: int, save_every: int, seed: bool = True,
                  resume_help: str = "checkpoint to continue from, or 'auto' for the newest") -> None:
    """Where a run writes, how it saves and resumes, how often it logs."""
    group.add_argument("--output_dir", default=output_dir)
    group.add_argument("--resume", default="", help=resume_help)
    group.add_argument("--overwrite", action="store_true", help="replace the results of another run in --output_dir")
    group.add_argument("--save_every", default=save_every, type=int,
                       help="resume checkpoint every N iterations, rounded up to whole --accum_iter cycles; 0 = only "
                            "at each validation, at the end and on a stop signal")
    group.add_argument("--keep_last", default=keep_last, type=int, help="numbered checkpoints to keep")
    group.add_argument("--log_every", default=20, type=int, help="log (and read the losses back) every N iterations")
    if seed:
        group.add_argument("--seed", default=0, type=int)


def check(args: argparse.Namespace) -> None:
    """Every shared flag the verb has, in range; ``--device`` one this machine has."""
    for flag, low in MINIMUM.items():
        value = getattr(args, flag, None)
        if value is not None and not value >= low:
            raise UsageError(f"--{flag} must be >= {low}, got {value}")
    if hasattr(args, "device"):
        check_device(args.device)
