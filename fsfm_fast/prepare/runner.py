"""The prepare run: inputs -> (frames -> largest face -> crop -> parsing) -> files, in one process pool.

Every input (a video or an image) is one job: a worker samples its frames, finds and crops the face
in each, parses the crop when asked, and writes the results under temporary names that it renames
when whole. The main process records each finished input in a journal (``.prepare/journal-*.jsonl``,
one JSON line per input) and moves the progress bar. A rerun of the same command reads the journals
and skips the inputs they name, so a killed run resumes where it stopped; a half-written line from a
kill is ignored and its input redone. ``skipped.tsv`` and ``dataset.json`` are rebuilt from the
journals at the end, so they list each input once however many times the run was interrupted.

A stop signal (SIGTERM, Ctrl-C) ends the run at the next frame: the main process tells the workers
through a shared event, each drops the input it is on (unjournaled, so a rerun redoes it), and the pool
closes without waiting for whole inputs.

A worker process that dies on an input (a decoder crashing on a damaged file) is replaced; the inputs
it may have held are retried one at a time, and the one that kills its worker again is listed as
skipped, so no input can stop or hang the run.

The FaRL parser runs after the pool, on the main process's device, in batches: the workers only
find the 5 landmarks it aligns with.
"""
from __future__ import annotations

import errno
import json
import multiprocessing as mp
import os
import signal
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, ThreadPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..runtime import cli
from ..engine.run_log import RunLog
from ..runtime.signals import StopSignal
from .faces import (CROP_SCALE, CROP_SIZE, DEFAULT_UPSAMPLE, box_in_crop, crop_face, crop_region, largest_face,
                    make_detector)
from .inputs import IMAGE, MANIFEST, SKIPPED, VIDEO, Input, NameClash, check_unique, select_shard
from ..data.labels import FRAME_MARK
from .video import VideoError, sample_frames

STATE_DIR = ".prepare"
FORMAT = "fsfm_fast.prepare/1"
PARSERS = ("landmark", "farl")
_FATAL_ERRNOS = (errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EDQUOT)


@dataclass
class Plan:
    """What each job does and where it writes; the part that must not change between a run and its resume
    is ``settings()``."""
    stage: str
    out: Path
    image_dir: str                 # relative to out; "{split}" and "{label}" are filled in per input
    detect: bool = True
    parse: str | None = None       # None, "landmark" or "farl"
    map_dir: str | None = None     # relative to out, for parsing maps
    num_frames: int = 32
    detector: str = "dlib_hog"
    upsample: int = DEFAULT_UPSAMPLE  # of the dlib detectors
    crop_scale: float = CROP_SCALE
    size: int = CROP_SIZE
    hwaccel: str | None = None
    accepts: tuple[str, ...] = (VIDEO, IMAGE)  # other inputs are listed as skipped
    extra: dict = field(default_factory=dict)  # stage options that must not change on resume (splits)

    def settings(self) -> dict:
        keep = ("stage", "image_dir", "detect", "parse", "map_dir", "num_frames", "detector", "upsample", "crop_scale",
                "size")
        out = {k: v for k, v in asdict(self).items() if k in keep}
        out["extra"] = self.extra
        return out


# ------------------------------------------------------------------------------ worker side

_WORKER: dict = {}


class Interrupted(Exception):
    """A stop signal arrived while an input was being processed; the input is left for the rerun."""


def _init_worker(plan: Plan, in_pool: bool, stopped=None) -> None:
    """``stopped``: a callable that is true once the run should stop (the main process's event in a pool)."""
    _WORKER["stopped"] = stopped or (lambda: False)
    if in_pool:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C on the group: the main process decides
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the pool ends its workers with SIGTERM
        try:
            import cv2
            cv2.setNumThreads(1)  # one pool process per core already
        except ImportError:
            pass
    _WORKER["plan"] = plan
    _WORKER["detector"] = make_detector(plan.detector, plan.upsample) if plan.detect else None
    if plan.parse is not None:  # FaRL too: the landmarks give its 5 alignment points
        from .landmark_parser import LandmarkParser
        _WORKER["parser"] = LandmarkParser(plan.crop_scale)


