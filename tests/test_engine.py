"""The one training engine, through each verb that runs on it: a steady-state step reads nothing back
from the device, and a run stopped and resumed mid-way ends exactly where an uninterrupted one does,
also when saves and stops fall inside an accumulation cycle."""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from _host_reads import NoHostReads

from fsfm_fast.data.forgery import write_forgery_benchmark
from fsfm_fast.data.spoof import write_spoof_benchmark
from fsfm_fast.data.synthetic import write_synthetic_dataset
from fsfm_fast.engine.checkpoint import CheckpointManager
from fsfm_fast.engine.trainer import RunSettings, Trainer, whole_cycles
from fsfm_fast.finetune.deepfake import main as finetune_main
from fsfm_fast.finetune.fas import main as fas_main
from fsfm_fast.formats import safe_load
from fsfm_fast.pretrain.__main__ import main as pretrain_main

TINY = ["--model", "fsfm_vit_tiny_patch16", "--input_size", "32", "--num_workers", "0", "--device", "cpu"]
VERBS = ("pretrain", "finetune", "finetune_fas")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("engine_data")
    return {"pretrain": write_synthetic_dataset(root / "faces", 32, size=64, seed=0),
            "finetune": write_forgery_benchmark(root / "forgeries", seed=1, size=32, frames_per_video=2,
                                                identities={"train": 6, "val": 2, "test": 2}, workers=1),
            "finetune_fas": write_spoof_benchmark(root / "spoof", size=32, frames_per_video=2,
                                                  identities={"train": 3, "test": 2})}


def _run(verb: str, data: dict[str, Path], out: Path, *extra: str) -> int:
    """A tiny CPU run of ``verb`` (at most 12 iterations of 4-image batches) writing to ``out``."""
    if verb == "pretrain":
        return pretrain_main(["--data_path", str(data[verb]), "--batch_size", "4", "--epochs", "2",
                              "--warmup_epochs", "1", "--mean_std_samples", "8", "--output_dir", str(out),
                              *TINY, *extra])
    if verb == "finetune":
        return finetune_main(["--data_path", str(data[verb]), "--batch_size", "4", "--epochs", "2",
                              "--warmup_epochs", "1", "--eval_every", "100", "--output_dir", str(out), *TINY, *extra])
    bench = data[verb]
    return fas_main(["--source", f"webcam={bench / 'webcam'}", "--source", f"phone={bench / 'phone'}",
                     "--target", f"laptop={bench / 'laptop'}", "--batch_per_group", "2", "--iterations", "12",
                     "--eval_every", "100", "--val_fraction", "0.34", "--seeds", "0", "--lr", "1e-3",
                     "--output_dir", str(out), *TINY, *extra])


def _last_checkpoint(out: Path) -> dict:
    folder = out / "seed_0" if (out / "seed_0").is_dir() else out
    return safe_load(CheckpointManager(folder).latest())


@pytest.mark.parametrize("verb", VERBS)
def test_stopped_inside_a_cycle_and_resumed_ends_like_an_uninterrupted_run(verb, data, tmp_path):
    """--accum_iter 3 --save_every 4 --max_steps 4: saves and the stop come at whole cycles (6), so the
    resumed run's weights, optimizer state and counters equal those of a run never stopped."""
    cycle = ("--accum_iter", "3", "--save_every", "4", "--log_every", "5")
    assert _run(verb, data, tmp_path / "full", *cycle, "--max_steps", "9") == 0
    assert _run(verb, data, tmp_path / "part", *cycle, "--max_steps", "4") == 0
    stopped = _last_checkpoint(tmp_path / "part")
    assert stopped["iteration"] == 6, "the stop is carried to the end of the accumulation cycle"
    assert _run(verb, data, tmp_path / "part", *cycle, "--max_steps", "9", "--resume", "auto") == 0
    full, part = _last_checkpoint(tmp_path / "full"), _last_checkpoint(tmp_path / "part")
    assert full["iteration"] == part["iteration"] == 9
    for name, weights in full["model"].items():
        assert torch.equal(weights, part["model"][name]), name
    for key, state in full["optimizer"]["state"].items():
        assert torch.equal(state["exp_avg"], part["optimizer"]["state"][key]["exp_avg"])
    # the counters (the best validation values differ: the stopped run also validated where it stopped)
    assert {k: v for k, v in full["engine_state"].items() if k != "best"} == \
        {k: v for k, v in part["engine_state"].items() if k != "best"}


def test_saves_and_validations_fall_on_whole_cycles(tmp_path):
    settings = RunSettings(output_dir=tmp_path, stop_iter=20, device=torch.device("cpu"), accum_iter=3,
                           save_every=4, eval_every=5)
    assert (settings.save_every, settings.eval_every) == (6, 6)
    assert whole_cycles(0, 3) == 0 and whole_cycles(6, 3) == 6 and whole_cycles(7, 2) == 8


@contextmanager
def _cpu_check():
    with NoHostReads():
        yield


@contextmanager
def _cuda_check():
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(0)


def _watch_steady_steps(monkeypatch, check, first: int, last: int) -> list[int]:
    """Run ``Trainer.train_step`` under ``check`` for steps ``first``..``last`` (1-based): the first
    ones log or warm up, the last one logs. Returns the list of the steps checked."""
    original, seen, checked = Trainer.train_step, [0], []

    def step(self, batch):
        seen[0] += 1
        if not first <= seen[0] <= last:
            return original(self, batch)
        checked.append(seen[0])
        with check():
            return original(self, batch)

    monkeypatch.setattr(Trainer, "train_step", step)
    return checked


@pytest.mark.parametrize("verb", ("finetune", "finetune_fas"))
def test_fine_tuning_steps_read_nothing_back(verb, data, tmp_path, monkeypatch):
    """The CPU stand-in for the CUDA sync-debug tests below (pretraining has its own in test_pretrain):
    no op of a steady-state fine-tuning step, accumulation cycles included, reads a tensor's value."""
    checked = _watch_steady_steps(monkeypatch, _cpu_check, 2, 7)
    assert _run(verb, data, tmp_path, "--accum_iter", "2", "--log_every", "100", "--max_steps", "8") == 0
    assert checked == [2, 3, 4, 5, 6, 7]


@pytest.mark.cuda
@pytest.mark.parametrize("verb", VERBS)
def test_steady_state_steps_are_sync_free_on_cuda(verb, data, tmp_path, monkeypatch):
    checked = _watch_steady_steps(monkeypatch, _cuda_check, 3, 7)  # the first steps compile kernels
    assert _run(verb, data, tmp_path, "--device", "cuda", "--accum_iter", "2", "--log_every", "100",
                "--max_steps", "8") == 0
    assert checked == [3, 4, 5, 6, 7]
