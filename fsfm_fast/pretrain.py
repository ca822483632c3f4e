"""FSFM-3C self-supervised pretraining: ``python -m fsfm_fast.pretrain``.

With no ``--data_path`` it pretrains a tiny model on an embedded synthetic face set, on whatever device
is there; with reference-layout folders it runs the paper's recipe, on one GPU or many through
``torchrun``. Flag names follow the reference implementation's ``main_pretrain.py``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel

from . import ops
from . import cli
from .checkpoint import (CheckpointError, CheckpointManager, check_same_run, load_state_dict_strict,
                         plain_args, restore_rng, rng_state, safe_load)
from .data import collate_faces
from .data.loaders import LOADERS, build_train_data, dataset_mean_std, detect_layout
from .data.synthetic import write_synthetic_dataset
from .distributed import DistInfo, any_rank_flags, barrier, cleanup, init_distributed, mean_across
from .models import TargetNetwork, create_online, list_models
from .run_log import RunLog
from .schedules import cosine_lr, ema_momentum
from .signals import StopSignal

MEAN_STD_FILE = "pretrain_ds_mean_std.txt"
IMAGENET_MEAN_STD = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])

# What a run with no --data_path uses for every flag the user did not set: a tiny model on the
# embedded synthetic faces, sized so that it finishes in minutes on a laptop CPU.
DEMO_DEFAULTS = {
    "model": "fsfm_vit_tiny_patch16",
    "input_size": 112,
    "batch_size": 32,
    "epochs": 8,
    "warmup_epochs": 1,
    "blr": 1e-2,
    "num_workers": 2,
    "output_dir": "output_demo",
    "save_every": 100,
    "log_every": 10,
}


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("fsfm_fast.pretrain", description=__doc__,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("model")
    g.add_argument("--model", default="fsfm_vit_base_patch16", choices=list_models())
    g.add_argument("--input_size", default=224, type=int)
    g.add_argument("--norm_pix_loss", dest="norm_pix_loss", action="store_true", default=True,
                   help="normalise each target patch by its mean/std (the recipe's setting)")
    g.add_argument("--no_norm_pix_loss", dest="norm_pix_loss", action="store_false")
    g.add_argument("--mask_ratio", default=0.75, type=float)
    g.add_argument("--mask_strategy", default="crfr_p", choices=["crfr_p", "crfr_r", "fr", "random"])
    g.add_argument("--mask_region", default="batch", choices=["batch", "image"],
                   help="draw the covered facial region once per batch (reference) or per image")
    g.add_argument("--weight_sfr", default=0.007, type=float)
    g.add_argument("--weight_cl", default=0.1, type=float)
    g.add_argument("--cl_loss", default="SimSiam", type=str.lower, choices=["simsiam", "byol"])
    g.add_argument("--t_momentum", default=0.996, type=float, help="initial EMA momentum of the target")
    g.add_argument("--ops", default="auto", choices=["auto", "torch", "triton"],
                   help="backend of gather_visible/restore_masked/fsfm_loss: 'auto' runs the Triton "
                        "kernels on CUDA tensors, 'torch' the plain-PyTorch reference, 'triton' insists")

    g = p.add_argument_group("optimisation")
    g.add_argument("--batch_size", default=64, type=int, help="per process")
    g.add_argument("--epochs", default=400, type=int)
    g.add_argument("--accum_iter", default=1, type=int)
    g.add_argument("--blr", default=1.5e-4, type=float, help="lr = blr * effective batch / 256")
    g.add_argument("--lr", default=None, type=float, help="absolute lr (overrides --blr)")
    g.add_argument("--min_lr", default=0.0, type=float)
    g.add_argument("--warmup_epochs", default=40, type=int)
    g.add_argument("--weight_decay", default=0.05, type=float)
    g.add_argument("--clip_grad", default=1.0, type=float, help="max grad norm; <= 0 disables")
    g.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                   help="auto: bf16 on CUDA, fp32 on CPU")
    g.add_argument("--compile", action="store_true", help="torch.compile the networks")
    g.add_argument("--max_steps", default=0, type=int,
                   help="stop after this many iterations (schedules still span --epochs); 0 = no cap")
    g.add_argument("--max_nonfinite", default=20, type=int,
                   help="stop with an error after this many non-finite losses in a row")

    g = p.add_argument_group("data")
    g.add_argument("--data_path", "--pretrain_data_path", dest="data_path", action="append", default=[],
                   help="reference-layout root (images/ + parsing_maps/) or shard folder (dataset.json from "
                        "python -m fsfm_fast.data.make_shards); repeat for several")
    g.add_argument("--loader", default="auto", choices=list(LOADERS),
                   help="dali: DALI over shard folders; torch: DataLoader (nvJPEG decode on CUDA for shards); "
                        "auto: dali when every path is a shard folder and DALI is installed, else torch")
    g.add_argument("--augment", "--apply_simple_augment", dest="augment", action="store_true",
                   help="random resized crop (0.2, 1) + flip, applied to image and parsing map alike")
    g.add_argument("--normalize_from_IMN", action="store_true", help="ImageNet mean/std instead of the data's")
    g.add_argument("--mean_std_samples", default=0, type=int,
                   help="images used to compute the dataset mean/std; 0 = all (as the reference)")
    g.add_argument("--synthetic_images", default=1024, type=int,
                   help="size of the embedded synthetic set used when no --data_path is given")
    g.add_argument("--num_workers", default=8, type=int)

    g = p.add_argument_group("run")
    g.add_argument("--output_dir", default="output_pretrain")
    g.add_argument("--log_dir", default=None, help="TensorBoard/JSON log folder (default: output_dir)")
    g.add_argument("--resume", default="", help="checkpoint to continue from, or 'auto' for the newest")
    g.add_argument("--save_every", default=1000, type=int, help="checkpoint every N iterations")
    g.add_argument("--keep_last", default=3, type=int, help="numbered checkpoints to keep")
    g.add_argument("--log_every", default=20, type=int)
    g.add_argument("--seed", default=0, type=int)
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    return p


def _given_flags(parser: argparse.ArgumentParser, argv: list[str]) -> set[str]:
    given = set()
    for action in parser._actions:
        for opt in action.option_strings:
            if any(a == opt or a.startswith(opt + "=") for a in argv):
                given.add(action.dest)
    return given


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = get_args_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.demo = not args.data_path
    if args.demo:
        given = _given_flags(parser, argv)
        for key, value in DEMO_DEFAULTS.items():
            if key not in given:
                setattr(args, key, value)
    if args.accum_iter < 1 or args.batch_size < 1 or args.epochs < 1:
        parser.error("--accum_iter, --batch_size and --epochs must be >= 1")
    if not 0.0 < args.mask_ratio < 1.0:
        parser.error(f"--mask_ratio must be in (0, 1), got {args.mask_ratio}")
    return args


# --------------------------------------------------------------------------------------------
# set-up


def _device(name: str, info: DistInfo) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("--device cuda was asked for but torch sees no CUDA device")
        if device.index is None:
            device = torch.device("cuda", info.local_rank)
    return device


def _precision(name: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for plain fp32."""
    if name == "auto":
        name = "bf16" if device.type == "cuda" else "fp32"
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def _data_roots(args: argparse.Namespace, info: DistInfo) -> list[Path]:
    if not args.demo:
        roots = [Path(p) for p in args.data_path]
        for root in roots:
            detect_layout(root)  # names the path that is neither layout
        return roots
    root = Path(args.output_dir) / "synthetic_faces"
    if info.is_main:
        write_synthetic_dataset(root, args.synthetic_images, size=224, seed=args.seed)
    barrier(info)
    return [root]


