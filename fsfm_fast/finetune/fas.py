"""Cross-domain face anti-spoofing: ``python -m fsfm_fast.finetune_fas``.

    python -m fsfm_fast.finetune_fas --finetune checkpoint-400.pth --model fsfm_vit_base_patch16 \\
        --source O=/data/fas/OULU --source C=/data/fas/CASIA --source I=/data/fas/ReplayAttack \\
        --target M=/data/fas/MSU --output_dir runs/fas_OCI_to_M

Leave one domain out (SPEC section 7, the reference's MCIO protocol): train on the ``--source`` domains,
test on the ``--target`` one. Each domain is ``<root>/{train,test}/{real, spoof|fake|attack...}/`` with
``<video>_frame_<i>.png`` frames (``data/fas.py``); an attack is 1 and a score is P(attack). The
reference's recipe: every batch holds ``--batch_per_group`` (12) frames of each (source domain, class),
each frame once per pass over its group (``data.sampler.BalancedBatchSampler``); Adam, lr 1e-4, weight
decay 1e-6, 4000 iterations, an evaluation every 100; HSV-saturation and flip augmentation; the
reference's head computed as the reference does (``--head fas``: Linear(d, 512), ReLU, Dropout 0.5 on every
token, scaling across the tokens, the pooled slot into a Linear(512, 2) whose weight is L2-normalised in
place; d is the encoder's width; ``models.heads``), the same modules on the pooled feature (``--head
fas_pooled``, an ablation) or a linear one (``--head linear``). ``--seeds 0,1,2,3,4``
repeats the run and reports mean ± std, as the reference does. ``--adapter fs`` trains the FS-Adapter on
the frozen encoder (``models/adapter.py``), with the authors' FAS adapter recipe (lr 5e-2, weight decay
5e-5, contrastive weight 0.1) where the flags are not given.

Two evaluations, both always reported, each labelled:

- honest: the checkpoint with the best ``--select_metric`` (video HTER) on held-out SOURCE data, and
  the threshold where FAR and FRR meet on those held-out data (exact search over the observed scores),
  frame and video level each their own. The held-out data are a source's ``val/`` folder, or
  ``--val_fraction`` of its training videos (seeded by ``--split_seed``, the same for every seed), listed in
  ``val_split.txt``. The frame-level threshold is written into that checkpoint's detector record as its
  decision threshold (source-selected), so ``evaluate``, ``export`` and ``predict`` use it;
- reference-comparable: the checkpoint with the best video HTER on the TARGET test set and the target's
  own FAR = FRR threshold, both on the reference's grid (0, 1e-4, ..., 1, 1.1), as the reference picks
  them. It uses the target's labels, every output says so, and its threshold is never recorded as a
  decision threshold.

Each gives HTER, AUC and TPR at FPR = 1% (real faces accepted while 1% of attacks are) at frame level
and at video level (a video's score is the mean of its frames'). Outputs in ``--output_dir``:
``metrics.json`` (both evaluations per seed, their mean and std), ``seeds.csv`` (a row per seed,
evaluation and level, in %, then mean and std rows), ``scores.csv`` (every scored frame of every seed
and evaluation), ``table.md`` (what is printed), ``val_split.txt``; each seed's run in ``seed_<s>/``
(log, resume checkpoints, ``checkpoint-best.pth`` honest, ``checkpoint-best-target_<NAME>.pth`` oracle).

With no ``--source``/``--target`` it runs the embedded synthetic benchmark (``data/spoof.py``): four
synthetic camera domains, live faces and print and replay attacks of them; three domains train and
the fourth (``--synthetic_target``) is tested, on the CPU in minutes.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import torch

from .. import demo
from ..data.fas import VAL_SPLIT_FILE, FASData, fas_train_transform, load_fas_data, write_split
from ..data.labelled import LabelledImages
from ..data.samples import Sample, parse_class_map
from ..data.loaders import labelled_train_data
from ..data.spoof import DOMAINS, write_spoof_benchmark
from ..engine.checkpoint import plain_args, save_atomic
from ..engine.run_log import RunLog
from ..engine.trainer import RunSettings, Selection, Task, Trainer, open_run, whole_cycles
from ..evaluate import Scores, score_dataset
from ..formats import safe_load
from ..metrics import THRESHOLD_RULES, fas_levels
from ..models.detector import DetectorConfig, detector_config, eval_transform
from ..runtime import cli
from ..runtime.devices import device_type, fused
from ..runtime.distributed import DistInfo, barrier, process_group
from .detectors import (DetectionLoss, detector_checkpointing, load_encoder, normalisation,
                        run_place, validator)

EVALUATIONS = {
    "honest": "honest: checkpoint and threshold (exact search) chosen on held-out source data",
    "oracle": "reference-comparable: checkpoint and threshold (the reference's grid) chosen on the target test set "
              "(USES TARGET LABELS)",
}
THRESHOLD_RULE = {"honest": "exact", "oracle": "grid"}  # metrics.THRESHOLD_RULES
REPORTED = ("hter", "auc", "tpr_at_fpr_1pct")
from .args import FAS_SELECT_MODES as SELECT_MODES
from .args import parse_fas_args as parse_args


# ----------------------------------------------------------------------------------------------
# data


def demo_domains(args, info: DistInfo) -> None:
    """Write the synthetic benchmark (or reuse the one written before) and point --source/--target at it."""
    root = Path(args.output_dir) / demo.SPOOF_DATA
    try:
        train, test = (int(x) for x in args.synthetic_identities.split(","))
    except ValueError:
        raise cli.UsageError(f"--synthetic_identities takes two counts, got {args.synthetic_identities!r}") from None
    if info.is_main:
        try:
            write_spoof_benchmark(root, seed=args.split_seed, size=args.input_size,
                                  frames_per_video=args.synthetic_frames, identities={"train": train, "test": test},
                                  say=cli.say)
        except ValueError as exc:
            raise cli.UsageError(str(exc)) from None
    barrier(info)
    args.sources = {d: str(root / d) for d in DOMAINS if d != args.synthetic_target}
    args.target_domain = (args.synthetic_target, str(root / args.synthetic_target))


# ----------------------------------------------------------------------------------------------
# evaluation


def _picked(samples: list[Sample], scores: Scores) -> tuple[np.ndarray, np.ndarray]:
    return (np.array([samples[i].video for i in scores.index]),
            np.array([samples[i].label for i in scores.index], dtype=np.int64))


def selection_metrics(dataset: LabelledImages, scores: Scores) -> dict[str, float]:
    """What each validation reports and selects on: video level (the reference's), plus frame HTER/AUC,
    each HTER at the split's own FAR = FRR threshold (exact search), and the video HTER at the reference's
    grid threshold (``hter_grid``, what the reference-comparable selection uses)."""
    picked = (*_picked(dataset.samples, scores), scores.positive_prob)
    levels = fas_levels(*picked)
    grid = fas_levels(*picked, rule=THRESHOLD_RULE["oracle"])
    return {**{k: levels["video"][k] for k in REPORTED}, "frame_hter": levels["frame"]["hter"],
            "frame_auc": levels["frame"]["auc"], "hter_grid": grid["video"]["hter"]}


def honest_metrics(held_out: tuple, target: tuple) -> dict:
    """Target metrics at the thresholds where FAR and FRR meet on the held-out SOURCE data (frame and
    video level each their own, exact search), and the held-out data's own. Each argument: (videos,
    labels, scores)."""
    rule = THRESHOLD_RULE["honest"]
    own = fas_levels(*held_out, rule=rule)
    return {**fas_levels(*target, {level: own[level]["threshold"] for level in own}), "held_out": own,
            "threshold_rule": THRESHOLD_RULES[rule]}


def oracle_metrics(target: tuple) -> dict:
    """Target metrics at the target's own FAR = FRR thresholds on the reference's grid: the reference's
    way, with target labels."""
    rule = THRESHOLD_RULE["oracle"]
    return {**fas_levels(*target, rule=rule), "uses_target_labels": True, "threshold_rule": THRESHOLD_RULES[rule]}


def record_threshold(path: Path, threshold: float, source: str) -> None:
    """Write the honest decision threshold into the detector record of the checkpoint at ``path``
    (atomically), so that evaluate, export and predict carry it."""
    ckpt = safe_load(path)
    config = dataclasses.replace(detector_config(ckpt, path), threshold=float(threshold), threshold_source=source)
    ckpt["detector"] = config.to_dict()
    save_atomic(ckpt, path)


class SeedEvaluation:
    """Both evaluations of one seed's run, from its two selected checkpoints."""

    def __init__(self, model, restore, transform, args, info: DistInfo, device, amp_dtype):
        self.model, self.restore, self.transform = model, restore, transform
        self.score_args = {"batch_size": args.eval_batch_size, "num_workers": args.num_workers, "device": device,
                           "amp_dtype": amp_dtype, "info": info}
        self.rows: list[tuple] = []  # (evaluation, split, sample, score) for scores.csv
        self.skipped: list[tuple[str, str]] = []  # unreadable images: left out of the metrics, named
        self.is_main = info.is_main  # one process rewrites the honest checkpoint

    def _load(self, path: Path) -> dict:
        """Put the checkpoint's weights in the model; say when and how it was chosen."""
        ckpt = safe_load(path)
        self.restore(ckpt, path)
        self.model.eval()
        return {"iteration": ckpt["selection"]["iteration"], "selected_by": ckpt["selection"]["description"]}

    def _score(self, evaluation: str, split: str, samples: list[Sample]):
        scores = score_dataset(self.model, LabelledImages(samples, self.transform), **self.score_args)
        self.skipped += scores.skipped
        self.rows += [(evaluation, split, samples[i], p) for i, p in zip(scores.index, scores.positive_prob)]
        return (*_picked(samples, scores), scores.positive_prob)

    def honest(self, checkpoint: Path, data: FASData) -> dict:
        chosen = self._load(checkpoint)
        found = honest_metrics(self._score("honest", "val", data.val), self._score("honest", "target", data.target))
        threshold = found["held_out"]["frame"]["threshold"]
        if self.is_main and np.isfinite(threshold):
            record_threshold(checkpoint, threshold, "source-selected: FAR = FRR on held-out source data, frame level, "
                                                    f"{THRESHOLD_RULES[THRESHOLD_RULE['honest']]}")
        return {**found, "checkpoint": str(checkpoint), "recorded_threshold": threshold, **chosen}

    def oracle(self, checkpoint: Path, data: FASData) -> dict:
        chosen = self._load(checkpoint)
        return {**oracle_metrics(self._score("oracle", "target", data.target)), "checkpoint": str(checkpoint), **chosen}


