"""Scoring throughput (faces/s) of a detector on the CPU: PyTorch eager, ``torch.compile``, onnxruntime
fp32 and onnxruntime with dynamic int8 quantisation, and what int8 costs in AUC.

Speed: an FSFM ViT detector (default ViT-B/16 at 224 px, random weights: speed does not depend on
them) goes through ``fsfm_fast.export --onnx`` (the real export, with its check of onnxruntime against
PyTorch); ``onnxruntime.quantization.quantize_dynamic`` makes the int8 model (int8 weights, activations
quantised per batch). Each runtime scores the same random batch of 1, 8 and 64 faces, with as many
threads as torch uses (``fsfm_fast.onnx_runtime``); the runtimes take turns for ``--repeats`` rounds and
each keeps its fastest round, so a busy machine does not favour one of them. Ratios are to torch eager
of the same run. The GPU column says "not measured" (this script times the CPU).

Accuracy: the demo detector of ``python -m fsfm_fast.finetune`` (``--detector``), exported with ONNX,
is evaluated on the demo's synthetic forgery test set (``--data``) by ``fsfm_fast.evaluate`` through
torch (the checkpoint), onnxruntime fp32 and onnxruntime int8; the table gives frame and video AUC and
the largest score difference from torch.

    python benchmarks/bench_predict.py --json predict.json           # ViT-B, batch 1, 8, 64
    python benchmarks/bench_predict.py --quick                        # tiny ViT at 112 px, batch 1 and 8
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fsfm_fast import export  # noqa: E402
from fsfm_fast.demo import FINETUNE_DIR, FORGERY_DATA  # noqa: E402
from fsfm_fast.evaluate import run_evaluation  # noqa: E402
from fsfm_fast.formats import DETECTOR_FORMAT  # noqa: E402
from fsfm_fast.models import DetectorConfig  # noqa: E402
from fsfm_fast.onnx_runtime import OnnxModel  # noqa: E402
from fsfm_fast.formats import selected_checkpoint  # noqa: E402

RUNTIMES = ("torch eager", "torch.compile", "onnxruntime fp32", "onnxruntime int8")


def detector_checkpoint(model: str, img_size: int, folder: Path) -> Path:
    """A detector checkpoint of ``model`` with random weights (the fine-tuning format, so that the export
    is the one users run)."""
    torch.manual_seed(0)
    config = DetectorConfig(model=model, img_size=img_size, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    path = folder / "checkpoint-random.pth"
    torch.save({"format": DETECTOR_FORMAT, "detector": config.to_dict(), "model": config.build().state_dict()}, path)
    return path


def export_with_onnx(checkpoint: Path, out: Path) -> tuple[torch.nn.Module, dict]:
    """``python -m fsfm_fast.export --onnx`` of ``checkpoint`` into ``out``: its torch model and record."""
    item = export.load_exportable(checkpoint)
    out.mkdir(parents=True, exist_ok=True)
    record = export.export(item, out, checkpoint, onnx=True)
    return item.model.eval(), record


def quantized_copy(folder: Path, out: Path) -> Path:
    """``folder``'s export with model.onnx replaced by its dynamic int8 quantisation."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy(folder / export.CONFIG, out / export.CONFIG)
    quantize_dynamic(str(folder / export.ONNX), str(out / export.ONNX), weight_type=QuantType.QInt8)
    return out


def runners(model: torch.nn.Module, folder: Path, int8: Path, threads: int) -> dict:
    """runtime -> (callable on a float [B,3,H,W] batch, seconds spent preparing it)."""
    start = time.perf_counter()
    compiled = torch.compile(model)
    ready = {"torch eager": (model, 0.0), "torch.compile": (compiled, time.perf_counter() - start)}
    for name, path in (("onnxruntime fp32", folder), ("onnxruntime int8", int8)):
        start = time.perf_counter()
        ready[name] = (OnnxModel(path / export.ONNX, model.num_classes, threads), time.perf_counter() - start)
    return ready


@torch.inference_mode()
def throughput(ready: dict, batch: int, img_size: int, repeats: int, min_seconds: float) -> dict:
    """Faces/s of each runtime at ``batch``: the fastest of ``repeats`` interleaved rounds, each round
    as many calls as fill ``min_seconds``. The first call (torch.compile compiles for this shape) is not timed."""
    x = torch.randn(batch, 3, img_size, img_size, generator=torch.Generator().manual_seed(batch))
    warm = {}
    for name, (fn, _) in ready.items():
        start = time.perf_counter()
        fn(x)
        warm[name] = time.perf_counter() - start
    best = {name: 0.0 for name in ready}
    for _ in range(repeats):
        for name, (fn, _) in ready.items():
            calls, start = 0, time.perf_counter()
            while True:
                fn(x)
                calls += 1
                elapsed = time.perf_counter() - start
                if elapsed >= min_seconds:
                    break
            best[name] = max(best[name], calls * batch / elapsed)
    return {"faces_per_s": best, "first_call_s": warm}


