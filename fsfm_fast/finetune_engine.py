"""The fine-tuning engine: one training loop for every detector task, built from replaceable parts.

A task (deepfake detection in ``finetune.py``; others reuse this) hands the engine a ``TrainingParts``:

- ``model``: the module that trains (the engine wraps it in DDP when there are several processes);
- ``optimizer`` and ``lr_at(iteration)``: the base lr of an iteration; a param group's ``lr_scale``
  (timm's layer-decay groups) multiplies it;
- ``batches`` (``TrainBatches``): the sampler and loader of the training batches;
- ``loss(model, batch)``: forward and criterion of one device batch (mixup, extra losses: the task's);
- ``validate(model)``: metrics of each held-out split, ``{split: {metric: value}}``, computed over the
  whole split and equal on every rank;
- ``selections``: which checkpoints to keep (``Selection``: best ``metric`` on ``split``), each written
  as ``checkpoint-<name>.pth``; one that uses target-domain labels says so in the file;
- ``record()`` / ``restore(ckpt, path)``: what a checkpoint keeps of the model (a detector config and
  its weights, or only the trained parts) and how to put it back.

The engine owns the rest, shared with pretraining through ``checkpoint``, ``run_log``, ``signals`` and
``distributed``: autocast, gradient accumulation and clipping, the fp16 scaler, skipping non-finite
losses, periodic validation and selection, atomic numbered checkpoints with exact resume (model,
optimizer, scaler, RNG, position in the epoch), a checkpoint on SIGTERM/SIGINT, and the run log.
"""
from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .checkpoint import CheckpointError, CheckpointManager, restore_rng, rng_state, safe_load, save_atomic
from .cli import UsageError
from .devices import autocast
from .distributed import DistInfo, any_rank_flags, barrier, mean_across
from .run_log import RunLog
from .signals import StopSignal


@dataclass
class TrainBatches:
    """Where a task's training batches come from. ``sampler.set_epoch(epoch, start_index)`` positions
    ``loader`` at a sample of an epoch (its batches then yield from there); a batch is a dict with
    ``images`` and ``labels`` tensors, plus ``n_skipped`` and ``skipped`` [(path, reason)]."""
    loader: Iterable[dict]
    sampler: Any
    iters_per_epoch: int
    batch_size: int  # per process


@dataclass(frozen=True)
class Selection:
    """Keep the checkpoint with the best ``metric`` of validation split ``split``."""
    name: str  # written as checkpoint-<name>.pth
    split: str
    metric: str
    mode: str = "min"  # "min" or "max"
    target_domain: bool = False  # chooses with target-domain labels: an oracle, labelled as such
    later_ties: bool = False  # a value equal to the best also wins: of equal ones, the latest checkpoint

    def better(self, value: float, best: float | None) -> bool:
        if not math.isfinite(value):
            return False
        if best is not None and value == best:
            return self.later_ties
        return best is None or (value < best if self.mode == "min" else value > best)

    def describe(self) -> str:
        how = "lowest" if self.mode == "min" else "highest"
        text = f"{how} {self.metric} on validation split '{self.split}'"
        return ("TARGET-DOMAIN SELECTION (uses the target's labels): " + text) if self.target_domain else text


@dataclass
class TrainingParts:
    model: nn.Module
    optimizer: torch.optim.Optimizer
    batches: TrainBatches
    loss: Callable[[nn.Module, dict], torch.Tensor | None]
    validate: Callable[[nn.Module], dict[str, dict[str, float]]]
    selections: list[Selection]
    lr_at: Callable[[int], float]
    record: Callable[[], dict]
    restore: Callable[[dict, Path], None]


