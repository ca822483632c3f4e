"""The training loop: it learns, resumes exactly, survives crashes and signals, and runs under DDP."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _host_reads import NoHostReads
from _no_extension import BLOCK_EXTENSION

from fsfm_fast.data.synthetic import write_synthetic_dataset
from fsfm_fast.engine.checkpoint import CheckpointManager, save_atomic
from fsfm_fast.engine.run_log import read_log
from fsfm_fast.formats import MEAN_STD_FILE, CheckpointError, safe_load
from fsfm_fast.pretrain.__main__ import build, main
from fsfm_fast.pretrain.args import parse_args
from fsfm_fast.pretrain.task import device_for
from fsfm_fast.runtime.distributed import DistInfo

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def faces(tmp_path_factory) -> Path:
    return write_synthetic_dataset(tmp_path_factory.mktemp("faces"), 96, size=112, seed=3)


def _argv(data: Path, out: Path, *extra: str) -> list[str]:
    return ["--data_path", str(data), "--output_dir", str(out), "--model", "fsfm_vit_tiny_patch16",
            "--input_size", "112", "--batch_size", "8", "--epochs", "4", "--warmup_epochs", "1",
            "--blr", "1e-2", "--num_workers", "0", "--log_every", "1", "--device", "cpu",
            "--mean_std_samples", "32", *extra]


def _losses(out: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_log(out / "log.jsonl")}


def test_few_steps_lower_the_loss(faces, tmp_path):
    summary = main(_argv(faces, tmp_path, "--max_steps", "40"))
    assert summary == 0
    losses = _losses(tmp_path)
    steps = sorted(losses)
    first = sum(losses[s] for s in steps[:5]) / 5
    last = sum(losses[s] for s in steps[-5:]) / 5
    assert last < 0.85 * first, (first, last)
    for name in ("loss_curves.png", "reconstructions.png", "summary.json", MEAN_STD_FILE):
        assert (tmp_path / name).is_file(), name
    stats = json.loads((tmp_path / MEAN_STD_FILE).read_text().splitlines()[0])
    assert len(stats["mean"]) == 3 and all(0 < s < 1 for s in stats["std"])
    ckpt = safe_load(CheckpointManager(tmp_path).latest())
    assert ckpt["iteration"] == 40 and set(ckpt) >= {"model", "target", "optimizer", "scaler", "rng", "args"}


def test_resume_continues_exactly(faces, tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    extra = ("--accum_iter", "2", "--save_every", "4", "--input_size", "64")
    assert main(_argv(faces, full, "--max_steps", "14", *extra)) == 0
    assert main(_argv(faces, part, "--max_steps", "8", *extra)) == 0
    assert main(_argv(faces, part, "--max_steps", "14", "--resume", "auto", *extra)) == 0
    a, b = _losses(full), _losses(part)
    assert [s for s in b if s > 8] == list(range(9, 15))
    for step in range(9, 15):  # crosses an epoch boundary (12 iterations per epoch) too
        assert a[step] == b[step], (step, a[step], b[step])
    wa = safe_load(CheckpointManager(full).latest())
    wb = safe_load(CheckpointManager(part).latest())
    for key in ("model", "target"):
        for name, tensor in wa[key].items():
            assert torch.equal(tensor, wb[key][name]), (key, name)


def test_atomic_checkpoint_survives_crash_mid_write(tmp_path, monkeypatch):
    manager = CheckpointManager(tmp_path, keep_last=2)
    good = manager.save({"model": {"w": torch.ones(3)}, "iteration": 5}, 5)

    def crash(obj, f, *a, **k):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError("disk went away")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk went away"):
        manager.save({"model": {"w": torch.zeros(3)}, "iteration": 10}, 10)
    with pytest.raises(OSError):
        save_atomic({"x": 1}, good)  # overwriting in place must not clobber either
    monkeypatch.undo()
    assert manager.latest() == good
    assert torch.equal(safe_load(good)["model"]["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == [good.name], "temporary files left behind"


def test_keep_last_and_corrupt_checkpoint_is_named(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=2)
    for step in (1, 2, 3):
        manager.save({"iteration": step}, step)
    assert [s for s, _ in manager.list()] == [2, 3]
    bad = tmp_path / "checkpoint-00000009.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="checkpoint-00000009.pth.*not a valid checkpoint"):
        safe_load(bad)


def _trainer(data: Path, out: Path, *extra: str):
    """(the engine, the pretraining run it trains). ImageNet statistics: these tests drive the step
    directly and need no pass over the data."""
    return build(parse_args(_argv(data, out, "--normalize_from_IMN", *extra)), DistInfo())


def _batch(run, n: int = 2, value: float | None = None) -> dict:
    s = run.args.input_size
    images = torch.randn(n, 3, s, s, generator=torch.Generator().manual_seed(n))
    if value is not None:
        images.fill_(value)
    parsing = torch.randint(0, 11, (n, s, s), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    return {"images": images, "parsing": parsing, "n_skipped": 0, "skipped": []}


def _weights(run) -> list[torch.Tensor]:
    return [p.detach().clone() for p in [*run.online.parameters(), *run.target.parameters()]]


def test_nonfinite_batch_is_skipped_on_the_device_then_stops(faces, tmp_path):
    trainer, run = _trainer(faces, tmp_path, "--max_nonfinite", "3", "--input_size", "32")
    trainer.train_step(_batch(run))  # a good step moves both networks
    before = _weights(run)
    trainer.train_step(_batch(run, value=float("nan")))
    trainer.train_step(_batch(run, value=float("inf")))
    after = _weights(run)
    assert all(torch.equal(a, b) for a, b in zip(before, after)), "a skipped batch moved a network"
    assert trainer.stats.counters() == {"nonfinite_total": 2, "nonfinite_in_a_row": 2}
    trainer.train_step(_batch(run))  # a good one in between resets the run
    assert trainer.stats.counters() == {"nonfinite_total": 2, "nonfinite_in_a_row": 0}
    trainer.train_step(_batch(run, value=float("nan")))
    trainer.train_step(_batch(run, value=float("nan")))
    with pytest.raises(FloatingPointError, match="3 non-finite losses or gradients in a row"):
        trainer.train_step(_batch(run, value=float("nan")))  # checked when logging (--log_every 1)
    rows = read_log(tmp_path / "log.jsonl")
    assert [r["nonfinite_total"] for r in rows] == [0, 1, 2, 2, 3, 4, 5]
    assert math.isnan(rows[1]["loss"]) and math.isfinite(rows[3]["loss"])  # skipped batches join no mean


def test_nonfinite_micro_batch_drops_only_its_gradient(faces, tmp_path):
    trainer, run = _trainer(faces, tmp_path, "--input_size", "32", "--accum_iter", "2", "--warmup_epochs", "0")
    trainer.train_step(_batch(run, value=float("nan")))  # first of a cycle of two
    grads = [p.grad for p in trainer.params]
    assert all(g is None or (torch.isfinite(g).all() and not g.any()) for g in grads)
    before = _weights(run)
    trainer.train_step(_batch(run))  # the cycle's step is taken with the good micro-batch alone
    assert not torch.equal(before[0], next(run.online.parameters()))
    assert trainer.stats.counters() == {"nonfinite_total": 1, "nonfinite_in_a_row": 0}


def test_a_batch_with_every_sample_unreadable_is_skipped_and_named(faces, tmp_path):
    """A batch whose every image was corrupt (the loader dropped them all) costs an iteration, moves
    no network, names its samples, and the accumulation cycle's earlier micro-batch still steps."""
    trainer, run = _trainer(faces, tmp_path, "--input_size", "32", "--accum_iter", "2", "--warmup_epochs", "0")
    trainer.train_step(_batch(run))  # the first micro-batch of a cycle of two
    before = _weights(run)
    empty = {"images": torch.zeros(0, 3, 32, 32), "parsing": torch.zeros(0, 32, 32, dtype=torch.uint8),
             "n_skipped": 2, "skipped": [("a.png", "truncated image"), ("b.png", "not an image")]}
    trainer.train_step(empty)
    assert trainer.state.iteration == 2 and trainer.state.skipped_images == 2
    assert not torch.equal(before[0], next(run.online.parameters())), "the cycle's good micro-batch steps"
    before = _weights(run)
    for name in ("c.png", "d.png"):  # a whole cycle of empty micro-batches: no step at all
        trainer.train_step(dict(empty, skipped=[(name, "truncated image")], n_skipped=1))
    assert all(torch.equal(a, b) for a, b in zip(before, _weights(run))), "an empty cycle moved a network"
    assert trainer.state.iteration == 4 and trainer.state.skipped_images == 4
    assert trainer.stats.counters() == {"nonfinite_total": 0, "nonfinite_in_a_row": 0}
    lines = (tmp_path / "skipped.tsv").read_text().splitlines()
    assert lines[1:] == ["1\ta.png\ttruncated image", "1\tb.png\tnot an image", "2\tc.png\ttruncated image",
                         "3\td.png\ttruncated image"]


