"""Checkpoint files: written atomically, read without unpickling arbitrary objects."""
from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

# The reference release pickles its argparse.Namespace next to the weights; that is the only
# non-tensor class its checkpoints need, so it is the only one we allow the unpickler to build.
_SAFE_GLOBALS = [argparse.Namespace]


def safe_load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``; fail with the file name on anything else."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        with torch.serialization.safe_globals(_SAFE_GLOBALS):
            obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # corrupt file or a disallowed global: say which file
        raise RuntimeError(f"cannot load checkpoint {path}: {exc}") from exc
    if not isinstance(obj, dict):
        raise RuntimeError(f"checkpoint {path} holds a {type(obj).__name__}, expected a dict")
    return obj


def save_atomic(obj: Any, path: str | os.PathLike) -> Path:
    """Write ``obj`` so that ``path`` holds either the old file or the complete new one, never half.

    The bytes go to a temporary file in the same directory (same filesystem, so the final rename is
    atomic), are flushed to disk, and only then replace ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
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
    """Numbered checkpoints ``checkpoint-<step>.pth`` in one directory, keeping the newest ``keep_last``."""

    prefix = "checkpoint-"

    def __init__(self, directory: str | os.PathLike, keep_last: int = 3):
        if keep_last < 1:
            raise ValueError(f"keep_last must be >= 1, got {keep_last}")
        self.directory = Path(directory)
        self.keep_last = keep_last

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