def aggregate(per_seed: dict[int, dict]) -> dict:
    """{evaluation: {"label", "seeds": {seed: entry}, "mean"/"std": {level: {metric}}}}: mean and
    population std (``np.std``, as the reference) of HTER, AUC and TPR@FPR=1% over the seeds."""
    out = {}
    for evaluation, label in EVALUATIONS.items():
        seeds = {seed: result[evaluation] for seed, result in per_seed.items()}
        stats = {name: {level: {k: float(fn([e[level][k] for e in seeds.values()])) for k in REPORTED}
                        for level in ("frame", "video")} for name, fn in (("mean", np.mean), ("std", np.std))}
        out[evaluation] = {"label": label, "seeds": seeds, **stats}
    return out


def write_seed_table(path: Path, summary: dict) -> None:
    """``seeds.csv``: a row per (evaluation, level, seed), then its mean and std rows; metrics in %."""
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["evaluation", "level", "run", "hter_%", "auc_%", "tpr_at_fpr_1%_%"])
        for evaluation, entry in summary.items():
            for level in ("video", "frame"):
                rows = [(str(seed), e[level]) for seed, e in entry["seeds"].items()]
                rows += [(name, entry[name][level]) for name in ("mean", "std")]
                for run, values in rows:
                    writer.writerow([evaluation, level, run, *(f"{100 * values[k]:.4f}" for k in REPORTED)])