def _mean_std(args: argparse.Namespace, roots: list[Path], info: DistInfo) -> tuple[list[float], list[float]]:
    """Dataset statistics, computed once per output folder and reused on resume (SPEC section 5)."""
    if args.normalize_from_IMN:
        return IMAGENET_MEAN_STD
    path = Path(args.output_dir) / MEAN_STD_FILE
    if info.is_main and not path.is_file():
        mean, std = dataset_mean_std(roots, args.input_size, max_samples=args.mean_std_samples,
                                     num_workers=args.num_workers, seed=args.seed)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"mean": mean, "std": std}) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    barrier(info)
    stats = json.loads(path.read_text(encoding="utf-8").splitlines()[0])
    return stats["mean"], stats["std"]


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on biases and norm weights (every 1-D parameter), as timm and the recipe do."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim <= 1 or name.endswith(".bias") else decay).append(param)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


def _optimizer(model: torch.nn.Module, args: argparse.Namespace, device: torch.device) -> torch.optim.Optimizer:
    groups = param_groups(model, args.weight_decay)
    try:  # the fused kernel is the fastest where this torch build has it for the device
        return torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.95), fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.95), foreach=True)


@dataclass
class TrainState:
    """Everything besides the weights that a resumed run needs to continue exactly."""
    iteration: int = 0
    nonfinite_total: int = 0
    nonfinite_in_a_row: int = 0
    skipped_images: int = 0


