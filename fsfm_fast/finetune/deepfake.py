"""Fine-tune a pretrained FSFM encoder into a deepfake detector: ``python -m fsfm_fast.finetune``.

The recipe is MAE fine-tuning, the paper's deepfake setting (SPEC section 7): AdamW with timm's
layer-wise lr decay groups, lr = blr x effective batch / 256, per-iteration warmup + cosine, drop path,
timm's Mixup/CutMix with label smoothing, timm's RandAugment + random erasing, autocast, gradient
clipping and accumulation, DDP through ``torchrun``. The checkpoint kept is the best on the SOURCE
validation split (``--select_metric loss|auc``); selecting on a target domain needs
``--target_domain_selection``, whose checkpoints say so. Flag names follow the reference's
``main_finetune_DfD.py``. ``--adapter fs`` trains the FS-Adapter on the frozen encoder instead
(``models/adapter.py``), with the authors' adapter recipe where the flags are not given.

With no data it runs the embedded synthetic forgery benchmark on the CPU in minutes: it trains on
face swaps and local reenactments of synthetic people, then tests on unseen upsampling artefacts and
whole-face re-renders (``data/forgery.py``), starting from the default pretraining run's checkpoint
(``output_demo/``) when there is one. Everything lands in ``output_demo_finetune/``; the detector is
``output_demo_finetune/checkpoint-best.pth``.
"""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import torch
from PIL import Image
from timm.data import auto_augment as timm_auto_augment
from timm.data import create_transform
from timm.optim import param_groups_layer_decay

from .. import demo
from ..data.forgery import write_forgery_benchmark
from ..data.labelled import LabelledImages, count_labels, read_split_file, samples_from
from ..data.samples import Sample, parse_class_map
from ..data.loaders import labelled_train_data
from ..engine.checkpoint import plain_args
from ..engine.run_log import RunLog
from ..engine.schedules import cosine_lr
from ..engine.trainer import RunSettings, Selection, Task, Trainer, open_run, whole_cycles, write_json
from ..evaluate import parse_tests, run_evaluation
from ..formats import BEST
from ..models.detector import DetectorConfig, eval_transform
from ..runtime import cli
from ..runtime.devices import device_type, fused
from ..runtime.distributed import DistInfo, barrier, process_group
from .detectors import (DetectionLoss, detector_checkpointing, load_encoder, mixup_active,
                        normalisation, run_place, validator)

from .args import SELECT_MODES, parse_args


# ----------------------------------------------------------------------------------------------
# data


def write_demo_data(args, info: DistInfo) -> Path:
    root = Path(args.output_dir) / demo.FORGERY_DATA
    try:
        counts = dict(zip(("train", "val", "test"), (int(x) for x in args.synthetic_identities.split(","))))
    except ValueError:
        raise cli.UsageError(f"--synthetic_identities takes three counts, got {args.synthetic_identities!r}") from None
    if info.is_main:
        try:
            write_forgery_benchmark(root, seed=args.seed, size=args.synthetic_size or args.input_size,
                                    frames_per_video=args.synthetic_frames, identities=counts, say=cli.say)
        except ValueError as exc:
            raise cli.UsageError(str(exc)) from None
    barrier(info)
    return root


def load_splits(args) -> dict[str, list[Sample]]:
    """Training and source-validation samples, plus the target-domain validation sets asked for."""
    class_map = parse_class_map(args.class_map)
    if args.train_split:
        base = Path(args.dataset_abs_path) if args.dataset_abs_path else None
        splits = {"train": read_split_file(Path(args.train_split), class_map, base, args.split_delimiter),
                  "val": read_split_file(Path(args.val_split), class_map, base, args.split_delimiter)}
    else:
        roots = ",".join(args.data_path)  # samples_from keeps the videos of different roots apart
        splits = {split: samples_from(roots, split, class_map) for split in ("train", "val")}
    for name, spec in parse_tests(args.target_domain_selection).items():
        splits[f"target:{name}"] = samples_from(spec, "val", class_map)
    return splits


