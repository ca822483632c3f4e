"""``python -m fsfm_fast.pretrain``: FSFM-3C self-supervised pretraining (flags: ``pretrain.args``; the
task the engine runs: ``pretrain.task``)."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from ..runtime import cli
from .args import check_paths, parse_args

if __name__ == "__main__":  # -h and flag errors answer before torch is imported (the imports below)
    sys.exit(cli.run_verb("fsfm_fast.pretrain", parse_args, "fsfm_fast.pretrain.__main__"))

from ..engine import run_folder
from ..engine.checkpoint import plain_args
from ..engine.run_log import RunLog
from ..engine.trainer import Trainer, open_run
from ..plots import final_pictures
from ..runtime.devices import autocast_dtype, device_type
from ..runtime.distributed import DistInfo, barrier, process_group
from .task import SAME_RUN_KEYS, Pretraining, device_for


def build(args: argparse.Namespace, info: DistInfo) -> tuple[Trainer, Pretraining]:
    """Every path and the checkpoint to resume checked first, then the data, networks and engine."""
    device = device_for(args.device, info)
    amp_dtype = autocast_dtype(args.precision, device)
    say = print if info.is_main else (lambda text: None)
    if info.is_main:
        check_paths(args)
        run_folder.claim([args.output_dir, args.log_dir], resume=args.resume, overwrite=args.overwrite)
    barrier(info)
    manager, resumed = open_run(Path(args.output_dir), keep_last=args.keep_last, resume=args.resume,
                                args=plain_args(args), info=info, say=say, same_run=SAME_RUN_KEYS,
                                required=("model", "target", "optimizer", "iteration", "rng", "engine_state"))
    run = Pretraining(args, info, device, amp_dtype, say)
    log = RunLog(args.log_dir or run.out_dir, enabled=info.is_main, total=run.stop_iter)
    trainer = Trainer(run.task(), run.settings(), info, log, manager, resumed)
    return trainer, run


def announce(trainer: Trainer, run: Pretraining) -> None:
    args, log = run.args, trainer.log
    precision = "fp32" if run.amp_dtype is None else str(run.amp_dtype).split(".")[-1]
    used = run.checked["in_use"]
    log.message(
        f"fsfm_fast pretrain: {args.model} at {args.input_size}px on {run.device} (x{run.info.world_size}), "
        f"{len(run.data.dataset)} images, {run.data.iters_per_epoch} it/epoch, effective batch {run.eff_batch}, "
        f"lr {args.lr:.3g}, precision {precision}, compile {args.compile}"
        + (" [embedded synthetic faces]" if args.demo else ""))
    log.message(f"backends: masks {used['crfrp_mask']}, ops {used['gather_visible']}/"
                f"{used['restore_masked']}/{used['fsfm_loss']} (gather/restore/loss), "
                f"loader {run.data.kind}; self-check: "
                + (", ".join(f"{c['op']} {'ok' if c['ok'] else 'FAILED'}" for c in run.checked["checks"])
                   or "nothing compiled to check"))


def train(args: argparse.Namespace) -> dict:
    with process_group(device_type(args.device)) as info:
        trainer, run = build(args, info)
        announce(trainer, run)
        start = time.perf_counter()
        summary = trainer.run()
        run_seconds = time.perf_counter() - start
        summary = {k: summary[k] for k in ("iteration", "stopped_by_signal", "nonfinite_total", "skipped_images",
                                           "checkpoint")}
        if run.monitor is not None:  # what the health monitor cost, for the user to weigh against --probe_every
            trainer.log.message(run.monitor.summary(run_seconds))
            summary.update(monitor_seconds=run.monitor.seconds, run_seconds=run_seconds)
        if info.is_main:
            if summary["stopped_by_signal"]:
                trainer.log.message(f"stopped by signal at iteration {summary['iteration']}; "
                                    "continue with --resume auto")
            elif summary["iteration"] > 0:
                final_pictures(args, run.online, run.data.dataset, run.device, run.mean_std, run.out_dir, trainer.log)
            (run.out_dir / "summary.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
        return summary


def main(argv: list[str] | None = None) -> int:
    summary = train(parse_args(argv))
    return 0 if summary["iteration"] > 0 or summary["stopped_by_signal"] else 1