def _mask_stream(rank: int, iteration: int) -> int:
    """The counter offset of an iteration's masks: with the run's seed it fixes them completely, so
    a resumed run draws the same masks, and the CPU twin and the CUDA kernel draw identical ones."""
    return (rank << 32) | iteration


# --------------------------------------------------------------------------------------------
# checkpoints


def _checkpoint(online, target, optimizer, scaler, state: TrainState, args, mean_std) -> dict:
    return {
        "format": "fsfm_fast.pretrain/1",
        "model": online.state_dict(),
        "target": target.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "iteration": state.iteration,
        "train_state": {"nonfinite_total": state.nonfinite_total,
                        "nonfinite_in_a_row": state.nonfinite_in_a_row,
                        "skipped_images": state.skipped_images},
        "mean_std": {"mean": list(mean_std[0]), "std": list(mean_std[1])},
        "args": plain_args(args),
        "rng": rng_state(),
    }


# What a checkpoint must agree on with the run that resumes it (anything else may change on resume).
SAME_RUN_KEYS = ("model", "input_size")


def _resume(path: str, manager: CheckpointManager, online, target, optimizer, scaler, log: RunLog,
            args) -> TrainState:
    if path == "auto":
        found = manager.load_latest_valid(warn=log.message)
        if found is None:
            log.message(f"--resume auto: no usable checkpoint in {manager.directory}, starting fresh")
            return TrainState()
        path, ckpt = found
    else:
        ckpt = safe_load(path)
    for key in ("model", "target", "optimizer", "iteration"):
        if key not in ckpt:
            raise CheckpointError(f"{path} is not a fsfm_fast pretraining checkpoint (no '{key}')")
    check_same_run(ckpt, path, args, SAME_RUN_KEYS)
    load_state_dict_strict(online, ckpt["model"], path, "online")
    load_state_dict_strict(target, ckpt["target"], path, "target")
    optimizer.load_state_dict(ckpt["optimizer"])
    if "scaler" in ckpt and ckpt["scaler"]:
        scaler.load_state_dict(ckpt["scaler"])
    restore_rng(ckpt["rng"])
    extra = ckpt.get("train_state", {})
    log.message(f"resumed from {path} at iteration {ckpt['iteration']}")
    return TrainState(iteration=int(ckpt["iteration"]), **{k: int(v) for k, v in extra.items()})


# --------------------------------------------------------------------------------------------
# the loop


def train(args: argparse.Namespace) -> dict:
    info = init_distributed("cuda" if args.device.startswith("cuda") or
                            (args.device == "auto" and torch.cuda.is_available()) else "cpu")
    try:
        return Pretrainer(args, info).run()
    finally:
        cleanup(info)