def test_steady_state_step_reads_nothing_back(faces, tmp_path, monkeypatch):
    """The CPU stand-in for the CUDA sync-debug test below: no op of a steady-state step (log
    steps excluded) reads a tensor's value on the host, and no tensor is turned into Python numbers.
    (The Triton launchers run inside custom ops, which this dispatch mode sees as one op each.)"""
    trainer, run = _trainer(faces, tmp_path, "--input_size", "32", "--log_every", "100", "--accum_iter", "2")
    batches = [_batch(run, n=2) for _ in range(3)]
    trainer.train_step(batches[0])  # iteration 1 is logged
    monkeypatch.setattr(torch.Tensor, "tolist", lambda self: pytest.fail("tolist() in the training step"))
    with NoHostReads():
        for batch in batches[1:]:  # the end of an accumulation cycle, then the start of the next
            trainer.train_step(batch)
    monkeypatch.undo()
    assert trainer.state.iteration == 3 and trainer.stats.counters()["nonfinite_total"] == 0


@pytest.mark.cuda
def test_steady_state_step_is_sync_free_on_cuda(faces, tmp_path):
    trainer, run = _trainer(faces, tmp_path, "--input_size", "64", "--log_every", "100", "--device", "cuda",
                       "--num_workers", "2")
    batches = run.data.batches(0)
    for _ in range(3):  # iteration 1 logs; the first steps compile the Triton kernels
        trainer.train_step(next(batches))
    ready = [next(batches) for _ in range(4)]  # pinned host batches, as the loop takes them
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for batch in ready:
            trainer.train_step(batch)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    torch.cuda.synchronize()
    assert run.checked["in_use"]["gather_visible"] == "triton" and run.checked["in_use"]["crfrp_mask"] == "cuda"
    assert trainer.stats.counters()["nonfinite_total"] == 0


