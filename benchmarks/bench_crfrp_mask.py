"""Microbenchmark of CRFR-P mask generation: masks per second for each available backend.

Backends, all measured in one run on the same synthetic 224x224 parsing maps (patch 16, ratio
0.75, region drawn once per batch):
  collate    the per-sample algorithm a data loader's collate function runs today, written here
             from SPEC section 2: a Python loop over images, one max-pool over the full-resolution
             map per label group, torch.randperm for every random choice (the baseline, 1.0x);
             on one thread, as in a DataLoader worker (torch sets workers to one thread)
  reference  fsfm_fast.ops.reference.crfrp_mask (batched PyTorch), on the CPU and on CUDA
  cpu        the compiled C++ twin, with all of torch's CPU threads, and with one thread
             (what one data-loader worker gets)
  cuda       the compiled CUDA kernel (one launch per batch)

    python benchmarks/bench_crfrp_mask.py                    # batches 1..1024
    python benchmarks/bench_crfrp_mask.py --quick            # batches 16, 256 (a CPU: 1, 16)
    python benchmarks/bench_crfrp_mask.py --json crfrp.json

Times are medians over repeated calls of the op itself (input checks included, as a caller
pays them); CUDA times wait for the device, and the cuda rows add the kernel's own device time
("kernel us", from the profiler).
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from fsfm_fast import _ext, ops  # noqa: E402
from fsfm_fast.data.synthetic import render_face  # noqa: E402

IMG, PATCH, RATIO = 224, 16, 0.75
UNIQUE_FACES = 64  # rendered once, tiled to the batch


@dataclass
class Row:
    batch: int
    backend: str
    ms_per_batch: float
    masks_per_s: float
    x_vs_collate: float = float("nan")
    x_vs_reference_cpu: float = float("nan")
    kernel_us: float = float("nan")  # cuda: device time of the kernel alone


# --------------------------------------------------------------------------- the baseline

# SPEC section 2's groups as label sets; "boundary" is computed from skin, hair and background.
_GROUPS = [(2, 3), (4, 5), (6,), (7, 8, 9), None, (10,), (1,), (0,)]


def _touch_one(parsing_hw: torch.Tensor, patch: int) -> list[torch.Tensor]:
    """Per group, bool [L]: does any pixel of the patch carry one of the group's labels
    (a max-pool of the full-resolution indicator map, as the collate code does)."""
    def pooled(labels):
        hit = torch.zeros_like(parsing_hw, dtype=torch.float32)
        for label in labels:
            hit = torch.maximum(hit, (parsing_hw == label).float())
        return F.max_pool2d(hit[None, None], patch, patch).flatten() > 0

    touch = [pooled(labels) if labels is not None else None for labels in _GROUPS]
    touch[4] = touch[6] & (touch[5] | touch[7])
    return touch


def _random_subset(candidates: torch.Tensor, k: int) -> torch.Tensor:
    index = candidates.nonzero().flatten()
    chosen = torch.zeros_like(candidates)
    chosen[index[torch.randperm(index.numel())[:k]]] = True
    return chosen


def _collate_one(parsing_hw: torch.Tensor, region: int, patch: int, ratio: float):
    touch = _touch_one(parsing_hw, patch)
    L = touch[0].numel()
    M = int(ratio * L)
    fr = touch[region].clone()
    n_fr = int(fr.sum())
    if n_fr >= M:
        kept = fr & ~_random_subset(fr, n_fr - M)
        return kept, kept
    share = (M - n_fr) / (L - n_fr)
    img_mask, claimed = fr.clone(), fr.clone()
    for g, group in enumerate(touch):
        if g == region:
            continue
        cand = group & ~claimed
        img_mask |= _random_subset(cand, round(share * int(cand.sum())))
        claimed |= cand
    count = int(img_mask.sum())
    if count < M:
        img_mask |= _random_subset(~img_mask, M - count)
    elif count > M:
        img_mask &= ~_random_subset(img_mask & ~fr, count - M)
    return img_mask, fr


def collate_masks(parsing: torch.Tensor, patch: int = PATCH, ratio: float = RATIO):
    """The collate-style baseline: one region per batch, then image after image."""
    region = int(torch.randint(0, 6, ()))
    rows = [_collate_one(parsing[b], region, patch, ratio) for b in range(parsing.shape[0])]
    return torch.stack([r[0] for r in rows]), torch.stack([r[1] for r in rows])


# --------------------------------------------------------------------------- timing

def _faces(batch: int) -> torch.Tensor:
    unique = np.stack([render_face(np.random.default_rng([7, i]), IMG)[1]
                       for i in range(min(batch, UNIQUE_FACES))])
    reps = -(-batch // unique.shape[0])
    return torch.from_numpy(np.tile(unique, (reps, 1, 1))[:batch]).contiguous()


def _median_seconds(fn, sync, min_time: float, min_reps: int) -> float:
    fn()
    sync()  # warm-up: lazy init, allocator, caches
    times, start = [], time.perf_counter()
    while len(times) < min_reps or time.perf_counter() - start < min_time:
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
        if len(times) >= 10_000:
            break
    return statistics.median(times)


def _cuda_seconds(fn, min_time: float, min_reps: int) -> float:
    # Events time the device work back to back; one sync per measurement.
    fn()
    torch.cuda.synchronize()
    reps = max(min_reps, 10)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    samples, t_wall = [], time.perf_counter()
    while len(samples) < 5 or time.perf_counter() - t_wall < min_time:
        start.record()
        for _ in range(reps):
            fn()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end) / 1e3 / reps)
    return statistics.median(samples)


def _kernel_seconds(fn, calls: int = 20) -> float:
    """Median device time of the mask kernel alone (CUPTI, through torch.profiler): the op's
    end-to-end time above also holds its host work and the label check's reduction and sync."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    times = [e.device_time_total for e in prof.events() if "crfrp_mask_kernel" in e.name]
    return statistics.median(times) / 1e6 if times else float("nan")