class Pretrainer:
    """Owns one run: data, networks, optimizer, schedules, checkpoints and logs."""

    def __init__(self, args: argparse.Namespace, info: DistInfo):
        self.args, self.info = args, info
        self.device = _device(args.device, info)
        self.amp_dtype = _precision(args.precision, self.device)
        self.out_dir = Path(args.output_dir)
        if info.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        barrier(info)
        self._build_data()
        self._build_networks()
        self.manager = CheckpointManager(self.out_dir, keep_last=args.keep_last)
        if info.is_main:
            for stale in self.manager.remove_stale_temps():
                print(f"removed {stale.name}, left by an interrupted save")
        self.log = RunLog(args.log_dir or self.out_dir, enabled=info.is_main, total=self.stop_iter)
        self.state = TrainState()
        if args.resume:
            self.state = _resume(args.resume, self.manager, self.online, self.target, self.optimizer,
                                 self.scaler, self.log, args)
            self.log.resumed(self.state.iteration)
        self.last_saved = self.state.iteration if args.resume else -1

    def _build_data(self) -> None:
        args, info = self.args, self.info
        roots = _data_roots(args, info)
        self.mean_std = _mean_std(args, roots, info)
        data = build_train_data(args, roots, self.mean_std, rank=info.rank, world_size=info.world_size,
                                device=self.device)
        # The loop positions data.sampler (set_epoch) and iterates data.loader, whichever loader it is.
        self.dataset, self.sampler, self.loader, self.data_kind = data.dataset, data.sampler, data.loader, data.kind
        self.iters_per_epoch = data.iters_per_epoch
        if self.iters_per_epoch < 1:
            raise ValueError(f"{len(self.dataset)} images cannot fill one batch of {args.batch_size} "
                             f"on each of {info.world_size} processes")
        self.total_iters = args.epochs * self.iters_per_epoch
        self.stop_iter = min(self.total_iters, args.max_steps) if args.max_steps > 0 else self.total_iters
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
                                    ops_backend=args.ops).to(device)
        self.target = TargetNetwork.from_online(self.online).to(device)
        torch.manual_seed(args.seed + info.rank)
        self.optimizer = _optimizer(self.online, args, device)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp_dtype is torch.float16)
        self.ema_pairs = self.target.ema_pairs(self.online)
        self.model = self.online
        if info.enabled:
            self.model = DistributedDataParallel(self.online,
                                                 device_ids=[device.index] if device.type == "cuda" else None)
        self.target_fwd = self.target
        if args.compile:
            self.model, self.target_fwd = torch.compile(self.model), torch.compile(self.target)
        self.autocast = (torch.autocast(device_type=device.type, dtype=self.amp_dtype)
                         if self.amp_dtype is not None else nullcontext())

    def _announce(self) -> None:
        args = self.args
        precision = "fp32" if self.amp_dtype is None else str(self.amp_dtype).split(".")[-1]
        self.log.message(
            f"fsfm_fast pretrain: {args.model} at {args.input_size}px on {self.device} (x{self.info.world_size}), "
            f"{len(self.dataset)} images ({self.data_kind}), {self.iters_per_epoch} it/epoch, "
            f"effective batch {self.eff_batch}, "
            f"lr {args.lr:.3g}, precision {precision}" + (" [embedded synthetic faces]" if args.demo else ""))
        if self.info.is_main:
            (self.out_dir / "args.json").write_text(json.dumps(vars(args), indent=1, default=str), encoding="utf-8")

    def save(self) -> None:
        if self.state.iteration == self.last_saved:
            return
        if self.info.is_main:
            ckpt = _checkpoint(self.online, self.target, self.optimizer, self.scaler, self.state, self.args,
                               self.mean_std)
            self.manager.save(ckpt, self.state.iteration)
        self.last_saved = self.state.iteration
        barrier(self.info)

    def run(self) -> dict:
        self._announce()
        self.log.progress(self.state.iteration)
        self.window = _Window()
        stopped = False
        with StopSignal() as stop:
            self.online.train()
            self.target.eval()
            while self.state.iteration < self.stop_iter and not stopped:
                stopped = self._run_epoch(stop)
            self.save()
        self.log.close()
        return self._finish(stopped)

    def _run_epoch(self, stop: StopSignal) -> bool:
        """Iterations of the current epoch, from wherever the run stands in it. True when stopped by a signal."""
        args, state = self.args, self.state
        epoch = state.iteration // self.iters_per_epoch
        self.sampler.set_epoch(epoch, start_index=(state.iteration % self.iters_per_epoch) * args.batch_size)
        batches = iter(self.loader)
        while state.iteration < self.stop_iter and state.iteration // self.iters_per_epoch == epoch:
            try:
                batch = next(batches)
            except StopIteration:
                return False
            except Exception:
                if stop.requested:  # data workers were hit by the same signal: save what we have
                    return True
                raise
            self._iteration(batch, epoch)
            at_boundary = state.iteration % args.accum_iter == 0
            if at_boundary:
                stopped = stop.requested
                if self.info.enabled:  # a signal to one rank stops them all together
                    stopped = any_rank_flags([stopped], self.info, self.device)[0]
                if stopped:
                    return True
                if state.iteration % args.save_every == 0:
                    self.save()
        return stop.requested

    def _iteration(self, batch: dict, epoch: int) -> None:
        args, state = self.args, self.state
        it = state.iteration
        state.skipped_images += batch["n_skipped"]
        self.log.skipped(it, batch["skipped"])
        if it % args.accum_iter == 0:
            lr = cosine_lr(it, base_lr=args.lr, min_lr=args.min_lr,
                           warmup_iters=args.warmup_epochs * self.iters_per_epoch, total_iters=self.total_iters)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
        stats = _step(self.model, self.target_fwd, self.optimizer, self.scaler, batch, self.device, self.autocast,
                      args, state, self.online.patch_size, self.info, it)
        momentum = ema_momentum(it, base_momentum=args.t_momentum, total_iters=self.total_iters)
        if stats is not None:  # as the reference: a skipped batch moves neither network
            ops.ema_update(*self.ema_pairs, momentum)
        state.iteration = it + 1
        self.window.add(stats, batch["images"].shape[0] * self.info.world_size)
        if state.iteration % args.log_every == 0 or state.iteration in (1, self.stop_iter):
            self._log(epoch, momentum)

    def _log(self, epoch: int, momentum: float) -> None:
        w = self.window
        means = mean_across(w.means(), self.info, self.device)
        elapsed = max(time.perf_counter() - w.t0, 1e-9)
        row = dict(zip(_Window.keys, means), epoch=epoch, lr=self.optimizer.param_groups[0]["lr"],
                   momentum=momentum, img_per_s=w.images / elapsed, s_per_it=elapsed / max(w.iters, 1),
                   grad_norm=w.grad_norm, nonfinite_total=self.state.nonfinite_total,
                   skipped_images=self.state.skipped_images)
        self.log.record("train", self.state.iteration, **row)
        self.log.progress(w.iters, loss=means[0], img_s=row["img_per_s"], lr=row["lr"])
        self.window = _Window()

    def _finish(self, stopped: bool) -> dict:
        summary = {"iteration": self.state.iteration, "stopped_by_signal": stopped,
                   "nonfinite_total": self.state.nonfinite_total, "skipped_images": self.state.skipped_images,
                   "checkpoint": str(self.manager.latest())}
        if self.info.is_main:
            if stopped:
                self.log.message(f"stopped by signal at iteration {self.state.iteration}; "
                                 "continue with --resume auto")
            else:
                _final_pictures(self.args, self.online, self.dataset, self.device, self.mean_std,
                                self.out_dir, self.log)
            (self.out_dir / "summary.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
        return summary


class _Window:
    """Loss values and throughput since the last log line."""
    keys = ("loss", "loss_rec_all", "loss_rec_sfr", "loss_cl")

    def __init__(self):
        self.values = {k: [] for k in self.keys}
        self.images = self.iters = 0
        self.grad_norm = None
        self.t0 = time.perf_counter()

    def add(self, stats: dict | None, images: int) -> None:
        self.iters += 1
        self.images += images
        if stats is None:
            return
        for k in self.keys:
            self.values[k].append(stats[k])
        if stats["grad_norm"] is not None:
            self.grad_norm = stats["grad_norm"]

    def means(self) -> list[float]:
        return [sum(v) / len(v) if v else float("nan") for v in self.values.values()]


def _step(model, target, optimizer, scaler, batch, device, autocast, args, state: TrainState, patch: int,
          info: DistInfo, it: int) -> dict | None:
    """One micro-batch: masks on the device, target and online forward, backward, and at the end of an
    accumulation cycle the clipped optimizer step. Returns the loss values, or None when skipped."""
    images = batch["images"].to(device, non_blocking=True)
    parsing = batch["parsing"].to(device, non_blocking=True)
    last_micro = (it + 1) % args.accum_iter == 0
    # Between accumulation steps DDP need not all-reduce gradients; the last micro-batch does it.
    sync = nullcontext() if (last_micro or not info.enabled) else model.no_sync()
    with sync:
        out = None
        if images.shape[0] > 0:
            img_mask, fr_mask = ops.crfrp_mask(parsing, patch_size=patch, mask_ratio=args.mask_ratio,
                                               strategy=args.mask_strategy, region=args.mask_region,
                                               seed=args.seed, offset=_mask_stream(info.rank, it))
            with autocast:
                with torch.no_grad():
                    target_features = target(images)
                # Indices outside the model: finding K needs a host sync, which would split a compiled graph.
                ids = ops.mask_to_indices(img_mask)
                out = model(images, img_mask, fr_mask, target_features=target_features, ids=ids)
        # Every rank must take the same branch, or DDP's backward would wait forever for a peer.
        empty, nonfinite = any_rank_flags([out is None, out is not None and not bool(torch.isfinite(out.loss))],
                                           info, device)
        if empty:
            if last_micro:
                _optimizer_step(optimizer, scaler, args)
            return None
        if nonfinite:
            return _skip(optimizer, state, args, last_micro)
        scaler.scale(out.loss / args.accum_iter).backward()
    grad_norm = None
    if last_micro:
        grad_norm = _optimizer_step(optimizer, scaler, args)
        if grad_norm is None:
            return _skip(optimizer, state, args, last_micro)
    state.nonfinite_in_a_row = 0
    return {"loss": out.loss.item(), "loss_rec_all": out.loss_rec_all.item(),
            "loss_rec_sfr": out.loss_rec_sfr.item(), "loss_cl": out.loss_cl.item(), "grad_norm": grad_norm}


def _optimizer_step(optimizer, scaler, args) -> float | None:
    """Unscale, clip, step, clear. Returns the gradient norm, or None when the step was refused."""
    has_grads = any(p.grad is not None for g in optimizer.param_groups for p in g["params"])
    if not has_grads:
        return 0.0
    scaler.unscale_(optimizer)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    max_norm = args.clip_grad if args.clip_grad > 0 else float("inf")
    grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
    if not math.isfinite(grad_norm) and not scaler.is_enabled():
        # fp16 leaves this to the scaler (it skips the step and lowers the scale); without one,
        # a non-finite gradient would poison the weights.
        optimizer.zero_grad(set_to_none=True)
        return None
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm


def _skip(optimizer, state: TrainState, args, last_micro: bool) -> None:
    state.nonfinite_total += 1
    state.nonfinite_in_a_row += 1
    if last_micro:
        optimizer.zero_grad(set_to_none=True)
    if state.nonfinite_in_a_row >= args.max_nonfinite:
        raise FloatingPointError(
            f"{state.nonfinite_in_a_row} non-finite losses or gradients in a row (last at iteration "
            f"{state.iteration}); the run is diverging. Lower --blr, use --precision bf16/fp32, or "
            f"resume from an earlier checkpoint.")
    return None


@torch.no_grad()
def _final_pictures(args, online, dataset, device, mean_std, out_dir: Path, log: RunLog) -> None:
    from .plots import plot_loss_curves, plot_reconstructions

    log_path = Path(args.log_dir or out_dir) / "log.jsonl"
    if log_path.is_file():
        plot_loss_curves(log_path, out_dir / "loss_curves.png")
    samples = [dataset[i] for i in range(min(6, len(dataset)))]
    batch = collate_faces(samples)
    if batch["images"].shape[0] == 0:
        return
    images = batch["images"].to(device)
    parsing = batch["parsing"].to(device)
    p = online.patch_size
    img_mask, fr_mask = ops.crfrp_mask(parsing, patch_size=p, mask_ratio=args.mask_ratio,
                                       strategy=args.mask_strategy, region="image",
                                       seed=args.seed + 1, offset=0)
    online.eval()
    pred = online(images, img_mask, fr_mask).pred.float()
    if args.norm_pix_loss:  # back from per-patch normalised space to the input's
        target = ops.patchify(images.float(), p)
        pred = pred * (target.var(dim=-1, keepdim=True) + 1e-6).sqrt() + target.mean(dim=-1, keepdim=True)
    recon = ops.unpatchify(pred, p, images.shape[2], images.shape[3])
    plot_reconstructions(images, img_mask, fr_mask, recon, *mean_std, p, out_dir / "reconstructions.png")
    log.message(f"wrote {out_dir / 'loss_curves.png'} and {out_dir / 'reconstructions.png'}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    summary = train(args)
    return 0 if summary["iteration"] > 0 or summary["stopped_by_signal"] else 1


if __name__ == "__main__":
    sys.exit(cli.run(main, "fsfm_fast.pretrain"))
