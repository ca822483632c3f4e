"""Convert reference-layout face folders into WebDataset shards: ``python -m fsfm_fast.data.make_shards``.

    python -m fsfm_fast.data.make_shards /data/VGGFace2_parsed [/data/more ...] --out /data/vggface2_shards

Each source root holds ``images/<stem>.png`` and ``parsing_maps/<stem>.npy``. The output folder gets
``shard-%06d.tar`` (``<key>.jpg`` or, with ``--png``, ``<key>.png``, then ``<key>.parse.png``),
``shard-%06d.idx`` (DALI's webdataset index), ``dataset.json`` and ``skipped.tsv``; see
``fsfm_fast.data.shards`` for the reader.

The run is a plan and independent shard jobs. The plan (which sample goes to which shard) depends
only on the sorted source list, ``--seed`` and the shard size, and is fixed in ``plan.json`` by the
first run: samples are permuted with the seed so that every shard, and so every rank's share and
every reader's shuffle buffer, mixes the whole dataset even when the sources are sorted by identity.
A shard job writes ``.tmp`` files and renames them (tar, then index, then its stats), so a killed run
leaves whole shards or none: re-running skips the finished ones and redoes the rest. A sample that
cannot be used is left out and listed with its reason; a job that fails as a whole (disk full) is
reported and the others go on.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import re
import sys
import tarfile
import time
from collections import Counter
from multiprocessing import get_all_start_methods, get_context
from pathlib import Path

from ..runtime import cli, flags


def get_args_parser() -> argparse.ArgumentParser:
    p = cli.argument_parser("fsfm_fast.data.make_shards", __doc__)
    p.add_argument("roots", nargs="+", type=Path, metavar="SRC", help="reference-layout root(s)")
    p.add_argument("--out", required=True, type=Path, help="output folder for the shards")
    p.add_argument("--shard_size_mb", type=flags.number(0.0, low_open=True), default=256.0, help="target size of one tar (MiB)")
    p.add_argument("--samples_per_shard", type=flags.count, default=0, help="fixed samples per shard (overrides the size)")
    p.add_argument("--quality", type=flags.integer(1, 100), default=95, help="JPEG quality")
    p.add_argument("--subsampling", choices=["420", "444"], default="420",
                   help="JPEG chroma subsampling: 420 is about 40%% smaller and faster to decode")
    p.add_argument("--png", action="store_true", help="store images as lossless PNG instead of JPEG")
    p.add_argument("--image_size", type=flags.positive, nargs=2, metavar=("H", "W"), default=None,
                   help="size every image must have (default: the most common among the first samples)")
    p.add_argument("--seed", type=flags.seed, default=0, help="seed of the sample-to-shard permutation")
    p.add_argument("--workers", type=flags.count, default=0, help="processes (default: all available CPUs)")
    return p


if __name__ == "__main__":  # -h and flag errors answer before torch is imported (data.faces, below)
    sys.exit(cli.run_verb("fsfm_fast.data.make_shards", lambda argv: get_args_parser().parse_args(argv),
                          "fsfm_fast.data.make_shards"))

import numpy as np
from PIL import Image

from ..runtime.cli import UsageError
from .faces import parsing_map_problem
from .folder import as_roots, scan_reference_layout
from .labels import NUM_LABELS
from .shards import FORMAT, MANIFEST_NAME, MAP_EXT, format_index

PLAN_NAME = "plan.json"
REPORT_NAME = "skipped.tsv"
PLAN_VERSION = 1
_KEY_CHARS = re.compile(r"[^A-Za-z0-9_-]")
_KEY_MAX = 80  # USTAR keeps names up to 100 bytes; the longest suffix is ".parse.png"
_PROBE_SAMPLES = 64
_TAR_OVERHEAD = 2 * 512 + 512  # two headers and, on average, half a block of padding per component
_LEVELS = np.arange(256, dtype=np.int64)


def shard_name(shard: int, suffix: str) -> str:
    return f"shard-{shard:06d}.{suffix}"


def _sample_keys(samples: list[tuple[int, Path, Path]]) -> list[str]:
    """WebDataset keys: ``<root number>_<stem>`` reduced to [A-Za-z0-9_-] (the reader splits the
    extension at the first dot) and capped in length; a clash gets a numbered suffix."""
    keys, seen = [], set()
    for root_number, image, _ in samples:
        base = f"{root_number}_{_KEY_CHARS.sub('_', image.stem)}"[:_KEY_MAX]
        key, n = base, 1
        while key in seen:
            key, n = f"{base[:_KEY_MAX - 8]}_{n}", n + 1
        seen.add(key)
        keys.append(key)
    return keys


# --------------------------------------------------------------------------------- one sample


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    # fixed metadata: the same sources always give byte-identical shards
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = size, 0, 0o644, 0, 0, "", ""
    return info


def load_sample(image_path: Path, map_path: Path, image_size: tuple[int, int] | None):
    """(RGB uint8 [H,W,3], uint8 [H,W] labels) or the reason the sample cannot be used."""
    try:
        with Image.open(image_path) as im:
            image = np.asarray(im.convert("RGB"))
    except Exception as exc:  # noqa: BLE001  any decoder failure is a skipped sample, never an abort
        return f"unreadable image ({type(exc).__name__}: {exc})"
    if not map_path.is_file():
        return "no parsing map"
    try:
        parsing = np.load(map_path, allow_pickle=False)
    except Exception as exc:  # noqa: BLE001
        return f"unreadable parsing map ({type(exc).__name__}: {exc})"
    problem = parsing_map_problem(parsing, (image.shape[1], image.shape[0]))
    if problem:
        return problem
    if image_size is not None and image.shape[:2] != tuple(image_size):
        return (f"image size {image.shape[0]}x{image.shape[1]} differs from the dataset's "
                f"{image_size[0]}x{image_size[1]}")
    return image, parsing.astype(np.uint8)


def encode_sample(image: np.ndarray, parsing: np.ndarray, settings: dict) -> tuple[bytes, bytes]:
    buf = io.BytesIO()
    if settings["image_ext"] == "png":
        Image.fromarray(image, "RGB").save(buf, format="PNG", compress_level=6)
    else:
        Image.fromarray(image, "RGB").save(buf, format="JPEG", quality=settings["quality"],
                                           subsampling=0 if settings["subsampling"] == "444" else 2)
    labels = io.BytesIO()
    Image.fromarray(parsing, "L").save(labels, format="PNG", compress_level=6)
    return buf.getvalue(), labels.getvalue()


# ---------------------------------------------------------------------------------- one shard


class _ShardStats:
    """What dataset.json needs from one shard, in exact integers so that shards add up in any order."""

    def __init__(self):
        self.count = 0
        self.labels = np.zeros(NUM_LABELS, np.int64)
        self.pixels = 0
        self.sums = np.zeros(3, np.int64)
        self.sums_sq = np.zeros(3, np.int64)
        self.skipped: list[list[str]] = []

    def add(self, image: np.ndarray, parsing: np.ndarray) -> None:
        self.count += 1
        self.labels += np.bincount(parsing.ravel(), minlength=NUM_LABELS)[:NUM_LABELS]
        # per-channel histograms give exact sums and sums of squares, ten times faster than int64 arithmetic
        hist = np.stack([np.bincount(image[..., c].ravel(), minlength=256) for c in range(3)])
        self.pixels += image.shape[0] * image.shape[1]
        self.sums += hist @ _LEVELS
        self.sums_sq += hist @ (_LEVELS * _LEVELS)

    def as_json(self, shard: int) -> dict:
        return {"shard": shard, "count": self.count, "label_histogram": self.labels.tolist(),
                "pixel_stats": {"count": self.pixels, "sum": self.sums.tolist(), "sum_sq": self.sums_sq.tolist()},
                "skipped": self.skipped}


def _append(tar: tarfile.TarFile, name: str, data: bytes) -> tuple[int, int]:
    """Add a member; (data offset, size). The offset is taken from where the data ended, so it
    holds whatever header the member needed."""
    tar.addfile(_tarinfo(name, len(data)), io.BytesIO(data))
    padded = -(-len(data) // 512) * 512
    return tar.offset - padded, len(data)


def write_shard(job: tuple) -> dict:
    """Write shard ``number`` of the plan: (out, number, [(image, map, key)], settings) -> its stats."""
    out, number, members, settings = job
    out = Path(out)
    stats, index = _ShardStats(), []
    tmp = {s: out / (shard_name(number, s) + ".tmp") for s in ("tar", "idx", "stats.json")}
    image_ext = settings["image_ext"]
    size = tuple(settings["image_size"])
    with tarfile.open(tmp["tar"], "w", format=tarfile.USTAR_FORMAT) as tar:
        for image_path, map_path, key in members:
            loaded = load_sample(Path(image_path), Path(map_path), size)
            if isinstance(loaded, str):
                stats.skipped.append([str(image_path), loaded])
                continue
            image_bytes, map_bytes = encode_sample(*loaded, settings)
            components = []
            for ext, data in ((image_ext, image_bytes), (MAP_EXT, map_bytes)):
                components.append((ext, *_append(tar, f"{key}.{ext}", data), f"{key}.{ext}"))
            index.append(components)
            stats.add(*loaded)
    if stats.count:
        tmp["idx"].write_text(format_index(index), encoding="utf-8")
        os.replace(tmp["tar"], out / shard_name(number, "tar"))
        os.replace(tmp["idx"], out / shard_name(number, "idx"))
    else:  # nothing usable: no tar (an empty archive is not a valid webdataset), only the record
        tmp["tar"].unlink()
    tmp["stats.json"].write_text(json.dumps(stats.as_json(number)) + "\n", encoding="utf-8")
    os.replace(tmp["stats.json"], out / shard_name(number, "stats.json"))
    return stats.as_json(number)


def _run_job(job: tuple) -> dict:
    """``write_shard`` that reports a failure of the whole shard instead of raising."""
    try:
        return write_shard(job)
    except Exception as exc:  # noqa: BLE001  one shard's I/O error must not stop the others
        return {"shard": job[1], "error": f"{type(exc).__name__}: {exc}"}


def read_finished(out: Path, number: int) -> dict | None:
    """A shard's stats when it is finished: its stats record exists (written last) and so do the
    tar and index it describes."""
    try:
        stats = json.loads((out / shard_name(number, "stats.json")).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if stats.get("count") and not all((out / shard_name(number, s)).is_file() for s in ("tar", "idx")):
        return None
    return stats


# --------------------------------------------------------------------------------------- plan


def _fingerprint(samples: list[tuple[int, Path, Path]]) -> str:
    h = hashlib.sha256()
    for root_number, image, parsing in samples:
        h.update(f"{root_number}\t{image.name}\t{parsing.name}\n".encode())
    return h.hexdigest()


def _probe(samples, order, settings: dict) -> tuple[tuple[int, int], float]:
    """The dataset image size (the most common among the first usable samples of the plan order) and
    the mean bytes a sample takes in a tar, from encoding those samples."""
    sizes, nbytes = Counter(), []
    for i in order[:_PROBE_SAMPLES]:
        loaded = load_sample(samples[i][1], samples[i][2], None)
        if isinstance(loaded, str):
            continue
        sizes[loaded[0].shape[:2]] += 1
        nbytes.append(sum(map(len, encode_sample(*loaded, settings))) + _TAR_OVERHEAD)
    if not sizes:
        raise UsageError(f"none of the first {min(len(order), _PROBE_SAMPLES)} samples is readable; "
                         "check the source folders")
    return tuple(int(x) for x in sizes.most_common(1)[0][0]), float(np.mean(nbytes))


def make_plan(args, samples: list[tuple[int, Path, Path]]) -> dict:
    """The shard assignment and settings, read from ``plan.json`` when a previous run made one."""
    settings = {"image_ext": "png" if args.png else "jpg", "quality": args.quality,
                "subsampling": args.subsampling, "seed": args.seed,
                "shard_size_mb": args.shard_size_mb, "samples_per_shard": args.samples_per_shard,
                "image_size": list(args.image_size) if args.image_size else None}
    wanted = {"version": PLAN_VERSION, "fingerprint": _fingerprint(samples), "num_samples": len(samples),
              "sources": [str(r.resolve()) for r in args.roots], "settings": settings}
    path = args.out / PLAN_NAME
    if path.is_file():
        plan = json.loads(path.read_text(encoding="utf-8"))
        if {k: plan.get(k) for k in wanted} != wanted:
            raise UsageError(f"{args.out} holds shards of other sources or settings ({path}); "
                             "use another --out, or delete that folder to start over")
        return plan
    order = np.random.default_rng(args.seed).permutation(len(samples))
    size, sample_bytes = _probe(samples, order, settings)
    per_shard = args.samples_per_shard or max(1, int(args.shard_size_mb * 2**20 // sample_bytes))
    plan = dict(wanted, image_size=list(args.image_size or size), samples_per_shard=per_shard,
                order=order.tolist())
    _write_json(path, plan)
    return plan


def _write_json(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def shard_jobs(out: Path, plan: dict, samples, keys) -> list[tuple]:
    settings = dict(plan["settings"], image_size=plan["image_size"])
    order, per = plan["order"], plan["samples_per_shard"]
    jobs = []
    for number, start in enumerate(range(0, len(order), per)):
        members = [(str(samples[i][1]), str(samples[i][2]), keys[i]) for i in order[start:start + per]]
        jobs.append((str(out), number, members, settings))
    return jobs


# ----------------------------------------------------------------------------------------- run


def _run_jobs(jobs: list[tuple], workers: int, total: int, done: int) -> list[dict]:
    from tqdm import tqdm

    results = []
    with tqdm(total=total, initial=done, unit="img", desc="make_shards", dynamic_ncols=True,
              disable=None) as bar:
        def record(result, job):
            results.append(result)
            bar.update(len(job[2]))
            bar.set_postfix(shards=len(results), failed=sum("error" in r for r in results))

        if workers > 1 and len(jobs) > 1:
            # fork: workers start without re-importing torch
            method = "fork" if "fork" in get_all_start_methods() else None
            with get_context(method).Pool(min(workers, len(jobs))) as pool:
                by_number = {job[1]: job for job in jobs}
                for result in pool.imap_unordered(_run_job, jobs, chunksize=1):
                    record(result, by_number[result["shard"]])
        else:
            for job in jobs:
                record(_run_job(job), job)
    return results


def _totals(all_stats: list[dict]) -> tuple[np.ndarray, dict, list[dict]]:
    """Label histogram, pixel sums and the shard list over the finished shards, in shard order."""
    labels = np.zeros(NUM_LABELS, np.int64)
    pixels = {"count": 0, "sum": np.zeros(3, np.int64), "sum_sq": np.zeros(3, np.int64)}
    shards = []
    for stats in sorted(all_stats, key=lambda s: s["shard"]):
        if not stats["count"]:
            continue
        labels += np.asarray(stats["label_histogram"], np.int64)
        pixels["count"] += stats["pixel_stats"]["count"]
        for k in ("sum", "sum_sq"):
            pixels[k] += np.asarray(stats["pixel_stats"][k], np.int64)
        shards.append({"tar": shard_name(stats["shard"], "tar"), "index": shard_name(stats["shard"], "idx"),
                       "count": stats["count"]})
    return labels, pixels, shards


def write_manifest(out: Path, plan: dict, all_stats: list[dict], missing: list[Path]) -> dict:
    """dataset.json and skipped.tsv from the finished shards' records."""
    labels, pixels, shards = _totals(all_stats)
    skipped = [[str(m), "no parsing map"] for m in missing]
    skipped += [line for stats in sorted(all_stats, key=lambda s: s["shard"]) for line in stats["skipped"]]
    (out / REPORT_NAME).write_text("path\treason\n" + "".join(f"{p}\t{r}\n" for p, r in skipped), encoding="utf-8")
    n = max(pixels["count"], 1)
    mean = pixels["sum"] / n
    std = np.sqrt(np.maximum(pixels["sum_sq"] / n - mean * mean, 0.0))
    settings = plan["settings"]
    jpeg = settings["image_ext"] == "jpg"
    manifest = {
        "format": FORMAT, "count": sum(s["count"] for s in shards), "image_size": plan["image_size"],
        "image_ext": settings["image_ext"], "map_ext": MAP_EXT,
        "jpeg_quality": settings["quality"] if jpeg else None,
        "jpeg_subsampling": settings["subsampling"] if jpeg else None,
        "label_histogram": labels.tolist(), "mean": (mean / 255.0).tolist(), "std": (std / 255.0).tolist(),
        "pixel_stats": {"count": pixels["count"], "sum": pixels["sum"].tolist(), "sum_sq": pixels["sum_sq"].tolist()},
        "skipped": len(skipped), "skipped_report": REPORT_NAME, "sources": plan["sources"],
        "seed": settings["seed"], "samples_per_shard": plan["samples_per_shard"], "shards": shards,
    }
    _write_json(out / MANIFEST_NAME, manifest)
    return manifest


