"""Host reads per steady-state pretraining step: the ops that bring a tensor value back to the host.

On a GPU each of them stops the CPU until the GPU has caught up (no kernel can be queued meanwhile,
and CUDA graphs are ruled out). This counts them on the CPU, with a TorchDispatchMode over the step:
``.item()``, ``bool()``, ``int()``, ``float()`` of a tensor, ``nonzero``, ``equal``, boolean masking.
Iterations that write a log row are left out, as they read the loss on purpose. The compiled CUDA
op's own checks are not visible here (the CUDA sync-debug test in tests/test_pretrain.py covers them).

    python benchmarks/host_reads.py [--steps 12]

It also runs against trees that still had the step as the free function ``pretrain._step``.
"""
from __future__ import annotations

import argparse
import collections
import sys
import tempfile
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from fsfm_fast.data.synthetic import write_synthetic_dataset  # noqa: E402
from fsfm_fast.pretrain import task as pretrain  # noqa: E402

READS = {"aten::_local_scalar_dense", "aten::nonzero", "aten::equal", "aten::is_nonzero", "aten::masked_select",
         "aten::unique_dim", "aten::_unique2", "aten::allclose"}


class CountReads(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.counts = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func._schema.name in READS:
            self.counts[func._schema.name] += 1
        return func(*args, **(kwargs or {}))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=12, help="iterations; the first and the last log")
    args = p.parse_args(argv)
    counter, seen = CountReads(), {"steps": 0, "counted": 0}

    def counted(step):
        def run(*a, **k):
            seen["steps"] += 1
            if not 1 < seen["steps"] < args.steps:
                return step(*a, **k)
            seen["counted"] += 1
            with counter:
                return step(*a, **k)
        return run

    if hasattr(pretrain, "Pretrainer") and hasattr(pretrain.Pretrainer, "train_step"):
        pretrain.Pretrainer.train_step = counted(pretrain.Pretrainer.train_step)
    else:
        pretrain._step = counted(pretrain._step)
    with tempfile.TemporaryDirectory() as work:
        faces = write_synthetic_dataset(Path(work) / "faces", 32, size=64, seed=0)
        pretrain.main(["--data_path", str(faces), "--output_dir", str(Path(work) / "out"), "--model",
                       "fsfm_vit_tiny_patch16", "--input_size", "32", "--batch_size", "4", "--epochs", "10",
                       "--warmup_epochs", "0", "--num_workers", "0", "--log_every", "1000", "--device", "cpu",
                       "--mean_std_samples", "8", "--max_steps", str(args.steps)])
    n = max(seen["counted"], 1)
    print(f"host reads per steady-state step: {sum(counter.counts.values()) / n:.1f} over {seen['counted']} steps "
          f"({dict(counter.counts)}), torch {torch.__version__}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
