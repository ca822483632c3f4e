"""Host reads per steady-state training step, for every training verb: the ops that bring a tensor
value back to the host.

On a GPU each of them stops the CPU until the GPU has caught up (no kernel can be queued meanwhile,
and CUDA graphs are ruled out). This counts them on the CPU, with a TorchDispatchMode over the step:
``.item()``, ``bool()``, ``int()``, ``float()`` of a tensor, ``nonzero``, ``equal``, boolean masking.
The first and the last iteration are left out, as they write a log row and read the losses on purpose
(``--log_every`` is larger than the run), and so is validation, which runs between steps. The compiled
CUDA op's own checks are not visible here (the CUDA sync-debug tests cover them).

    python benchmarks/host_reads.py [--verb pretrain|finetune|finetune_fas|all] [--steps 12]

It also runs on trees from before the one engine (per-verb loops, flat layout), so that one script gives
the figures before and after a change.
"""
from __future__ import annotations

import argparse
import collections
import importlib
import sys
import tempfile
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

READS = {"aten::_local_scalar_dense", "aten::nonzero", "aten::equal", "aten::is_nonzero", "aten::masked_select",
         "aten::unique_dim", "aten::_unique2", "aten::allclose"}
TINY = "fsfm_vit_tiny_patch16"
COMMON = ["--model", TINY, "--input_size", "32", "--num_workers", "0", "--log_every", "1000", "--device", "cpu"]


class CountReads(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.counts = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func._schema.name in READS:
            self.counts[func._schema.name] += 1
        return func(*args, **(kwargs or {}))


def _step_owner():
    """(class, method name) of one training iteration: the engine's, or an older tree's per-verb loops."""
    try:
        trainer = importlib.import_module("fsfm_fast.engine.trainer")
        if hasattr(trainer, "Trainer"):
            return {"all": (trainer.Trainer, "train_step")}
        loop = (trainer.FinetuneEngine, "_iteration")
        owners = {"finetune": loop, "finetune_fas": loop}
        owners["pretrain"] = (importlib.import_module("fsfm_fast.pretrain.task").Pretrainer, "train_step")
        return owners
    except ModuleNotFoundError:  # the flat layout
        engine = importlib.import_module("fsfm_fast.finetune_engine")
        loop = (engine.FinetuneEngine, "_iteration")
        return {"finetune": loop, "finetune_fas": loop,
                "pretrain": (importlib.import_module("fsfm_fast.pretrain").Pretrainer, "train_step")}


def _main_of(verb: str):
    for name in (f"fsfm_fast.{verb}.__main__", f"fsfm_fast.{verb}"):
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError:
            continue
        if hasattr(module, "main"):
            return module.main
    if verb == "finetune":
        return importlib.import_module("fsfm_fast.finetune.deepfake").main
    return importlib.import_module("fsfm_fast.finetune.fas").main


def _argv(verb: str, work: Path, steps: int) -> list[str]:
    out = ["--output_dir", str(work / f"out_{verb}")]
    if verb == "pretrain":
        from fsfm_fast.data.synthetic import write_synthetic_dataset
        faces = write_synthetic_dataset(work / "faces", 32, size=64, seed=0)
        return ["--data_path", str(faces), "--batch_size", "4", "--epochs", "10", "--warmup_epochs", "0",
                "--mean_std_samples", "8", "--max_steps", str(steps), *COMMON, *out]
    if verb == "finetune":
        from fsfm_fast.data.forgery import write_forgery_benchmark
        bench = write_forgery_benchmark(work / "forgeries", seed=1, size=32, frames_per_video=2,
                                        identities={"train": 6, "val": 2, "test": 2}, workers=1)
        return ["--data_path", str(bench), "--batch_size", "4", "--epochs", "20", "--warmup_epochs", "1",
                "--max_steps", str(steps), "--eval_every", str(steps), *COMMON, *out]
    from fsfm_fast.data.spoof import write_spoof_benchmark
    bench = write_spoof_benchmark(work / "spoof", size=32, frames_per_video=2, identities={"train": 3, "test": 2})
    return ["--source", f"webcam={bench / 'webcam'}", "--source", f"phone={bench / 'phone'}",
            "--target", f"laptop={bench / 'laptop'}", "--batch_per_group", "2", "--iterations", str(steps),
            "--eval_every", str(steps), "--val_fraction", "0.34", "--seeds", "0", "--lr", "1e-3", *COMMON, *out]


def count(verb: str, steps: int) -> tuple[float, int, dict]:
    owners = _step_owner()
    cls, name = owners.get(verb, owners.get("all"))
    original = getattr(cls, name)
    counter, seen = CountReads(), {"steps": 0, "counted": 0}

    def counted(*a, **k):
        seen["steps"] += 1
        if not 1 < seen["steps"] < steps:
            return original(*a, **k)
        seen["counted"] += 1
        with counter:
            return original(*a, **k)

    setattr(cls, name, counted)
    try:
        with tempfile.TemporaryDirectory() as work:
            _main_of(verb)(_argv(verb, Path(work), steps))
    finally:
        setattr(cls, name, original)
    n = max(seen["counted"], 1)
    return sum(counter.counts.values()) / n, seen["counted"], dict(counter.counts)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--verb", default="all", choices=["pretrain", "finetune", "finetune_fas", "all"])
    p.add_argument("--steps", type=int, default=12, help="iterations; the first and the last log")
    args = p.parse_args(argv)
    verbs = ["pretrain", "finetune", "finetune_fas"] if args.verb == "all" else [args.verb]
    for verb in verbs:
        per_step, n, counts = count(verb, args.steps)
        print(f"{verb}: host reads per steady-state step: {per_step:.2f} over {n} steps ({counts}), "
              f"torch {torch.__version__}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
