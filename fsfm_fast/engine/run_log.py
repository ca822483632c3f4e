"""What a run leaves behind while it trains: a JSON-lines log, TensorBoard scalars, a progress bar.

The bar redraws itself with carriage returns, which only a terminal shows as one line: written to a
file (``> log 2>&1``) it becomes one endless line. So where the bar's stream is not a terminal there is
no bar, and the progress goes out as plain lines instead, at most one per ``PLAIN_STEPS`` of the work
(and at its end) or per ``PLAIN_SECONDS``, whichever comes first; messages are plain lines either way.
"""
from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm


class RunLog:
    """Appends one JSON object per record to ``log.jsonl`` and mirrors numbers to TensorBoard.

    Only the main process writes; the other ranks get an inert instance so the loop needs no branches.
    Samples that could not be read go to ``skipped.tsv`` (step, name, reason), one line each.
    A resumed run calls ``resumed(step)``: rows of the interrupted run past that step are dropped, so
    each step keeps one row (the redone one).
    """

    def __init__(self, output_dir: str | Path, *, enabled: bool, tensorboard: bool = True,
                 total: int = 0, initial: int = 0, desc: str | None = None, unit: str = "it",
                 interactive: bool | None = None):
        self.enabled = enabled
        self.path = Path(output_dir) / "log.jsonl"
        self.skipped_path = Path(output_dir) / "skipped.tsv"
        self._tb = None
        self._bar = None
        self._plain: PlainProgress | None = None
        self._named: set[tuple[str, str]] = set()
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self._tb = SummaryWriter(log_dir=str(Path(output_dir) / "tensorboard"))
            except ImportError:  # tensorboard is optional at run time
                self._tb = None
        if interactive is None:  # tqdm draws on stderr
            interactive = hasattr(sys.stderr, "isatty") and sys.stderr.isatty()
        if interactive:
            self._bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True, smoothing=0.1)
        else:
            self._plain = PlainProgress(total, initial, desc, unit)

    def record(self, kind: str, step: int, **values: Any) -> None:
        if not self.enabled:
            return
        row = {"kind": kind, "step": step, "time": round(time.time(), 3), **values}
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row, allow_nan=True) + "\n")
        if self._tb is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                    self._tb.add_scalar(f"{kind}/{key}", value, step)

    def resumed(self, step: int) -> None:
        if self.enabled:
            drop_rows_after(self.path, step)
            drop_rows_after(self.skipped_path, step, step_of=_tsv_step)

    def skipped(self, step: int, samples: list[tuple[str, str]]) -> None:
        """Name each unreadable sample of a batch or a validation, ``(path, reason)``, in skipped.tsv
        (every time, with its step) and on screen (once per sample and reason: the same file, unreadable
        again at every epoch or validation, would bury the other lines)."""
        if not self.enabled or not samples:
            return
        new = not self.skipped_path.is_file()
        with self.skipped_path.open("a", encoding="utf-8") as f:
            if new:
                f.write("step\tsample\treason\n")
            for name, reason in samples:
                reason = " ".join(str(reason).split()) or "unreadable"  # one line, no tabs
                f.write(f"{step}\t{name}\t{reason}\n")
                if (name, reason) not in self._named:
                    self._named.add((name, reason))
                    self.message(f"skipped unreadable sample: {name} ({reason})")

    def start_at(self, n: int) -> None:
        """Where a resumed run's progress starts: counted as done, not as work of this process."""
        if self._bar is not None:
            self._bar.update(n)
        elif self._plain is not None:
            self._plain.start_at(n)

    def progress(self, n: int, **postfix: Any) -> None:
        shown = {k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in postfix.items()}
        if self._bar is not None:
            self._bar.update(n)
            if postfix:
                self._bar.set_postfix(shown, refresh=False)
        elif self._plain is not None:
            self._plain.update(n, shown)

    def message(self, text: str) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            tqdm.write(text)  # above the bar, which is redrawn below it
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._tb is not None:
            self._tb.flush()
            self._tb.close()


PLAIN_STEPS = 20  # plain progress lines per run, at most (plus one a PLAIN_SECONDS)
PLAIN_SECONDS = 300.0


class PlainProgress:
    """The progress of a run with no terminal: ``desc: 120/600 it (20%), 3.1 it/s, loss 0.69`` lines."""

    def __init__(self, total: int, initial: int, desc: str | None, unit: str):
        self.total, self.desc, self.unit = total, desc or "training", unit
        self.every = max(1, math.ceil(total / PLAIN_STEPS)) if total else 1
        self.start_at(initial)

    def start_at(self, done: int) -> None:
        self.done = self.initial = done
        self.next = (done // self.every + 1) * self.every
        self.start = self.last = time.monotonic()

    def update(self, n: int, postfix: dict[str, Any]) -> None:
        self.done += n
        now = time.monotonic()
        if n <= 0 or not (self.done >= self.next or self.done == self.total or now - self.last >= PLAIN_SECONDS):
            return
        self.next = (self.done // self.every + 1) * self.every
        self.last = now
        of = f"/{self.total}" if self.total else ""
        share = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        rate = (self.done - self.initial) / max(now - self.start, 1e-9)
        extra = "".join(f", {k} {v}" for k, v in postfix.items())
        print(f"{self.desc}: {self.done}{of} {self.unit}{share}, {rate:.3g} {self.unit}/s{extra}", flush=True)


def _json_step(line: str) -> int | None:
    return json.loads(line).get("step", 0)


def _tsv_step(line: str) -> int | None:
    """The step of a skipped.tsv row; None for its header."""
    first = line.split("\t", 1)[0]
    if first == "step":
        return None
    if line.count("\t") != 2:
        raise ValueError("a row cut by a kill mid-write")
    return int(first)


def drop_rows_after(path: Path, step: int, step_of=_json_step) -> None:
    """Rewrite ``path`` (atomically) without the rows whose step (``step_of(line)``, None: keep the
    row) is past ``step``, nor rows cut by a kill mid-write."""
    if not path.is_file():
        return
    kept, dropped = [], 0
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row_step = step_of(line)
            past = row_step is not None and row_step > step
        except (ValueError, AttributeError):  # a line cut by a kill mid-write
            past = True
        if past:
            dropped += 1
        else:
            kept.append(line)
    if dropped:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
        tmp.replace(path)


def read_log(path: str | Path, kind: str = "train") -> list[dict[str, Any]]:
    rows = []
    with Path(path).open(encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line:
                row = json.loads(line)
                if row.get("kind") == kind:
                    rows.append(row)
    return rows
