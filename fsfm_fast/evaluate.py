"""Evaluate a detector on any number of test sets in one run: ``python -m fsfm_fast.evaluate``.

    python -m fsfm_fast.evaluate --checkpoint runs/ff/checkpoint-best.pth \\
        --test CDF=/data/CDF-v2 --test DFDC=/data/DFDC --test DFDCP=/data/DFDCP --test WDF=/data/WDF

The detector is a checkpoint of ``finetune`` / ``finetune_fas`` or an export folder of ``export`` (its
config.json carries the inference contract and the evaluation transform); an export holding
``model.onnx`` can be scored with onnxruntime on the CPU (``--runtime``, ``fsfm_fast.onnx_runtime``).
A test set is ``NAME=PATH[,PATH...]``; each PATH is a dataset root with a ``test/`` folder, a folder of
class folders, a split file, or a DeepfakeBench dataset JSON (``dfb:JSON[:SPLIT[:COMPRESSION[:METHODS[:ROOT]]]]``;
``data/labelled.py``, ``data/deepfakebench.py``). Any number of processes (``torchrun``): each
scores a disjoint, unpadded share of every set, the scores are gathered, and the metrics are computed
once over the whole set (``metrics.py``): frame level (AUC, AP, EER, accuracy and balanced accuracy at
the decision threshold) and video level (a video's score is the mean of its frames'). A set whose fakes come in
several class folders is also scored per class folder (reals against that folder's fakes), and those
the detector never saw in training are marked unseen. The score is the probability of the detector's
positive class (P(fake), or P(attack) for an anti-spoofing detector) and a sample is called positive when
it is ``>=`` the threshold: ``--threshold``, else the one the detector records (``fsfm_fast.inference``),
else 0.5; the table and ``metrics.json`` say which.

Outputs in ``--output_dir``: ``metrics.json`` (``{set: {"frame": {...}, "video": {...}, "n_images",
"n_videos", ...}}``), ``scores.csv`` (set, path, video, class, label, score), ``roc.png`` (a curve per set
and per fake class), ``table.md`` (the printed table), ``evaluated.json`` (the checkpoint and test sets
these are of: evaluating them again replaces them; another evaluation there needs ``--overwrite``), and
``skipped.tsv`` when images could not be read. With no flags it evaluates the demo detector of
``python -m fsfm_fast.finetune`` on its synthetic test set.
"""
from __future__ import annotations

import csv
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from .detector_args import evaluate_parser
from .runtime import cli

if __name__ == "__main__":  # -h and flag errors answer before torch and timm are imported (the imports below)
    sys.exit(cli.run_verb("fsfm_fast.evaluate", lambda argv: evaluate_parser().parse_args(argv), "fsfm_fast.evaluate"))

import numpy as np
import torch
from sklearn.metrics import roc_curve
from torch.utils.data import DataLoader

from .runtime import flags
from .runtime.flags import parse_tests
from .demo import demo_evaluation
from .engine import run_folder
from .data.labelled import LabelledImages, collate_labelled, samples_from
from .data.samples import Sample, parse_class_map
from .runtime.devices import autocast, autocast_dtype, device_type, resolve_device
from .runtime.distributed import DistInfo, barrier, gather_objects, gather_rows, process_group
from .inference import positive_probability
from .metrics import METRIC_KEYS, frame_metrics, video_metrics
from .models.detector import eval_transform
from .models.loading import load_detector
from .formats import EXPORT_CONFIG
from .scorer import detector_path, load_scorer
from .onnx_runtime import choose_runtime
from .runtime.signals import ignore_stop_signals, shutdown_workers, stop_signals_held

TEST_SPLIT = "test"


# ----------------------------------------------------------------------------------------------
# scoring


@dataclass
class Scores:
    """A whole set's outputs, gathered from every rank, one row per readable sample, by sample index."""
    index: np.ndarray  # [N] int64, increasing
    logits: np.ndarray  # [N, num_classes] float32
    skipped: list[tuple[str, str]]  # (path, reason) of the samples that could not be read
    positive_index: int = 1  # the detector's positive class (inference.Contract)

    @property
    def positive_prob(self) -> np.ndarray:
        """The score: the probability of the positive class, float64 (``inference.positive_probability``)."""
        return positive_probability(self.logits, self.positive_index)



