"""Input pipeline throughput: images/s of each loader, decode only and with augmentation.

Loaders, all producing normalised images [B,3,S,S] and parsing maps [B,S,S]:
- reference-style: what the reference code does per sample, in DataLoader workers: PIL opens the
  PNG, np.load the map, torchvision's RandomResizedCrop parameters + functional crops, flip,
  to_tensor, normalize; default collate. The baseline of the "x ref" column.
- torch-folder: fsfm_fast's FaceParsingFolder (same reference layout) with EpochSampler.
- torch-shards: ShardDataset over JPEG shards, PIL decode in the workers.
- torch-shards-main: workers only read bytes; the batch is decoded (torchvision.io.decode_jpeg) and
  augmented in the main process on the device: nvJPEG on CUDA, libjpeg-turbo on a CPU.
- torch-shards-read: the workers of torch-shards-main alone (bytes read, maps decoded, no image
  decode): the host's share of the nvJPEG path, measurable without a GPU.
- dali-cpu / dali-gpu: the DALI pipeline (fsfm_fast.data.dali), CPU or mixed (nvJPEG) decode.
"decode" mode resizes nothing (input size = stored size) and does not crop; "augment" adds the
random resized crop (0.2, 1) and flip to image and map. GPU loaders appear when CUDA (and DALI) are there.

The synthetic set (fsfm_fast.data.synthetic) is written once under --work and converted to shards
with make_shards, whose speed is reported too; --path adds datasets of either layout.

    python benchmarks/bench_data.py                          # 1024 synthetic 224 px faces
    python benchmarks/bench_data.py --path /data/vggface2_shards --json data.json
    python benchmarks/bench_data.py --quick                  # the GPU check's run (see --help)
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import shutil
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms
from torchvision.transforms import functional as TF

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fsfm_fast.runtime import cli  # noqa: E402
from fsfm_fast.data import make_shards, write_synthetic_dataset  # noqa: E402
from fsfm_fast.data.dali import dali_available  # noqa: E402
from fsfm_fast.data.loaders import build_loader, dataset_mean_std, detect_layout  # noqa: E402
from fsfm_fast.data.shards import load_manifest  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--images", type=int, default=1024, help="synthetic faces")
    p.add_argument("--size", type=int, default=224, help="synthetic face size = input size")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--workers", type=int, default=cli.available_cpus(), help="DataLoader workers / DALI threads")
    p.add_argument("--batches", type=int, default=30, help="timed batches per loader and mode")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeat", type=int, default=1,
                   help="rounds over all loaders; each keeps its best (a shared machine is noisy)")
    p.add_argument("--loaders", default="all", help="comma-separated subset of the loader names, or all")
    p.add_argument("--path", action="append", default=[], help="extra dataset (reference folder or shard folder)")
    p.add_argument("--work", type=Path, default=Path("output_bench_data"),
                   help="folder for the synthetic set and its shards (output*/ is git-ignored)")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--quick", action="store_true",
                   help="what benchmarks/gpu_check.sh runs: on a GPU the nvJPEG shard loader against the "
                        "reference-style loader, 512 faces at 224 px, batch 64, 10 timed batches; on a CPU "
                        "16 faces at 32 px, batch 4, the same path decoding on the CPU, to prove the script runs")
    args = p.parse_args(argv)
    if args.quick:
        cuda = torch.cuda.is_available()
        args.images, args.size, args.batch = (512, 224, 64) if cuda else (16, 32, 4)
        args.batches, args.warmup, args.repeat = (10, 2, 1) if cuda else (2, 1, 1)
        args.loaders = "reference-style,torch-shards-nvjpeg" if cuda else "reference-style,torch-shards-main"
        if not cuda:
            args.workers = 0
    return args


# ------------------------------------------------------------------------------- reference-style


class ReferenceStyle(Dataset):
    """The reference's per-sample work: PIL + np.load + torchvision transforms on PIL images."""

    def __init__(self, root: Path, size: int, mean, std, augment: bool):
        self.images = sorted((root / "images").glob("*.png"))
        self.maps = [root / "parsing_maps" / f"{p.stem}.npy" for p in self.images]
        self.size, self.mean, self.std, self.augment = size, mean, std, augment

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        image = Image.open(self.images[i]).convert("RGB")
        parsing = Image.fromarray(np.load(self.maps[i]))
        if self.augment:
            top, left, h, w = transforms.RandomResizedCrop.get_params(image, (0.2, 1.0), (3 / 4, 4 / 3))
            image = TF.resized_crop(image, top, left, h, w, [self.size] * 2, TF.InterpolationMode.BICUBIC)
            parsing = TF.resized_crop(parsing, top, left, h, w, [self.size] * 2, TF.InterpolationMode.NEAREST)
            if torch.rand(1).item() < 0.5:
                image, parsing = TF.hflip(image), TF.hflip(parsing)
        elif image.size != (self.size, self.size):
            image = TF.resize(image, [self.size] * 2, TF.InterpolationMode.BICUBIC)
            parsing = TF.resize(parsing, [self.size] * 2, TF.InterpolationMode.NEAREST)
        image = TF.normalize(TF.to_tensor(image), self.mean, self.std)
        return image, torch.from_numpy(np.array(parsing))