def auc_rows(checkpoint: Path, data: Path, work: Path) -> dict:
    """Frame/video AUC of the demo detector through torch, onnxruntime fp32 and int8, on the demo's
    synthetic test set, and each runtime's largest score difference from torch."""
    folder = work / "demo_export"
    export_with_onnx(checkpoint, folder)
    int8 = quantized_copy(folder, work / "demo_export_int8")
    runs = {"torch": (checkpoint, "torch"), "onnxruntime fp32": (folder, "onnx"), "onnxruntime int8": (int8, "onnx")}
    rows, scores = {}, {}
    for name, (detector, runtime) in runs.items():
        out = work / f"eval_{runtime}_{detector.name}"
        metrics = run_evaluation(detector, {"synthetic": str(data)}, out, batch_size=64, num_workers=0,
                                 device=torch.device("cpu"), amp_dtype=None, runtime=runtime)["synthetic"]
        with (out / "scores.csv").open() as f:
            scores[name] = {r["path"]: float(r["score"]) for r in csv.DictReader(f)}
        rows[name] = {"frame_auc": metrics["frame"]["auc"], "video_auc": metrics["video"]["auc"],
                      "n_images": metrics["n_images"]}
    for name in rows:
        rows[name]["max_abs_score_diff_vs_torch"] = max(abs(scores[name][p] - scores["torch"][p]) for p in scores["torch"])
    return rows


def machine() -> dict:
    import onnxruntime
    import timm
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").is_file() else platform.processor()
    return {"cpu": cpu, "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "load_average": [round(v, 2) for v in os.getloadavg()], "python": platform.python_version(),
            "torch": torch.__version__, "onnxruntime": onnxruntime.__version__, "timm": timm.__version__}


def speed_table(results: dict) -> str:
    lines = ["| batch | " + " | ".join(f"{r} faces/s" for r in RUNTIMES) + " | GPU |",
             "| ---: |" + " ---: |" * len(RUNTIMES) + " --- |"]
    for batch, row in results.items():
        rates = row["faces_per_s"]
        base = rates["torch eager"]
        cells = [f"{rates[RUNTIMES[0]]:.2f}"] + [f"{rates[r]:.2f} ({rates[r] / base:.2f}x)" for r in RUNTIMES[1:]]
        lines.append(f"| {batch} | " + " | ".join(cells) + " | not measured |")
    return "\n".join(lines)


def auc_table(rows: dict) -> str:
    lines = ["| runtime | frame AUC | video AUC | max abs score diff vs torch | images |", "| --- | ---: | ---: | ---: | ---: |"]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['frame_auc']:.4f} | {r['video_auc']:.4f} | {r['max_abs_score_diff_vs_torch']:.2g} "
                     f"| {r['n_images']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="fsfm_vit_base_patch16")
    p.add_argument("--img_size", default=224, type=int)
    p.add_argument("--batches", default="1,8,64")
    p.add_argument("--threads", default=None, type=int,
                   help="intra-op threads of every runtime (default: torch's). On a machine shared with other jobs, "
                        "1: OpenMP's spinning thread barriers collapse when the cores are oversubscribed")
    p.add_argument("--repeats", default=3, type=int, help="interleaved rounds; each runtime keeps its fastest")
    p.add_argument("--min_seconds", default=2.0, type=float, help="timed calls per round fill at least this long")
    p.add_argument("--detector", default=None,
                   help=f"the detector whose fp32/int8 AUC is compared (default: {FINETUNE_DIR}'s selected checkpoint)")
    p.add_argument("--data", default=None, help=f"its test set (default: {FINETUNE_DIR}/{FORGERY_DATA})")
    p.add_argument("--quick", action="store_true", help="tiny ViT at 112 px, batch 1 and 8, one round")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if args.quick:
        args.model, args.img_size, args.batches, args.repeats, args.min_seconds = "fsfm_vit_tiny_patch16", 112, "1,8", 1, 0.5
    if args.threads:
        torch.set_num_threads(args.threads)
    detector = Path(args.detector) if args.detector else selected_checkpoint(FINETUNE_DIR)
    data = Path(args.data) if args.data else Path(FINETUNE_DIR) / FORGERY_DATA
    report = {"machine": machine(), "model": args.model, "img_size": args.img_size, "command": " ".join(sys.argv)}
    with tempfile.TemporaryDirectory(prefix="bench_predict_") as tmp:
        work = Path(tmp)
        start = time.perf_counter()
        model, record = export_with_onnx(detector_checkpoint(args.model, args.img_size, work), work / "export")
        report["export_s"] = time.perf_counter() - start
        report["onnx_check"] = record["onnx"]
        int8 = quantized_copy(work / "export", work / "export_int8")
        ready = runners(model, work / "export", int8, torch.get_num_threads())
        report["speed"] = {}
        for batch in (int(b) for b in args.batches.split(",")):
            report["speed"][batch] = throughput(ready, batch, args.img_size, args.repeats, args.min_seconds)
            print(f"batch {batch}: " + ", ".join(f"{k} {v:.2f}" for k, v in report["speed"][batch]["faces_per_s"].items()),
                  flush=True)
        if detector.is_file() and data.is_dir():
            report["auc"] = auc_rows(detector, data, work)
        else:
            report["auc"] = None
            print(f"no demo detector at {detector} or no data at {data}: AUC not measured "
                  "(run python -m fsfm_fast.finetune, or give --detector and --data)", flush=True)
    report["machine"]["load_average_after"] = [round(v, 2) for v in os.getloadavg()]
    print(f"\n{args.model} at {args.img_size} px, fp32 input, CPU ({report['machine']['cpu']}, "
          f"{report['machine']['torch_threads']} threads)\n")
    print(speed_table(report["speed"]))
    if report["auc"]:
        print(f"\ndemo detector {detector} on {data}/test\n")
        print(auc_table(report["auc"]))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