@pytest.mark.cuda
def test_device_flag_makes_its_gpu_current():
    index = torch.cuda.device_count() - 1
    assert device_for(f"cuda:{index}", DistInfo()) == torch.device("cuda", index)
    assert torch.cuda.current_device() == index
    torch.cuda.set_device(0)


def test_two_process_gloo_ddp(faces, tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(29500 + os.getpid() % 1000), "-m", "fsfm_fast.pretrain",
           *_argv(faces, tmp_path, "--max_steps", "6", "--batch_size", "4")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    said = res.stdout + res.stderr  # the run names the backends it uses, once, on the main rank
    assert said.count("backends: masks ") == 1 and " (gather/restore/loss), loader torch (" in said
    rows = read_log(tmp_path / "log.jsonl")
    assert rows[-1]["step"] == 6 and all(math.isfinite(r["loss"]) for r in rows)
    # 96 images over 2 ranks x 4 per batch: 12 iterations per epoch, images/s counts both ranks
    ckpt = safe_load(CheckpointManager(tmp_path).latest())
    assert ckpt["iteration"] == 6 and ckpt["args"]["batch_size"] == 4


def test_trains_without_the_compiled_extension(faces, tmp_path):
    """A failed or missing build must still train, on the reference ops, after one warning."""
    code = BLOCK_EXTENSION + f"""
import warnings
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    from fsfm_fast.pretrain.__main__ import main
    code = main({_argv(faces, tmp_path, "--max_steps", "3")!r})
mine = [w for w in caught if "fsfm_fast._C" in str(w.message)]
assert code == 0 and len(mine) == 1, [str(w.message) for w in caught]
print("ok")
"""
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and res.stdout.strip().endswith("ok"), res.stderr[-3000:]
    assert [r["step"] for r in read_log(tmp_path / "log.jsonl")][-1] == 3