def format_summary(summary: dict, title: str) -> str:
    lines = [title, "", "| evaluation | level | HTER % | AUC % | TPR@FPR=1% % | runs |",
             "| --- | --- | ---: | ---: | ---: | ---: |"]
    for entry in summary.values():
        for level in ("video", "frame"):
            cells = [f"{100 * entry['mean'][level][k]:.2f} ± {100 * entry['std'][level][k]:.2f}" for k in REPORTED]
            lines.append(f"| {entry['label']} | {level} | " + " | ".join(cells) + f" | {len(entry['seeds'])} |")
    return "\n".join(lines)


def write_outputs(out_dir: Path, summary: dict, protocol: dict, scored: dict[int, list[tuple]], title: str) -> str:
    (out_dir / "metrics.json").write_text(json.dumps({"protocol": protocol, **summary}, indent=1, allow_nan=True,
                                                     default=str) + "\n", encoding="utf-8")
    write_seed_table(out_dir / "seeds.csv", summary)
    with (out_dir / "scores.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["seed", "evaluation", "split", "path", "video", "label", "score"])
        for seed, rows in scored.items():
            writer.writerows([seed, ev, split, s.path, s.video, s.label, f"{p:.6f}"] for ev, split, s, p in rows)
    table = format_summary(summary, title)
    (out_dir / "table.md").write_text(table + "\n", encoding="utf-8")
    return table


# ----------------------------------------------------------------------------------------------
# the run


def run_seed(args, seed: int, data: FASData, info: DistInfo, device, amp_dtype) -> tuple[dict, list] | None:
    """Train one seed, then evaluate both of its selected checkpoints; None when a signal stopped it."""
    out_dir = Path(args.output_dir) / f"seed_{seed}"
    target = args.target_domain[0]
    torch.manual_seed(seed)  # the same initial head on every rank
    config = DetectorConfig(model=args.model, img_size=args.input_size, drop_path_rate=args.drop_path,
                            labels=("real", "attack"), eval_resize="plain", head=args.head,
                            adapter="" if args.adapter == "none" else args.adapter,
                            adapter_reduction=args.adapter_reduction,
                            train_classes=tuple(sorted({s.cls for s in data.train})))
    model = config.build()
    encoder = load_encoder(model, config, args, info)
    mean, std, mean_std_source = normalisation(args, encoder)
    config = dataclasses.replace(config, mean=tuple(mean), std=tuple(std), mean_std_source=mean_std_source)
    model.to(device)
    torch.manual_seed(seed + info.rank)
    eval_tf = eval_transform(config)
    checks = {"val": LabelledImages(data.val, eval_tf), f"target:{target}": LabelledImages(data.target, eval_tf)}
    record, restore = detector_checkpointing(model, config, encoder)
    optimizer = fused(torch.optim.Adam, [p for p in model.parameters() if p.requires_grad], lr=args.lr,
                      weight_decay=args.weight_decay)
    honest = Selection("best", "val", args.select_metric, SELECT_MODES[args.select_metric], later_ties=True)
    oracle = Selection(f"best-target_{re.sub(r'[^A-Za-z0-9_.-]', '_', target)}", f"target:{target}", "hter_grid", "min",
                       target_domain=True, later_ties=True)
    # the reference's plain cross-entropy (+ the adapter's contrastive loss)
    detection_loss = DetectionLoss.plain(args.weight_cl if args.adapter == "fs" else 0.0, args.temperature)
    task = Task(
        model=model, optimizer=optimizer,
        data=labelled_train_data(LabelledImages(data.train, fas_train_transform(args.input_size, mean, std), seed=seed),
                                 batch_size=args.batch_per_group, num_workers=args.num_workers, seed=seed,
                                 rank=info.rank, world_size=info.world_size, device=device,
                                 groups=list(data.groups.values()), iters_per_epoch=args.eval_every),
        loss=lambda model, batch, iteration: [detection_loss(model, batch)],
        validate=validator(checks, batch_size=args.eval_batch_size, num_workers=args.num_workers, device=device,
                           amp_dtype=amp_dtype, info=info, metrics=selection_metrics),
        selections=[honest, oracle], lr_at=lambda it: args.lr, record=record, restore=restore)
    stop_iter = args.iterations
    if args.max_steps:
        stop_iter = min(stop_iter, whole_cycles(args.max_steps, args.accum_iter))
    settings = RunSettings(output_dir=out_dir, stop_iter=stop_iter, eval_every=args.eval_every, device=device,
                           amp_dtype=amp_dtype, accum_iter=args.accum_iter, clip_grad=args.clip_grad,
                           save_every=args.save_every, keep_last=args.keep_last, max_nonfinite=args.max_nonfinite,
                           log_every=args.log_every, seed=seed, resume=args.resume,
                           args={**plain_args(args), "seed": seed})
    if info.is_main:
        cli.ensure_writable_dir(out_dir)
    log = RunLog(out_dir, enabled=info.is_main, total=stop_iter)
    manager, resumed = open_run(out_dir, keep_last=args.keep_last, resume=args.resume, args=settings.args, info=info,
                                say=log.message)
    engine = Trainer(task, settings, info, log, manager, resumed)
    start = f"from {encoder.path} ({encoder.kind})" if encoder else "FROM SCRATCH (no --finetune)"
    log.message(f"seed {seed}: {args.model} at {args.input_size}px {start}, head {args.head}"
                + (", FS-Adapter on the frozen encoder" if config.adapter else "")
                + f"; batches of {args.batch_per_group} x {len(data.groups)} (domain, class) groups on {device}; "
                  f"{args.iterations} iterations, Adam lr {args.lr:g}; mean/std from {mean_std_source}")
    summary = engine.run()
    if summary["stopped_by_signal"]:
        log.message(f"stopped by signal at iteration {summary['iteration']} of seed {seed}; "
                    "continue with --resume auto")
        return None
    evaluation = SeedEvaluation(model, restore, eval_tf, args, info, device, amp_dtype)
    result = {"honest": evaluation.honest(engine.best_path(honest), data),
              "oracle": evaluation.oracle(engine.best_path(oracle), data)}
    for path, reason in dict(evaluation.skipped).items():
        log.message(f"seed {seed}: left out of the evaluation, unreadable: {path} ({reason})")
    return result, evaluation.rows


def train(args, info: DistInfo) -> dict | None:
    """Every seed of the protocol, then both evaluations' summary (None when a signal stopped it)."""
    device, amp_dtype, out_dir = run_place(args, info)
    if args.demo:
        demo_domains(args, info)
    data = load_fas_data(args.sources, args.target_domain, val_fraction=args.val_fraction, split_seed=args.split_seed,
                         class_map=parse_class_map(args.class_map))
    target = args.target_domain[0]
    if info.is_main:
        write_split(out_dir / VAL_SPLIT_FILE, data)
        print(f"sources {', '.join(args.sources)} -> target {target}; frames: train {len(data.train)}, "
              f"held-out source {len(data.val)}, target test {len(data.target)}", flush=True)
    per_seed, scored = {}, {}
    for seed in args.seed_list:
        done = run_seed(args, seed, data, info, device, amp_dtype)
        if done is None:
            return None
        per_seed[seed], scored[seed] = done
    summary = aggregate(per_seed)
    protocol = {"sources": args.sources, "target": dict([args.target_domain]), "seeds": args.seed_list,
                "held_out_source": {"file": VAL_SPLIT_FILE, "per_source": data.split},
                "synthetic_benchmark": args.demo,
                "threshold_rules": {ev: THRESHOLD_RULES[rule] for ev, rule in THRESHOLD_RULE.items()}}
    if info.is_main:
        title = (f"face anti-spoofing, {' + '.join(args.sources)} -> {target}"
                 + (" (synthetic benchmark)" if args.demo else "") + f", {args.model}"
                 + (" + FS-Adapter" if args.adapter == "fs" else "") + f", mean ± std over seeds {args.seeds}")
        print(write_outputs(out_dir, summary, protocol, scored, title))
        print(f"wrote metrics.json, seeds.csv, scores.csv and table.md to {out_dir}")
    barrier(info)
    return summary


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with process_group(device_type(args.device)) as info:
        train(args, info)  # None: stopped by a signal, after saving; --resume auto continues
    return 0