class _Threads:
    def __init__(self, n):
        self.n, self.saved = n, torch.get_num_threads()

    def __enter__(self):
        torch.set_num_threads(self.n)

    def __exit__(self, *exc):
        torch.set_num_threads(self.saved)


def backends(cuda: bool):
    """name -> (make callable for a CPU parsing batch, device kind)."""
    out = {"collate": (lambda x: (lambda: collate_masks(x)), "cpu1"),
           "reference-cpu": (lambda x: (lambda: ops.crfrp_mask(x, PATCH, RATIO,
                                                               backend="torch")), "cpu")}
    if _ext.has_extension():
        out["cpu-twin"] = (lambda x: (lambda: ops.crfrp_mask(x, PATCH, RATIO, backend="cpu")),
                           "cpu")
        out["cpu-twin-1t"] = (lambda x: (lambda: ops.crfrp_mask(x, PATCH, RATIO, backend="cpu")),
                              "cpu1")
    if cuda:
        out["reference-cuda"] = (lambda x: (lambda: ops.crfrp_mask(x, PATCH, RATIO,
                                                                   backend="torch")), "cuda")
        if _ext.cuda_built():
            out["cuda"] = (lambda x: (lambda: ops.crfrp_mask(x, PATCH, RATIO, backend="cuda")),
                           "cuda")
    return out


def measure(batches, names, min_time, quick) -> list[Row]:
    cuda = torch.cuda.is_available()
    table = backends(cuda)
    rows = []
    for batch in batches:
        x = _faces(batch)
        for name in names:
            make, kind = table[name]
            if name == "collate" and batch > 256 and quick:
                continue
            kernel = float("nan")
            if kind == "cuda":
                fn = make(x.cuda())
                seconds = _cuda_seconds(fn, min_time, 3)
                if name == "cuda":
                    kernel = _kernel_seconds(fn)
            elif kind == "cpu1":
                with _Threads(1):
                    seconds = _median_seconds(make(x), lambda: None, min_time,
                                              1 if name == "collate" else 3)
            else:
                seconds = _median_seconds(make(x), lambda: None, min_time, 3)
            rows.append(Row(batch, name, seconds * 1e3, batch / seconds,
                            kernel_us=kernel * 1e6))
            print(f"  batch {batch:5d}  {name:15s} {seconds * 1e3:10.3f} ms", file=sys.stderr,
                  flush=True)
    _add_ratios(rows)
    return rows


def _add_ratios(rows):
    by_batch = {}
    for r in rows:
        by_batch.setdefault(r.batch, {})[r.backend] = r
    for group in by_batch.values():
        for r in group.values():
            if "collate" in group:
                r.x_vs_collate = r.masks_per_s / group["collate"].masks_per_s
            if "reference-cpu" in group:
                r.x_vs_reference_cpu = r.masks_per_s / group["reference-cpu"].masks_per_s


def render(rows, env) -> str:
    lines = [f"CRFR-P masks, {IMG}x{IMG} patch {PATCH} ratio {RATIO}: {env['device']}, "
             f"torch {env['torch']}, {env['cpu_threads']} CPU threads",
             "",
             "| batch | backend | ms / batch | masks / s | x collate | x reference (CPU) "
             "| kernel us |",
             "| ---: | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r.batch} | {r.backend} | {r.ms_per_batch:.3f} | {r.masks_per_s:,.0f} | "
                     f"{_fmt(r.x_vs_collate)} | {_fmt(r.x_vs_reference_cpu)} | "
                     f"{_fmt(r.kernel_us)} |")
    return "\n".join(lines)


def _fmt(x: float) -> str:
    return "-" if x != x else f"{x:,.1f}"


def environment() -> dict:
    cuda = torch.cuda.is_available()
    cpu = f"CPU only ({platform.processor() or platform.machine()})"
    return dict(torch=torch.__version__, cuda=torch.version.cuda, python=platform.python_version(),
                device=torch.cuda.get_device_name() if cuda else cpu,
                cpu_threads=torch.get_num_threads(), extension=_ext.has_extension(),
                extension_cuda=_ext.cuda_built())


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--batches", default="1,4,16,64,256,1024")
    p.add_argument("--backends", default=None, help="comma-separated subset (default: all "
                   "available)")
    p.add_argument("--min-time", type=float, default=1.0,
                   help="seconds of repeated calls per measurement")
    p.add_argument("--quick", action="store_true",
                   help="what benchmarks/gpu_check.sh runs: batches 16 and 256 (1 and 16 on a CPU, where "
                        "the collate baseline is slow), 0.1 s per measurement")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads for the multi-threaded rows (default: torch's)")
    p.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = p.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.batches, args.min_time = ("16,256" if torch.cuda.is_available() else "1,16"), 0.1
    available = backends(torch.cuda.is_available())
    names = list(available) if args.backends is None else args.backends.split(",")
    unknown = [n for n in names if n not in available]
    if unknown:
        p.error(f"unavailable backends {unknown}; available here: {list(available)}")
    torch.manual_seed(0)
    env = environment()
    rows = measure([int(b) for b in args.batches.split(",")], names, args.min_time, args.quick)
    print(render(rows, env))
    if args.json:
        args.json.write_text(json.dumps(dict(environment=env, rows=[asdict(r) for r in rows]),
                                        indent=1))


if __name__ == "__main__":
    main()
