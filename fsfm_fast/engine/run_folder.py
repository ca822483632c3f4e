"""Who may write a run folder: a training run (pretrain, finetune, finetune_fas) starts in a folder that
holds no other run's results, continues its own (``--resume``), or replaces another one only when told
to (``--overwrite``), so that no run silently mixes its checkpoints and log rows with another's.

A run's results are its checkpoints, its log, its summary and its evaluation, in the folder or in one
of its per-seed or evaluation subfolders. The data a demo writes into its own folder (the synthetic
benchmark) is not a result: it is reused, not removed.

An evaluation (``evaluate``, and ``finetune --test``) is a function of its checkpoint and test sets,
which it records beside its results (``EVALUATED``): evaluating them again replaces its own results,
while an evaluation of another checkpoint or other test sets is refused there unless ``--overwrite``.
"""
from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path

from ..runtime.cli import UsageError

# files whose presence means a run wrote here, and that --overwrite removes (no other file is touched)
RESULT_PATTERNS = ("checkpoint-*.pth", "checkpoint-*.pth.tmp*", "log.jsonl", "skipped.tsv", "summary.json",
                   "args.json", "metrics.json", "evaluated.json", "scores.csv", "seeds.csv", "table.md", "roc.png")
# subfolders a run fills with nothing but its own outputs: removed whole by --overwrite
RESULT_FOLDERS = ("tensorboard", "eval", "seed_*")
EVALUATED = "evaluated.json"  # what an evaluation's results are of: {"checkpoint", "tests"}


def earlier_results(folder: Path) -> list[Path]:
    """The results of a run already in ``folder``: files directly in it, and result subfolders that hold
    any result file."""
    if not folder.is_dir():
        return []
    found = sorted(p for pattern in RESULT_PATTERNS for p in folder.glob(pattern) if p.is_file())
    for pattern in RESULT_FOLDERS:
        for sub in sorted(folder.glob(pattern)):
            if sub.is_dir() and (pattern == "tensorboard" or earlier_results(sub)):
                found.append(sub)
    return found


def claim(folders: Iterable[str | Path], *, resume: str, overwrite: bool,
          say: Callable[[str], None] = print) -> None:
    """Refuse, in one line, to start a new run where another run's results are (before any work), unless
    this run continues it (``resume``) or ``overwrite`` asks to replace them: then they are removed, and
    ``say`` says so. Call it on the main process only."""
    if resume:
        return
    for folder in dict.fromkeys(Path(f) for f in folders if f):
        found = earlier_results(folder)
        if not found:
            continue
        names = ", ".join(p.name + ("/" if p.is_dir() else "") for p in found[:4]) + (" ..." if len(found) > 4 else "")
        if not overwrite:
            raise UsageError(f"{folder} holds the results of another run ({names}): continue it with --resume auto, "
                             "choose another --output_dir, or pass --overwrite to replace it")
        for path in found:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        say(f"replacing the earlier run in {folder}: removed {names}")


def evaluation_of(checkpoint: str | Path, tests: dict[str, str]) -> dict:
    """What an evaluation is of, as ``EVALUATED`` records it: the checkpoint and the test sets."""
    return {"checkpoint": str(Path(checkpoint).resolve()),
            "tests": {name: ",".join(str(Path(p).resolve()) for p in spec.split(",")) for name, spec in tests.items()}}


def claim_evaluation(folder: str | Path, what: dict, *, overwrite: bool, say: Callable[[str], None] = print) -> None:
    """Refuse, in one line, to write an evaluation where another one's results are (``metrics.json`` of
    another checkpoint or other test sets, or of unknown origin) unless ``overwrite``. Main process only."""
    folder = Path(folder)
    if not (folder / "metrics.json").is_file():
        return
    try:
        previous = json.loads((folder / EVALUATED).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        previous = None
    if previous == what:
        return
    of = f"of {previous.get('checkpoint')}" if isinstance(previous, dict) else "of another run"
    if not overwrite:
        raise UsageError(f"{folder} holds the evaluation {of} on other data or by another checkpoint: choose another "
                         "--output_dir, or pass --overwrite to replace it")
    say(f"replacing the evaluation {of} in {folder} (--overwrite)")


def record_evaluation(folder: str | Path, what: dict) -> None:
    (Path(folder) / EVALUATED).write_text(json.dumps(what, indent=1) + "\n", encoding="utf-8")
