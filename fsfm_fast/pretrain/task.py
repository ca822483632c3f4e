"""The pretraining run: data, online and target networks, the step (masks, losses, EMA), checkpoints."""
from __future__ import annotations

import argparse
import json
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from timm.optim import param_groups_weight_decay
from torch.nn.parallel import DistributedDataParallel

from .. import ops
from ..data.loaders import build_loader, cached_mean_std
from ..data.synthetic import write_synthetic_dataset
from ..engine import checkpoint
from ..engine.checkpoint import CheckpointManager
from ..engine.run_log import RunLog
from ..engine.schedules import cosine_lr, ema_momentum
from ..engine.step_stats import StepStats
from ..formats import IMAGENET_MEAN, IMAGENET_STD, MEAN_STD_FILE, PRETRAIN_FORMAT, SELFCHECK_FILE
from ..models import TargetNetwork, create_online
from ..plots import final_pictures
from ..runtime.cli import UsageError
from ..runtime.devices import autocast, autocast_dtype, device_type, fused, resolve_device
from ..runtime.distributed import DistInfo, any_rank_flags, barrier, process_group
from ..runtime.signals import StopSignal, stop_signals_held
from .args import check_paths, parse_args

# What a checkpoint must agree on with the run that resumes it (anything else may change on resume).
SAME_RUN_KEYS = ("model", "input_size", "rep_decoder_pos_embed")
LOSSES = ("loss", "loss_rec_all", "loss_rec_sfr", "loss_cl")

# --------------------------------------------------------------------------------------------
# set-up


def _device(name: str, info: DistInfo) -> torch.device:
    device = resolve_device(name, info)
    if device.type == "cuda":
        torch.cuda.set_device(device)  # kernels launched without a device guard run here too
    return device


def _data_roots(args: argparse.Namespace, info: DistInfo) -> list[Path]:
    if not args.demo:
        return [Path(p) for p in args.data_path]
    root = Path(args.output_dir) / "synthetic_faces"
    if info.is_main:
        write_synthetic_dataset(root, args.synthetic_images, size=224, seed=args.seed)
    barrier(info)
    return [root]


def _mask_stream(rank: int, iteration: int) -> int:
    """The counter offset of an iteration's masks: with the run's seed it fixes them completely, so
    a resumed run draws the same masks, and the CPU twin and the CUDA kernel draw identical ones."""
    return (rank << 32) | iteration


@dataclass
class TrainState:
    """What a resumed run needs besides the weights and the device counters (``StepStats``)."""
    iteration: int = 0
    skipped_images: int = 0


class DivergedError(UsageError, FloatingPointError):
    """--max_nonfinite non-finite losses in a row: one line with what to do."""


# --------------------------------------------------------------------------------------------
# the run


def train(args: argparse.Namespace) -> dict:
    with process_group(device_type(args.device)) as info:
        return Pretrainer(args, info).run()


