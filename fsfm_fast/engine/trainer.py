"""The fine-tuning engine: one training loop for every detector task, built from replaceable parts.

A task (deepfake detection in ``finetune.py``; others reuse this) hands the engine a ``TrainingParts``:

- ``model``: the module that trains (the engine wraps it in DDP when there are several processes);
- ``optimizer`` and ``lr_at(iteration)``: the base lr of an iteration; a param group's ``lr_scale``
  (timm's layer-decay groups) multiplies it;
- ``data`` (``data.loaders.TrainData``): the sampler and loader of the training batches (a batch is a
  dict with ``images`` and ``labels``, plus ``n_skipped`` and ``skipped`` [(path, reason)]);
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
from argparse import Namespace
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..data.loaders import TrainData
from ..runtime.cli import UsageError
from ..runtime.devices import autocast
from ..runtime.distributed import DistInfo, any_rank_flags, barrier, mean_across
from ..runtime.signals import StopSignal, stop_signals_held
from . import checkpoint
from .checkpoint import CheckpointManager, save_atomic
from .run_log import RunLog


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
    data: TrainData
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
        found = checkpoint.find_resume(where, self.manager, Namespace(**self.settings.args), (),
                                       ("model", "optimizer", "iteration", "engine_state", "rng"), warn=self.log.message)
        if found is None:
            return
        path, ckpt = found
        self.parts.restore(ckpt, path)
        checkpoint.restore_training(ckpt, path, {}, self.parts.optimizer, self.scaler)
        saved = ckpt["engine_state"]
        self.state = EngineState(iteration=int(ckpt["iteration"]), best=dict(saved.get("best", {})),
                                 **{k: int(saved.get(k, 0)) for k in ("nonfinite_total", "nonfinite_in_a_row",
                                                                      "skipped_images")})
        self.log.resumed(self.state.iteration)
        self.log.message(f"resumed from {path} at iteration {self.state.iteration}")

    def _checkpoint(self) -> dict:
        s, record = self.state, self.parts.record()
        return checkpoint.training_checkpoint(
            record.pop("format"), s.iteration, {}, self.parts.optimizer, self.scaler, Namespace(**self.settings.args),
            **record, engine_state={"best": dict(s.best), "nonfinite_total": s.nonfinite_total,
                                    "nonfinite_in_a_row": s.nonfinite_in_a_row, "skipped_images": s.skipped_images})

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
        return self.state.iteration / max(self.parts.data.iters_per_epoch, 1)

    # ------------------------------------------------------------------------------------------
    # the loop

    def run(self) -> dict:
        settings, state = self.settings, self.state
        if self.info.is_main:
            write_json(settings.output_dir / "args.json", settings.args)
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
        finally:  # an error, too, shuts the data workers down and ends the progress bar's line
            self.parts.data.close()
            self.log.close()
        return {"iteration": state.iteration, "stopped_by_signal": stopped, "best": dict(state.best),
                "best_checkpoints": {s.name: str(self.best_path(s)) for s in self.parts.selections
                                     if self.best_path(s).is_file()},
                "nonfinite_total": state.nonfinite_total, "skipped_images": state.skipped_images,
                "checkpoint": str(self.manager.latest())}

    def _run_epoch(self, stop: StopSignal) -> bool:
        """The iterations of the current epoch from wherever the run stands in it; True when stopped."""
        ipe = self.parts.data.iters_per_epoch
        epoch = self.state.iteration // ipe
        with stop_signals_held():  # data workers start here: see fsfm_fast.signals
            loader = self.parts.data.batches(epoch, self.state.iteration % ipe)
        return self._epoch_steps(loader, epoch, stop)

    def _epoch_steps(self, loader, epoch: int, stop: StopSignal) -> bool:
        settings, state = self.settings, self.state
        ipe = self.parts.data.iters_per_epoch
        for batch in _until_stopped(loader, stop):
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
            if it >= settings.total_iters or it // ipe != epoch:
                return False
        return stop.requested

    def _iteration(self, batch: dict, epoch: int) -> None:
        settings, it = self.settings, self.state.iteration
        if it % settings.accum_iter == 0:  # one lr per optimizer step; timm's layer-decay groups scale it
            lr = self.parts.lr_at(it)
            for group in self.parts.optimizer.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)
        # Whatever a task draws from NumPy or Python's random in this process (timm's Mixup does) is a
        # function of the iteration, so a resumed run draws the same.
        np.random.seed([settings.seed, self.info.rank, it])
        random.seed(f"{settings.seed}/{self.info.rank}/{it}")
        self.state.skipped_images += batch["n_skipped"]
        self.log.skipped(it, batch["skipped"])
        stats = self._step(batch, it)
        self.state.iteration = it + 1
        self.window.add(stats, batch["images"].shape[0] * self.info.world_size)
        if (it + 1) % settings.log_every == 0 or it + 1 in (1, settings.total_iters):
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


def _until_stopped(loader, stop: StopSignal):
    """The loader's batches; a data worker failing after a stop signal (the workers got it too) ends
    them quietly, so that the run can save."""
    while True:
        try:
            batch = next(loader)
        except StopIteration:
            return
        except Exception:
            if stop.requested:
                return
            raise
        yield batch


@dataclass
class _Window:
    """Losses and throughput since the last log line."""
    losses: list[float] = field(default_factory=list)
    images: int = 0
    iters: int = 0
    grad_norm: float | None = None  # the last one measured
    t0: float = field(default_factory=time.perf_counter)

    def add(self, stats: dict | None, images: int) -> None:
        self.iters, self.images = self.iters + 1, self.images + images
        if stats is not None:
            self.losses.append(stats["loss"])
            self.grad_norm = self.grad_norm if stats["grad_norm"] is None else stats["grad_norm"]

    def mean_loss(self) -> float:
        return sum(self.losses) / len(self.losses) if self.losses else float("nan")


def write_json(path: Path, obj: dict) -> None:
    Path(path).write_text(json.dumps(obj, indent=1, default=str) + "\n", encoding="utf-8")
