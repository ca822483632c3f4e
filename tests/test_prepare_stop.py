"""prepare under a stop signal: the demo stops at the stage it is in and exits as the other verbs do
(0, having said how to go on), and the pool's workers drop the inputs in progress instead of finishing
them first."""
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("av")
pytest.importorskip("dlib")
pytest.importorskip("cv2")

from fsfm_fast.prepare.inputs import IMAGE, Input  # noqa: E402
from fsfm_fast.prepare.runner import Plan, _results  # noqa: E402
from fsfm_fast.runtime.signals import StopSignal  # noqa: E402

import _stop_helpers  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _wait_for(predicate, proc=None, what="") -> None:
    deadline = time.time() + 300  # a guard against a hang, not a measurement
    while not predicate():
        assert proc is None or proc.poll() is None, f"the demo ended before {what}"
        assert time.time() < deadline, f"no {what} within 300 s"
        time.sleep(0.01)


def _journaled(out: Path) -> bool:
    return any(p.stat().st_size > 0 for p in (out / ".prepare").glob("journal-*.jsonl"))


@pytest.mark.parametrize("stage", ["finetune", "pretrain"])
def test_demo_stops_cleanly_in_either_stage(tmp_path, stage):
    """SIGTERM to the whole process group (as SLURM and `timeout` send it) while a stage's pool works."""
    out = tmp_path / "demo"
    cmd = [sys.executable, "-m", "fsfm_fast.prepare", "demo", "--out", str(out), "--workers", "2", "--videos", "3"]
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_for(lambda: _journaled(out / stage), proc, f"a finished input of the {stage} stage")
        os.killpg(proc.pid, signal.SIGTERM)
        text = proc.communicate(timeout=300)[0].decode()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, text[-3000:]
    assert "Traceback" not in text and "stopped by a signal" in text and "demo done" not in text, text[-3000:]
    assert "run the same command again" in text
    if stage == "finetune":  # the next stage never started
        assert not (out / "pretrain").exists()
    else:  # the same command again finishes the demo
        again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        assert again.returncode == 0 and "demo done" in again.stdout, again.stdout[-3000:] + again.stderr[-3000:]
        assert "resuming" in again.stdout + again.stderr


def test_a_stop_reaches_the_inputs_in_progress(tmp_path):
    """The workers see the stop while an input is under way and drop it, so the pool closes at once
    rather than after every input it holds has finished."""
    plan = Plan(stage="stop-test", out=tmp_path, image_dir="", detect=False)
    items = [Input(tmp_path, f"busy{k}", IMAGE) for k in range(3)]
    stop = StopSignal()  # not installed: the test sets requested itself, as the handler would

    def request_stop_once_both_run():
        _wait_for(lambda: len(list(tmp_path.glob("started-*"))) >= 2, what="two started inputs")
        stop.requested = True

    trigger = threading.Thread(target=request_stop_once_both_run, daemon=True)
    trigger.start()
    entries = list(_results(plan, items, 2, stop, work=_stop_helpers.busy_until_stopped))
    trigger.join()
    assert entries == []  # nothing finished, so nothing may be journaled
    started = {p.name.split("-", 1)[1] for p in tmp_path.glob("started-*")}
    assert {p.name.split("-", 1)[1] for p in tmp_path.glob("interrupted-*")} == started
    assert not list(tmp_path.glob("finished-*"))