@torch.inference_mode()
def score_dataset(model: torch.nn.Module, dataset: LabelledImages, *, batch_size: int, num_workers: int,
                  device: torch.device, amp_dtype: torch.dtype | None, info: DistInfo = DistInfo(),
                  positive_index: int = 1) -> Scores:
    """Logits of every sample of ``dataset``. Rank r scores samples r, r + world, ... (no padding, so
    nothing is counted twice), and every rank gets all the rows back."""
    share = list(range(info.rank, len(dataset), info.world_size))
    loader = DataLoader(dataset, batch_size=batch_size, sampler=share, num_workers=num_workers,
                        collate_fn=collate_labelled, pin_memory=device.type == "cuda",
                        worker_init_fn=ignore_stop_signals, generator=torch.Generator())
    num_classes = model.num_classes
    rows, skipped = [torch.zeros(0, 1 + num_classes, dtype=torch.float64, device=device)], []
    with stop_signals_held():  # data workers start here: see fsfm_fast.runtime.signals
        batches = iter(loader)
    try:
        for batch in batches:
            skipped += batch["skipped"]
            if batch["images"].shape[0] == 0:
                continue
            images = batch["images"].to(device, non_blocking=True)
            with autocast(device, amp_dtype):
                logits = model(images)
            index = batch["index"].to(device, non_blocking=True)
            rows.append(torch.cat([index[:, None].double(), logits.double()], dim=1))
    finally:
        shutdown_workers(batches)
    table = gather_rows(torch.cat(rows), info).cpu().numpy()
    order = np.argsort(table[:, 0], kind="stable")
    table = table[order]
    skipped = [item for part in gather_objects(skipped, info) for item in part]
    return Scores(table[:, 0].astype(np.int64), table[:, 1:].astype(np.float32), skipped, positive_index)


# ----------------------------------------------------------------------------------------------
# metrics of a set


def summarize(labels: np.ndarray, scores: np.ndarray, videos: np.ndarray, threshold: float = 0.5) -> dict:
    """Frame- and video-level metrics of one group of samples."""
    return {"frame": frame_metrics(labels, scores, threshold), "video": video_metrics(videos, labels, scores, threshold),
            "n_images": int(labels.size), "n_videos": int(np.unique(videos).size),
            "n_real": int((labels == 0).sum()), "n_fake": int((labels == 1).sum())}


def set_metrics(samples: list[Sample], scores: Scores, train_classes=(), threshold: float = 0.5) -> dict:
    """``summarize`` of a whole set; with several fake class folders, also each folder's fakes against
    all the reals (``by_class``), and the folders seen or not seen in training together (``groups``)."""
    picked = [samples[i] for i in scores.index]
    labels = np.array([s.label for s in picked], dtype=np.int64)
    videos = np.array([s.video for s in picked])
    classes = np.array([s.cls for s in picked])
    prob = scores.positive_prob
    entry = summarize(labels, prob, videos, threshold)
    fake_classes = sorted(set(classes[labels == 1].tolist()))
    if len(fake_classes) > 1:
        seen = {c.lower() for c in train_classes}
        real = labels == 0
        entry["by_class"] = {}
        for cls in fake_classes:
            keep = real | (classes == cls)
            entry["by_class"][cls] = {**summarize(labels[keep], prob[keep], videos[keep], threshold),
                                      "seen_in_training": cls.lower() in seen}
        if seen:
            groups = {"seen": [c for c in fake_classes if c.lower() in seen],
                      "unseen": [c for c in fake_classes if c.lower() not in seen]}
            if groups["seen"] and groups["unseen"]:
                entry["groups"] = {}
                for name, members in groups.items():
                    keep = real | np.isin(classes, members)
                    entry["groups"][name] = {**summarize(labels[keep], prob[keep], videos[keep], threshold),
                                             "classes": members}
    entry["n_skipped"] = len(scores.skipped)
    return entry


# ----------------------------------------------------------------------------------------------
# outputs


def _fmt(x: float) -> str:
    return "  n/a" if x is None or not np.isfinite(x) else f"{x:.4f}"


