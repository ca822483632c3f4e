"""Microbenchmark of gather_visible, restore_masked and fsfm_loss at ViT-S/B/L training shapes.

For each op, model size and batch: forward and forward+backward time of the eager reference
(fsfm_fast.ops.reference), of torch.compile of that reference, and of the Triton kernels, with
the achieved memory bandwidth (the bytes the op must move at least, over the time) and the
speed-ups of Triton against the other two, in one table.

The Triton kernels need a CUDA GPU: on a CPU (where they only run in the Triton interpreter, a
correctness tool) the table compares the eager reference with torch.compile of it, and says so.

    python benchmarks/bench_ops.py                       # every op, S/B/L, batch 64 and 256
    python benchmarks/bench_ops.py --models B --batches 256 --json ops.json
    python benchmarks/bench_ops.py --quick               # the GPU check's run: ViT-B, 256, eager vs Triton

Inputs are in --dtype (bf16 on CUDA, fp32 on CPU by default); masks hide 75% of the patches with
a quarter of those in the facial region; the public ops' input checks are left out of every
timing (they are the same for all three).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from fsfm_fast.ops import reference  # noqa: E402

MODELS = {"T": 64, "S": 384, "B": 768, "L": 1024}  # encoder width; patch 16, 224 px, 196 patches
PATCH, IMG, FEAT = 16, 224, 256
NUM_PATCHES = (IMG // PATCH) ** 2
KEEP = NUM_PATCHES // 4
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Row:
    op: str
    model: str
    batch: int
    impl: str
    fwd_ms: float
    fwd_bwd_ms: float
    fwd_gbs: float
    fwd_bwd_gbs: float
    x_vs_eager: float = float("nan")
    x_vs_compile: float = float("nan")


# --------------------------------------------------------------------------- inputs

def _masks(batch, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    rank = torch.rand(batch, NUM_PATCHES, generator=g).argsort(1).argsort(1)
    img_mask = rank >= KEEP
    fr_mask = rank >= NUM_PATCHES - (NUM_PATCHES - KEEP) // 4
    return img_mask.to(device), fr_mask.to(device)


def _ids(img_mask):
    hidden = img_mask.to(torch.int8)
    shuffle = hidden.argsort(dim=1, stable=True)
    return shuffle[:, :KEEP].contiguous(), shuffle.argsort(dim=1).contiguous()


def gather_case(dim, batch, dtype, device):
    """Encoder input: images, visible ids, patch-embed weight and bias (trained), pos (frozen)."""
    images = torch.randn(batch, 3, IMG, IMG, device=device, dtype=dtype)
    weight = (torch.randn(dim, 3, PATCH, PATCH, device=device) * 0.02).to(dtype).requires_grad_()
    bias = torch.zeros(dim, device=device, dtype=dtype, requires_grad=True)
    pos = torch.randn(NUM_PATCHES, dim, device=device, dtype=dtype)
    ids_keep, _ = _ids(_masks(batch, device)[0])
    size = torch.finfo(dtype).bits // 8
    pixels = batch * KEEP * 3 * PATCH * PATCH
    fwd = size * (pixels + weight.numel() + 2 * batch * KEEP * dim)
    bwd = size * (batch * KEEP * dim + pixels + weight.numel())
    return (images, ids_keep, weight, bias, pos), (weight, bias), fwd, bwd


def restore_case(dim, batch, dtype, device):
    """Rep decoder input: cls + visible tokens (trained), ids_restore, mask_token, pos (frozen)."""
    tokens = torch.randn(batch, KEEP + 1, dim, device=device, dtype=dtype, requires_grad=True)
    fill = torch.randn(1, 1, dim, device=device, dtype=dtype, requires_grad=True)
    pos = torch.randn(NUM_PATCHES + 1, dim, device=device, dtype=dtype)
    _, ids_restore = _ids(_masks(batch, device)[0])
    size = torch.finfo(dtype).bits // 8
    full, kept = batch * (NUM_PATCHES + 1) * dim, batch * (KEEP + 1) * dim
    index = 8 * batch * NUM_PATCHES
    fwd = size * (kept + full + pos.numel()) + index
    bwd = size * (full + kept) + index
    return (tokens, ids_restore, fill, pos), (tokens, fill), fwd, bwd


def loss_case(dim, batch, dtype, device):
    """Pixel prediction (a [:, 1:] slice, as the decoder gives it), images, masks, features."""
    width = PATCH * PATCH * 3
    pred_full = torch.randn(batch, NUM_PATCHES + 1, width, device=device, dtype=dtype)
    pred = pred_full[:, 1:].requires_grad_()
    images = torch.randn(batch, 3, IMG, IMG, device=device, dtype=dtype)
    img_mask, fr_mask = _masks(batch, device)
    online = torch.randn(batch, FEAT, device=device, dtype=dtype, requires_grad=True)
    target = torch.randn(batch, FEAT, device=device, dtype=dtype)
    size = torch.finfo(dtype).bits // 8
    hidden = batch * (NUM_PATCHES - KEEP) * width
    fwd = size * 2 * hidden + 2 * batch * NUM_PATCHES
    bwd = size * (2 * hidden + batch * NUM_PATCHES * width)
    return (pred, images, img_mask, fr_mask, online, target), (pred, online), fwd, bwd


# --------------------------------------------------------------------------- implementations

def _loss_reference(pred, images, img_mask, fr_mask, online, target):
    return reference.fsfm_loss(pred, images, img_mask, fr_mask, online, target,
                               patch_size=PATCH).total


def _loss_triton(pred, images, img_mask, fr_mask, online, target):
    from fsfm_fast.ops import triton_loss
    return triton_loss.fsfm_loss(pred, images, img_mask, fr_mask, online, target, PATCH, True,
                                 0.007, 0.1, "simsiam")[0]


def _gather_triton(*args):
    from fsfm_fast.ops import triton_gather
    return triton_gather.gather_visible(*args)


def _restore_triton(*args):
    from fsfm_fast.ops import triton_restore
    return triton_restore.restore_masked(*args)


OPS = {
    "gather_visible": (gather_case, reference.gather_visible, _gather_triton),
    "restore_masked": (restore_case, reference.restore_masked, _restore_triton),
    "fsfm_loss": (loss_case, _loss_reference, _loss_triton),
}


# --------------------------------------------------------------------------- timing

def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_ms(fn, device, warmup, iters):
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(iters):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def measure(fn, args, trained, device, warmup, iters):
    """(forward ms, forward+backward ms); the backward takes the gradients the model would."""
    def forward():
        with torch.no_grad():
            fn(*args)

    def forward_backward():
        out = fn(*args)
        torch.autograd.grad(out, trained, torch.ones_like(out))

    return (median_ms(forward, device, warmup, iters),
            median_ms(forward_backward, device, warmup, iters))


def bench_one(op, model, batch, impls, dtype, device, warmup, iters):
    case, ref_fn, triton_fn = OPS[op]
    args, trained, fwd_bytes, bwd_bytes = case(MODELS[model], batch, dtype, device)
    fns = {"eager": ref_fn, "compile": torch.compile(ref_fn, dynamic=False), "triton": triton_fn}
    rows = []
    label = "any" if op == "fsfm_loss" else model
    for impl in impls:
        fwd, both = measure(fns[impl], args, trained, device, warmup, iters)
        rows.append(Row(op, label, batch, impl, fwd, both, fwd_bytes / fwd / 1e6,
                        (fwd_bytes + bwd_bytes) / both / 1e6))
    times = {r.impl: r.fwd_bwd_ms for r in rows}
    for r in rows:
        r.x_vs_eager = times["eager"] / r.fwd_bwd_ms if "eager" in times else float("nan")
        r.x_vs_compile = times["compile"] / r.fwd_bwd_ms if "compile" in times else float("nan")
    return rows


# --------------------------------------------------------------------------- report

def table(rows):
    head = (f"{'op':<15}{'model':>6}{'batch':>6}{'impl':>9}{'fwd ms':>10}{'f+b ms':>10}"
            f"{'fwd GB/s':>10}{'f+b GB/s':>10}{'x eager':>9}{'x compile':>10}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r.op:<15}{r.model:>6}{r.batch:>6}{r.impl:>9}{r.fwd_ms:>10.3f}"
                     f"{r.fwd_bwd_ms:>10.3f}{r.fwd_gbs:>10.1f}{r.fwd_bwd_gbs:>10.1f}"
                     f"{r.x_vs_eager:>9.2f}{r.x_vs_compile:>10.2f}")
    return "\n".join(lines)


def environment(device, dtype):
    env = dict(device=torch.cuda.get_device_name(device) if device.type == "cuda"
               else f"CPU ({platform.processor() or platform.machine()}, "
                    f"{torch.get_num_threads()} threads)",
               torch=torch.__version__, cuda=torch.version.cuda, dtype=str(dtype),
               command=" ".join(sys.argv))
    try:
        import triton
        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    return env


def parse_args(argv=None):
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--ops", default=",".join(OPS), help="comma-separated subset of " + ",".join(OPS))
    p.add_argument("--models", default="S,B,L", help="comma-separated subset of S,B,L")
    p.add_argument("--batches", default="64,256")
    p.add_argument("--dtype", default="bf16" if cuda else "fp32", choices=list(DTYPES))
    p.add_argument("--impls", default=None,
                   help="comma-separated subset of eager,compile,triton (default: all this "
                        "device can time)")
    p.add_argument("--warmup", type=int, default=5 if cuda else 2)
    p.add_argument("--iters", type=int, default=50 if cuda else 5)
    p.add_argument("--json", type=Path, default=None, help="also write the rows here")
    p.add_argument("--quick", action="store_true",
                   help="what benchmarks/gpu_check.sh runs: on a GPU every op at ViT-B, batch 256, in "
                        "--dtype, eager against Triton (torch.compile left out for time), 20 timed "
                        "iterations; on a CPU tiny shapes (width 64, batch 2), eager only, to prove the "
                        "script runs")
    args = p.parse_args(argv)
    if args.quick:
        cuda = torch.cuda.is_available()
        args.models, args.batches = ("B", "256") if cuda else ("T", "2")
        args.impls = "eager,triton" if cuda else "eager"
        args.warmup, args.iters = (3, 20) if cuda else (0, 1)
    return args


def main(argv=None):
    args = parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = DTYPES[args.dtype]
    impls = args.impls.split(",") if args.impls else (
        ["eager", "compile", "triton"] if device.type == "cuda" else ["eager", "compile"])
    if "triton" in impls and device.type != "cuda":
        sys.exit("bench_ops: timing the Triton kernels needs a CUDA GPU")
    env = environment(device, dtype)
    print(f"bench_ops on {env['device']}, torch {env['torch']}, triton {env['triton']}, "
          f"{args.dtype}")
    if device.type != "cuda":
        print("No CUDA GPU: the Triton kernels are not timed (on a CPU they only run in the "
              "Triton interpreter); this compares the eager reference with torch.compile of it.")
        print(f"CPU load average before the run: {os.getloadavg()[0]:.1f} "
              f"(timings are only comparable on an otherwise idle machine)")
    rows = []
    for op in args.ops.split(","):
        models = args.models.split(",")
        if op == "fsfm_loss":  # its shapes depend on the patch size only, not the model width
            models = models[:1]
        for model in models:
            for batch in (int(b) for b in args.batches.split(",")):
                rows += bench_one(op, model, batch, impls, dtype, device, args.warmup, args.iters)
                print(table(rows[-len(impls):]).split("\n", 2)[-1], flush=True)
    print()
    print(table(rows))
    print("GB/s: the bytes each op must move at least (visible pixels, tokens, hidden patches, "
          "outputs, gradients), over the time; 'x eager' / 'x compile': forward+backward speed-up.")
    if args.json:
        args.json.write_text(json.dumps(dict(environment=env, rows=[asdict(r) for r in rows]),
                                        indent=1))


if __name__ == "__main__":
    main()
