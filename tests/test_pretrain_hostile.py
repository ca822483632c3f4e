"""Pretraining under hostile use: signals to the process group, bad flags and paths, bad checkpoints,
leftovers of killed runs, full disks, broken kernels. Each case ends in one clean line (exit 2), or
in a run that saves what it has and exits 0, and never loses what was already written."""
from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from fsfm_fast.data.synthetic import write_synthetic_dataset
from fsfm_fast.engine import checkpoint
from fsfm_fast.engine.checkpoint import CheckpointManager
from fsfm_fast.engine.run_log import read_log
from fsfm_fast.formats import MEAN_STD_FILE, SELFCHECK_FILE, safe_load
from fsfm_fast.ops import _checks
from fsfm_fast.pretrain.__main__ import main as pretrain_main
from fsfm_fast.pretrain.args import parse_args
from fsfm_fast.runtime import cli

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def faces(tmp_path_factory) -> Path:
    """16 small faces, one of them unreadable: 4 iterations of 4 per epoch."""
    root = write_synthetic_dataset(tmp_path_factory.mktemp("faces"), 16, size=64, seed=4)
    (root / "images" / "synth_0000005.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    return root


def _argv(data: Path, out: Path, *extra: str) -> list[str]:
    return ["--data_path", str(data), "--output_dir", str(out), "--model", "fsfm_vit_tiny_patch16",
            "--input_size", "32", "--batch_size", "4", "--epochs", "50", "--warmup_epochs", "0",
            "--blr", "1e-3", "--num_workers", "0", "--log_every", "1", "--device", "cpu",
            "--mean_std_samples", "8", *extra]


def _run(argv: list[str], capsys) -> tuple[int, str]:
    """``python -m fsfm_fast.pretrain`` in this process: exit status, and what it printed."""
    try:
        code = cli.run(pretrain_main, "fsfm_fast.pretrain", argv)
    except SystemExit as stop:  # a flag's value refused by argparse (its type), as `python -m` ends then
        code = stop.code
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def _one_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.startswith("fsfm_fast.pretrain: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# ------------------------------------------------------------------------------------ signals


def test_signal_to_the_process_group_saves_and_exits_cleanly(faces, tmp_path):
    """SLURM, `timeout` and Ctrl-C signal the whole group, data workers included, at any moment."""
    for trial, (sig, rows) in enumerate([(signal.SIGTERM, 1), (signal.SIGINT, 2), (signal.SIGTERM, 3)]):
        out = tmp_path / f"run{trial}"
        cmd = [sys.executable, "-m", "fsfm_fast.pretrain",
               *_argv(faces, out, "--num_workers", "2", "--save_every", "0")]
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        log = out / "log.jsonl"
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None and not (log.is_file() and len(read_log(log)) >= rows):
            time.sleep(0.05)
        assert proc.poll() is None, proc.stdout.read().decode()
        os.killpg(proc.pid, sig)
        text = proc.communicate(timeout=120)[0].decode()
        assert proc.returncode == 0 and "Traceback" not in text and "Exception ignored" not in text, text
        summary = json.loads((out / "summary.json").read_text())
        assert summary["stopped_by_signal"], text
        # --save_every 0: the only checkpoint is the one the signal asked for, at the last completed
        # iteration, and every completed iteration was logged
        saved = CheckpointManager(out).list()
        assert [step for step, _ in saved] == [summary["iteration"]] == [read_log(log)[-1]["step"]]
        assert safe_load(saved[0][1])["iteration"] == summary["iteration"] >= rows


# ------------------------------------------------------------------------------------ flags and paths


@pytest.mark.parametrize("extra, message", [
    (("--blr", "-1"), "argument --blr: must be > 0, got '-1'"),
    (("--lr", "-0.001"), "argument --lr: must be > 0, got '-0.001'"),
    (("--input_size", "40"), "--input_size 40 is not a multiple of fsfm_vit_tiny_patch16's patch size 16"),
    (("--log_every", "0"), "argument --log_every: must be >= 1, got '0'"),
    (("--save_every", "-5"), "argument --save_every: must be >= 0, got '-5'"),
    (("--device", "tpu"), "--device 'tpu'"),
])
def test_bad_flags_fail_in_one_line_before_any_work(faces, tmp_path, capsys, extra, message):
    code, err = _run(_argv(faces, tmp_path / "out", *extra), capsys)
    assert code == 2 and message in _one_line(err)
    assert not (tmp_path / "out").exists(), "nothing may be written for a bad flag"


def test_bad_paths_fail_in_one_line_before_any_work(faces, tmp_path, capsys):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    read_only = tmp_path / "read_only"
    read_only.mkdir()
    read_only.chmod(0o500)
    cases = [(["--output_dir", str(a_file)], f"--output_dir {a_file} is a file, not a folder"),
             (["--output_dir", "/proc/fsfm_out"], "--output_dir /proc/fsfm_out cannot be written"),
             (["--data_path", str(tmp_path / "missing")], f"--data_path {tmp_path / 'missing'} does not exist"),
             (["--data_path", str(tmp_path)], "is neither a reference-layout dataset")]
    if os.geteuid() != 0:  # root writes anywhere
        cases.append((["--output_dir", str(read_only / "out")], "permission denied"))
    for extra, message in cases:
        code, err = _run(_argv(faces, tmp_path / "out", *extra), capsys)
        assert code == 2 and message in _one_line(err), (extra, err)
    assert not (tmp_path / "out").exists() and not list(read_only.iterdir())
    assert not (faces / MEAN_STD_FILE).exists()


def test_abbreviated_flags_are_refused():
    # argparse would take --batch for --batch_size, and the demo defaults would then silently replace it
    with pytest.raises(SystemExit):
        parse_args(["--batch", "8"])
    assert parse_args(["--batch_size", "8"]).batch_size == 8  # a demo run keeps a given flag


# ------------------------------------------------------------------------------------ checkpoints


def test_unusable_resume_checkpoint_is_one_line_before_any_work(faces, tmp_path, capsys):
    out = tmp_path / "out"
    ckpts = tmp_path / "ckpts"
    ckpts.mkdir()
    (ckpts / "empty.pth").write_bytes(b"")
    (ckpts / "random.pth").write_bytes(np.random.default_rng(0).bytes(4096))
    args = parse_args(_argv(faces, out))
    for name, changes in (("small.pth", {"model": "fsfm_vit_small_patch16"}), ("size64.pth", {"input_size": 64})):
        saved = dict(checkpoint.plain_args(args), **changes)
        torch.save({"model": {}, "target": {}, "optimizer": {}, "iteration": 3, "rng": {}, "engine_state": {},
                    "args": saved},
                   ckpts / name)
    cases = {"empty.pth": "the file is empty (0 bytes)",
             "random.pth": "not a valid checkpoint",
             "small.pth": "was saved with model='fsfm_vit_small_patch16'; this run asks for model='fsfm_vit_tiny_patch16'",
             "size64.pth": "was saved with input_size=64; this run asks for input_size=32"}
    for name, message in cases.items():
        code, err = _run(_argv(faces, out, "--resume", str(ckpts / name)), capsys)
        line = _one_line(err)
        assert code == 2 and str(ckpts / name) in line and message in line, line
        assert "weights_only" not in line
    assert not (out / MEAN_STD_FILE).exists(), "the checkpoint is checked before the mean/std pass"


def test_resume_auto_past_a_truncated_checkpoint_and_leftovers(faces, tmp_path, capsys):
    out = tmp_path / "out"
    assert _run(_argv(faces, out, "--max_steps", "4", "--save_every", "2"), capsys)[0] == 0
    manager = CheckpointManager(out)
    newest = manager.path_for(4)
    newest.write_bytes(newest.read_bytes()[:1000])  # a save cut short by a full disk, say
    stale = out / ".checkpoint-00000006.pth.k2j3h4.tmp"  # left by a kill -9 during a save
    stale.write_bytes(b"\0" * 4096)
    code, err = _run(_argv(faces, out, "--max_steps", "6", "--save_every", "2", "--resume", "auto"), capsys)
    assert code == 0, err
    assert f"--resume auto: skipping {newest}" in err and "resumed from" in err and "iteration 2" in err
    assert not stale.exists() and f"removed {stale.name}" in err
    assert [r["step"] for r in read_log(out / "log.jsonl")] == [1, 2, 3, 4, 5, 6]  # one row per iteration
    assert safe_load(manager.latest())["iteration"] == 6
    # the unreadable image is named in the run's files, not only on the screen
    skipped = (out / "skipped.tsv").read_text().splitlines()
    assert skipped[0] == "step\tsample\treason" and any("synth_0000005.png" in line for line in skipped[1:])


def test_full_disk_broken_kernel_and_stale_mean_std(faces, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    # statistics of other data, left by an earlier run in this folder: not to be reused
    (out / MEAN_STD_FILE).write_text(json.dumps(
        {"mean": [0.1] * 3, "std": [0.2] * 3, "data_paths": ["/elsewhere"], "input_size": 32,
         "mean_std_samples": 8}) + "\n")
    # a compiled kernel that computes garbage: the start-up self-check must catch it and fall back
    real = torch.ops.fsfm_fast.region_presence
    monkeypatch.setattr(torch.ops.fsfm_fast, "region_presence", lambda parsing, patch: real(parsing, patch) ^ 1)
    monkeypatch.setattr(_checks, "FALLBACKS", {})  # the process-wide record, restored after the test

    def full(obj, f, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    code, err = _run(_argv(faces, out, "--max_steps", "2"), capsys)
    assert code == 2 and f"cannot write checkpoint {out / 'checkpoint-00000002.pth'}: no space left on device" \
        in _one_line(err)
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*.tmp"))
    stats = json.loads((out / MEAN_STD_FILE).read_text())
    assert stats["data_paths"] == [str(faces.resolve())] and stats["mean"] != [0.1] * 3
    assert "recomputing" in err
    outcome = json.loads((out / SELFCHECK_FILE).read_text())
    failed = [c for c in outcome["checks"] if not c["ok"]]
    assert [c["op"] for c in failed] == ["region_presence"] and "region_presence" in outcome["fallbacks"]
    assert outcome["in_use"]["region_presence"] == "torch" and outcome["in_use"]["crfrp_mask"] == "cpu"
    assert "!!! fsfm_fast self-check: region_presence (cpu on cpu) FAILED" in err
