"""One full FSFM-3C training step, fused ops against the reference path.

A step is what fsfm_fast.pretrain does per batch once the masks exist: the target network's
forward (no grad), the online forward with the 3C loss, backward, AdamW, and the EMA update of
the target. Paths:
- reference: the online network with `ops_backend="torch"` (what `--ops torch` runs);
- fused: `ops_backend="auto"`, the Triton kernels on a CUDA GPU. On a CPU, "auto" keeps the
  reference ops, so there the fused path only differs by the model's fused-path order (pixel
  decoder embedding applied before the restore);
- either with "-compiled": both networks under torch.compile.
Each path runs in its own process, so peak memory and compile caches do not leak between them.

Reported: img/s, step time, model FLOPs per step (counted with torch.utils.flop_counter on the
reference formulation, so every path is credited the same work), achieved TFLOP/s, model FLOPs
utilisation where the device's peak is known (or given with --peak-tflops), peak memory (CUDA:
max allocated; CPU: the process's peak RSS).

    python benchmarks/bench_step.py                           # GPU: ViT-B, 224 px, batch 256, bf16
    python benchmarks/bench_step.py --paths reference,fused,fused-compiled --json step.json
    python benchmarks/bench_step.py --quick                   # the GPU check's run (see --help)
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# Dense 16-bit tensor-core peaks (TFLOP/s) of the GPUs this project targets.
PEAK_TFLOPS = {"H100 PCIe": 756.0, "H100": 989.4, "H200": 989.4, "A100": 312.0}
PATHS = ("reference", "fused", "reference-compiled", "fused-compiled")


def parse_args(argv=None):
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default="fsfm_vit_base_patch16" if cuda else "fsfm_vit_tiny_patch16")
    p.add_argument("--img-size", type=int, default=224 if cuda else 112)
    p.add_argument("--batch", type=int, default=256 if cuda else 16)
    p.add_argument("--precision", default="bf16" if cuda else "fp32",
                   choices=["fp32", "bf16", "fp16"], help="autocast dtype (fp32: none)")
    p.add_argument("--paths", default="reference,fused", help="comma-separated subset of "
                   + ",".join(PATHS))
    p.add_argument("--steps", type=int, default=20 if cuda else 5)
    p.add_argument("--warmup", type=int, default=5 if cuda else 2)
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="device peak for MFU when it is not in the built-in table")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--worker", choices=PATHS, default=None, help=argparse.SUPPRESS)
    p.add_argument("--quick", action="store_true",
                   help="what benchmarks/gpu_check.sh runs: on a GPU the defaults (ViT-B/16, 224 px, batch "
                        "256, bf16, reference vs fused) with 3 warm-up and 10 timed steps; on a CPU a tiny "
                        "model at 32 px, batch 2, one step per path, to prove the script runs")
    args = p.parse_args(argv)
    if args.quick:  # the workers get the flag too
        args.steps, args.warmup = (10, 3) if cuda else (1, 0)
        if not cuda:
            args.model, args.img_size, args.batch = "fsfm_vit_tiny_patch16", 32, 2
    return args


# --------------------------------------------------------------------------- one path (worker)

def _batches(args, device, count=2):
    """A few fixed batches: images, hidden-patch mask (75%), region mask, distinct per batch."""
    from fsfm_fast.ops import reference
    g = torch.Generator().manual_seed(0)
    num_patches = (args.img_size // 16) ** 2
    num_mask = reference.num_masked(0.75, num_patches)
    out = []
    for _ in range(count):
        rank = torch.rand(args.batch, num_patches, generator=g).argsort(1).argsort(1)
        img_mask = rank < num_mask
        fr_mask = rank < max(1, num_mask // 4)
        images = torch.randn(args.batch, 3, args.img_size, args.img_size, generator=g)
        out.append(tuple(t.to(device) for t in (images, img_mask, fr_mask)))
    return out


def _build(args, path, device):
    from timm.optim import param_groups_weight_decay

    from fsfm_fast.models import TargetNetwork, create_online
    torch.manual_seed(0)
    backend = "torch" if path.startswith("reference") else "auto"
    online = create_online(args.model, img_size=args.img_size, ops_backend=backend).to(device)
    target = TargetNetwork.from_online(online)
    groups = param_groups_weight_decay(online, 0.05)
    fused_adam = device.type == "cuda"
    optimizer = torch.optim.AdamW(groups, lr=1.5e-4, betas=(0.9, 0.95), fused=fused_adam,
                                  foreach=None if fused_adam else True)
    return online, target, optimizer


def _step_fn(online, target, optimizer, args, device, compiled: bool):
    from fsfm_fast import ops
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.precision)
    autocast = torch.autocast(device.type, dtype=dtype) if dtype else nullcontext()
    pairs = target.ema_pairs(online)
    run_online, run_target = online, target
    if compiled:
        run_online, run_target = torch.compile(online), torch.compile(target)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype is torch.float16)

    def step(images, img_mask, fr_mask, update=True):
        with autocast:
            with torch.no_grad():
                features = run_target(images)
            out = run_online(images, img_mask, fr_mask, target_features=features)
        scaler.scale(out.loss).backward()
        if update:
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            ops.ema_update(*pairs, 0.996)
        return out.loss

    return step


def _model_flops(online, step, batch):
    """FLOPs of one step in the reference formulation (Triton custom ops are opaque to the
    counter, and the fused path does slightly less work: the reference's count is the model's)."""
    from torch.utils.flop_counter import FlopCounterMode
    backend = online.ops_backend
    online.ops_backend = "torch"
    try:
        with FlopCounterMode(display=False) as counter:
            step(*batch, update=False)
    finally:
        online.ops_backend = backend
        online.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_worker(args):
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    online, target, optimizer = _build(args, args.worker, device)
    batches = _batches(args, device)
    step = _step_fn(online, target, optimizer, args, device, args.worker.endswith("compiled"))
    for i in range(args.warmup):
        step(*batches[i % len(batches)])
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for i in range(args.steps):
        t0 = time.perf_counter()
        loss = step(*batches[i % len(batches)])
        _sync(device)
        times.append(time.perf_counter() - t0)
    if device.type == "cuda":
        peak_mb = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    # Counted after the timing: an eager step run before torch.compile's first call was seen to
    # slow the compiled steps that follow it several times over on the CPU.
    flops = _model_flops(online, _step_fn(online, target, optimizer, args, device, False),
                         batches[0])
    seconds = statistics.median(times)
    print(json.dumps(dict(path=args.worker, step_ms=seconds * 1e3, img_s=args.batch / seconds,
                          flops=flops, tflops=flops / seconds / 1e12, peak_mb=peak_mb,
                          loss=float(loss.detach()))))


# --------------------------------------------------------------------------- parent

def _peak(args, device_name):
    if args.peak_tflops:
        return args.peak_tflops
    if args.precision == "fp32" or device_name is None:
        return None
    for key, value in PEAK_TFLOPS.items():  # "H100 PCIe" is listed before "H100"
        if key in device_name:
            return value
    return None


def _run_in_process(args, path):
    """A path in this process: on a CPU in --quick mode, where separate peak-memory figures do not
    matter and two more interpreter start-ups would be most of the time."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        run_worker(argparse.Namespace(**{**vars(args), "worker": path}))
    return json.loads(out.getvalue().strip().splitlines()[-1])


