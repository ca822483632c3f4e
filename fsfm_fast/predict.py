"""Is this face fake, or an attack? ``python -m fsfm_fast.predict INPUT... --detector OUT_OR_CKPT``.

    python -m fsfm_fast.predict suspect.mp4 photos/ --detector fsfm_detector --output scores.jsonl --save_faces faces.png
    python -m fsfm_fast.predict --demo       # the same with no arguments at all

INPUT: images, videos, or folders of them (searched recursively, as ``prepare`` does). ``--detector``
(formerly ``--model``, still accepted): an export folder of ``python -m fsfm_fast.export`` (``config.json``
+ ``model.safetensors``, loaded through timm) or a detector checkpoint of ``python -m fsfm_fast.finetune``
or ``python -m fsfm_fast.finetune_fas``: a whole detector (linear or FAS head) or an FS-Adapter checkpoint
(its frozen encoder read from the file it names), every detector ``evaluate`` and ``export`` accept.
``--runtime onnx`` scores an export's ``model.onnx`` (``export --onnx``) with onnxruntime on the CPU, equal
to PyTorch within the tolerance export checked; ``auto`` (the default) does so when the export holds
``model.onnx``, onnxruntime imports and the device is the CPU (``fsfm_fast.onnx_runtime``).

Each image, and each of ``--num_frames`` frames sampled uniformly from a video (``prepare``'s seeking
sampler), goes through ``prepare``'s face detector: the largest face is cropped as ``prepare`` crops the
fine-tuning data (a square of 1.3 x the box, at 224 px), then resized and normalised as the model was
evaluated. ``--face_detector none`` scores whole images (already cropped faces). Faces are scored in
batches (bf16 autocast on a GPU, fp32 on the CPU) while worker processes read and detect the next
inputs. The score is the probability of the detector's positive class (``fsfm_fast.inference``): P(fake)
for a deepfake detector, P(attack) for an anti-spoofing one, named so in the table and in the rows
(``p_fake``, ``p_attack``). A video's score is the mean of its faces' scores (SPEC section 7), and each
image or video is called the positive class when its score is ``>=`` the threshold: ``--threshold``, else
the one the detector records (e.g. the source-selected threshold of ``finetune_fas``), else 0.5 (the
output says which).

Outputs: a printed table, one row per input; ``--output FILE`` (``.csv``: CSV, otherwise JSON lines)
with one ``face`` row per scored face or frame and one ``input`` row per input; ``--save_faces PNG`` a
contact sheet of the faces with their scores, under a title, the legend of its border colours at the
threshold, and how many of the scored faces it shows (``--sheet_max``); both are checked before any
work. An input that cannot be scored (not an image or video, unreadable, no face in it) is reported in
its row and on stderr, and the run goes on; frames that could not be decoded or hold no face are counted
in their video's row. The exit status is 0 when at least one
input was scored.

``--demo`` exports the demo detector of ``python -m fsfm_fast.finetune`` (or says to run that first)
into its own folder (``output_demo_predict/detector``; the export demo's folder is not touched), writes a few synthetic real and fake videos, scores them through this same path, and prints the scores
next to the truth.
"""
from __future__ import annotations

import csv
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .detector_args import predict_parser
from .runtime import cli

if __name__ == "__main__":  # -h and flag errors answer before torch and timm are imported (the imports below)
    sys.exit(cli.run_verb("fsfm_fast.predict", lambda argv: predict_parser().parse_args(argv), "fsfm_fast.predict"))

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch.utils.data import DataLoader, Dataset

from .demo import FINETUNE_DIR, PREDICT_DIR as DEMO_OUTPUT_DIR
from .formats import selected_checkpoint
from .runtime.devices import autocast, autocast_dtype, resolve_device
from .inference import Contract, decide, positive_probability
from .onnx_runtime import choose_runtime
from .scorer import Scorer, detector_path, load_scorer
from .prepare.faces import CROP_SCALE, CROP_SIZE, DEFAULT_UPSAMPLE, crop_face, largest_face, make_detector
from .prepare.inputs import IMAGE, VIDEO, Input, kind_of, scan
from .prepare.video import VideoError, count_frames, sample_frames, sample_indices
from .runtime.signals import ignore_stop_signals

THUMB = 112  # contact sheet tile side
DEMO_DETECTOR = "detector"  # --demo's export of the demo detector, inside its folder