class Pretrainer:
    """Owns one run: data, networks, optimizer, schedules, checkpoints and logs.

    ``run`` is the loop: for each batch, ``train_step`` (masks, target and online forward, backward,
    a clipped optimizer step every ``--accum_iter`` batches, the EMA of the target), a checkpoint every
    ``--save_every`` iterations, a log row every ``--log_every``; a stop signal saves and ends it.
    """

    def __init__(self, args: argparse.Namespace, info: DistInfo):
        self.args, self.info = args, info
        self.device = _device(args.device, info)
        self.amp_dtype = autocast_dtype(args.precision, self.device)
        self.out_dir = Path(args.output_dir)
        say = print if info.is_main else (lambda text: None)
        if info.is_main:
            check_paths(args)
        barrier(info)
        self.manager = CheckpointManager(self.out_dir, keep_last=args.keep_last)
        if info.is_main:
            for stale in self.manager.remove_stale_temps():
                say(f"removed {stale.name}, left by an interrupted save")
        resume = checkpoint.find_resume(args.resume, self.manager, args, SAME_RUN_KEYS,
                                        ("model", "target", "optimizer", "iteration", "rng"), warn=say)
        self._build_data(say)
        self._build_networks()
        self.checked = self._selfcheck(say)
        self.log = RunLog(args.log_dir or self.out_dir, enabled=info.is_main, total=self.stop_iter)
        self.state, self.stats = TrainState(), StepStats(LOSSES, self.device)
        self.last_saved = -1
        self.window_start, self.window_images, self.window_iters = time.perf_counter(), 0, 0
        if resume is not None:
            self._resume(*resume)

    def _build_data(self, say) -> None:
        args, info = self.args, self.info
        roots = _data_roots(args, info)
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
                                    ops_backend=args.ops, rep_decoder_pos_embed=args.rep_decoder_pos_embed).to(device)
        self.target = TargetNetwork.from_online(self.online).to(device)
        torch.manual_seed(args.seed + info.rank)
        self.optimizer = _optimizer(self.online, args)
        # The fused AdamW skips a step on the device when told so (found_inf); others need a host check.
        self.fused = bool(self.optimizer.defaults.get("fused"))
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp_dtype is torch.float16)
        self.ema_pairs = self.target.ema_pairs(self.online)
        self.model = self.online
        if info.enabled:
            self.model = DistributedDataParallel(self.online,
                                                 device_ids=[device.index] if device.type == "cuda" else None)
        self.target_fwd = self.target
        if args.compile != "none":
            mode = None if args.compile == "default" else args.compile
            self.model, self.target_fwd = torch.compile(self.model, mode=mode), torch.compile(self.target, mode=mode)
        self.autocast = autocast(device, self.amp_dtype)
        num_patches = self.online.num_patches
        # K is known without looking at a mask: every mask hides exactly int(ratio * L) patches.
        self.num_keep = num_patches - ops.reference.num_masked(args.mask_ratio, num_patches)
        self.params = [p for g in self.optimizer.param_groups for p in g["params"]]

    def _selfcheck(self, say) -> dict:
        """Every compiled and Triton op this run uses, run once against the reference (see
        ops.selfcheck); the outcome goes to selfcheck.json."""
        c = self.online.config
        outcome = ops.selfcheck(self.device, self.args.ops, patch=c.patch_size, dim=c.embed_dim,
                                image_size=self.args.input_size, amp_dtype=self.amp_dtype, log=say)
        if self.info.is_main:
            (self.out_dir / SELFCHECK_FILE).write_text(json.dumps(outcome, indent=1) + "\n", encoding="utf-8")
        return outcome

    def _resume(self, path: Path, ckpt: dict) -> None:
        checkpoint.restore_training(ckpt, path, {"model": self.online, "target": self.target}, self.optimizer,
                                    self.scaler)
        train_state = ckpt.get("train_state", {})
        self.state = TrainState(iteration=int(ckpt["iteration"]),
                                skipped_images=int(train_state.get("skipped_images", 0)))
        self.stats.restore(train_state)
        self.last_saved = self.state.iteration
        self.log.resumed(self.state.iteration)
        self.log.message(f"resumed from {path} at iteration {self.state.iteration}")

    def _announce(self) -> None:
        args = self.args
        precision = "fp32" if self.amp_dtype is None else str(self.amp_dtype).split(".")[-1]
        used = self.checked["in_use"]
        self.log.message(
            f"fsfm_fast pretrain: {args.model} at {args.input_size}px on {self.device} (x{self.info.world_size}), "
            f"{len(self.data.dataset)} images, {self.data.iters_per_epoch} it/epoch, effective batch {self.eff_batch}, "
            f"lr {args.lr:.3g}, precision {precision}, compile {args.compile}"
            + (" [embedded synthetic faces]" if args.demo else ""))
        self.log.message(f"backends: masks {used['crfrp_mask']}, ops {used['gather_visible']}/"
                         f"{used['restore_masked']}/{used['fsfm_loss']} (gather/restore/loss), "
                         f"loader {self.data.kind}; self-check: "
                         + (", ".join(f"{c['op']} {'ok' if c['ok'] else 'FAILED'}" for c in self.checked["checks"])
                            or "nothing compiled to check"))
        if self.info.is_main:
            (self.out_dir / "args.json").write_text(json.dumps(vars(args), indent=1, default=str), encoding="utf-8")

    # ----------------------------------------------------------------------------------- loop

    def run(self) -> dict:
        self._announce()
        self.log.progress(self.state.iteration)
        self.window_start = time.perf_counter()
        stopped = False
        try:
            with StopSignal() as self.stop:
                self.online.train()
                self.target.eval()
                while self.state.iteration < self.stop_iter and not stopped:
                    stopped = self.train_one_epoch()
                self.save()
        finally:  # an error, too, ends the progress bar's line and shuts the data workers down
            self.data.close()
            self.log.close()
        return self._finish(stopped)

    def train_one_epoch(self) -> bool:
        """The iterations of the current epoch, from wherever the run stands in it. True when a stop
        signal ended it: the last completed iteration is then saved by ``run``."""
        state, per_epoch = self.state, self.data.iters_per_epoch
        epoch = state.iteration // per_epoch
        with stop_signals_held():  # data workers start here: see fsfm_fast.signals
            batches = self.data.batches(epoch, state.iteration % per_epoch)
        while state.iteration < self.stop_iter and state.iteration // per_epoch == epoch:
            try:
                batch = next(batches)
            except StopIteration:
                return False
            except Exception:
                if self.stop.requested:  # a data worker was hit by the same signal: save what we have
                    return True
                raise
            if self._agree_to_stop(batch):
                return True
            self.train_step(batch, epoch)
            if self.args.save_every and state.iteration % self.args.save_every == 0:
                self.save()
        return False

    def _agree_to_stop(self, batch: dict) -> bool:
        """A stop signal is honoured between optimizer steps; under DDP all ranks agree on it, and on
        empty batches, in one host-side collective."""
        at_boundary = self.state.iteration % self.args.accum_iter == 0
        stop = self.stop.requested and at_boundary
        if self.info.enabled:
            stop, batch["empty_somewhere"] = any_rank_flags([stop, batch["images"].shape[0] == 0],
                                                            self.info, self.device)
        return stop

    def train_step(self, batch: dict, epoch: int) -> None:
        """One micro-batch, with no host synchronisation: masks on the device with static shapes, the
        target's and the online network's forward, backward, and at the end of an accumulation cycle
        the clipped optimizer step; then the EMA of the target. A non-finite loss (or gradient) is
        skipped on the device: its batch moves neither network and is counted toward --max_nonfinite."""
        args, state, it = self.args, self.state, self.state.iteration
        state.skipped_images += batch["n_skipped"]
        self.log.skipped(it, batch["skipped"])
        last_micro = (it + 1) % args.accum_iter == 0
        if it % args.accum_iter == 0:
            lr = cosine_lr(it, base_lr=args.lr, min_lr=args.min_lr,
                           warmup_iters=args.warmup_epochs * self.data.iters_per_epoch, total_iters=self.total_iters)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
        if args.compile == "reduce-overhead":
            torch.compiler.cudagraph_mark_step_begin()
        if batch.get("empty_somewhere", batch["images"].shape[0] == 0):
            # every rank skips together; a cycle's earlier micro-batches still make their step
            if last_micro:
                self._optimizer_step(torch.zeros((), dtype=torch.bool, device=self.device))
            self._end_iteration(batch, epoch, None, None, None)
            return
        images = batch["images"].to(self.device, non_blocking=True)
        parsing = batch["parsing"].to(self.device, non_blocking=True)
        # The loaders validated every label where they read it: no check (a GPU round trip) here.
        img_mask, fr_mask = ops.crfrp_mask(parsing, patch_size=self.online.patch_size, mask_ratio=args.mask_ratio,
                                           strategy=args.mask_strategy, region=args.mask_region, seed=args.seed,
                                           offset=_mask_stream(self.info.rank, it), validate=False)
        ids = ops.mask_to_indices(img_mask, self.num_keep, validate=False)
        # Between accumulation steps DDP need not all-reduce gradients; the last micro-batch does it.
        sync = nullcontext() if (last_micro or not self.info.enabled) else self.model.no_sync()
        with sync:
            with self.autocast:
                with torch.no_grad():
                    target_features = self.target_fwd(images)
                out = self.model(images, img_mask, fr_mask, target_features=target_features, ids=ids, validate=False)
            bad = self._any_rank(~torch.isfinite(out.loss))
            before = self._grads() if not last_micro else None
            self.scaler.scale(out.loss / args.accum_iter).backward()
        if last_micro:
            counted, grad_norm = self._optimizer_step(bad)
        else:
            self._drop_new_grads(bad, before)
            counted, grad_norm = bad, None
        # as the reference: a skipped batch moves neither network
        ops.ema_update(*self.ema_pairs, ema_momentum(it, base_momentum=args.t_momentum, total_iters=self.total_iters),
                       skip=counted)
        losses = [out.loss, out.loss_rec_all, out.loss_rec_sfr, out.loss_cl]
        self._end_iteration(batch, epoch, losses, counted, grad_norm)

    def _any_rank(self, flag: torch.Tensor) -> torch.Tensor:
        """A device flag OR-ed over ranks on the device (no host sync), so all ranks skip together."""
        if self.info.enabled:
            flag = flag.float()
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            flag = flag > 0
        return flag

    def _grads(self) -> list[torch.Tensor | None]:
        return [None if p.grad is None else p.grad.clone() for p in self.params]

    def _drop_new_grads(self, bad: torch.Tensor, before: list[torch.Tensor | None]) -> None:
        """Undo a non-finite micro-batch's contribution to the accumulated gradients, on the device."""
        for p, old in zip(self.params, before):
            if p.grad is not None:
                p.grad.copy_(torch.where(bad, old if old is not None else torch.zeros_like(p.grad), p.grad))

    def _optimizer_step(self, bad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Unscale, clip, step (skipped on the device when ``bad`` or the gradient is not finite),
        clear. Returns (counted as non-finite, gradient norm). As before, an fp16 overflow is the
        scaler's business: it skips the step and lowers the scale, and is not counted."""
        if not any(p.grad is not None for p in self.params):
            return bad, None
        self.scaler.unscale_(self.optimizer)
        max_norm = self.args.clip_grad if self.args.clip_grad > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, max_norm, foreach=True)
        grad_bad = ~torch.isfinite(grad_norm)
        skip = bad | grad_bad
        if self.fused:
            self.optimizer.found_inf, self.optimizer.grad_scale = skip.float(), None
            self.optimizer.step()
            del self.optimizer.found_inf, self.optimizer.grad_scale
        elif not bool(skip):  # no fused kernel for this device: a host check
            self.optimizer.step()
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        counted = bad if self.scaler.is_enabled() else skip
        return counted, grad_norm

    def _end_iteration(self, batch: dict, epoch: int, losses, counted, grad_norm) -> None:
        state = self.state
        if losses is not None:
            self.stats.add(losses, counted, grad_norm)
        state.iteration += 1
        self.window_iters += 1
        self.window_images += batch["images"].shape[0] * self.info.world_size
        if state.iteration % self.args.log_every == 0 or state.iteration in (1, self.stop_iter):
            self._log(epoch)

    def _log(self, epoch: int) -> None:
        """The one place the loop reads numbers back from the device: one transfer per log row."""
        stats = self.stats.read(self.info)
        worst_run = stats.pop("worst_run")
        elapsed = max(time.perf_counter() - self.window_start, 1e-9)
        iters = self.window_iters
        row = dict(stats, epoch=epoch, lr=self.optimizer.param_groups[0]["lr"],
                   momentum=ema_momentum(self.state.iteration - 1, base_momentum=self.args.t_momentum,
                                         total_iters=self.total_iters),
                   img_per_s=self.window_images / elapsed, s_per_it=elapsed / iters,
                   skipped_images=self.state.skipped_images)
        self.log.record("train", self.state.iteration, **row)
        self.log.progress(iters, loss=row["loss"], img_s=row["img_per_s"], lr=row["lr"])
        if worst_run >= self.args.max_nonfinite:
            raise DivergedError(
                f"{worst_run} non-finite losses or gradients in a row (by iteration {self.state.iteration}); "
                f"the run is diverging. Lower --blr, use --precision bf16/fp32, or resume from an earlier "
                f"checkpoint.")
        self.stats.next_window()
        self.window_start, self.window_images, self.window_iters = time.perf_counter(), 0, 0

    def save(self) -> None:
        if self.state.iteration == self.last_saved:
            return
        if self.info.is_main:
            extra = {"train_state": {"skipped_images": self.state.skipped_images, **self.stats.counters()},
                     "mean_std": {"mean": list(self.mean_std[0]), "std": list(self.mean_std[1])}}
            ckpt = checkpoint.training_checkpoint(PRETRAIN_FORMAT, self.state.iteration,
                                                  {"model": self.online, "target": self.target},
                                                  self.optimizer, self.scaler, self.args, **extra)
            self.manager.save(ckpt, self.state.iteration)
        self.last_saved = self.state.iteration
        barrier(self.info)

    def _finish(self, stopped: bool) -> dict:
        summary = {"iteration": self.state.iteration, "stopped_by_signal": stopped,
                   "nonfinite_total": self.stats.counters()["nonfinite_total"],
                   "skipped_images": self.state.skipped_images, "checkpoint": str(self.manager.latest())}
        if self.info.is_main:
            if stopped:
                self.log.message(f"stopped by signal at iteration {self.state.iteration}; "
                                 "continue with --resume auto")
            elif self.state.iteration > 0:
                final_pictures(self.args, self.online, self.data.dataset, self.device, self.mean_std,
                               self.out_dir, self.log)
            (self.out_dir / "summary.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
        return summary


def _optimizer(model: torch.nn.Module, args: argparse.Namespace) -> torch.optim.Optimizer:
    # No weight decay on biases and norm weights (every 1-D parameter), as the recipe does.
    groups = param_groups_weight_decay(model, args.weight_decay)
    return fused(torch.optim.AdamW, groups, lr=args.lr, betas=(0.9, 0.95))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    summary = train(args)
    return 0 if summary["iteration"] > 0 or summary["stopped_by_signal"] else 1

