"""FSFM-3C pretraining as a task of the training engine: the online network (trained) and its EMA
target, the CRFR-P masks of each batch, the losses, and the data's mean/std.

Each step draws the masks on the device with static shapes (every mask hides exactly ``int(ratio * L)``
patches), runs the target and the online network, and after each micro-batch moves the target toward
the online network (the EMA), except after a micro-batch the engine skipped as non-finite.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from timm.optim import param_groups_weight_decay

from .. import ops
from ..data.loaders import build_loader, cached_mean_std
from ..data.synthetic import write_synthetic_dataset
from ..data.identities import write_identity_benchmark
from ..engine.checkpoint import plain_args
from ..engine.schedules import cosine_lr, ema_momentum
from ..engine.trainer import RunSettings, Task, whole_cycles
from ..demo import FACES_DATA
from ..formats import (IMAGENET_MEAN, IMAGENET_STD, MEAN_STD_FILE, PRETRAIN_FORMAT, SELFCHECK_FILE,
                       load_state_dict_strict)
from ..models import TargetNetwork, create_online
from ..probe.monitor import HealthMonitor
from ..probe.sets import read_probe_set
from ..runtime.cli import UsageError
from ..runtime.devices import fused, resolve_device
from ..runtime.distributed import DistInfo, barrier

# What a checkpoint must agree on with the run that resumes it (anything else may change on resume).
SAME_RUN_KEYS = ("model", "input_size", "rep_decoder_pos_embed")
LOSSES = ("loss", "loss_rec_all", "loss_rec_sfr", "loss_cl")
PROBE_IDENTITIES = "synthetic_identities"  # --probe_data synthetic writes them here, in the output folder


def device_for(name: str, info: DistInfo) -> torch.device:
    device = resolve_device(name, info)
    if device.type == "cuda":
        torch.cuda.set_device(device)  # kernels launched without a device guard run here too
    return device


def _data_roots(args: argparse.Namespace, info: DistInfo, say) -> list[Path]:
    if not args.demo:
        return [Path(p) for p in args.data_path]
    root = Path(args.output_dir) / FACES_DATA
    if info.is_main:
        write_synthetic_dataset(root, args.synthetic_images, size=224, seed=args.seed, say=say)
    barrier(info)
    return [root]


def mask_stream(rank: int, iteration: int) -> int:
    """The counter offset of an iteration's masks: with the run's seed it fixes them completely, so
    a resumed run draws the same masks, and the CPU twin and the CUDA kernel draw identical ones."""
    return (rank << 32) | iteration


class Pretraining:
    """The data, networks and optimizer of one pretraining run, and the ``Task`` the engine runs."""

    def __init__(self, args: argparse.Namespace, info: DistInfo, device: torch.device, amp_dtype, say):
        self.args, self.info, self.device, self.amp_dtype = args, info, device, amp_dtype
        self.out_dir = Path(args.output_dir)
        self._build_data(say)
        self._build_networks()
        self.monitor = self._build_monitor()
        self.checked = self._selfcheck(say)

    def _build_data(self, say) -> None:
        args, info = self.args, self.info
        roots = _data_roots(args, info, say)
        if args.normalize_from_IMN:
            self.mean_std = (list(IMAGENET_MEAN), list(IMAGENET_STD))
        else:  # computed by the main process, kept in the output folder for resumed runs and fine-tuning
            if info.is_main:
                cached_mean_std(self.out_dir / MEAN_STD_FILE, roots, args.input_size, args.mean_std_samples,
                                num_workers=args.num_workers, seed=args.seed, say=say)
            barrier(info)
            self.mean_std = cached_mean_std(self.out_dir / MEAN_STD_FILE, roots, args.input_size,
                                            args.mean_std_samples, reuse_only=True)
        self.data = build_loader(roots, *self.mean_std, input_size=args.input_size, batch_size=args.batch_size,
                                 augment=args.augment, seed=args.seed, loader=args.loader, rank=info.rank,
                                 world_size=info.world_size, device=self.device, num_workers=args.num_workers)
        if self.data.iters_per_epoch < 1:
            raise UsageError(f"{len(self.data.dataset)} images cannot fill one batch of {args.batch_size} "
                             f"on each of {info.world_size} processes")
        self.total_iters = args.epochs * self.data.iters_per_epoch
        self.stop_iter = self.total_iters
        if args.max_steps > 0:
            self.stop_iter = min(self.total_iters, whole_cycles(args.max_steps, args.accum_iter))
        self.eff_batch = args.batch_size * args.accum_iter * info.world_size
        if args.lr is None:
            args.lr = args.blr * self.eff_batch / 256

    def _build_networks(self) -> None:
        args, info, device = self.args, self.info, self.device
        # Same initial weights on every rank (DDP would broadcast the online weights, but the target
        # is copied from them before that), then a per-rank stream for anything else.
        torch.manual_seed(args.seed)
        self.online = create_online(args.model, img_size=args.input_size, norm_pix_loss=args.norm_pix_loss,
                                    weight_sfr=args.weight_sfr, weight_cl=args.weight_cl, cl_loss=args.cl_loss,
                                    ops_backend=args.ops, rep_decoder_pos_embed=args.rep_decoder_pos_embed).to(device)
        self.target = TargetNetwork.from_online(self.online).to(device)
        self.target.eval()
        torch.manual_seed(args.seed + info.rank)
        # No weight decay on biases and norm weights (every 1-D parameter), as the recipe does.
        self.optimizer = fused(torch.optim.AdamW, param_groups_weight_decay(self.online, args.weight_decay),
                               lr=args.lr, betas=(0.9, 0.95))
        self.ema_pairs = self.target.ema_pairs(self.online)
        self.target_fwd = self.target
        if args.compile != "none":
            self.target_fwd = torch.compile(self.target, mode=None if args.compile == "default" else args.compile)
        num_patches = self.online.num_patches
        # K is known without looking at a mask: every mask hides exactly int(ratio * L) patches.
        self.num_keep = num_patches - ops.reference.num_masked(args.mask_ratio, num_patches)

    def _build_monitor(self) -> HealthMonitor | None:
        """The k-NN health monitor of --probe_data, its images read once here (see probe.monitor)."""
        args, info = self.args, self.info
        if args.probe_data is None:
            return None
        spec = args.probe_data
        if spec == "synthetic":
            spec = str(self.out_dir / PROBE_IDENTITIES)
            if info.is_main:
                write_identity_benchmark(spec, seed=args.seed)
            barrier(info)
        probe_set = read_probe_set(Path(spec).name, spec, spec)
        return HealthMonitor(probe_set, args.input_size, *self.mean_std, device=self.device, amp_dtype=self.amp_dtype,
                             info=info)

    def probe_interval(self) -> int:
        """Iterations between the monitor's probes (the engine's validations); 0 without a monitor."""
        return self.args.probe_every * self.data.iters_per_epoch if self.monitor is not None else 0

    def validate(self, model) -> tuple[dict[str, dict[str, float]], list[tuple[str, str]]]:
        # the only validation of a pretraining run: the monitor's probe, logged as val rows probe/...; its
        # images were read once when the monitor was built, so none can turn unreadable here
        return {"probe": self.monitor({"online": self.online, "target": self.target})}, []

    def _selfcheck(self, say) -> dict:
        """Every compiled and Triton op this run uses, run once against the reference (see
        ops.selfcheck); the outcome goes to selfcheck.json."""
        c = self.online.config
        outcome = ops.selfcheck(self.device, self.args.ops, patch=c.patch_size, dim=c.embed_dim,
                                image_size=self.args.input_size, amp_dtype=self.amp_dtype, log=say)
        if self.info.is_main:
            (self.out_dir / SELFCHECK_FILE).write_text(json.dumps(outcome, indent=1) + "\n", encoding="utf-8")
        return outcome

    # ---------------------------------------------------------------------------------- the task

    def task(self) -> Task:
        return Task(model=self.online, optimizer=self.optimizer, data=self.data, loss=self.loss, lr_at=self.lr_at,
                    record=self.record, restore=self.restore, loss_names=LOSSES, after_step=self.after_step,
                    log_extra=self.log_extra, validate=self.validate if self.monitor is not None else None)

    def settings(self) -> RunSettings:
        args = self.args
        return RunSettings(output_dir=self.out_dir, stop_iter=self.stop_iter, device=self.device,
                           eval_every=self.probe_interval(),
                           amp_dtype=self.amp_dtype, accum_iter=args.accum_iter, clip_grad=args.clip_grad,
                           save_every=args.save_every, keep_last=args.keep_last, max_nonfinite=args.max_nonfinite,
                           log_every=args.log_every, seed=args.seed, resume=args.resume, args=plain_args(args),
                           compile=args.compile)

    def lr_at(self, iteration: int) -> float:
        args = self.args
        return cosine_lr(iteration, base_lr=args.lr, min_lr=args.min_lr,
                         warmup_iters=args.warmup_epochs * self.data.iters_per_epoch, total_iters=self.total_iters)

    def loss(self, model, batch: dict, iteration: int) -> list[torch.Tensor]:
        """Masks of the batch (the loaders validated every label where they read it: no check, a GPU
        round trip, here), the target's features, the online network's losses."""
        args = self.args
        img_mask, fr_mask = ops.crfrp_mask(batch["parsing"], patch_size=self.online.patch_size,
                                           mask_ratio=args.mask_ratio, strategy=args.mask_strategy,
                                           region=args.mask_region, seed=args.seed,
                                           offset=mask_stream(self.info.rank, iteration), validate=False)
        ids = ops.mask_to_indices(img_mask, self.num_keep, validate=False)
        images = batch["images"]
        with torch.no_grad():
            target_features = self.target_fwd(images)
        out = model(images, img_mask, fr_mask, target_features=target_features, ids=ids, validate=False)
        return [out.loss, out.loss_rec_all, out.loss_rec_sfr, out.loss_cl]

    def after_step(self, iteration: int, skipped: torch.Tensor) -> None:
        # as the reference: a skipped batch moves neither network
        momentum = ema_momentum(iteration, base_momentum=self.args.t_momentum, total_iters=self.total_iters)
        ops.ema_update(*self.ema_pairs, momentum, skip=skipped)

    def log_extra(self, iteration: int) -> dict:
        return {"momentum": ema_momentum(iteration - 1, base_momentum=self.args.t_momentum,
                                         total_iters=self.total_iters)}

    def record(self) -> dict:
        return {"format": PRETRAIN_FORMAT, "model": self.online.state_dict(), "target": self.target.state_dict(),
                "mean_std": {"mean": list(self.mean_std[0]), "std": list(self.mean_std[1])}}

    def restore(self, ckpt: dict, path: Path) -> None:
        load_state_dict_strict(self.online, ckpt["model"], path, "model")
        load_state_dict_strict(self.target, ckpt["target"], path, "target")