def format_table(metrics: dict) -> str:
    """A markdown table: one row per set, then its per-class and seen/unseen rows."""
    head = ("| set | images | videos | frame AUC | frame AP | frame EER | frame acc | frame bal.acc "
            "| video AUC | video EER | video acc |")
    lines = [head, "|" + " --- |" * 11]

    def row(name: str, e: dict) -> str:
        f, v = e["frame"], e["video"]
        cells = [name, str(e["n_images"]), str(e["n_videos"])] + [_fmt(f[k]) for k in METRIC_KEYS] + \
                [_fmt(v[k]) for k in ("auc", "eer", "acc")]
        return "| " + " | ".join(cells) + " |"

    for name, entry in metrics.items():
        lines.append(row(f"**{name}**", entry))
        for cls, e in entry.get("by_class", {}).items():
            lines.append(row(f"{name} / {cls} ({'seen' if e['seen_in_training'] else 'unseen'})", e))
        for group, e in entry.get("groups", {}).items():
            lines.append(row(f"{name} / all {group} types", e))
    return "\n".join(lines)


def roc_curves(name: str, picked: list[Sample], prob: np.ndarray, entry: dict
               ) -> dict[str, tuple[np.ndarray, np.ndarray, float]]:
    """The frame-level ROC curves of one scored set, named as the rows of its table: the whole set, then
    each fake class against all the reals (``set_metrics``'s ``by_class``), whose differences the pooled
    curve hides. A group without both labels has no curve."""
    labels = np.array([s.label for s in picked], dtype=np.int64)
    classes = np.array([s.cls for s in picked])
    parts = [(name if "by_class" not in entry else f"{name} (all types)", np.ones(labels.size, bool), entry)]
    for cls, e in entry.get("by_class", {}).items():
        parts.append((f"{name} / {cls} ({'seen' if e['seen_in_training'] else 'unseen'})",
                      (labels == 0) | (classes == cls), e))
    curves = {}
    for label, keep, e in parts:
        if np.unique(labels[keep]).size == 2:
            fpr, tpr, _ = roc_curve(labels[keep], prob[keep])
            curves[label] = (fpr, tpr, e["frame"]["auc"])
    return curves


