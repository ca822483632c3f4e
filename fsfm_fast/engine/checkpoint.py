"""Training checkpoints: written atomically, numbered and pruned, found and checked for a resume, with
the optimizer, scaler and RNG states. Reading weights safely is ``formats``'s."""
from __future__ import annotations

import argparse
import errno
import os
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..formats import CheckpointError, load_state_dict_strict, safe_load
from ..runtime.cli import UsageError, describe_os_error

TEMP_SUFFIX = ".tmp"


def save_atomic(obj: Any, path: str | os.PathLike) -> Path:
    """Write ``obj`` so that ``path`` holds either the old file or the complete new one, never half.

    The bytes go to a temporary file in the same directory (same filesystem, so the final rename is
    atomic), are flushed to disk, and only then replace ``path``. A full disk or a read-only folder is
    a UsageError naming the file; the temporary file is removed.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EDQUOT):
            raise UsageError(f"cannot write checkpoint {describe_os_error(exc, path)}") from None
        raise
    _fsync_dir(path.parent)
    return path


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable; not every filesystem allows opening a directory.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class CheckpointManager:
    """Numbered checkpoints ``<prefix><step>.pth`` in one directory, keeping the newest ``keep_last``."""

    def __init__(self, directory: str | os.PathLike, keep_last: int = 3, prefix: str = "checkpoint-"):
        if keep_last < 1:
            raise ValueError(f"keep_last must be >= 1, got {keep_last}")
        self.directory = Path(directory)
        self.keep_last = keep_last
        self.prefix = prefix

    def path_for(self, step: int) -> Path:
        return self.directory / f"{self.prefix}{step:08d}.pth"

    def list(self) -> list[tuple[int, Path]]:
        found = []
        for p in self.directory.glob(f"{self.prefix}*.pth"):
            digits = p.stem[len(self.prefix):]
            if digits.isdigit():
                found.append((int(digits), p))
        return sorted(found)

    def latest(self) -> Path | None:
        found = self.list()
        return found[-1][1] if found else None

    def save(self, obj: Any, step: int) -> Path:
        path = save_atomic(obj, self.path_for(step))
        for _, old in self.list()[:-self.keep_last]:
            old.unlink(missing_ok=True)
        return path

    def remove_stale_temps(self, older_than_s: float = 0.0) -> list[Path]:
        """Delete temporary files left by a save that was killed (``kill -9``, power loss).

        Called at start, when no save of this run is in flight; ``older_than_s`` spares the files of a
        concurrent writer on shared storage when a caller cannot rule one out.
        """
        removed = []
        now = time.time()
        for p in self.directory.glob(f".{self.prefix}*{TEMP_SUFFIX}"):
            try:
                if now - p.stat().st_mtime >= older_than_s:
                    p.unlink()
                    removed.append(p)
            except FileNotFoundError:
                pass
        return removed

    def load_latest_valid(self, warn: Callable[[str], None] | None = None) -> tuple[Path, dict] | None:
        """The newest checkpoint that loads, with its contents; each unreadable newer one is reported
        through ``warn`` (default: ``warnings.warn``) and passed over, never deleted."""
        warn = warn or (lambda text: warnings.warn(text, RuntimeWarning, stacklevel=3))
        for _, path in reversed(self.list()):
            try:
                return path, safe_load(path)
            except CheckpointError as exc:
                warn(f"--resume auto: skipping {path}: {exc}; trying an older checkpoint")
        return None


def training_checkpoint(fmt: str, step: int, modules: dict[str, torch.nn.Module], optimizer, scaler,
                        args: argparse.Namespace, **extra: Any) -> dict:
    """What a training verb saves to continue exactly: each module's state_dict under its name, the
    optimizer, the AMP scaler, the step, the flags as plain values, the RNG streams, and ``extra``."""
    return {"format": fmt, **{name: module.state_dict() for name, module in modules.items()},
            "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(), "iteration": int(step),
            "args": plain_args(args), "rng": rng_state(), **extra}


def find_resume(resume: str, manager: CheckpointManager, args: argparse.Namespace, same_run: tuple[str, ...],
                required: tuple[str, ...], warn: Callable[[str], None]) -> tuple[Path, dict] | None:
    """The checkpoint ``--resume`` names, loaded and checked before a run does any expensive work.

    ``resume``: "" (none), a path, or "auto": the newest checkpoint of ``manager`` that loads (each
    unreadable newer one is reported through ``warn``; none at all starts fresh). The checkpoint must
    hold the ``required`` entries and have been saved with this run's values of ``same_run``.
    """
    if not resume:
        return None
    if resume == "auto":
        found = manager.load_latest_valid(warn=warn)
        if found is None:
            warn(f"--resume auto: no usable checkpoint in {manager.directory}, starting fresh")
            return None
        path, ckpt = found
    else:
        path = Path(resume)
        ckpt = safe_load(path)
    for key in required:
        if key not in ckpt:
            raise CheckpointError(f"{path} is not a checkpoint of this kind of run (no '{key}' entry)")
    check_same_run(ckpt, path, args, same_run)
    return path, ckpt


def restore_training(ckpt: dict, path: str | os.PathLike, modules: dict[str, torch.nn.Module], optimizer,
                     scaler) -> None:
    """Load what ``training_checkpoint`` saved back into the modules, optimizer, scaler and RNG streams."""
    for name, module in modules.items():
        load_state_dict_strict(module, ckpt[name], path, name)
    try:
        optimizer.load_state_dict(ckpt["optimizer"])
    except (ValueError, KeyError) as exc:
        raise CheckpointError(f"checkpoint {path}: its optimizer state does not fit this run ({exc})") from None
    if ckpt.get("scaler"):
        scaler.load_state_dict(ckpt["scaler"])
    restore_rng(ckpt["rng"])


def rng_state() -> dict:
    """The global torch RNG streams, for an exact resume."""
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if torch.cuda.is_available() and state.get("cuda"):
        torch.cuda.set_rng_state_all(state["cuda"])


def plain_args(args: argparse.Namespace) -> dict:
    """The flags of a run as plain values, safe to store in a weights-only checkpoint."""
    return {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool, list, type(None)))}


def check_same_run(ckpt: dict, path: str | os.PathLike, args: argparse.Namespace, keys: tuple[str, ...]) -> None:
    """Refuse a checkpoint saved with other values of ``keys`` (model, input size, ...) than this run's,
    in one line, instead of a page of state_dict size mismatches."""
    saved = ckpt.get("args") or {}
    differ = [k for k in keys if k in saved and saved[k] != getattr(args, k, None)]
    if differ:
        was = ", ".join(f"{k}={saved[k]!r}" for k in differ)
        now = ", ".join(f"{k}={getattr(args, k, None)!r}" for k in differ)
        raise CheckpointError(f"checkpoint {path} was saved with {was}; this run asks for {now}")
