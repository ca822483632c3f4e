"""The training loop: it learns, resumes exactly, survives crashes and signals, and runs under DDP."""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from _no_extension import BLOCK_EXTENSION
from fsfm_fast import pretrain
from fsfm_fast.checkpoint import CheckpointError, CheckpointManager, safe_load, save_atomic
from fsfm_fast.data.synthetic import write_synthetic_dataset
from fsfm_fast.run_log import read_log

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
    summary = pretrain.main(_argv(faces, tmp_path, "--max_steps", "40"))
    assert summary == 0
    losses = _losses(tmp_path)
    steps = sorted(losses)
    first = sum(losses[s] for s in steps[:5]) / 5
    last = sum(losses[s] for s in steps[-5:]) / 5
    assert last < 0.85 * first, (first, last)
    for name in ("loss_curves.png", "reconstructions.png", "summary.json", pretrain.MEAN_STD_FILE):
        assert (tmp_path / name).is_file(), name
    stats = json.loads((tmp_path / pretrain.MEAN_STD_FILE).read_text().splitlines()[0])
    assert len(stats["mean"]) == 3 and all(0 < s < 1 for s in stats["std"])
    ckpt = safe_load(CheckpointManager(tmp_path).latest())
    assert ckpt["iteration"] == 40 and set(ckpt) >= {"model", "target", "optimizer", "scaler", "rng", "args"}


def test_resume_continues_exactly(faces, tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    extra = ("--accum_iter", "2", "--save_every", "4")
    assert pretrain.main(_argv(faces, full, "--max_steps", "14", *extra)) == 0
    assert pretrain.main(_argv(faces, part, "--max_steps", "8", *extra)) == 0
    assert pretrain.main(_argv(faces, part, "--max_steps", "14", "--resume", "auto", *extra)) == 0
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


class _NaNModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(1))

    def forward(self, images, img_mask, fr_mask, target_features=None, ids=None):
        nan = self.w.sum() * float("nan")
        return type("Out", (), {"loss": nan, "loss_rec_all": nan, "loss_rec_sfr": nan, "loss_cl": nan})()


def test_nonfinite_loss_is_skipped_then_stops(faces):
    args = pretrain.parse_args(_argv(faces, Path("unused"), "--max_nonfinite", "3"))
    model = _NaNModel()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    state = pretrain.TrainState()
    batch = {"images": torch.zeros(2, 3, 112, 112), "parsing": torch.ones(2, 112, 112, dtype=torch.uint8)}
    target = lambda x: torch.zeros(x.shape[0], 256)  # noqa: E731
    step = lambda it: pretrain._step(model, target, optimizer, scaler, batch, torch.device("cpu"),  # noqa: E731
                                     pretrain.nullcontext(), args, state, 16, pretrain.DistInfo(), it)
    assert step(0) is None and step(1) is None
    assert state.nonfinite_total == 2 and model.w.grad is None and torch.equal(model.w, torch.ones(1))
    with pytest.raises(FloatingPointError, match="non-finite"):
        step(2)


def test_sigterm_checkpoints_and_exits_cleanly(faces, tmp_path):
    cmd = [sys.executable, "-m", "fsfm_fast.pretrain", *_argv(faces, tmp_path, "--epochs", "200")]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    log = tmp_path / "log.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (log.is_file() and len(read_log(log)) >= 3):
        time.sleep(0.2)
    assert proc.poll() is None, proc.stdout.read().decode()
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out.decode()
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["stopped_by_signal"] and 0 < summary["iteration"] < 200 * 12
    ckpt = safe_load(CheckpointManager(tmp_path).latest())
    assert ckpt["iteration"] == summary["iteration"]


def test_two_process_gloo_ddp(faces, tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(29500 + os.getpid() % 1000), "-m", "fsfm_fast.pretrain",
           *_argv(faces, tmp_path, "--max_steps", "6", "--batch_size", "4")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
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
    from fsfm_fast import pretrain
    code = pretrain.main({_argv(faces, tmp_path, "--max_steps", "3")!r})
mine = [w for w in caught if "fsfm_fast._C" in str(w.message)]
assert code == 0 and len(mine) == 1, [str(w.message) for w in caught]
print("ok")
"""
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and res.stdout.strip().endswith("ok"), res.stderr[-3000:]
    assert [r["step"] for r in read_log(tmp_path / "log.jsonl")][-1] == 3