def write_outputs(out_dir: Path, metrics: dict, scored: dict[str, tuple[list[Sample], Scores]],
                  header: str) -> str:
    from .plots import plot_roc
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=1, allow_nan=True) + "\n", encoding="utf-8")
    curves, skipped = {}, []
    with (out_dir / "scores.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["set", "path", "video", "class", "label", "score"])
        for name, (samples, scores) in scored.items():
            prob = scores.positive_prob
            for i, p in zip(scores.index, prob):
                s = samples[i]
                writer.writerow([name, s.path, s.video, s.cls, s.label, f"{p:.6f}"])
            curves.update(roc_curves(name, [samples[i] for i in scores.index], prob, metrics[name]))
            skipped += [(name, path, reason) for path, reason in scores.skipped]
    if curves:
        plot_roc(curves, out_dir / "roc.png", title="frame-level ROC")
    if skipped:
        with (out_dir / "skipped.tsv").open("w", encoding="utf-8") as f:
            f.write("set\tpath\treason\n")
            f.writelines(f"{n}\t{p}\t{' '.join(str(r).split())}\n" for n, p, r in skipped)
    table = header + "\n\n" + format_table(metrics) + "\n"
    (out_dir / "table.md").write_text(table, encoding="utf-8")
    return table


# ----------------------------------------------------------------------------------------------
# the verb


def selection_note(ckpt: dict) -> str:
    sel = ckpt.get("selection")
    if not sel:
        return f"the last checkpoint of its run (iteration {ckpt.get('iteration', '?')}), no selection"
    return f"{sel['description']}, at iteration {sel['iteration']} ({sel['metric']} {sel['value']:.4f})"


@dataclass
class Detector:
    """What evaluation needs of a detector, from a checkpoint or an export folder."""
    model: torch.nn.Module  # or an onnx_runtime.OnnxModel
    transform: object
    contract: object  # inference.Contract
    train_classes: tuple[str, ...]
    selection: dict  # {"description", "target_domain", ...}; {} when unknown
    what: str  # for the table's header


def load_evaluated(checkpoint: str | Path, eval_resize: str | None, runtime: str = "torch") -> Detector:
    """A detector checkpoint, or an export folder through ``runtime`` (torch or onnx)."""
    if Path(checkpoint).is_dir():
        scorer = load_scorer(str(checkpoint), runtime, eval_resize)
        record = scorer.record
        selection = {"description": record["selection"]} if record.get("selection") else {}
        return Detector(scorer.model, scorer.transform, scorer.contract, tuple(record.get("train_classes") or ()),
                        selection, f"export {scorer.description}, recorded eval transform"
                        + (f" with '{eval_resize}' resize" if eval_resize else ""))
    model, config, ckpt = load_detector(checkpoint)
    return Detector(model, eval_transform(config, eval_resize), config.contract, tuple(config.train_classes),
                    ckpt.get("selection") or {}, f"checkpoint {checkpoint}: {config.model} at {config.img_size}px, "
                    f"'{eval_resize or config.eval_resize}' eval resize\nselected by: {selection_note(ckpt)}")


def run_evaluation(checkpoint: str | Path, tests: dict[str, str], output_dir: str | Path, *, batch_size: int = 64,
                   num_workers: int = 4, device: torch.device, amp_dtype: torch.dtype | None,
                   info: DistInfo = DistInfo(), eval_resize: str | None = None, class_map: dict | None = None,
                   threshold: float | None = None, runtime: str = "torch") -> dict:
    """Score every test set with the detector of ``checkpoint`` (a checkpoint, or an export folder run by
    ``runtime``); the main process writes the outputs and prints the table. ``threshold``: None takes the
    detector's recorded one, else 0.5. Returns the metrics (on every rank)."""
    sets = {name: samples_from(spec, TEST_SPLIT, class_map) for name, spec in tests.items()}  # bad paths fail first
    detector = load_evaluated(checkpoint, eval_resize, runtime)
    model, contract, transform = detector.model, detector.contract, detector.transform
    threshold, threshold_source = contract.resolve_threshold(threshold)
    decision = {"score": contract.score, "threshold": threshold, "threshold_source": threshold_source}
    model.to(device).eval()
    metrics, scored = {}, {}
    selection = detector.selection
    for name, samples in sets.items():
        scores = score_dataset(model, LabelledImages(samples, transform), batch_size=batch_size,
                               num_workers=num_workers, device=device, amp_dtype=amp_dtype, info=info,
                               positive_index=contract.positive_index)
        if scores.index.size == 0:
            raise cli.UsageError(f"--test {name}: none of its {len(samples)} images could be read "
                                 f"(first: {scores.skipped[0][0]}: {scores.skipped[0][1]})")
        metrics[name] = {**set_metrics(samples, scores, detector.train_classes, threshold),
                         "selection": selection.get("description", "none (last checkpoint)"),
                         "target_domain_selection": bool(selection.get("target_domain", False)), **decision}
        scored[name] = (samples, scores)
    if info.is_main:
        header = (f"{detector.what}\nscore {contract.score}; called {contract.positive_class} when score >= "
                  f"{threshold:g} ({threshold_source})")
        table = write_outputs(Path(output_dir), metrics, scored, header)
        run_folder.record_evaluation(output_dir, run_folder.evaluation_of(checkpoint, tests))
        print(table)
        print(f"wrote metrics.json, scores.csv, roc.png and table.md to {output_dir}")
    barrier(info)
    return metrics


def main(argv: list[str] | None = None) -> int:
    args = evaluate_parser().parse_args(argv)
    tests = parse_tests(args.test)
    if args.checkpoint is None and not tests:
        args.checkpoint, tests = demo_evaluation()
    elif args.checkpoint is None or not tests:
        raise cli.UsageError("give both --checkpoint and at least one --test NAME=PATH (or neither, for the demo)")
    flags.check(args)
    detector = detector_path(args.checkpoint)  # an export's weights file stands for its folder
    if not (detector.is_file() or (detector / EXPORT_CONFIG).is_file()):
        raise cli.UsageError(f"--checkpoint {args.checkpoint} is neither a checkpoint nor an export folder (config.json)")
    runtime = choose_runtime(args.runtime, detector, args.device, args.precision)
    default_out = detector / "eval" if detector.is_dir() else detector.parent / "eval"
    output_dir = Path(args.output_dir) if args.output_dir else default_out
    with process_group(device_type(args.device)) as info:
        if info.is_main:
            cli.ensure_writable_dir(output_dir)
            run_folder.claim_evaluation(output_dir, run_folder.evaluation_of(str(detector), tests),
                                        overwrite=args.overwrite)
        device = torch.device("cpu") if runtime == "onnx" else resolve_device(args.device, info)
        run_evaluation(detector, tests, output_dir, batch_size=args.batch_size, num_workers=args.num_workers,
                       device=device, amp_dtype=autocast_dtype(args.precision, device), info=info,
                       eval_resize=args.eval_resize, class_map=parse_class_map(args.class_map),
                       threshold=args.threshold, runtime=runtime)
    return 0