class _ReferenceLoader:
    def __init__(self, root, size, mean, std, augment, batch, workers):
        self.loader = DataLoader(ReferenceStyle(root, size, mean, std, augment), batch_size=batch, shuffle=True,
                                 drop_last=True, num_workers=workers, prefetch_factor=4 if workers else None)

    def epoch(self, epoch):
        return ({"images": x, "parsing": m} for x, m in self.loader)


class _ReadOnly:
    """The CPU side of the nvJPEG path alone: workers read bytes and decode the maps, nothing decodes
    the images. Its CPU cost per image is what that path asks of the host."""

    def __init__(self, data):
        self.data = data

    def epoch(self, epoch):
        self.data.sampler.set_epoch(epoch)
        return ({"images": torch.empty(len(raw["image"]))} for raw in self.data.loader.loader)


class _Built:
    def __init__(self, data):
        self.data = data

    def epoch(self, epoch):
        return self.data.batches(epoch)


# --------------------------------------------------------------------------------------- timing


def _forever(loader):
    epoch = 0
    while True:
        yield from loader.epoch(epoch)
        epoch += 1


def _cpu_seconds() -> float:
    """CPU time of this process and of its finished children (DataLoader workers, once joined)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def measure(make, batches: int, warmup: int, device: torch.device) -> dict:
    """Images/s over ``batches`` batches after ``warmup`` (epoch restarts included, as in training),
    and CPU milliseconds per image over the loader's whole life (start-up and warm-up included).
    The CPU figure does not depend on what else the machine runs, the rate does."""
    cpu0 = _cpu_seconds()
    stream = _forever(make())
    seen = sum(next(stream)["images"].shape[0] for _ in range(warmup))
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    images = sum(next(stream)["images"].shape[0] for _ in range(batches))
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    stream.close()  # ends the DataLoader iterator: its workers exit and are joined
    del stream
    gc.collect()
    return {"images_per_s": images / elapsed, "cpu_ms_per_image": 1e3 * (_cpu_seconds() - cpu0) / (seen + images)}


def candidates(layout: str, names: str, cuda: bool, dali: bool) -> list[tuple[str, str, str, str]]:
    """(name, loader, decode, device) of the loaders that apply to a dataset of this layout."""
    folder = [("reference-style", "", "", "cpu"), ("torch-folder", "torch", "workers", "cpu")]
    shards = [("torch-shards", "torch", "workers", "cpu"), ("torch-shards-main", "torch", "device", "cpu"),
              ("torch-shards-read", "torch", "device", "cpu")]
    if dali:
        shards.append(("dali-cpu", "dali", "", "cpu"))
    if cuda:
        shards.append(("torch-shards-nvjpeg", "torch", "device", "cuda"))
        if dali:
            shards.append(("dali-gpu", "dali", "", "cuda"))
    chosen = folder if layout == "folder" else shards
    wanted = None if names == "all" else set(names.split(","))
    return [c for c in chosen if wanted is None or c[0] in wanted]


def make_loader(name, loader, decode, device, path, size, mean, std, augment, args):
    if name == "reference-style":
        return _ReferenceLoader(path, size, mean, std, augment, args.batch, args.workers)
    wrap = _ReadOnly if name == "torch-shards-read" else _Built
    return wrap(build_loader([path], mean, std, input_size=size, batch_size=args.batch, augment=augment,
                               loader=loader, device=device, num_workers=args.workers,
                               decode=decode or "auto", seed=0))


def bench_dataset(label: str, path: Path, size: int, args, rows: list[dict]) -> None:
    """Every applicable loader, decode and augment; --repeat rounds interleave the loaders so that a
    change of load on a shared machine hits them alike, and each keeps its best round."""
    layout = detect_layout(path)
    mean, std = dataset_mean_std([path], size, max_samples=256)
    cuda, (dali, _) = torch.cuda.is_available(), dali_available()
    configs = [(c, augment) for c in candidates(layout, args.loaders, cuda, dali) for augment in (False, True)]
    best: dict = {}
    for _ in range(args.repeat):
        for (name, loader, decode, device), augment in configs:
            make = partial(make_loader, name, loader, decode, device, path, size, mean, std, augment, args)
            got = measure(make, args.batches, args.warmup, torch.device(device))
            key = (name, augment)
            if key not in best or got["images_per_s"] > best[key]["images_per_s"]:
                best[key] = dict(got, device=device)
    for (name, augment), got in best.items():
        rows.append({"dataset": label, "loader": name, "mode": "augment" if augment else "decode",
                     "workers": args.workers, "batch": args.batch, "size": size, **got})
        print(f"  {label:<10} {name:<20} {rows[-1]['mode']:<8} {got['images_per_s']:9.0f} img/s "
              f"{got['cpu_ms_per_image']:7.2f} CPU ms/img", flush=True)


# ----------------------------------------------------------------------------------------- data


def synthetic_sets(args) -> tuple[Path, Path, dict]:
    """The synthetic reference folder and its JPEG shards, with make_shards' measured speed."""
    faces = write_synthetic_dataset(args.work / f"faces_{args.images}_{args.size}", args.images, size=args.size,
                                    seed=0, workers=args.workers)
    shards = args.work / f"shards_{args.images}_{args.size}"
    shutil.rmtree(shards, ignore_errors=True)  # converted afresh each time: the conversion is measured
    start, cpu0 = time.perf_counter(), _cpu_seconds()
    # 8 MiB shards: enough of them to keep every worker busy on a set this small
    make_shards.main([str(faces), "--out", str(shards), "--workers", str(args.workers), "--shard_size_mb", "8"])
    elapsed, cpu = time.perf_counter() - start, _cpu_seconds() - cpu0
    manifest = load_manifest(shards)
    source_bytes = sum(f.stat().st_size for sub in ("images", "parsing_maps") for f in (faces / sub).iterdir())
    shard_bytes = sum((shards / s["tar"]).stat().st_size for s in manifest["shards"])
    info = {"images": manifest["count"], "seconds": elapsed, "images_per_s": manifest["count"] / elapsed,
            "cpu_ms_per_image": 1e3 * cpu / manifest["count"],
            "workers": args.workers, "shards": len(manifest["shards"]), "source_mb": source_bytes / 2**20,
            "shard_mb": shard_bytes / 2**20}
    print(f"make_shards: {info['images']} faces in {elapsed:.1f} s ({info['images_per_s']:.0f} img/s, "
          f"{args.workers} workers, {info['cpu_ms_per_image']:.2f} CPU ms/img); "
          f"{info['source_mb']:.1f} MiB of PNG + npy -> {info['shard_mb']:.1f} MiB of shards")
    return faces, shards, info