# ----------------------------------------------------------------------------------------------
# inputs -> face crops (in DataLoader workers)


@dataclass
class Face:
    frame: int | None  # the frame index in its video; None for an image
    box: list[float] | None  # [x0, y0, x1, y1] in the image; None without face detection
    pixels: torch.Tensor  # the model's input
    thumb: np.ndarray | None = None  # uint8 [THUMB, THUMB, 3] for the contact sheet


@dataclass
class Found:
    """What reading one input gave: its faces, or why it gave none."""
    index: int
    faces: list[Face] = field(default_factory=list)
    frames: int = 0  # images or video frames decoded
    notes: list[str] = field(default_factory=list)
    error: str | None = None


def _identity(item):
    return item


class FaceCrops(Dataset):
    """Input i -> ``Found``: its frames, the largest face of each, cropped and transformed."""

    def __init__(self, inputs: list[Input], transform, detector: str, num_frames: int, crop_scale: float,
                 thumbs: bool, upsample: int = DEFAULT_UPSAMPLE):
        self.inputs, self.transform, self.detector_name, self.upsample = inputs, transform, detector, upsample
        self.num_frames, self.crop_scale, self.thumbs = num_frames, crop_scale, thumbs
        self._detector = None  # built in the process that uses it (a worker)

    def __len__(self) -> int:
        return len(self.inputs)

    def _frames(self, item: Input) -> tuple[list[tuple[int | None, np.ndarray]], list[str]]:
        from .prepare.runner import read_image
        kind = item.kind
        if kind == IMAGE:
            return [(None, read_image(item.path))], []
        if kind != VIDEO:  # no known extension: whatever it turns out to be
            try:
                return [(None, read_image(item.path))], []
            except ValueError:
                pass
        try:
            total = count_frames(item.path)  # also what tells a video from anything else
        except VideoError:
            if kind == VIDEO:
                raise
            raise ValueError(f"not an image or video (extension {item.path.suffix or 'none'!r})") from None
        frames = sample_frames(item.path, self.num_frames)
        wanted = len(sample_indices(total, self.num_frames))
        notes = [f"{wanted - len(frames)} of {wanted} sampled frames could not be decoded"] if len(frames) < wanted else []
        return [(int(i), image) for i, image in frames], notes

    def _face(self, image: np.ndarray) -> tuple[np.ndarray, list[float] | None] | None:
        if self.detector_name == "none":
            return image, None
        if self._detector is None:
            self._detector = make_detector(self.detector_name, self.upsample)
        box = largest_face(self._detector.detect(image))
        if box is None:
            return None
        return crop_face(image, box, self.crop_scale, CROP_SIZE), [round(v, 1) for v in box.as_list()]

    def __getitem__(self, index: int) -> Found:
        item, found = self.inputs[index], Found(index)
        try:
            frames, found.notes = self._frames(item)
        except (VideoError, ValueError) as exc:
            found.error = str(exc)
            return found
        except OSError as exc:
            found.error = f"unreadable ({cli.describe_os_error(exc, item.path)})"
            return found
        except Exception as exc:  # noqa: BLE001  (one strange file must not stop the run)
            found.error = f"failed ({type(exc).__name__}: {exc})"
            return found
        found.frames = len(frames)
        missing, failed = 0, []
        for frame, image in frames:
            try:
                face = self._face(image)
                if face is None:
                    missing += 1
                    continue
                crop, box = face
                pil = Image.fromarray(np.ascontiguousarray(crop))
                thumb = np.asarray(pil.resize((THUMB, THUMB), Image.BICUBIC)) if self.thumbs else None
                found.faces.append(Face(frame, box, self.transform(pil.convert("RGB")), thumb))
            except Exception as exc:  # noqa: BLE001  (one bad frame costs that frame, not its video)
                failed.append(f"{type(exc).__name__}: {exc}")
        if failed:
            found.notes.append(f"{len(failed)} frames failed ({failed[0]})")
        if missing and found.faces:
            found.notes.append(f"{missing} of {len(frames)} frames without a face")
        if failed and not found.faces:
            found.error = f"no frame could be scored ({failed[0]})"
        elif not found.faces:
            found.error = "no face found" if frames[0][0] is None else f"no face in any of its {len(frames)} sampled frames"
        return found


