"""Fine-tuning and evaluation end to end on a tiny synthetic forgery benchmark: the loss falls, a run
resumes exactly, SIGTERM saves, bad data fails before training, and a 2-process evaluation gives the
metrics of a 1-process one."""
from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fsfm_fast import evaluate
from fsfm_fast.data.forgery import write_forgery_benchmark
from fsfm_fast.engine.checkpoint import CheckpointManager
from fsfm_fast.engine.run_log import read_log
from fsfm_fast.finetune import deepfake as finetune
from fsfm_fast.finetune import detectors
from fsfm_fast.formats import safe_load
from fsfm_fast.runtime.cli import UsageError

REPO = Path(__file__).resolve().parents[1]
TINY = "fsfm_vit_tiny_patch16"


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> Path:
    return write_forgery_benchmark(tmp_path_factory.mktemp("bench"), seed=1, size=48, frames_per_video=2,
                                   identities={"train": 6, "val": 3, "test": 6}, workers=1)


def _argv(data: Path, out: Path, *extra: str) -> list[str]:
    # 48 training images: 6 iterations per epoch at batch 8
    return ["--data_path", str(data), "--output_dir", str(out), "--model", TINY, "--input_size", "32",
            "--batch_size", "8", "--epochs", "4", "--warmup_epochs", "1", "--blr", "0.02", "--num_workers", "0",
            "--log_every", "1", "--device", "cpu", *extra]


def _losses(out: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_log(out / "log.jsonl")}


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory) -> Path:
    """The default (no data) run, shrunk: it writes its benchmark, trains, selects and evaluates."""
    out = tmp_path_factory.mktemp("demo")
    argv = ["--output_dir", str(out), "--finetune", "", "--synthetic_identities", "6,3,3", "--synthetic_size", "32",
            "--synthetic_frames", "2", "--input_size", "32", "--batch_size", "8", "--epochs", "2", "--num_workers", "0",
            "--device", "cpu"]
    assert finetune.main(argv) == 0
    return out


def test_default_run_selects_on_source_val_and_evaluates_every_type(demo_run):
    best = safe_load(demo_run / "checkpoint-best.pth")
    assert best["selection"]["split"] == "val" and best["selection"]["metric"] == "loss"
    assert not best["selection"]["target_domain"] and best["detector"]["model"] == TINY
    assert best["detector"]["train_classes"] == ["fake_face_swap", "fake_reenactment", "real"]
    val_losses = [r["val/loss"] for r in read_log(demo_run / "log.jsonl", "val")]
    assert len(val_losses) == 2 and best["selection"]["value"] == pytest.approx(min(val_losses))

    metrics = json.loads((demo_run / "eval" / "metrics.json").read_text())
    synthetic = metrics["synthetic"]
    assert synthetic["n_images"] == 36 and synthetic["n_videos"] == 18  # 3 people x (2 real + 4 fake videos)
    assert set(synthetic["frame"]) == {"auc", "ap", "eer", "acc", "balanced_acc"}
    assert {c: e["seen_in_training"] for c, e in synthetic["by_class"].items()} == {
        "fake_face_swap": True, "fake_reenactment": True, "fake_rerender": False, "fake_upsampling": False}
    assert synthetic["groups"]["unseen"]["n_images"] == 12 + 12
    rows = (demo_run / "eval" / "scores.csv").read_text().splitlines()
    assert rows[0] == "set,path,video,class,label,score" and len(rows) == 37
    assert (demo_run / "eval" / "roc.png").stat().st_size > 0


def test_fine_tuning_steps_lower_the_loss(bench, tmp_path):
    """Reals against darkened copies, a cue any working optimizer picks up within a few steps."""
    data = tmp_path / "ds"
    for split in ("train", "val"):
        for src in sorted((bench / "test" / "real").iterdir()):
            for cls, gain in (("real", 1.0), ("fake_dark", 0.5)):
                (data / split / cls).mkdir(parents=True, exist_ok=True)
                pixels = np.asarray(Image.open(src), np.float32) * gain
                Image.fromarray(pixels.astype(np.uint8)).save(data / split / cls / src.name)
    out = tmp_path / "run"
    assert finetune.main(_argv(data, out, "--epochs", "5", "--mixup", "0", "--cutmix", "0", "--aa", "none")) == 0
    losses = _losses(out)
    steps = sorted(losses)
    assert steps[-1] == 5 * 6  # 48 images: 6 batches of 8 per epoch
    first, last = (sum(losses[s] for s in part) / 6 for part in (steps[:6], steps[-6:]))
    assert last < 0.7 * first, (first, last)


