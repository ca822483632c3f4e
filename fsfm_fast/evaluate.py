"""Evaluate a detector on any number of test sets in one run: ``python -m fsfm_fast.evaluate``.

    python -m fsfm_fast.evaluate --checkpoint runs/ff/checkpoint-best.pth \\
        --test CDF=/data/CDF-v2 --test DFDC=/data/DFDC --test DFDCP=/data/DFDCP --test WDF=/data/WDF

A test set is ``NAME=PATH[,PATH...]``; each PATH is a dataset root with a ``test/`` folder, a folder of
class folders, or a split file (``data/labelled.py``). Any number of processes (``torchrun``): each
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

import numpy as np
import torch
from sklearn.metrics import roc_curve
from timm.data import create_transform
from torch.utils.data import DataLoader

from .runtime import cli, flags
from .demo import demo_evaluation
from .engine import run_folder
from .data.labelled import LabelledImages, Sample, collate_labelled, parse_class_map, samples_from
from .runtime.devices import autocast, autocast_dtype, device_type, resolve_device
from .runtime.distributed import DistInfo, barrier, gather_objects, gather_rows, process_group
from .inference import positive_probability
from .metrics import METRIC_KEYS, frame_metrics, video_metrics
from .models.detector import DetectorConfig, load_detector
from .runtime.signals import ignore_stop_signals, shutdown_workers, stop_signals_held

TEST_SPLIT = "test"


# ----------------------------------------------------------------------------------------------
# scoring


def eval_transform(config: DetectorConfig, resize: str | None = None):
    """``crop``: resize the shorter side to img_size / crop_pct (256 for 224), centre crop img_size;
    ``plain``: resize the whole image to img_size x img_size. Bicubic, then the detector's mean/std."""
    crop_pct, crop_mode = config.eval_crop(resize)
    return create_transform(config.img_size, is_training=False, interpolation="bicubic", crop_pct=crop_pct,
                            crop_mode=crop_mode, mean=tuple(config.mean), std=tuple(config.std))


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


def parse_tests(items: list[str], flag: str = "--test") -> dict[str, str]:
    """``["NAME=PATH[,PATH...]", ...]`` of a repeatable ``flag`` -> {NAME: PATH}."""
    tests = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise cli.UsageError(f"{flag} takes NAME=PATH[,PATH...], got {item!r}")
        if name.strip() in tests:
            raise cli.UsageError(f"{flag} {name.strip()} is given twice")
        tests[name.strip()] = path.strip()
    return tests


def selection_note(ckpt: dict) -> str:
    sel = ckpt.get("selection")
    if not sel:
        return f"the last checkpoint of its run (iteration {ckpt.get('iteration', '?')}), no selection"
    return f"{sel['description']}, at iteration {sel['iteration']} ({sel['metric']} {sel['value']:.4f})"