# ----------------------------------------------------------------------------------------------
# scoring and results


@dataclass
class Result:
    """One input's outcome."""
    input: Input
    found: Found
    scores: list[float] = field(default_factory=list)  # the score (P(positive)) per face, in the order of found.faces

    @property
    def score(self) -> float | None:
        return float(np.mean(self.scores)) if self.scores else None


@torch.inference_mode()
def _score(scorer: Scorer, faces: list[Face], device: torch.device, amp_dtype) -> list[float]:
    x = torch.stack([f.pixels for f in faces]).to(device, non_blocking=True)
    with autocast(device, amp_dtype):
        logits = scorer.model(x)
    return positive_probability(logits, scorer.contract.positive_index).tolist()


def predict(scorer: Scorer, inputs: list[Input], *, device: torch.device, amp_dtype, batch_size: int = 64,
            num_workers: int = 0, detector: str = "dlib_hog", num_frames: int = 16, crop_scale: float = CROP_SCALE,
            thumbs: bool = False, progress: Callable[[Result], None] | None = None,
            upsample: int = DEFAULT_UPSAMPLE) -> list[Result]:
    """Every input's faces and scores. Faces of several inputs share a batch; inputs finish in order."""
    scorer.model.to(device)
    data = FaceCrops(inputs, scorer.transform, detector, num_frames, crop_scale, thumbs, upsample)
    loader = DataLoader(data, batch_size=None, num_workers=num_workers, collate_fn=_identity,
                        worker_init_fn=ignore_stop_signals if num_workers else None)
    results, pending, queued = [], [], 0

    def flush() -> None:  # score every queued face, in batches of batch_size, and hand the inputs over
        nonlocal pending, queued
        faces = [face for r in pending for face in r.found.faces]
        scores = [p for i in range(0, len(faces), batch_size)
                  for p in _score(scorer, faces[i:i + batch_size], device, amp_dtype)]
        for r in pending:
            r.scores, scores = scores[:len(r.found.faces)], scores[len(r.found.faces):]
            results.append(r)
            if progress:
                progress(r)
        pending, queued = [], 0

    for found in loader:
        pending.append(Result(inputs[found.index], found))
        queued += len(found.faces)
        if queued >= batch_size:
            flush()
    flush()
    return results


def decision(score: float | None, threshold: float, contract: Contract) -> str | None:
    """The class an input is called: the positive one when its score is ``>=`` the threshold."""
    if score is None:
        return None
    return contract.positive_class if decide(score, threshold) else contract.negative_class


def input_row(r: Result, threshold: float, scorer: Scorer) -> dict:
    return {"level": "input", "input": str(r.input.path), "kind": r.input.kind, "faces": len(r.scores),
            "frames": r.found.frames, scorer.score_key: r.score,
            "decision": decision(r.score, threshold, scorer.contract), "threshold": threshold,
            "error": r.found.error, "notes": "; ".join(r.found.notes) or None}


def face_rows(r: Result, scorer: Scorer) -> list[dict]:
    return [{"level": "face", "input": str(r.input.path), "kind": r.input.kind, "frame": f.frame, "box": f.box,
             scorer.score_key: p} for f, p in zip(r.found.faces, r.scores)]


def csv_columns(score_key: str = "p_fake") -> list[str]:
    return ["level", "input", "kind", "frame", "x0", "y0", "x1", "y1", "faces", "frames", score_key, "decision",
            "threshold", "error", "notes"]


CSV_COLUMNS = csv_columns()  # a deepfake detector's; an anti-spoofing one has p_attack


def write_rows(path: Path, results: list[Result], threshold: float, scorer: Scorer) -> None:
    """JSON lines (or CSV for a ``.csv`` name): each input's face rows, then its input row."""
    rows = [row for r in results for row in face_rows(r, scorer) + [input_row(r, threshold, scorer)]]

    def write(tmp: Path) -> None:
        with tmp.open("w", newline="", encoding="utf-8") as f:
            if path.suffix.lower() == ".csv":
                writer = csv.DictWriter(f, csv_columns(scorer.score_key), extrasaction="ignore")
                writer.writeheader()
                for row in rows:
                    box = row.get("box") or [None] * 4
                    writer.writerow({**row, **dict(zip(("x0", "y0", "x1", "y1"), box))})
            else:
                f.writelines(json.dumps(row) + "\n" for row in rows)
    save_replacing(path, write)