def check_splits(splits: dict[str, list[Sample]], select_metric: str) -> None:
    """Refuse, before any training, data that cannot give a detector or a selection."""
    train = count_labels(splits["train"])
    if min(train.values()) == 0:
        raise cli.UsageError(f"the training split needs real and fake images, it has {train}")
    for name, samples in splits.items():
        counts = count_labels(samples)
        if name != "train" and select_metric == "auc" and min(counts.values()) == 0:
            raise cli.UsageError(f"--select_metric auc needs real and fake images in validation split '{name}', "
                                 f"which has {counts}: AUC is undefined there; use --select_metric loss")


def _posterize(img, bits_to_keep, **kwargs):
    """timm's posterize op, except that keeping 0 bits gives the black image that Pillow < 13 gave:
    RandAugment's PosterizeIncreasing asks for 0 bits at magnitude 10, which Pillow 13 refuses."""
    if bits_to_keep <= 0:
        return Image.new(img.mode, img.size)
    return timm_auto_augment.posterize(img, bits_to_keep, **kwargs)


def train_transform(args, mean, std):
    for name in ("Posterize", "PosterizeIncreasing", "PosterizeOriginal"):
        timm_auto_augment.NAME_TO_OP[name] = _posterize  # before timm builds its ops from this table
    if args.no_augment:
        return create_transform(args.input_size, is_training=False, interpolation="bicubic", crop_pct=1.0,
                                crop_mode="squash", mean=tuple(mean), std=tuple(std))
    return create_transform(args.input_size, is_training=True, auto_augment=args.aa, color_jitter=args.color_jitter,
                            interpolation="bicubic", re_prob=args.reprob, re_mode=args.remode, re_count=args.recount,
                            mean=tuple(mean), std=tuple(std))


# ----------------------------------------------------------------------------------------------
# model, loss, validation


def _selections(args, splits) -> list[Selection]:
    mode = SELECT_MODES[args.select_metric]
    out = [Selection(BEST, "val", args.select_metric, mode)]
    for split in splits:
        if split.startswith("target:"):
            name = re.sub(r"[^A-Za-z0-9_.-]", "_", split.split(":", 1)[1])
            out.append(Selection(f"{BEST}-target_{name}", split, args.select_metric, mode, target_domain=True))
    return out


# ----------------------------------------------------------------------------------------------
# the run


def train(args) -> dict:
    with process_group(device_type(args.device)) as info:
        return _train(args, info)


def _train(args, info: DistInfo) -> dict:
    device, amp_dtype, out_dir = run_place(args, info)
    if args.demo:
        args.data_path = [str(write_demo_data(args, info))]
        args.test = args.test or [f"synthetic={args.data_path[0]}"]
    splits = load_splits(args)
    check_splits(splits, args.select_metric)
    tests = parse_tests(args.test)  # malformed test sets fail before training, not after it

    model, config, encoder = build_detector(args, splits, info)
    model.to(device)
    task, settings = build_task(args, model, config, encoder, splits, info, device, amp_dtype)
    log = RunLog(out_dir, enabled=info.is_main, total=settings.stop_iter)
    manager, resumed = open_run(out_dir, keep_last=args.keep_last, resume=args.resume, args=settings.args, info=info,
                                say=log.message)
    trainer = Trainer(task, settings, info, log, manager, resumed)
    _announce(args, info, device, amp_dtype, splits, encoder, config, task.data, log)
    summary = {**trainer.run(), "pretrained": encoder.path if encoder else None}
    if info.is_main:
        write_json(out_dir / "summary.json", summary)
    best = summary["best_checkpoints"].get(BEST)
    if summary["stopped_by_signal"]:
        log.message(f"stopped by signal at iteration {summary['iteration']}; continue with --resume auto")
    elif tests and best:
        summary["test"] = run_evaluation(best, tests, out_dir / "eval", batch_size=args.eval_batch_size,
                                         num_workers=args.num_workers, device=device, amp_dtype=amp_dtype, info=info,
                                         class_map=parse_class_map(args.class_map))
    return summary


def build_detector(args, splits: dict[str, list[Sample]], info: DistInfo):
    """(model, its DetectorConfig, PretrainedEncoder or None): the detector with its pretrained encoder,
    and the input normalisation that goes with that encoder."""
    torch.manual_seed(args.seed)  # the same initial head on every rank
    config = DetectorConfig(model=args.model, img_size=args.input_size,
                            global_pool="avg" if args.global_pool else "cls", drop_path_rate=args.drop_path,
                            eval_resize=args.eval_resize, train_classes=tuple(sorted({s.cls for s in splits["train"]})),
                            adapter="" if args.adapter == "none" else args.adapter,
                            adapter_reduction=args.adapter_reduction)
    model = config.build()
    encoder = load_encoder(model, config, args, info)
    mean, std, source = normalisation(args, encoder)
    torch.manual_seed(args.seed + info.rank)  # drop path differs per rank
    return model, dataclasses.replace(config, mean=tuple(mean), std=tuple(std), mean_std_source=source), encoder


