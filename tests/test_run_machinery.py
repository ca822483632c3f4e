"""The machinery every training verb shares: checkpoint files, the run log, signals, one-line errors."""
from __future__ import annotations

import errno
import os
import pickle
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fsfm_fast.engine.checkpoint import CheckpointManager, check_same_run, save_atomic
from fsfm_fast.engine.run_log import RunLog, read_log
from fsfm_fast.formats import CheckpointError, load_state_dict_strict, safe_load
from fsfm_fast.runtime import cli
from fsfm_fast.runtime.signals import StopSignal


def test_zero_byte_checkpoint_says_empty(tmp_path):
    bad = tmp_path / "checkpoint-00000001.pth"
    bad.write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"checkpoint-00000001.pth: the file is empty \(0 bytes\)"):
        safe_load(bad)


def test_random_bytes_never_suggest_weights_only_false(tmp_path):
    bad = tmp_path / "random.pth"
    bad.write_bytes(os.urandom(4096))
    with pytest.raises(CheckpointError) as info:
        safe_load(bad)
    text = str(info.value)
    assert "random.pth" in text and "not a valid checkpoint" in text
    assert "weights_only" not in text and "\n" not in text


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_malicious_pickle_is_refused_without_torch_advice(tmp_path):
    bad = tmp_path / "evil.pth"
    torch.save({"model": {}, "payload": _Evil()}, bad)
    with pytest.raises(CheckpointError) as info:
        safe_load(bad)
    assert "evil.pth" in str(info.value) and "weights_only=False" not in str(info.value)
    raw = tmp_path / "raw.pkl"
    raw.write_bytes(pickle.dumps(_Evil()))
    with pytest.raises(CheckpointError, match="raw.pkl"):
        safe_load(raw)


def test_truncated_newest_checkpoint_falls_back_with_a_warning(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=5)
    manager.save({"iteration": 4}, 4)
    newest = manager.save({"iteration": 8}, 8)
    newest.write_bytes(newest.read_bytes()[:100])
    warnings = []
    path, ckpt = manager.load_latest_valid(warn=warnings.append)
    assert ckpt["iteration"] == 4 and path == manager.path_for(4)
    assert len(warnings) == 1 and newest.name in warnings[0]
    assert newest.is_file(), "a bad checkpoint is reported, never deleted"


def test_stale_temps_are_removed(tmp_path):
    manager = CheckpointManager(tmp_path)
    stale = tmp_path / ".checkpoint-00000010.pth.abc123.tmp"
    stale.write_bytes(b"x" * 1000)
    keep = manager.save({"iteration": 3}, 3)
    assert manager.remove_stale_temps() == [stale]
    assert not stale.exists() and keep.is_file()


def test_full_disk_is_one_line_naming_the_file(tmp_path, monkeypatch):
    def full(obj, f, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    target = tmp_path / "checkpoint-00000002.pth"
    with pytest.raises(cli.UsageError, match="checkpoint-00000002.pth: no space left on device"):
        save_atomic({"x": 1}, target)
    assert list(tmp_path.iterdir()) == [], "the partial temporary file must be removed"


def test_other_model_size_is_named_not_dumped(tmp_path):
    import argparse
    ckpt = {"args": {"model": "fsfm_vit_small_patch16", "input_size": 224}}
    args = argparse.Namespace(model="fsfm_vit_base_patch16", input_size=224)
    with pytest.raises(CheckpointError, match=r"x.pth was saved with model='fsfm_vit_small_patch16'; "
                                              r"this run asks for model='fsfm_vit_base_patch16'"):
        check_same_run(ckpt, "x.pth", args, ("model", "input_size"))
    small, big = torch.nn.Linear(2, 3), torch.nn.Linear(4, 5)
    with pytest.raises(CheckpointError) as info:
        load_state_dict_strict(small, big.state_dict(), "y.pth", "online")
    assert "y.pth" in str(info.value) and "\n" not in str(info.value)
    assert "wrong shapes: weight [5, 4] (model [3, 2]), bias [5] (model [3])" in str(info.value)


def test_resumed_log_keeps_one_row_per_step(tmp_path):
    log = RunLog(tmp_path, enabled=True, tensorboard=False)
    for step in range(1, 11):
        log.record("train", step, loss=float(step))
    log.close()
    with (tmp_path / "log.jsonl").open("a") as f:
        f.write('{"kind": "train", "step": 11, "lo')  # cut by a kill mid-write
    log = RunLog(tmp_path, enabled=True, tensorboard=False)
    log.resumed(6)
    for step in range(7, 13):
        log.record("train", step, loss=-float(step))
    log.close()
    rows = read_log(tmp_path / "log.jsonl")
    assert [r["step"] for r in rows] == list(range(1, 13))
    assert all((r["loss"] > 0) == (r["step"] <= 6) for r in rows)


def test_skipped_samples_are_named_in_the_run_files(tmp_path):
    log = RunLog(tmp_path, enabled=True, tensorboard=False)
    log.skipped(7, [("/data/images/a.png", "unreadable image (bad\tbytes)"), ("b.png", "")])
    log.close()
    lines = (tmp_path / "skipped.tsv").read_text().splitlines()
    assert lines == ["step\tsample\treason", "7\t/data/images/a.png\tunreadable image (bad bytes)",
                     "7\tb.png\tunreadable"]
    # a resume from step 5 redoes step 7: its rows go, so the redone step names its samples once
    log = RunLog(tmp_path, enabled=True, tensorboard=False)
    log.skipped(3, [("c.png", "truncated")])
    with (tmp_path / "skipped.tsv").open("a") as f:
        f.write("8\td.p")  # cut by a kill mid-write
    log.resumed(5)
    log.close()
    assert (tmp_path / "skipped.tsv").read_text().splitlines() == ["step\tsample\treason", "3\tc.png\ttruncated"]


def test_stop_signal_sets_a_flag_and_restores_handlers():
    before = signal.getsignal(signal.SIGTERM)
    with StopSignal() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested and stop.signum == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) == before


def test_worker_ignores_stop_signals():
    code = ("import os, signal, time\nfrom fsfm_fast.runtime.signals import ignore_stop_signals\n"
            "ignore_stop_signals(0)\nos.kill(os.getpid(), signal.SIGTERM)\nos.kill(os.getpid(), signal.SIGINT)\n"
            "time.sleep(0.2)\nprint('alive')")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and res.stdout.strip() == "alive", res.stderr


def test_cli_turns_user_errors_into_one_line(capsys, tmp_path, monkeypatch):
    def bad(argv):
        raise cli.UsageError("--blr must be > 0, got -1")

    assert cli.run(bad, "fsfm_fast.x") == 2
    assert capsys.readouterr().err == "fsfm_fast.x: error: --blr must be > 0, got -1\n"
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(cli.UsageError, match="is a file, not a folder"):
        cli.ensure_writable_dir(a_file)
    with pytest.raises(cli.UsageError, match="cannot be written"):
        cli.ensure_writable_dir("/proc/fsfm_out")

    # a read-only filesystem (root, as on CI, would write through mere permissions): named, one line
    def read_only(self, data):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))

    monkeypatch.setattr(Path, "write_bytes", read_only)
    with pytest.raises(cli.UsageError, match=r"--output_dir .*ro_out cannot be written: .*read-only") as caught:
        cli.ensure_writable_dir(tmp_path / "ro_out")
    assert "\n" not in str(caught.value)