def table(rows: list[dict]) -> str:
    """Markdown table; "x ref" divides by the reference-style loader of the same dataset and mode."""
    ref = {(r["dataset"], r["mode"]): r for r in rows if r["loader"] == "reference-style"}
    lines = ["| dataset | loader | device | mode | workers | img/s | x ref | CPU ms/img | x ref (CPU) |",
             "|---|---|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        base = ref.get((r["dataset"], r["mode"])) or ref.get(("synthetic", r["mode"]))
        rate = f"{r['images_per_s'] / base['images_per_s']:.2f}" if base else "-"
        cpu = f"{base['cpu_ms_per_image'] / r['cpu_ms_per_image']:.2f}" if base else "-"
        lines.append(f"| {r['dataset']} | {r['loader']} | {r['device']} | {r['mode']} | {r['workers']} | "
                     f"{r['images_per_s']:.0f} | {rate} | {r['cpu_ms_per_image']:.2f} | {cpu} |")
    return "\n".join(lines)


def environment() -> dict:
    env = {"python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count(),
           "cpu": platform.processor() or platform.machine()}
    if torch.cuda.is_available():
        env.update(gpu=torch.cuda.get_device_name(0), cuda=torch.version.cuda)
    ok, _ = dali_available()
    if ok:
        import nvidia.dali

        env["dali"] = nvidia.dali.__version__
    return env


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(max(1, args.workers))
    env = environment()
    print("environment:", json.dumps(env))
    faces, shards, conversion = synthetic_sets(args)
    rows: list[dict] = []
    bench_dataset("synthetic", faces, args.size, args, rows)
    bench_dataset("synthetic", shards, args.size, args, rows)
    for extra in args.path:
        path = Path(extra)
        size = load_manifest(path)["image_size"][0] if detect_layout(path) == "shards" else args.size
        bench_dataset(path.name, path, size, args, rows)
    print()
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps({"environment": env, "make_shards": conversion, "args": {
            k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, "results": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
