"""The training engine: the one loop that pretraining, deepfake fine-tuning and FAS fine-tuning run.

A verb hands the engine a ``Task``: the module that trains, its optimizer and learning rate per
iteration, the batches, the loss of one batch, what to do after each micro-batch (the EMA of a target
network), how to validate and which checkpoints to select, and what a checkpoint keeps of the model.
The engine owns the rest, once:

- precision (autocast, the fp16 scaler), gradient accumulation (DDP's ``no_sync`` on the micro-batches
  that do not end a cycle), clipping and the fused optimizer step;
- a step with no host read: losses, gradient norm and the skip counters stay on the device
  (``StepStats``); a non-finite loss or gradient skips its micro-batch on the device (the fused
  optimizer's ``found_inf``), and ``--max_nonfinite`` is enforced when a log row reads them back;
- a log row every ``log_every`` iterations, validation and selection every ``eval_every``;
- checkpoints only between optimizer steps: ``save_every`` and ``eval_every`` are whole cycles, a run
  stops (``--max_steps``, a stop signal) only at the end of a cycle, and a schedule that ends inside one
  takes its last step with the micro-batches it has, so a stopped and resumed run computes exactly what
  an uninterrupted one does;
- stop signals (SIGTERM/SIGINT save and end the run), resume, the run files.

``Trainer.run`` reads top to bottom: epochs of ``train_step``, with validation, saves and stop
agreement between optimizer steps.
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
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..data.loaders import TrainData
from ..formats import selected_checkpoint
from ..runtime.cli import UsageError
from ..runtime.devices import autocast
from ..runtime.distributed import DistInfo, any_rank_flags, barrier
from ..runtime.signals import StopSignal, stop_signals_held
from . import checkpoint
from .checkpoint import CheckpointManager, save_atomic
from .run_log import RunLog
from .step_stats import StepStats


class DivergedError(UsageError, FloatingPointError):
    """--max_nonfinite non-finite losses or gradients in a row: one line with what to do."""


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
class Task:
    """What a verb trains; see the module docstring. ``loss(model, batch, iteration)`` returns the loss
    tensors named ``loss_names`` (the first is the one optimised), computed under the engine's autocast
    from a batch already on the device. ``after_step(iteration, skipped)`` runs after every micro-batch,
    ``skipped`` a bool device tensor. ``validate(model)`` gives each split's metrics and the samples it
    could not read, ``(path, why)``, which the run log names. ``record()`` gives a checkpoint's ``format`` and model entries,
    ``restore(ckpt, path)`` puts them back."""
    model: nn.Module
    optimizer: torch.optim.Optimizer
    data: TrainData
    loss: Callable[[nn.Module, dict, int], list[torch.Tensor]]
    lr_at: Callable[[int], float]
    record: Callable[[], dict]
    restore: Callable[[dict, Path], None]
    loss_names: tuple[str, ...] = ("loss",)
    after_step: Callable[[int, torch.Tensor], None] | None = None
    validate: Callable[[nn.Module], tuple[dict[str, dict[str, float]], list[tuple[str, str]]]] | None = None
    selections: list[Selection] = field(default_factory=list)
    min_batch: int = 1  # a smaller batch is skipped (mixup pairs samples)
    log_extra: Callable[[int], dict] = lambda iteration: {}


@dataclass
class RunSettings:
    output_dir: Path
    stop_iter: int  # where the run ends: the schedule's end, or --max_steps (rounded up to a whole cycle)
    device: torch.device
    amp_dtype: torch.dtype | None = None
    accum_iter: int = 1
    clip_grad: float = 0.0  # max grad norm; 0: no clipping
    eval_every: int = 0  # validate (and select) every this many iterations and at the end; 0: only at the end
    save_every: int = 0  # resume checkpoint every this many iterations; 0: at each validation
    keep_last: int = 2
    max_nonfinite: int = 20
    log_every: int = 20
    seed: int = 0
    resume: str = ""  # "", a path, or "auto"
    args: dict = field(default_factory=dict)  # the run's flags, stored in checkpoints and args.json
    compile: str = "none"  # torch.compile mode of the model; "reduce-overhead" also captures CUDA graphs

    def __post_init__(self):
        # Validation, selection, saves and stops happen between optimizer steps, never inside a cycle.
        self.eval_every = whole_cycles(self.eval_every, self.accum_iter)
        self.save_every = whole_cycles(self.save_every, self.accum_iter)


def whole_cycles(n: int, accum_iter: int) -> int:
    """``n`` iterations rounded up to whole accumulation cycles (0 stays 0)."""
    return -(-n // accum_iter) * accum_iter if n > 0 else n


@dataclass
class EngineState:
    iteration: int = 0
    best: dict[str, float] = field(default_factory=dict)  # selection name -> best value so far
    skipped_images: int = 0


def open_run(output_dir: Path, *, keep_last: int, resume: str, args: dict, info: DistInfo, say,
             same_run: tuple[str, ...] = (),
             required: tuple[str, ...] = ("iteration", "optimizer", "rng", "engine_state"),
             ) -> tuple[CheckpointManager, tuple[Path, dict] | None]:
    """The run's checkpoint folder, cleared of temporary files an interrupted save left, and the
    checkpoint ``resume`` names, loaded and checked (``same_run``: flags it must share with this run)
    before any expensive work."""
    manager = CheckpointManager(output_dir, keep_last=keep_last)
    if info.is_main:
        for stale in manager.remove_stale_temps():
            say(f"removed {stale.name}, left by an interrupted save")
    resumed = checkpoint.find_resume(resume, manager, Namespace(**args), same_run, required, warn=say)
    return manager, resumed


class Trainer:
    """Runs ``task`` until ``settings.stop_iter``; ``run()`` returns a summary dict."""

    def __init__(self, task: Task, settings: RunSettings, info: DistInfo, log: RunLog, manager: CheckpointManager,
                 resumed: tuple[Path, dict] | None = None):
        self.task, self.settings, self.info, self.log, self.manager = task, settings, info, log, manager
        self.device = settings.device
        self.state = EngineState()
        self.stats = StepStats(task.loss_names, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=settings.amp_dtype is torch.float16)
        # The fused optimizers skip a step on the device when told so (found_inf); others need a host check.
        self.fused = bool(task.optimizer.defaults.get("fused"))
        self.params = [p for g in task.optimizer.param_groups for p in g["params"]]
        self.model = task.model
        if info.enabled:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = DistributedDataParallel(task.model, device_ids=device_ids)
        if settings.compile != "none":
            self.model = torch.compile(self.model, mode=None if settings.compile == "default" else settings.compile)
        self.last_saved = self.last_validated = -1
        if resumed is not None:
            self._resume(*resumed)
        self.window_start, self.window_images, self.window_iters = time.perf_counter(), 0, 0
        self.stop = StopSignal()

    # ------------------------------------------------------------------------------------------ loop

    def run(self) -> dict:
        s, state = self.settings, self.state
        if self.info.is_main:
            write_json(s.output_dir / "args.json", s.args)
        self.log.start_at(state.iteration)
        self.window_start = time.perf_counter()
        stopped = False
        try:
            with self.stop:
                self.task.model.train()
                while state.iteration < s.stop_iter and not stopped:
                    stopped = self.train_one_epoch()
                if (not stopped and self.task.validate is not None and self.last_validated != state.iteration
                        and state.iteration > 0):
                    self.validate()
                self.save()
        finally:  # an error, too, ends the progress bar's line and shuts the data workers down
            self.task.data.close()
            self.log.close()
        return {"iteration": state.iteration, "stopped_by_signal": stopped, "best": dict(state.best),
                "best_checkpoints": {sel.name: str(self.best_path(sel)) for sel in self.task.selections
                                     if self.best_path(sel).is_file()},
                "nonfinite_total": self.stats.counters()["nonfinite_total"], "skipped_images": state.skipped_images,
                "checkpoint": str(self.manager.latest())}

    def train_one_epoch(self) -> bool:
        """The iterations of the current epoch, from wherever the run stands in it. True when a stop
        signal ended it (at the end of an accumulation cycle): ``run`` then saves that iteration."""
        s, state, per_epoch = self.settings, self.state, self.task.data.iters_per_epoch
        epoch = state.iteration // per_epoch
        with stop_signals_held():  # data workers start here: see runtime.signals
            batches = self.task.data.batches(epoch, state.iteration % per_epoch)
        while state.iteration < s.stop_iter and state.iteration // per_epoch == epoch:
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
            self.train_step(batch)
            if not self._cycle_done():
                continue
            it = state.iteration
            if self.task.validate is not None and ((s.eval_every and it % s.eval_every == 0) or it == s.stop_iter):
                self.validate()
                if s.save_every == 0:
                    self.save()
            if s.save_every and it % s.save_every == 0:
                self.save()
        return False

    def train_step(self, batch: dict) -> None:
        """One micro-batch with no host read: forward and backward, at the end of an accumulation cycle
        the clipped optimizer step, then the task's ``after_step``. A non-finite loss (or gradient) is
        skipped on the device: its micro-batch moves no weight and counts toward --max_nonfinite."""
        s, task, it = self.settings, self.task, self.state.iteration
        self.state.skipped_images += batch["n_skipped"]
        self.log.skipped(it, batch["skipped"])
        # Whatever a task draws from NumPy or Python's random in this process (timm's Mixup does) is a
        # function of the iteration, so a resumed run draws the same.
        np.random.seed([s.seed, self.info.rank, it])
        random.seed(f"{s.seed}/{self.info.rank}/{it}")
        last_micro = (it + 1) % s.accum_iter == 0 or it + 1 == s.stop_iter
        if it % s.accum_iter == 0:  # one lr per optimizer step; timm's layer-decay groups scale it
            lr = task.lr_at(it)
            for group in task.optimizer.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)
        if s.compile == "reduce-overhead":
            torch.compiler.cudagraph_mark_step_begin()
        if batch.get("empty_somewhere", batch["images"].shape[0] < task.min_batch):
            # every rank skips together; a cycle's earlier micro-batches still make their step
            if last_micro:
                self._optimizer_step(torch.zeros((), dtype=torch.bool, device=self.device))
            self._end_iteration(batch, None, None, None)
            return
        batch = {k: v.to(self.device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
        # Between accumulation steps DDP need not all-reduce gradients; the last micro-batch does it.
        sync = nullcontext() if (last_micro or not self.info.enabled) else self.model.no_sync()
        with sync:
            with autocast(self.device, s.amp_dtype):
                losses = task.loss(self.model, batch, it)
            bad = self._any_rank(~torch.isfinite(losses[0]))
            before = self._grads() if not last_micro else None
            self.scaler.scale(losses[0].float() / s.accum_iter).backward()
        if last_micro:
            counted, grad_norm = self._optimizer_step(bad)
        else:
            self._drop_new_grads(bad, before)
            counted, grad_norm = bad, None
        if task.after_step is not None:
            task.after_step(it, counted)
        self._end_iteration(batch, losses, counted, grad_norm)

    def _cycle_done(self) -> bool:
        it = self.state.iteration
        return it % self.settings.accum_iter == 0 or it == self.settings.stop_iter

    def _agree_to_stop(self, batch: dict) -> bool:
        """A stop signal is honoured between optimizer steps; under DDP all ranks agree on it, and on
        batches too small to use, in one exchange of host flags (the gloo group of NCCL runs: no GPU sync)."""
        at_boundary = self.state.iteration % self.settings.accum_iter == 0
        stop = self.stop.requested and at_boundary
        if self.info.enabled:
            stop, batch["empty_somewhere"] = any_rank_flags([stop, batch["images"].shape[0] < self.task.min_batch],
                                                            self.info, self.device)
        return stop

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
        clear. Returns (counted as non-finite, gradient norm). An fp16 overflow is the scaler's
        business: it skips the step and lowers the scale, and is not counted."""
        optimizer = self.task.optimizer
        if not any(p.grad is not None for p in self.params):
            return bad, None
        self.scaler.unscale_(optimizer)
        max_norm = self.settings.clip_grad if self.settings.clip_grad > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, max_norm, foreach=True)
        skip = bad | ~torch.isfinite(grad_norm)
        if self.fused:
            optimizer.found_inf, optimizer.grad_scale = skip.float(), None
            optimizer.step()
            del optimizer.found_inf, optimizer.grad_scale
        elif not bool(skip):  # no fused kernel for this device: a host check
            optimizer.step()
        self.scaler.update()
        optimizer.zero_grad(set_to_none=True)
        counted = bad if self.scaler.is_enabled() else skip
        return counted, grad_norm

    def _end_iteration(self, batch: dict, losses, counted, grad_norm) -> None:
        if losses is not None:
            self.stats.add(losses, counted, grad_norm)
        self.state.iteration += 1
        self.window_iters += 1
        self.window_images += batch["images"].shape[0] * self.info.world_size
        it = self.state.iteration
        if it % self.settings.log_every == 0 or it in (1, self.settings.stop_iter):
            self._log()

    def _log(self) -> None:
        """The one place the loop reads numbers back from the device: one transfer per log row; and
        where --max_nonfinite is enforced."""
        stats = self.stats.read(self.info)
        worst_run = stats.pop("worst_run")
        elapsed = max(time.perf_counter() - self.window_start, 1e-9)
        it, iters = self.state.iteration, self.window_iters
        group = max(self.task.optimizer.param_groups, key=lambda g: g["lr"])
        row = dict(stats, epoch=(it - 1) // self.task.data.iters_per_epoch, lr=group["lr"], **self.task.log_extra(it),
                   img_per_s=self.window_images / elapsed, s_per_it=elapsed / iters,
                   skipped_images=self.state.skipped_images)
        self.log.record("train", it, **row)
        self.log.progress(iters, loss=row["loss"], img_s=row["img_per_s"], lr=row["lr"])
        if worst_run >= self.settings.max_nonfinite:
            raise DivergedError(
                f"{worst_run} non-finite losses or gradients in a row (by iteration {it}); the run is diverging. "
                "Lower the learning rate, set --clip_grad, use --precision bf16 or fp32, or resume from an "
                "earlier checkpoint.")
        self.stats.next_window()
        self.window_start, self.window_images, self.window_iters = time.perf_counter(), 0, 0

    # ------------------------------------------------------------------------------------ checkpoints

    def _resume(self, path: Path, ckpt: dict) -> None:
        self.task.restore(ckpt, path)
        checkpoint.restore_training(ckpt, path, {}, self.task.optimizer, self.scaler)
        saved = ckpt["engine_state"]
        self.state = EngineState(iteration=int(ckpt["iteration"]), best=dict(saved.get("best", {})),
                                 skipped_images=int(saved.get("skipped_images", 0)))
        self.stats.restore(saved)
        self.last_saved = self.state.iteration
        self.log.resumed(self.state.iteration)
        self.log.message(f"resumed from {path} at iteration {self.state.iteration}")

    def save(self) -> None:
        if self.state.iteration == self.last_saved:
            return
        if self.info.is_main:
            state, record = self.state, self.task.record()
            engine_state = {"best": dict(state.best), "skipped_images": state.skipped_images, **self.stats.counters()}
            ckpt = checkpoint.training_checkpoint(record.pop("format"), state.iteration, {}, self.task.optimizer,
                                                  self.scaler, Namespace(**self.settings.args), **record,
                                                  engine_state=engine_state)
            self.manager.save(ckpt, state.iteration)
        self.last_saved = self.state.iteration
        barrier(self.info)

    def best_path(self, selection: Selection) -> Path:
        return selected_checkpoint(self.settings.output_dir, selection.name)

    # ----------------------------------------------------------------------------------- validation

    def validate(self) -> dict[str, dict[str, float]]:
        it, task = self.state.iteration, self.task
        task.model.eval()
        results, unreadable = task.validate(task.model)
        task.model.train()
        self.last_validated = it
        self.log.skipped(it, unreadable)
        epoch = it / max(task.data.iters_per_epoch, 1)
        self.log.record("val", it, epoch=epoch, **{f"{split}/{k}": v for split, metrics in results.items()
                                                   for k, v in metrics.items()})
        for sel in task.selections:
            value = float(results[sel.split][sel.metric])
            if sel.better(value, self.state.best.get(sel.name)):
                self.state.best[sel.name] = value
                if self.info.is_main:
                    record = {**task.record(), "iteration": it, "args": self.settings.args,
                              "selection": {"name": sel.name, "split": sel.split, "metric": sel.metric,
                                            "mode": sel.mode, "value": value, "iteration": it,
                                            "target_domain": sel.target_domain, "description": sel.describe()}}
                    save_atomic(record, self.best_path(sel))
                self.log.message(f"iteration {it}: {sel.split} {sel.metric} {value:.4f}, the best so far: "
                                 f"wrote {self.best_path(sel).name}")
        barrier(self.info)
        return results


def write_json(path: Path, obj: dict) -> None:
    Path(path).write_text(json.dumps(obj, indent=1, default=str) + "\n", encoding="utf-8")