def build_task(args, model, config: DetectorConfig, encoder, splits, info: DistInfo, device, amp_dtype
               ) -> tuple[Task, RunSettings]:
    """The deepfake task for the engine: data, optimizer, schedule, loss, validation, selection."""
    train_set = LabelledImages(splits["train"], train_transform(args, config.mean, config.std), seed=args.seed)
    data = labelled_train_data(train_set, batch_size=args.batch_size, num_workers=args.num_workers, seed=args.seed,
                               rank=info.rank, world_size=info.world_size, device=device)
    eval_tf = eval_transform(config)
    val_sets = {name: LabelledImages(samples, eval_tf) for name, samples in splits.items() if name != "train"}
    args.lr = args.lr if args.lr is not None else args.blr * effective_batch(args, info) / 256
    ipe = data.iters_per_epoch
    total = args.epochs * ipe
    groups = param_groups_layer_decay(model, weight_decay=args.weight_decay,
                                      no_weight_decay_list=model.no_weight_decay(), layer_decay=args.layer_decay)
    record, restore = detector_checkpointing(model, config, encoder)
    detection_loss = DetectionLoss.from_args(args)
    task = Task(
        model=model, optimizer=_adamw(groups, args.lr), data=data,
        loss=lambda model, batch, iteration: [detection_loss(model, batch)], min_batch=2 if mixup_active(args) else 1,
        validate=validator(val_sets, batch_size=args.eval_batch_size, num_workers=args.num_workers, device=device,
                           amp_dtype=amp_dtype, info=info),
        selections=_selections(args, splits),
        lr_at=lambda it: cosine_lr(it, base_lr=args.lr, min_lr=args.min_lr,
                                   warmup_iters=round(args.warmup_epochs * ipe), total_iters=total),
        record=record, restore=restore)
    stop_iter = min(total, whole_cycles(args.max_steps, args.accum_iter)) if args.max_steps else total
    settings = RunSettings(output_dir=Path(args.output_dir), stop_iter=stop_iter,
                           eval_every=args.eval_every or ipe, device=device, amp_dtype=amp_dtype,
                           accum_iter=args.accum_iter, clip_grad=args.clip_grad, save_every=args.save_every,
                           keep_last=args.keep_last, max_nonfinite=args.max_nonfinite, log_every=args.log_every,
                           seed=args.seed, resume=args.resume, args=plain_args(args))
    return task, settings


def effective_batch(args, info: DistInfo) -> int:
    return args.batch_size * args.accum_iter * info.world_size


def _adamw(groups: list[dict], lr: float) -> torch.optim.Optimizer:
    return fused(torch.optim.AdamW, groups, lr=lr)


def _announce(args, info, device, amp_dtype, splits, encoder, config, data, log) -> None:
    """One line that says what this run is."""
    counts = {name: count_labels(samples) for name, samples in splits.items()}
    start = (f"from {encoder.path} ({encoder.kind}"
             + (f", pos_embed resampled from {encoder.pos_embed_resampled_from}" if encoder.pos_embed_resampled_from
                else "") + ")") if encoder else "FROM SCRATCH (no --finetune)"
    precision = "fp32" if amp_dtype is None else str(amp_dtype).split(".")[-1]
    log.message(f"fsfm_fast finetune: {args.model} at {args.input_size}px {start}, on {device} (x{info.world_size}), "
                f"precision {precision}; images {counts}; {data.iters_per_epoch} it/epoch, effective batch "
                f"{effective_batch(args, info)}, lr {args.lr:.3g}; mean/std from {config.mean_std_source}"
                + (" [synthetic forgery benchmark]" if args.demo else ""))


def main(argv: list[str] | None = None) -> int:
    summary = train(parse_args(argv))
    return 0 if summary["iteration"] or summary["stopped_by_signal"] else 1