def _run_path(argv, path):
    cmd = [sys.executable, str(Path(__file__).resolve()), *argv, "--worker", path]
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        sys.exit(f"bench_step: path {path} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def report(args, rows, device_name):
    peak = _peak(args, device_name)
    base = next((r for r in rows if r["path"] == "reference"), None)
    head = (f"{'path':<20}{'img/s':>10}{'step ms':>10}{'GFLOP/step':>12}{'TFLOP/s':>9}"
            f"{'MFU':>7}{'peak MB':>10}{'x reference':>12}")
    lines = [head, "-" * len(head)]
    for r in rows:
        r["mfu"] = r["tflops"] / peak if peak else None
        r["x_reference"] = r["img_s"] / base["img_s"] if base else None
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a"
        ratio = f"{r['x_reference']:.2f}" if r["x_reference"] is not None else "n/a"
        lines.append(f"{r['path']:<20}{r['img_s']:>10.1f}{r['step_ms']:>10.1f}"
                     f"{r['flops'] / 1e9:>12.1f}{r['tflops']:>9.3f}{mfu:>7}{r['peak_mb']:>10.0f}"
                     f"{ratio:>12}")
    return "\n".join(lines)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.worker:
        run_worker(args)
        return
    cuda = torch.cuda.is_available()
    device_name = torch.cuda.get_device_name() if cuda else None
    print(f"bench_step: {args.model}, {args.img_size} px, batch {args.batch}, {args.precision}, "
          f"on {device_name or f'CPU ({torch.get_num_threads()} threads)'}, torch {torch.__version__}")
    if not cuda:
        print("No CUDA GPU: the Triton kernels are not run; 'fused' here is the fused-path model "
              "order with the reference ops (see the module docstring).")
        print(f"CPU load average before the run: {os.getloadavg()[0]:.1f} "
              f"(timings are only comparable on an otherwise idle machine)")
    in_process = args.quick and not cuda
    rows = [_run_in_process(args, path) if in_process else _run_path(argv, path) for path in args.paths.split(",")]
    print(report(args, rows, device_name))
    print("FLOPs: torch.utils.flop_counter on the reference formulation; peak MB: "
          + ("CUDA max allocated" if cuda else "process peak RSS"))
    if args.json:
        args.json.write_text(json.dumps(dict(model=args.model, img_size=args.img_size,
                                             batch=args.batch, precision=args.precision,
                                             device=device_name or "cpu",
                                             torch=torch.__version__, command=" ".join(sys.argv),
                                             rows=rows), indent=1))


if __name__ == "__main__":
    main()