@dataclass
class RunSettings:
    output_dir: Path
    total_iters: int
    eval_every: int  # validate (and select) every this many iterations, and at the end
    device: torch.device
    amp_dtype: torch.dtype | None = None
    accum_iter: int = 1
    clip_grad: float = 0.0  # max grad norm; <= 0: no clipping
    save_every: int = 0  # resume checkpoint every this many iterations; 0: at each validation
    keep_last: int = 2
    max_nonfinite: int = 20
    log_every: int = 20
    seed: int = 0
    resume: str = ""  # "", a path, or "auto"
    args: dict = field(default_factory=dict)  # the run's flags, stored in checkpoints

    def __post_init__(self):
        # Validation, selection and saves happen between optimizer steps, never inside an accumulation.
        def whole_steps(n: int) -> int:
            return -(-n // self.accum_iter) * self.accum_iter if n > 0 else n
        self.eval_every = max(whole_steps(self.eval_every), self.accum_iter)
        self.save_every = whole_steps(self.save_every)


@dataclass
class EngineState:
    iteration: int = 0
    best: dict[str, float] = field(default_factory=dict)  # selection name -> best value so far
    nonfinite_total: int = 0
    nonfinite_in_a_row: int = 0
    skipped_images: int = 0


def clipped_step(optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, clip_grad: float) -> float | None:
    """Unscale, clip (``clip_grad`` <= 0: only measure), step, clear. Returns the gradient norm, or None
    when a non-finite gradient refused the step (without a scaler; fp16's scaler skips such steps itself)."""
    params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
    if not params:
        return 0.0
    scaler.unscale_(optimizer)
    norm = float(torch.nn.utils.clip_grad_norm_(params, clip_grad if clip_grad > 0 else float("inf")))
    refused = not math.isfinite(norm) and not scaler.is_enabled()
    if not refused:
        scaler.step(optimizer)
        scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return None if refused else norm


class FinetuneEngine:
    """Runs ``parts`` for ``settings.total_iters`` iterations; ``run()`` returns a summary dict."""

    def __init__(self, parts: TrainingParts, settings: RunSettings, info: DistInfo, log: RunLog):
        self.parts, self.settings, self.info, self.log = parts, settings, info, log
        self.state = EngineState()
        self.manager = CheckpointManager(settings.output_dir, keep_last=settings.keep_last)
        self.scaler = torch.amp.GradScaler(settings.device.type, enabled=settings.amp_dtype is torch.float16)
        self.model = parts.model
        if info.enabled:
            device_ids = [settings.device.index] if settings.device.type == "cuda" else None
            self.model = DistributedDataParallel(parts.model, device_ids=device_ids)
        if info.is_main:
            for stale in self.manager.remove_stale_temps():
                log.message(f"removed {stale.name}, left by an interrupted save")
        if settings.resume:
            self._resume(settings.resume)
        self.last_saved = self.state.iteration if settings.resume else -1
        self.last_validated = -1

    # ------------------------------------------------------------------------------------------
    # checkpoints

    def _resume(self, where: str) -> None:
        if where == "auto":
            found = self.manager.load_latest_valid(warn=self.log.message)
            if found is None:
                self.log.message(f"--resume auto: no usable checkpoint in {self.manager.directory}, starting fresh")
                return
            path, ckpt = found
        else:
            path, ckpt = Path(where), safe_load(where)
        for key in ("model", "optimizer", "iteration", "engine_state"):
            if key not in ckpt:
                raise CheckpointError(f"{path} is not a resumable fine-tuning checkpoint (no '{key}')")
        self.parts.restore(ckpt, path)
        self.parts.optimizer.load_state_dict(ckpt["optimizer"])
        if ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        restore_rng(ckpt["rng"])
        saved = ckpt["engine_state"]
        self.state = EngineState(iteration=int(ckpt["iteration"]), best=dict(saved.get("best", {})),
                                 **{k: int(saved.get(k, 0)) for k in ("nonfinite_total", "nonfinite_in_a_row",
                                                                      "skipped_images")})
        self.log.resumed(self.state.iteration)
        self.log.message(f"resumed from {path} at iteration {self.state.iteration}")

    def _checkpoint(self) -> dict:
        s = self.state
        return {**self.parts.record(), "optimizer": self.parts.optimizer.state_dict(),
                "scaler": self.scaler.state_dict(), "iteration": s.iteration,
                "engine_state": {"best": dict(s.best), "nonfinite_total": s.nonfinite_total,
                                 "nonfinite_in_a_row": s.nonfinite_in_a_row, "skipped_images": s.skipped_images},
                "args": self.settings.args, "rng": rng_state()}

    def save(self) -> None:
        if self.state.iteration == self.last_saved:
            return
        if self.info.is_main:
            self.manager.save(self._checkpoint(), self.state.iteration)
        self.last_saved = self.state.iteration
        barrier(self.info)

    def best_path(self, selection: Selection) -> Path:
        return self.settings.output_dir / f"checkpoint-{selection.name}.pth"

    # ------------------------------------------------------------------------------------------
    # validation and selection

    def validate(self) -> dict[str, dict[str, float]]:
        it = self.state.iteration
        self.parts.model.eval()
        results = self.parts.validate(self.parts.model)
        self.parts.model.train()
        self.last_validated = it
        self.log.record("val", it, epoch=self._epoch_float(), **{f"{split}/{k}": v for split, metrics in results.items()
                                                                 for k, v in metrics.items()})
        for sel in self.parts.selections:
            value = float(results[sel.split][sel.metric])
            if sel.better(value, self.state.best.get(sel.name)):
                self.state.best[sel.name] = value
                if self.info.is_main:
                    record = {**self.parts.record(), "iteration": it, "args": self.settings.args,
                              "selection": {"name": sel.name, "split": sel.split, "metric": sel.metric,
                                            "mode": sel.mode, "value": value, "iteration": it,
                                            "target_domain": sel.target_domain, "description": sel.describe()}}
                    save_atomic(record, self.best_path(sel))
                self.log.message(f"iteration {it}: {sel.split} {sel.metric} {value:.4f}, the best so far: "
                                 f"wrote {self.best_path(sel).name}")
        barrier(self.info)
        return results

    def _epoch_float(self) -> float:
        return self.state.iteration / max(self.parts.batches.iters_per_epoch, 1)

    # ------------------------------------------------------------------------------------------
    # the loop

    def run(self) -> dict:
        settings, state = self.settings, self.state
        self.log.progress(state.iteration)
        self.window = _Window()
        stopped = False
        try:
            with StopSignal() as stop:
                self.parts.model.train()
                while state.iteration < settings.total_iters and not stopped:
                    stopped = self._run_epoch(stop)
                if not stopped and self.last_validated != state.iteration and state.iteration > 0:
                    self.validate()
                self.save()
        finally:
            self.log.close()
        return {"iteration": state.iteration, "stopped_by_signal": stopped, "best": dict(state.best),
                "best_checkpoints": {s.name: str(self.best_path(s)) for s in self.parts.selections
                                     if self.best_path(s).is_file()},
                "nonfinite_total": state.nonfinite_total, "skipped_images": state.skipped_images,
                "checkpoint": str(self.manager.latest())}

    def _run_epoch(self, stop: StopSignal) -> bool:
        """The iterations of the current epoch from wherever the run stands in it; True when stopped."""
        settings, state, batches = self.settings, self.state, self.parts.batches
        ipe = batches.iters_per_epoch
        epoch = state.iteration // ipe
        batches.sampler.set_epoch(epoch, start_index=(state.iteration % ipe) * batches.batch_size)
        loader = iter(batches.loader)
        while state.iteration < settings.total_iters and state.iteration // ipe == epoch:
            try:
                batch = next(loader)
            except StopIteration:
                return False
            except Exception:
                if stop.requested:  # data workers were hit by the same signal: save what we have
                    return True
                raise
            self._iteration(batch, epoch)
            it = state.iteration
            if it % settings.accum_iter and it != settings.total_iters:
                continue  # mid-accumulation: no stop, validation or save here
            stopped = stop.requested
            if self.info.enabled:  # a signal to one rank stops them all together
                stopped = any_rank_flags([stopped], self.info, settings.device)[0]
            if stopped:
                return True
            if it % settings.eval_every == 0 or it == settings.total_iters:
                self.validate()
                if settings.save_every == 0:
                    self.save()
            if settings.save_every and it % settings.save_every == 0:
                self.save()
        return stop.requested

    def _iteration(self, batch: dict, epoch: int) -> None:
        settings, state = self.settings, self.state
        it = state.iteration
        state.skipped_images += batch["n_skipped"]
        self.log.skipped(it, batch["skipped"])
        if it % settings.accum_iter == 0:
            lr = self.parts.lr_at(it)
            for group in self.parts.optimizer.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)
        # Whatever a task draws from NumPy or Python's random in this process (timm's Mixup does) is a
        # function of the iteration, so a resumed run draws the same.
        np.random.seed([settings.seed, self.info.rank, it])
        random.seed(f"{settings.seed}/{self.info.rank}/{it}")
        stats = self._step(batch, it)
        state.iteration = it + 1
        self.window.add(stats, batch["images"].shape[0] * self.info.world_size)
        if state.iteration % settings.log_every == 0 or state.iteration in (1, settings.total_iters):
            self._log(epoch)

    def _step(self, batch: dict, it: int) -> dict | None:
        """One micro-batch: forward and backward, and at the end of an accumulation cycle the clipped
        optimizer step. Returns the loss and gradient norm, or None when the batch was skipped."""
        settings, info = self.settings, self.info
        device = settings.device
        batch = {**batch, "images": batch["images"].to(device, non_blocking=True),
                 "labels": batch["labels"].to(device, non_blocking=True)}
        last_micro = (it + 1) % settings.accum_iter == 0 or it + 1 == settings.total_iters
        # Between accumulation steps DDP need not all-reduce gradients; the last micro-batch does it.
        sync = nullcontext() if (last_micro or not info.enabled) else self.model.no_sync()
        with sync:
            with autocast(device, settings.amp_dtype):
                loss = self.parts.loss(self.model, batch) if batch["images"].shape[0] else None
            # Every rank must take the same branch, or DDP's backward would wait for a peer forever.
            empty, nonfinite = any_rank_flags([loss is None, loss is not None and not bool(torch.isfinite(loss))],
                                              info, device)
            if empty:
                if last_micro:
                    clipped_step(self.parts.optimizer, self.scaler, settings.clip_grad)
                return None
            if nonfinite:
                return self._skip(last_micro)
            self.scaler.scale(loss.float() / settings.accum_iter).backward()
        grad_norm = None
        if last_micro:
            grad_norm = clipped_step(self.parts.optimizer, self.scaler, settings.clip_grad)
            if grad_norm is None:
                return self._skip(last_micro)
        self.state.nonfinite_in_a_row = 0
        return {"loss": float(loss.detach()), "grad_norm": grad_norm}

    def _skip(self, last_micro: bool) -> None:
        state = self.state
        state.nonfinite_total += 1
        state.nonfinite_in_a_row += 1
        if last_micro:
            self.parts.optimizer.zero_grad(set_to_none=True)
        if state.nonfinite_in_a_row >= self.settings.max_nonfinite:
            raise UsageError(f"{state.nonfinite_in_a_row} non-finite losses or gradients in a row (last at "
                             f"iteration {state.iteration}): the run diverges; lower --blr, set --clip_grad, use "
                             "--precision bf16 or fp32, or resume from an earlier checkpoint")
        return None

    def _log(self, epoch: int) -> None:
        w = self.window
        loss = mean_across([w.mean_loss()], self.info, self.settings.device)[0]
        elapsed = max(time.perf_counter() - w.t0, 1e-9)
        group = max(self.parts.optimizer.param_groups, key=lambda g: g["lr"])
        row = {"loss": loss, "epoch": epoch, "lr": group["lr"], "img_per_s": w.images / elapsed,
               "grad_norm": w.grad_norm, "nonfinite_total": self.state.nonfinite_total,
               "skipped_images": self.state.skipped_images}
        self.log.record("train", self.state.iteration, **row)
        self.log.progress(w.iters, loss=loss, img_s=row["img_per_s"], lr=row["lr"])
        self.window = _Window()


class _Window:
    """Losses and throughput since the last log line."""

    def __init__(self):
        self.losses: list[float] = []
        self.images = self.iters = 0
        self.grad_norm = None
        self.t0 = time.perf_counter()

    def add(self, stats: dict | None, images: int) -> None:
        self.iters += 1
        self.images += images
        if stats is not None:
            self.losses.append(stats["loss"])
            if stats["grad_norm"] is not None:
                self.grad_norm = stats["grad_norm"]

    def mean_loss(self) -> float:
        return sum(self.losses) / len(self.losses) if self.losses else float("nan")


def write_summary(output_dir: Path, summary: dict) -> None:
    (Path(output_dir) / "summary.json").write_text(json.dumps(summary, indent=1, default=str) + "\n",
                                                   encoding="utf-8")