def test_resume_continues_exactly(bench, tmp_path):
    """With RandAugment, random erasing, mixup/cutmix and drop path on, and across an epoch boundary
    (6 iterations per epoch): a run stopped at 4 and resumed equals a run that never stopped."""
    runs = {"straight": [("--max_steps", "10")],
            "resumed": [("--max_steps", "4"), ("--max_steps", "10", "--resume", "auto")]}
    for name, legs in runs.items():
        for leg in legs:
            assert finetune.main(_argv(bench, tmp_path / name, *leg, "--accum_iter", "2", "--save_every", "2")) == 0
    straight, resumed = (_losses(tmp_path / name) for name in runs)
    assert sorted(s for s in resumed if s > 4) == list(range(5, 11))
    assert {s: resumed[s] for s in range(5, 11)} == {s: straight[s] for s in range(5, 11)}
    weights = [safe_load(CheckpointManager(tmp_path / name).latest())["model"] for name in runs]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_sigterm_to_the_process_group_saves_and_exits_cleanly(bench, tmp_path):
    cmd = [sys.executable, "-m", "fsfm_fast.finetune", *_argv(bench, tmp_path, "--epochs", "500", "--num_workers", "1")]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"})
    log = tmp_path / "log.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (log.is_file() and len(read_log(log)) >= 3):
        time.sleep(0.2)
    assert proc.poll() is None, proc.stdout.read().decode()
    os.killpg(proc.pid, signal.SIGTERM)  # as SLURM does: the data worker gets it too
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out.decode()[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["stopped_by_signal"] and 0 < summary["iteration"] < 500 * 6
    assert safe_load(CheckpointManager(tmp_path).latest())["iteration"] == summary["iteration"]
    again = summary["iteration"] + 2
    assert finetune.main(_argv(bench, tmp_path, "--epochs", "500", "--resume", "auto", "--max_steps", str(again))) == 0
    assert json.loads((tmp_path / "summary.json").read_text())["iteration"] == again


def test_bad_data_and_flags_fail_before_training(bench, tmp_path, monkeypatch):
    one_class_val = tmp_path / "ds"
    for split, cls in (("train", "real"), ("train", "fake_face_swap"), ("val", "real")):
        shutil.copytree(bench / "train" / cls, one_class_val / split / cls)
    with pytest.raises(UsageError, match="--select_metric auc needs real and fake images in validation split 'val'"):
        finetune.main(_argv(one_class_val, tmp_path / "o1", "--select_metric", "auc"))
    shutil.copytree(bench / "train" / "real", one_class_val / "train" / "swapped")
    with pytest.raises(UsageError, match="class folder 'swapped'.*--class_map swapped=fake"):
        finetune.main(_argv(one_class_val, tmp_path / "o2"))
    with pytest.raises(UsageError, match="--batch_size must be even"):
        finetune.main(_argv(bench, tmp_path / "o3", "--batch_size", "7"))
    with pytest.raises(UsageError, match=r"\d+ training images cannot fill one batch of 100000 on each of 1 process"):
        finetune.main(_argv(bench, tmp_path / "o3", "--batch_size", "100000"))
    assert not (tmp_path / "o1" / "log.jsonl").exists()

    monkeypatch.setattr(detectors.DetectionLoss, "__call__", lambda self, model, batch: model(batch["images"]).sum() * math.nan)
    with pytest.raises(UsageError, match="3 non-finite losses or gradients in a row"):
        finetune.main(_argv(bench, tmp_path / "o4", "--max_nonfinite", "3"))


def test_two_process_evaluation_equals_one_process(demo_run, bench, tmp_path):
    """13 readable images and one broken one over 2 ranks: nothing padded, nothing counted twice."""
    data = tmp_path / "set"
    for cls, n in (("real", 6), ("fake_rerender", 4), ("fake_upsampling", 3)):
        (data / cls).mkdir(parents=True)
        for src in sorted((bench / "test" / cls).iterdir())[:n]:
            shutil.copy(src, data / cls / src.name)
    (data / "fake_rerender" / "broken_frame_0.png").write_bytes(b"\x89PNG broken")
    common = ["--checkpoint", str(demo_run / "checkpoint-best.pth"), "--test", f"syn={data}", "--batch_size", "4",
              "--num_workers", "0", "--device", "cpu"]
    assert evaluate.main([*common, "--output_dir", str(tmp_path / "one")]) == 0
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(29600 + os.getpid() % 1000), "-m", "fsfm_fast.evaluate", *common, "--output_dir", str(tmp_path / "two")]
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    one = json.loads((tmp_path / "one" / "metrics.json").read_text())["syn"]
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())["syn"]
    assert one["n_images"] == two["n_images"] == 13 and one["n_skipped"] == two["n_skipped"] == 1
    for level in ("frame", "video"):
        assert two[level] == pytest.approx(one[level], abs=1e-6), level
    for cls in one["by_class"]:
        assert two["by_class"][cls]["frame"] == pytest.approx(one["by_class"][cls]["frame"], abs=1e-6)
    rows = [sorted((tmp_path / d / "scores.csv").read_text().splitlines()) for d in ("one", "two")]
    assert [r.rsplit(",", 1)[0] for r in rows[0]] == [r.rsplit(",", 1)[0] for r in rows[1]]
    assert "broken_frame_0.png" in (tmp_path / "two" / "skipped.tsv").read_text()