def run_evaluation(checkpoint: str | Path, tests: dict[str, str], output_dir: str | Path, *, batch_size: int = 64,
                   num_workers: int = 4, device: torch.device, amp_dtype: torch.dtype | None,
                   info: DistInfo = DistInfo(), eval_resize: str | None = None, class_map: dict | None = None,
                   threshold: float | None = None) -> dict:
    """Score every test set with the detector of ``checkpoint``; the main process writes the outputs
    and prints the table. ``threshold``: None takes the detector's recorded one, else 0.5. Returns the
    metrics (on every rank)."""
    sets = {name: samples_from(spec, TEST_SPLIT, class_map) for name, spec in tests.items()}  # bad paths fail first
    model, config, ckpt = load_detector(checkpoint)
    contract = config.contract
    threshold, threshold_source = contract.resolve_threshold(threshold)
    decision = {"score": contract.score, "threshold": threshold, "threshold_source": threshold_source}
    model.to(device).eval()
    transform = eval_transform(config, eval_resize)
    metrics, scored = {}, {}
    selection = ckpt.get("selection") or {}
    for name, samples in sets.items():
        scores = score_dataset(model, LabelledImages(samples, transform), batch_size=batch_size,
                               num_workers=num_workers, device=device, amp_dtype=amp_dtype, info=info,
                               positive_index=contract.positive_index)
        if scores.index.size == 0:
            raise cli.UsageError(f"--test {name}: none of its {len(samples)} images could be read "
                                 f"(first: {scores.skipped[0][0]}: {scores.skipped[0][1]})")
        metrics[name] = {**set_metrics(samples, scores, config.train_classes, threshold),
                         "selection": selection.get("description", "none (last checkpoint)"),
                         "target_domain_selection": bool(selection.get("target_domain", False)), **decision}
        scored[name] = (samples, scores)
    if info.is_main:
        header = (f"checkpoint {checkpoint}: {config.model} at {config.img_size}px, "
                  f"'{eval_resize or config.eval_resize}' eval resize\nselected by: {selection_note(ckpt)}\n"
                  f"score {contract.score}; called {contract.positive_class} when score >= {threshold:g} "
                  f"({threshold_source})")
        table = write_outputs(Path(output_dir), metrics, scored, header)
        run_folder.record_evaluation(output_dir, run_folder.evaluation_of(checkpoint, tests))
        print(table)
        print(f"wrote metrics.json, scores.csv, roc.png and table.md to {output_dir}")
    barrier(info)
    return metrics


def get_args_parser():
    p = cli.argument_parser("fsfm_fast.evaluate", __doc__)
    p.add_argument("--checkpoint", default=None,
                   help="a detector checkpoint of fsfm_fast.finetune (default: the demo detector)")
    p.add_argument("--test", action="append", default=[], metavar="NAME=PATH[,PATH...]",
                   help="a test set; repeat for several (default: the demo's synthetic test set)")
    p.add_argument("--output_dir", default=None, help="default: <checkpoint folder>/eval")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the results of another evaluation (other checkpoint or test sets) in --output_dir")
    flags.add_batch_flag(p, 64)
    flags.add_worker_flag(p, 4)
    flags.add_device_flags(p)
    p.add_argument("--eval_resize", default=None, choices=["crop", "plain"],
                   help="override the detector's: crop = resize to img_size/0.875 and centre crop, "
                        "plain = resize to img_size")
    p.add_argument("--class_map", action="append", default=[], metavar="NAME=real|fake[,...]",
                   help="label class folders the naming rule does not know")
    p.add_argument("--threshold", default=None, type=float,
                   help="score (P(fake), P(attack)) at or above which a sample is called the positive class, for "
                        "the accuracies (default: the detector's recorded threshold, else 0.5)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    tests = parse_tests(args.test)
    if args.checkpoint is None and not tests:
        args.checkpoint, tests = demo_evaluation()
    elif args.checkpoint is None or not tests:
        raise cli.UsageError("give both --checkpoint and at least one --test NAME=PATH (or neither, for the demo)")
    flags.check(args)
    if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
        raise cli.UsageError(f"--threshold is a probability in [0, 1], got {args.threshold}")
    if not Path(args.checkpoint).is_file():
        raise cli.UsageError(f"--checkpoint {args.checkpoint} does not exist")
    output_dir = Path(args.output_dir) if args.output_dir else Path(args.checkpoint).parent / "eval"
    with process_group(device_type(args.device)) as info:
        if info.is_main:
            cli.ensure_writable_dir(output_dir)
            run_folder.claim_evaluation(output_dir, run_folder.evaluation_of(args.checkpoint, tests),
                                        overwrite=args.overwrite)
        device = resolve_device(args.device, info)
        run_evaluation(args.checkpoint, tests, output_dir, batch_size=args.batch_size, num_workers=args.num_workers,
                       device=device, amp_dtype=autocast_dtype(args.precision, device), info=info,
                       eval_resize=args.eval_resize, class_map=parse_class_map(args.class_map),
                       threshold=args.threshold)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main, "fsfm_fast.evaluate"))
