"""Fine-tuning step and evaluation throughput (images/s) of a detector, against the reference's way.

A step is what ``fsfm_fast.finetune`` does per batch: Mixup/CutMix, forward, soft-target cross-entropy,
backward, AdamW over timm's layer-decay groups. Evaluation is a batched forward of a test batch that
starts on the host. Two ways of doing each, measured in the same run on the same model:

- ``reference``: what the reference fine-tuning does: AdamW (foreach), fp16 autocast with a
  GradScaler on CUDA; evaluation under ``torch.no_grad`` with fp16 autocast;
- ``fsfm_fast``: fused AdamW, bf16 autocast on CUDA (no scaler); evaluation under
  ``torch.inference_mode`` in bf16, with pinned memory and non-blocking copies.

On a CPU both run in fp32, so their ratio shows only the optimizer and inference-mode differences.
Each way is timed ``--repeats`` times, interleaved with the other, and its fastest run kept (the median
step of each run), so that a busy machine does not favour whichever ran second. The GPU column says "not measured"
when no GPU is at hand.

A second table sets the FS-Adapter (``--adapter fs``: frozen encoder; adapter, projector and head
train, with the real-anchored contrastive loss) against full fine-tuning, both our way: trainable
parameters, training memory and step images/s. Memory on a GPU is the peak allocated during a step; on a
CPU, which has no allocator statistics, it is counted: weights + gradients + optimizer state + the
activations autograd saves for the backward pass.

    python benchmarks/bench_finetune.py                       # ViT-B/16 at 224 px, batch 64 and 256
    python benchmarks/bench_finetune.py --quick --json ft.json   # tiny shapes, seconds on a CPU
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from timm.optim import param_groups_layer_decay

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


from fsfm_fast.finetune.deepfake import _adamw  # noqa: E402
from fsfm_fast.finetune.detectors import DetectionLoss  # noqa: E402
from fsfm_fast.finetune.deepfake import parse_args as finetune_args
from fsfm_fast.models import create_detector  # noqa: E402
from fsfm_fast.models.adapter import freeze_encoder  # noqa: E402

WAYS = ("reference", "fsfm_fast")
TUNINGS = ("full", "fs_adapter")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default="fsfm_vit_base_patch16")
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--batches", default="64,256", help="per-device batch sizes on a GPU")
    p.add_argument("--cpu-batches", default="64", help="batch sizes on the CPU (ViT-B at 256 takes minutes a step)")
    p.add_argument("--steps", type=int, default=None, help="timed iterations (default: 20 on a GPU, 2 on the CPU)")
    p.add_argument("--warmup", type=int, default=None, help="untimed iterations first (default: 5 GPU, 1 CPU)")
    p.add_argument("--repeats", type=int, default=None,
                   help="timed runs of each way, interleaved, the best kept (default: 2; 1 for ViT-B on the CPU)")
    p.add_argument("--devices", default=None, help="cpu,cuda (default: cuda when there is one, else cpu)")
    p.add_argument("--quick", action="store_true", help="tiny model, 32 px, batch 8: a smoke run in seconds")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    if args.quick:
        args.model, args.img_size, args.batches, args.cpu_batches = "fsfm_vit_tiny_patch16", 32, "8", "8"
        args.warmup = 3 if args.warmup is None else args.warmup
        args.steps = 5 if args.steps is None else args.steps
    if args.devices is None:
        args.devices = "cuda" if torch.cuda.is_available() else "cpu"
    return args


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device, warmup: int, steps: int) -> float:
    """Median seconds of ``fn()`` over ``steps`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def optimizer_step(optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler) -> None:
    """The step of an unclipped run (the recipe's --clip_grad 0): through the scaler, then clear."""
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)


def _dtype(way: str, device: torch.device) -> torch.dtype | None:
    if device.type != "cuda":
        return None
    return torch.float16 if way == "reference" else torch.bfloat16


def measure_step(args, device: torch.device, batch: int, way: str, warmup: int, steps: int) -> float:
    torch.manual_seed(0)
    model = create_detector(args.model, img_size=args.img_size).to(device).train()
    groups = param_groups_layer_decay(model, weight_decay=0.05, no_weight_decay_list=model.no_weight_decay(),
                                      layer_decay=0.65)
    optimizer = _adamw(groups, 1e-4) if way == "fsfm_fast" else torch.optim.AdamW(groups, lr=1e-4)
    dtype = _dtype(way, device)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype is torch.float16)
    loss_fn = DetectionLoss.from_args(finetune_args(["--data_path", "unused"]))  # the recipe's mixup 0.8 / cutmix 1.0
    images = torch.randn(batch, 3, args.img_size, args.img_size, device=device)
    labels = torch.randint(0, 2, (batch,), device=device)

    def step():
        with torch.autocast(device.type, dtype=dtype) if dtype else nullcontext():
            loss = loss_fn(model, {"images": images, "labels": labels})
        scaler.scale(loss).backward()
        optimizer_step(optimizer, scaler)

    return batch / _timed(step, device, warmup, steps)


def _tensor_bytes(tensors) -> int:
    """Bytes of the distinct storages behind ``tensors``."""
    seen = {}
    for t in tensors:
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


def measure_tuning(args, device: torch.device, batch: int, tuning: str, warmup: int, steps: int) -> dict:
    """Full fine-tuning or the FS-Adapter, our way: img/s, trainable parameters, training memory."""
    torch.manual_seed(0)
    adapter = tuning == "fs_adapter"
    model = create_detector(args.model, img_size=args.img_size, adapter="fs" if adapter else "").to(device).train()
    trainable = freeze_encoder(model) if adapter else sum(p.numel() for p in model.parameters())
    groups = param_groups_layer_decay(model, weight_decay=0.05, no_weight_decay_list=model.no_weight_decay(),
                                      layer_decay=0.65)
    optimizer = _adamw(groups, 1e-4)
    dtype = _dtype("fsfm_fast", device)
    loss_fn = DetectionLoss.from_args(finetune_args(["--data_path", "unused"] + (["--adapter", "fs"] if adapter else [])))
    images = torch.randn(batch, 3, args.img_size, args.img_size, device=device)
    labels = torch.randint(0, 2, (batch,), device=device)
    scaler = torch.amp.GradScaler(device.type, enabled=False)  # bf16 needs no scaling
    saved = []

    def step():
        with torch.autocast(device.type, dtype=dtype) if dtype else nullcontext():
            loss = loss_fn(model, {"images": images, "labels": labels})
        loss.backward()
        optimizer_step(optimizer, scaler)

    speed = batch / _timed(step, device, warmup, steps)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        step()
        memory = torch.cuda.max_memory_allocated(device)
    else:
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
            step()
        activations = _tensor_bytes(t for t in saved if t.untyped_storage().data_ptr() not in params)
        state = [v for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v) and v.dim()]
        weights = _tensor_bytes(model.parameters())
        grads = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
        memory = weights + grads + _tensor_bytes(state) + activations
    return {"img_per_s": speed, "trainable": trainable, "memory_mib": memory / 2 ** 20}


def measure_eval(args, device: torch.device, batch: int, way: str, warmup: int, steps: int) -> float:
    torch.manual_seed(0)
    model = create_detector(args.model, img_size=args.img_size).to(device).eval()
    dtype = _dtype(way, device)
    host = torch.randn(batch, 3, args.img_size, args.img_size)
    if way == "fsfm_fast" and device.type == "cuda":
        host = host.pin_memory()
    context = torch.inference_mode if way == "fsfm_fast" else torch.no_grad

    def run():
        with context(), (torch.autocast(device.type, dtype=dtype) if dtype else nullcontext()):
            model(host.to(device, non_blocking=way == "fsfm_fast")).float().softmax(-1)

    return batch / _timed(run, device, warmup, steps)


def main(argv=None) -> int:
    args = parse_args(argv)
    rows = []
    for name in args.devices.split(","):
        device = torch.device(name)
        if device.type == "cuda" and not torch.cuda.is_available():
            print("no CUDA device: the GPU column is not measured", file=sys.stderr)
            continue
        gpu = device.type == "cuda"
        warmup = args.warmup if args.warmup is not None else (5 if gpu else 1)
        steps = args.steps if args.steps is not None else (20 if gpu else 2)
        for batch in (int(b) for b in (args.batches if gpu else args.cpu_batches).split(",")):
            for phase, fn in (("step", measure_step), ("eval", measure_eval)):
                # each way timed --repeats times, interleaved, the best kept: a busy machine then favours neither
                repeats = args.repeats or (2 if gpu or args.quick else 1)
                runs = [(way, fn(args, device, batch, way, warmup, steps)) for _ in range(repeats) for way in WAYS]
                speeds = {way: max(v for w, v in runs if w == way) for way in WAYS}
                for way in WAYS:
                    rows.append({"device": torch.cuda.get_device_name(device) if gpu else "cpu", "phase": phase,
                                 "model": args.model, "img_size": args.img_size, "batch": batch, "way": way,
                                 "img_per_s": speeds[way], "vs_reference": speeds[way] / speeds["reference"]})
                print(f"{device.type} {phase} batch {batch}: " + ", ".join(f"{w} {speeds[w]:.1f} img/s" for w in WAYS),
                      file=sys.stderr, flush=True)
            found = {t: measure_tuning(args, device, batch, t, warmup, steps) for t in TUNINGS}
            for tuning in TUNINGS:
                rows.append({"device": torch.cuda.get_device_name(device) if gpu else "cpu", "phase": "tuning",
                             "model": args.model, "img_size": args.img_size, "batch": batch, "way": tuning,
                             **found[tuning], "vs_full": found[tuning]["img_per_s"] / found["full"]["img_per_s"]})
            print(f"{device.type} tuning batch {batch}: " + ", ".join(
                f"{t} {found[t]['img_per_s']:.1f} img/s, {found[t]['trainable']:,} trainable, "
                f"{found[t]['memory_mib']:.0f} MiB" for t in TUNINGS), file=sys.stderr, flush=True)
    print(format_table([r for r in rows if r["phase"] != "tuning"]))
    print()
    print(format_tuning_table([r for r in rows if r["phase"] == "tuning"]))
    if args.json:
        args.json.write_text(json.dumps({"torch": torch.__version__, "rows": rows}, indent=1) + "\n")
    return 0


def format_table(rows: list[dict]) -> str:
    """One line per (phase, batch, way): CPU and GPU images/s, each with its ratio to the reference way."""
    lines = ["| phase | model | px | batch | way | CPU img/s | GPU img/s |", "| --- | --- | ---: | ---: | --- | ---: | ---: |"]
    keys = sorted({(r["phase"], r["model"], r["img_size"], r["batch"], r["way"]) for r in rows},
                  key=lambda k: (k[0] != "step", k[3], WAYS.index(k[4])))
    for phase, model, px, batch, way in keys:
        cells = []
        for is_gpu in (False, True):
            found = [r for r in rows if (r["phase"], r["model"], r["img_size"], r["batch"], r["way"]) ==
                     (phase, model, px, batch, way) and (r["device"] != "cpu") == is_gpu]
            cells.append(f"{found[0]['img_per_s']:,.1f} ({found[0]['vs_reference']:.2f}x)" if found else "not measured")
        lines.append(f"| {phase} | {model} | {px} | {batch} | {way} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)



def format_tuning_table(rows: list[dict]) -> str:
    """Full fine-tuning against the FS-Adapter: per device, images/s (ratio to full), memory, parameters."""
    lines = ["| model | px | batch | tuning | trainable params | CPU memory MiB (counted) | CPU step img/s | "
             "GPU peak memory MiB | GPU step img/s |", "| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |"]
    keys = sorted({(r["model"], r["img_size"], r["batch"], r["way"]) for r in rows},
                  key=lambda k: (k[2], TUNINGS.index(k[3])))
    for model, px, batch, tuning in keys:
        cells = []
        for is_gpu in (False, True):
            found = [r for r in rows if (r["model"], r["img_size"], r["batch"], r["way"]) == (model, px, batch, tuning)
                     and (r["device"] != "cpu") == is_gpu]
            cells += ([f"{found[0]['memory_mib']:,.0f}", f"{found[0]['img_per_s']:,.1f} ({found[0]['vs_full']:.2f}x)"]
                      if found else ["not measured", "not measured"])
        trainable = next(r["trainable"] for r in rows if r["way"] == tuning and r["model"] == model)
        lines.append(f"| {model} | {px} | {batch} | {tuning} | {trainable:,} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