def format_table(results: list[Result], threshold: float, contract: Contract,
                 truth: dict[str, str] | None = None) -> str:
    head = ["input", "kind", "faces", contract.score, "decision"] + (["truth"] if truth else []) + ["note"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in results:
        score = r.score
        cells = [str(r.input.path), r.input.kind, f"{len(r.scores)}/{r.found.frames}" if r.input.kind == VIDEO
                 else str(len(r.scores)), "n/a" if score is None else f"{score:.3f}",
                 decision(score, threshold, contract) or "-"]
        if truth:
            cells.append(truth.get(str(r.input.path), "?"))
        note = r.found.error and f"NOT SCORED: {r.found.error}" or "; ".join(r.found.notes)
        lines.append("| " + " | ".join(cells + [note]) + " |")
    return "\n".join(lines)


SHEET_LINE = 13  # px per text line of the default font
SHEET_HEADER = 3 * SHEET_LINE + 8  # the title, the legend and how many faces are shown


def sheet_header(title: str, shown: int, total: int, threshold: float, contract: Contract) -> list[str]:
    """The contact sheet's three header lines: what was scored, what the border colours mean at which
    threshold, and how many of the scored faces are shown (a cut sheet says so)."""
    legend = (f"red border: called {contract.positive_class} ({contract.score} >= {threshold:g}); "
              f"green: called {contract.negative_class}")
    count = (f"all {total} scored faces" if shown == total
             else f"the first {shown} of {total} scored faces (--sheet_max {shown})")
    return [title, legend, count]


def fit_text(draw: ImageDraw.ImageDraw, text: str, width: float, font) -> str:
    """``text`` shortened to ``width`` pixels by dropping characters from its middle: the start and the
    end of a file name (its kind and its number, frame and extension) are what tell files apart."""
    if draw.textlength(text, font=font) <= width:
        return text
    keep = len(text)
    while keep > 2:
        keep -= 1
        head, tail = text[:keep // 2], text[len(text) - (keep - keep // 2):]
        short = f"{head}..{tail}"
        if draw.textlength(short, font=font) <= width:
            return short
    return text[-1:]


def contact_sheet(results: list[Result], threshold: float, path: Path, max_faces: int, contract: Contract, *,
                  columns: int = 8, title: str = "fsfm_fast.predict", truth: dict[str, str] | None = None
                  ) -> tuple[int, int]:
    """A PNG grid of the scored faces (the first ``max_faces``, in input order) under a header
    (``sheet_header``), each captioned with its input and frame, its score and, when ``truth`` knows
    it, the truth; framed red when called the positive class and green otherwise. Returns (faces
    shown, faces scored)."""
    every = [(r, f, p) for r in results for f, p in zip(r.found.faces, r.scores) if f.thumb is not None]
    tiles = every[:max_faces]
    if not tiles:
        return 0, 0
    font = ImageFont.load_default()
    pad, caption = 4, (3 if truth else 2) * SHEET_LINE + 2
    cell_w, cell_h = THUMB + 2 * pad, THUMB + 2 * pad + caption
    header = sheet_header(title, len(tiles), len(every), threshold, contract)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    width = max(min(columns, len(tiles)) * cell_w, max(int(measure.textlength(t, font=font)) for t in header) + 2 * pad)
    sheet = Image.new("RGB", (width, SHEET_HEADER + -(-len(tiles) // columns) * cell_h), "white")
    draw = ImageDraw.Draw(sheet)
    for i, line in enumerate(header):
        draw.text((pad, pad + i * SHEET_LINE), line, fill=(200, 30, 30) if i == 2 and len(tiles) < len(every)
                  else "black", font=font)
    for i, (r, face, p) in enumerate(tiles):
        x, y = (i % columns) * cell_w, SHEET_HEADER + (i // columns) * cell_h
        colour = (200, 30, 30) if decide(p, threshold) else (30, 150, 30)
        draw.rectangle([x + 1, y + 1, x + cell_w - 2, y + pad + THUMB + pad - 2], outline=colour, width=3)
        sheet.paste(Image.fromarray(face.thumb), (x + pad, y + pad))
        name = r.input.path.name if face.frame is None else f"{r.input.path.name} #{face.frame}"
        text_y = y + 2 * pad + THUMB
        draw.text((x + pad, text_y), fit_text(draw, name, THUMB, font), fill="black", font=font)
        draw.text((x + pad, text_y + SHEET_LINE), f"{contract.score} {p:.3f}", fill=colour, font=font)
        if truth:
            known = truth.get(str(r.input.path), "?")
            draw.text((x + pad, text_y + 2 * SHEET_LINE), fit_text(draw, f"truth: {known}", THUMB, font),
                      fill="black", font=font)
    save_replacing(path, lambda tmp: sheet.save(tmp, format="PNG"))
    return len(tiles), len(every)


def save_replacing(path: Path, write: Callable[[Path], None]) -> None:
    """``write`` a temporary file beside ``path``, then put it in place; a failed write leaves neither
    the temporary file nor a half-written ``path``."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# ----------------------------------------------------------------------------------------------
# the verb


def check_args(args) -> None:
    if args.old_detector is not None:
        if args.detector is not None:
            raise cli.UsageError("give --detector only (--model is its former name)")
        args.detector = args.old_detector
        print("fsfm_fast.predict: --model is now --detector (an export folder or detector checkpoint); "
              f"read as --detector {args.detector}", file=sys.stderr, flush=True)
    if args.demo and (args.inputs or args.detector or args.output or args.save_faces):
        raise cli.UsageError(f"--demo makes its own inputs and detector and writes to {DEMO_OUTPUT_DIR}/: give it "
                             "without INPUT, --detector, --output or --save_faces")
    if not (args.demo or args.inputs or args.detector or args.output or args.save_faces):
        args.demo = True  # no inputs and no detector: the embedded demo, as every verb runs with no data
        print("no INPUT and no --detector: running the demo (python -m fsfm_fast.predict --demo)", flush=True)
    if not args.demo and (not args.inputs or not args.detector):
        raise cli.UsageError("give INPUT... and --detector OUT_OR_CKPT (or nothing, or --demo, for the demo)")
    check_outputs(args)


def check_outputs(args) -> None:
    """--output and --save_faces name files that can be written, checked before anything is scored."""
    targets = {flag: Path(getattr(args, flag)) for flag in ("output", "save_faces") if getattr(args, flag)}
    if len(targets) == 2 and targets["output"].resolve() == targets["save_faces"].resolve():
        raise cli.UsageError(f"--output and --save_faces name the same file {targets['output']}")
    for flag, target in targets.items():
        if target.is_dir():
            raise cli.UsageError(f"--{flag} {target} is a folder: give a file name (e.g. {target / 'scores.jsonl'})"
                                 if flag == "output" else
                                 f"--{flag} {target} is a folder: give a file name (e.g. {target / 'faces.png'})")
        cli.ensure_writable_dir(target.parent, f"--{flag} {target}: the folder")


def collect_inputs(paths: list[str]) -> tuple[list[Input], list[tuple[str, str]]]:
    """The inputs of the given paths (folders searched recursively) and the paths that do not exist."""
    inputs, absent = [], []
    for spec in paths:
        path = Path(spec)
        if not path.exists():
            absent.append((spec, "no such file or folder"))
            continue
        inputs += scan(path) if path.is_dir() else [Input(path, path.stem, kind_of(path))]
    return inputs, absent


def run(args, truth: dict[str, str] | None = None) -> tuple[list[Result], float]:
    runtime = choose_runtime(getattr(args, "runtime", "torch"), detector_path(args.detector), args.device, args.precision)
    scorer = load_scorer(args.detector, runtime)
    inputs, absent = collect_inputs(args.inputs)
    threshold, threshold_note = scorer.contract.resolve_threshold(args.threshold)
    if args.threshold is not None and scorer.contract.threshold is not None:
        threshold_note += f" (--threshold), instead of the recorded {scorer.contract.threshold:g}"
    device = torch.device("cpu") if runtime == "onnx" else resolve_device(args.device)
    amp_dtype = autocast_dtype(args.precision, device)
    precision = "fp32" if amp_dtype is None else str(amp_dtype).split(".")[-1]
    print(f"scoring {len(inputs)} inputs with {scorer.description} on {device} ({precision}); face detector "
          f"{args.face_detector}; threshold {threshold:g} ({threshold_note})", flush=True)

    def report(r: Result) -> None:
        if r.found.error:
            print(f"fsfm_fast.predict: {r.input.path}: not scored: {r.found.error}", file=sys.stderr, flush=True)

    for spec, why in absent:
        print(f"fsfm_fast.predict: {spec}: not scored: {why}", file=sys.stderr, flush=True)
    results = predict(scorer, inputs, device=device, amp_dtype=amp_dtype, batch_size=args.batch_size,
                      num_workers=min(args.num_workers, len(inputs)), detector=args.face_detector,
                      num_frames=args.num_frames, crop_scale=args.crop_scale, thumbs=bool(args.save_faces),
                      progress=report, upsample=args.upsample)
    results += [Result(Input(Path(spec), Path(spec).stem, "missing"), Found(-1, error=why)) for spec, why in absent]
    print(format_table(results, threshold, scorer.contract, truth))
    scored = sum(r.score is not None for r in results)
    print(f"{scored} of {len(results)} inputs scored")
    if args.output:
        write_rows(Path(args.output), results, threshold, scorer)
        print(f"wrote {args.output}")
    if args.save_faces:
        shown, total = contact_sheet(results, threshold, Path(args.save_faces), args.sheet_max, scorer.contract, title=f"fsfm_fast.predict: {scorer.description}",
                                     truth=truth)
        print(f"wrote {args.save_faces} ({shown} faces)" if shown == total else
              f"wrote {args.save_faces}: the first {shown} of {total} scored faces (--sheet_max {args.sheet_max})")
    return results, threshold


def run_demo(args) -> list[Result]:
    """Export the demo detector, then score synthetic real and fake videos twice: as a camera would film
    the faces (composited, found by the face detector, cropped) and as the generator's own frames at the
    detector's input size (no face detection: the crops the demo detector was trained on)."""
    from .data.synthetic_video import write_forgery_videos
    from .export import export, load_exportable
    checkpoint = selected_checkpoint(FINETUNE_DIR)
    if not checkpoint.is_file():
        raise cli.UsageError(f"no demo detector at {checkpoint}: run python -m fsfm_fast.finetune first "
                             "(it trains one on the CPU in a few minutes), then this again")
    out = cli.ensure_writable_dir(Path(DEMO_OUTPUT_DIR), "the demo folder")
    # its own export, inside its own folder: the export demo's folder (output_demo_export) is not touched
    exported = out / DEMO_DETECTOR
    print(f"exporting the demo detector {checkpoint} to {exported}/", flush=True)
    item = load_exportable(checkpoint)
    export(item, cli.ensure_writable_dir(exported), checkpoint)
    passes = {"filmed": ("as filmed: moving faces composited on a cluttered background, found by the face detector",
                         dict(composite=True), args.face_detector),
              "frames": (f"the generator's own {item.img_size} px frames, as the demo detector was trained on them "
                         "(no face detection)", dict(composite=False, size=item.img_size), "none")}
    summary, results = [], []
    for name, (what, video_args, detector) in passes.items():
        print(f"\n== demo videos {what}", flush=True)
        videos = write_forgery_videos(out / name / "videos", people=2, num_frames=8, **video_args)
        truth = {str(path): "real" if kind == "real" else f"fake ({kind})" for path, kind in videos}
        args.inputs, args.detector, args.face_detector = [str(path) for path, _ in videos], str(exported), detector
        args.num_frames = min(args.num_frames, 8)
        args.output, args.save_faces = str(out / name / "predictions.jsonl"), str(out / name / "faces.png")
        found, threshold = run(args, truth)
        called = [(decide(r.score, threshold) if r.score is not None else None,
                   truth[str(r.input.path)] != "real") for r in found]
        counts = {t: (sum(c == t for c, w in called if w == t), sum(w == t for _, w in called)) for t in (False, True)}
        summary.append(f"  {name}: {counts[False][0]} of {counts[False][1]} real and {counts[True][0]} of "
                       f"{counts[True][1]} fake videos called correctly at threshold {threshold:g}")
        results += found
    print("\ndemo summary (the demo detector is a tiny ViT fine-tuned for minutes on synthetic forgeries):")
    print("\n".join(summary))
    return results


def main(argv: list[str] | None = None) -> int:
    args = predict_parser().parse_args(argv)
    check_args(args)
    results = run_demo(args) if args.demo else run(args)[0]
    return 0 if any(r.score is not None for r in results) else 1