def read_image(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        if isinstance(exc, OSError) and exc.errno in _FATAL_ERRNOS:
            raise
        raise ValueError(f"not a readable image ({type(exc).__name__}: {exc})") from None


def write_png(path: Path, image: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp")
    Image.fromarray(image).save(tmp, format="PNG", compress_level=1)
    os.replace(tmp, path)


def write_map(path: Path, labels: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        np.save(fh, labels.astype(np.uint8), allow_pickle=False)
    os.replace(tmp, path)


def _frames_of(item: Input, plan: Plan) -> list[tuple[str, np.ndarray]]:
    """``(output name, RGB image)`` of each frame an input gives: N sampled frames or the image itself."""
    if item.kind == VIDEO:
        frames = sample_frames(item.path, plan.num_frames, hwaccel=plan.hwaccel)
        return [(f"{item.stem}{FRAME_MARK}{i}", image) for i, image in frames]
    return [(item.stem, read_image(item.path))]


def _one_frame(name: str, image: np.ndarray, item: Input, plan: Plan, entry: dict) -> None:
    out_dir = plan.out / plan.image_dir.format(split=item.split, label=item.label)
    box = None
    if plan.detect:
        box = largest_face(_WORKER["detector"].detect(image))
        if box is None:
            entry["skipped"].append([name, "no face found"])
            return
        region = crop_region(box, image.shape[1], image.shape[0], plan.crop_scale)
        crop = crop_face(image, box, plan.crop_scale, plan.size)
        box = box_in_crop(box, region, plan.size)
    else:
        crop = image
    out_dir.mkdir(parents=True, exist_ok=True)
    if plan.parse is not None:
        parser = _WORKER["parser"]
        points = parser.landmarks(crop, box)
        if plan.parse == "landmark":
            from .landmark_parser import parse_from_landmarks
            map_dir = plan.out / plan.map_dir
            map_dir.mkdir(parents=True, exist_ok=True)
            write_map(map_dir / f"{name}.npy", parse_from_landmarks(crop, points))
        else:
            from .landmarks import five_points
            entry["points"][name] = five_points(points).round(2).tolist()
    target = out_dir / f"{name}.png"
    if not (item.kind == IMAGE and not plan.detect and target.exists() and target.samefile(item.path)):
        write_png(target, crop)  # (parse in place: the crop is already there)
    entry["outputs"].append(name)


def new_entry(item: Input, skipped: list | None = None) -> dict:
    """An input's journal entry: its outputs, its skipped frames ``[name, reason]``, FaRL's points."""
    return {"key": item.key, "kind": item.kind, "label": item.label, "split": item.split,
            "outputs": [], "skipped": skipped or [], "points": {}, "frames": 0}


def run_item(item: Input) -> dict:
    """Process one input; every problem with the input itself becomes a ``skipped`` row, never an error.
    Only a full, read-only or forbidden disk stops the run."""
    plan: Plan = _WORKER["plan"]
    entry = new_entry(item)
    stopped = _WORKER["stopped"]
    try:
        if item.kind not in plan.accepts:
            wanted = " or ".join(f"an {k}" if k[0] in "aeiou" else f"a {k}" for k in plan.accepts)
            raise ValueError(f"not {wanted} (extension {item.path.suffix or 'none'!r})")
        if stopped():  # queued before the stop: not worth starting
            raise Interrupted(item.key)
        if "{split}" in plan.image_dir and not item.split:
            raise ValueError("not listed in any split file")
        frames = _frames_of(item, plan)
        entry["frames"] = len(frames)
        for name, image in frames:
            if stopped():
                raise Interrupted(item.key)
            try:
                _one_frame(name, image, item, plan, entry)
            except Exception as exc:  # one bad frame costs that frame, not the rest of its video
                if isinstance(exc, OSError) and exc.errno in _FATAL_ERRNOS:
                    raise
                entry["skipped"].append([name, f"failed ({type(exc).__name__}: {exc})"])
    except Interrupted:
        raise
    except OSError as exc:
        if exc.errno in _FATAL_ERRNOS:
            raise OSError(exc.errno, cli.describe_os_error(exc)) from None
        entry["skipped"].append([str(item.path), f"unreadable ({exc})"])
    except (VideoError, ValueError) as exc:
        entry["skipped"].append([str(item.path), str(exc)])
    except Exception as exc:  # one strange file must not stop a run over millions
        entry["skipped"].append([str(item.path), f"failed ({type(exc).__name__}: {exc})"])
    return entry


# ------------------------------------------------------------------------------ journal


def _journals(out: Path) -> list[Path]:
    return sorted((out / STATE_DIR).glob("journal-*.jsonl"))


def journal_entries(out: Path):
    """Every entry of every journal of the output folder (every shard's), in order; a line a kill cut
    short is left out (its input is redone)."""
    for path in _journals(out):
        with path.open(encoding="utf-8") as fh:
            for line in fh:
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                if isinstance(entry, dict) and "key" in entry:
                    yield entry


def read_journals(out: Path) -> dict[str, tuple[int, list, str]]:
    """``{input key: (outputs, skipped rows, "split/label")}`` of the finished inputs: what the summary
    needs and no more (a journal over millions of images must fit in memory)."""
    return {e["key"]: (len(e["outputs"]), e["skipped"], "/".join(p for p in (e.get("split"), e.get("label")) if p))
            for e in journal_entries(out)}


def _open_journal(path: Path):
    """Append to a journal, starting on a fresh line if a kill cut the last one short."""
    fh = path.open("a+", encoding="utf-8")
    if fh.tell() > 0:
        fh.seek(fh.tell() - 1)
        if fh.read(1) != "\n":
            fh.write("\n")
    return fh


def check_settings(out: Path, plan: Plan) -> None:
    """The first run of an output folder records its settings; a later run with others is refused,
    since it would mix two kinds of crops or labels in one dataset."""
    path = out / STATE_DIR / "settings.json"
    wanted = json.loads(json.dumps(plan.settings()))
    if path.is_file():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            old = None
        if old is not None and old != wanted:
            diff = sorted(k for k in set(old) | set(wanted) if old.get(k) != wanted.get(k))
            raise cli.UsageError(f"--out {out} was prepared with other settings ({', '.join(diff)}: "
                                 f"{[old.get(k) for k in diff]} there, {[wanted.get(k) for k in diff]} now); "
                                 "use another --out or the same settings")
        if old == wanted:
            return
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_text_atomic(path, json.dumps(wanted, indent=1) + "\n")


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_summary(out: Path, plan: Plan, inputs: list[Input], describe: dict) -> dict:
    """``skipped.tsv`` (stage, sample, reason; the columns of every skipped.tsv) and ``dataset.json``."""
    wanted = {x.key for x in inputs}  # an earlier run into the same folder may have had other inputs
    done = {k: v for k, v in read_journals(out).items() if k in wanted}
    rows, outputs, per_class = [], 0, {}
    for key in sorted(done):
        n_outputs, skipped, where = done[key]
        rows += [(name, reason) for name, reason in skipped]
        outputs += n_outputs
        if where:
            per_class[where] = per_class.get(where, 0) + n_outputs
    lines = ["step\tsample\treason\n"] + [f"{plan.stage}\t{name}\t{' '.join(str(reason).split())}\n"
                                          for name, reason in rows]
    _write_text_atomic(out / SKIPPED, "".join(lines))
    missing = len(wanted) - len(done)
    manifest = {"format": FORMAT, "stage": plan.stage, **describe,
                "crop": {"scale": plan.crop_scale, "size": plan.size} if plan.detect else None,
                "frames_per_video": plan.num_frames if VIDEO in plan.accepts else None,
                "inputs": len(inputs), "inputs_done": len(inputs) - missing, "complete": missing == 0,
                "outputs": outputs, "skipped": len(rows), "outputs_per_split_class": per_class or None,
                **plan.extra}
    _write_text_atomic(out / MANIFEST, json.dumps(manifest, indent=1) + "\n")
    return manifest


# ------------------------------------------------------------------------------ the run


def run(plan: Plan, inputs: list[Input], *, workers: int = 0, num_shards: int = 1, shard_index: int = 0,
        describe: dict | None = None, farl: dict | None = None) -> dict:
    """Process this shard's share of ``inputs`` (skipping those already journaled), then the FaRL
    pass when asked, then rebuild ``skipped.tsv`` and ``dataset.json``; returns the manifest."""
    out = plan.out
    try:  # two inputs with one output name would overwrite each other and share one journal entry
        check_unique(inputs)
    except NameClash as exc:
        raise cli.UsageError(str(exc)) from None
    check_settings(out, plan)
    done = read_journals(out)
    mine = select_shard(inputs, num_shards, shard_index)
    todo = [x for x in mine if x.key not in done]
    journal = out / STATE_DIR / f"journal-{shard_index:05d}-of-{num_shards:05d}.jsonl"
    # labelled: a demo shows one bar per stage
    log = RunLog(out, enabled=True, tensorboard=False, total=len(mine), initial=len(mine) - len(todo),
                 desc=f"prepare {plan.stage}", unit="input")
    if len(todo) < len(mine):
        log.message(f"resuming: {len(mine) - len(todo)} of {len(mine)} inputs of this shard are done")
    n_proc = min(cli.workers_for(workers), max(len(todo), 1))
    start, frames, stopped = time.perf_counter(), 0, False
    with StopSignal() as stop, _open_journal(journal) as fh:
        for entry in _results(plan, todo, n_proc, stop):
            fh.write(json.dumps(entry) + "\n")
            fh.flush()
            frames += len(entry["outputs"]) + len(entry["skipped"])
            for name, reason in entry["skipped"]:
                log.message(f"skipped {name}: {reason}")
            log.progress(1, frames_per_s=frames / max(time.perf_counter() - start, 1e-9))
        stopped = stop.requested
    elapsed = time.perf_counter() - start
    log.record("prepare", len(mine), inputs=len(todo), frames=frames, seconds=round(elapsed, 3),
               frames_per_s=round(frames / max(elapsed, 1e-9), 3), stopped=stopped)
    log.close()
    if stopped:
        print(f"stopped by a signal: {out / STATE_DIR} keeps what is done; run the same command again to go on")
        return {"stopped": True}
    if plan.parse == "farl":
        farl_pass(plan, **(farl or {}))
    return write_summary(out, plan, inputs, describe or {})


def _results(plan: Plan, todo: list[Input], n_proc: int, stop: StopSignal, work=run_item):
    """Entries of the finished inputs, as they finish; stops early when a stop signal arrives.

    ``n_proc`` 1 runs in this process. Otherwise a pool of worker processes runs ``work``; if a worker
    dies (a decoder crashing on a damaged file), the inputs it may have held are rerun one at a time in
    a pool of their own, and the one that kills its worker again is listed as skipped."""
    if n_proc <= 1:
        _init_worker(plan, in_pool=False, stopped=lambda: stop.requested)
        for item in todo:
            if stop.requested:
                return
            try:
                entry = work(item)
            except Interrupted:
                return
            yield entry
        return
    queue, suspects = list(reversed(todo)), []
    while (queue or suspects) and not stop.requested:
        alone = bool(suspects)
        batch = [suspects.pop()] if alone else queue
        crashed = yield from _pool_pass(plan, batch, 1 if alone else n_proc, stop, work)
        if alone and crashed:
            yield new_entry(crashed[0], [[str(crashed[0].path), "its worker process crashed on it (twice)"]])
        elif crashed:
            suspects = crashed


def _pool_pass(plan: Plan, batch: list[Input], n_proc: int, stop: StopSignal, work):
    """Run ``batch`` (consumed from its end) in one pool, yielding entries; returns the inputs in flight
    when a worker died ([] when none did)."""
    # spawn, not fork: the parent may hold threads (FFmpeg's, OpenMP's) whose locks a forked child
    # would inherit locked; each worker builds its own detector
    context = mp.get_context("spawn")
    stopping = context.Event()
    pool = ProcessPoolExecutor(n_proc, mp_context=context, initializer=_init_worker,
                               initargs=(plan, True, stopping.is_set))
    in_flight: dict = {}
    try:
        while batch or in_flight:
            while batch and len(in_flight) < 2 * n_proc:
                item = batch.pop()
                in_flight[pool.submit(work, item)] = item
            finished, _ = wait(in_flight, timeout=0.5, return_when=FIRST_COMPLETED)
            if stop.requested:
                return []
            for future in finished:
                try:
                    entry = future.result()
                except BrokenProcessPool:
                    return list(in_flight.values())
                del in_flight[future]
                yield entry
        return []
    finally:
        # leaving early (a stop, a full disk): the workers drop their inputs at the next frame, queued
        # inputs are cancelled, and their results are dropped; after a whole pass nothing is running
        stopping.set()
        pool.shutdown(wait=True, cancel_futures=True)


def farl_pass(plan: Plan, weights, device: str = "cpu", batch_size: int = 16) -> None:
    """Parse every journaled crop that has no map yet with FaRL, batch by batch on ``device``."""
    from .farl_parser import FarlParser

    parser = FarlParser(weights, device, batch_size)
    map_dir = plan.out / plan.map_dir
    map_dir.mkdir(parents=True, exist_ok=True)
    todo = []
    for entry in journal_entries(plan.out):
        image_dir = plan.out / plan.image_dir.format(split=entry.get("split", ""), label=entry.get("label", ""))
        todo += [(image_dir / f"{name}.png", name, np.asarray(points, np.float32))
                 for name, points in entry.get("points", {}).items() if not (map_dir / f"{name}.npy").is_file()]
    def load(job):
        try:
            return job, read_image(job[0])
        except ValueError as exc:  # a crop removed or damaged since the pool wrote it
            print(f"farl: skipped {job[0]}: {exc}", file=sys.stderr)
            return job, None

    with ThreadPoolExecutor(max_workers=8) as readers:  # PNG decoding releases the GIL
        for start in range(0, len(todo), batch_size):
            chunk = [(job, image) for job, image in readers.map(load, todo[start:start + batch_size])
                     if image is not None]
            labels = parser.parse_batch([image for _, image in chunk], [job[2] for job, _ in chunk])
            for ((_, name, _), _), one in zip(chunk, labels):
                write_map(map_dir / f"{name}.npy", one)