def convert(args: argparse.Namespace) -> dict:
    """The whole conversion; returns dataset.json's content, or raises UsageError when shards failed."""
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("*.tmp"):  # pieces of a killed run
        stale.unlink()
    samples, missing = [], []
    for number, root in enumerate(args.roots_resolved):
        pairs, lacking = scan_reference_layout([root])
        samples += [(number, image, parsing) for image, parsing in pairs]
        missing += lacking
    if not samples:
        raise UsageError(f"no image with a parsing map under {[str(r) for r in args.roots]}")
    plan = make_plan(args, samples)
    jobs = shard_jobs(out, plan, samples, _sample_keys(samples))
    finished = {job[1]: read_finished(out, job[1]) for job in jobs}
    todo = [job for job in jobs if finished[job[1]] is None]
    done = sum(len(job[2]) for job in jobs if finished[job[1]] is not None)
    print(f"make_shards: {len(samples)} samples -> {len(jobs)} shard{'s' if len(jobs) != 1 else ''} of up to "
          f"{plan['samples_per_shard']} samples each in {out} ({len(jobs) - len(todo)} already finished)",
          file=sys.stderr)
    failed = []
    for result in _run_jobs(todo, cli.workers_for(args.workers), len(samples), done):
        if "error" in result:
            failed.append(result)
        else:
            finished[result["shard"]] = result
    if failed:
        for f in failed:
            print(f"make_shards: shard {f['shard']} failed: {f['error']}", file=sys.stderr)
        raise UsageError(f"{len(failed)} shard(s) failed (listed above); the others are finished. "
                         "Fix the cause and run the same command again to complete the conversion.")
    return write_manifest(out, plan, list(finished.values()), missing)


def check_args(args: argparse.Namespace) -> None:
    """Every flag and path, before any work: the sources exist and have the reference layout, and a
    file can be written in --out."""
    for root in args.roots:
        if not root.exists():
            raise UsageError(f"source folder {root} does not exist")
        if not (root / "images").is_dir():
            raise UsageError(f"source folder {root} has no images/ folder (expected the reference layout "
                             "<root>/images/*.png + <root>/parsing_maps/*.npy)")
    cli.ensure_writable_dir(args.out, "--out")


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    args.roots = as_roots(args.roots)
    check_args(args)
    args.roots_resolved = [r.resolve() for r in args.roots]
    start = time.perf_counter()
    manifest = convert(args)
    elapsed = time.perf_counter() - start
    print(f"make_shards: {manifest['count']} samples in {len(manifest['shards'])} shards, "
          f"{manifest['skipped']} skipped (listed in {args.out / REPORT_NAME}), {elapsed:.1f} s", file=sys.stderr)
    return 0

