"""Run folders, stops and outputs of the downstream verbs, as a user meets them: a run never replaces
another run's results silently, a stop on a validation step still validates, unreadable validation
images are named, outputs are checked before the work, and log files stay plain lines."""
from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageFont

from test_finetune import _argv as finetune_argv
from test_finetune import bench  # noqa: F401  (the fixture: the same tiny benchmark)

from fsfm_fast import predict
from fsfm_fast.data.forgery import write_forgery_benchmark
from fsfm_fast.engine import run_folder
from fsfm_fast.engine.run_log import RunLog, read_log
from fsfm_fast.engine.trainer import Trainer
from fsfm_fast.finetune import deepfake as finetune
from fsfm_fast.formats import safe_load
from fsfm_fast.inference import Contract
from fsfm_fast.prepare.inputs import Input
from fsfm_fast.runtime.cli import UsageError


def _argv(data: Path, out: Path, *extra: str) -> list[str]:
    """test_finetune's tiny run (6 iterations per epoch), without augmentation or mixup."""
    return finetune_argv(data, out, "--aa", "none", "--mixup", "0", "--cutmix", "0", *extra)


def _signal_during(monkeypatch, iteration: int) -> None:
    """SIGTERM this process while it trains iteration ``iteration`` (1-based), as `timeout` would."""
    original = Trainer.train_step

    def step(self, batch):
        if self.state.iteration == iteration - 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, batch)

    monkeypatch.setattr(Trainer, "train_step", step)


def test_a_stop_on_a_validation_step_validates_and_selects_as_an_uninterrupted_run(bench, tmp_path, monkeypatch):
    """Stopped during iteration 3 of a run that validates every 3: the resumed run has the val rows
    and the selected checkpoint of the run never stopped."""
    every = ("--eval_every", "3", "--max_steps", "9")
    assert finetune.main(_argv(bench, tmp_path / "full", *every)) == 0
    with monkeypatch.context() as m:
        _signal_during(m, 3)
        assert finetune.main(_argv(bench, tmp_path / "part", *every)) == 0
    assert finetune.main(_argv(bench, tmp_path / "part", *every, "--resume", "auto")) == 0
    full, part = (read_log(tmp_path / name / "log.jsonl", "val") for name in ("full", "part"))
    assert [r["step"] for r in part] == [r["step"] for r in full] == [3, 6, 9]
    assert [r["val/loss"] for r in part] == [r["val/loss"] for r in full]
    best = [safe_load(tmp_path / name / "checkpoint-best.pth")["selection"] for name in ("full", "part")]
    assert best[0] == best[1]


def test_a_second_run_into_a_used_folder_is_refused_unless_told_to_overwrite(bench, tmp_path):
    """Another seed and learning rate into the same folder, no --resume: one line, nothing replaced;
    --overwrite starts afresh (no checkpoint or log row of the first run is left)."""
    out = tmp_path / "run"
    assert finetune.main(_argv(bench, out, "--max_steps", "2")) == 0
    best = (out / "checkpoint-best.pth").read_bytes()
    with pytest.raises(UsageError, match=r"holds the results of another run .*--resume auto.*--overwrite"):
        finetune.main(_argv(bench, out, "--max_steps", "2", "--seed", "1", "--blr", "0.01"))
    assert (out / "checkpoint-best.pth").read_bytes() == best
    assert finetune.main(_argv(bench, out, "--max_steps", "4", "--seed", "1", "--overwrite")) == 0
    assert [r["step"] for r in read_log(out / "log.jsonl")] == [1, 2, 3, 4]
    assert safe_load(out / "checkpoint-best.pth")["args"]["seed"] == 1
    assert sorted(p.name for p in out.glob("checkpoint-[0-9]*.pth")) == ["checkpoint-00000004.pth"]


def test_the_demo_folder_is_replaced_and_data_kept(tmp_path):
    """The demo's own folder: a second demo run replaces the first (its data is reused); a demo into
    another folder follows the rule of every run."""
    from fsfm_fast import demo
    from fsfm_fast.finetune.fas import parse_args as fas_args
    from fsfm_fast.pretrain.args import parse_args as pretrain_args
    for parse in (finetune.parse_args, fas_args, pretrain_args):
        assert parse([]).overwrite, parse
        assert not parse(["--resume", "auto"]).overwrite
        assert not parse(["--output_dir", str(tmp_path)]).overwrite
    folder = tmp_path / demo.FINETUNE_DIR
    (folder / demo.FORGERY_DATA).mkdir(parents=True)
    (folder / "log.jsonl").write_text("{}\n")
    (folder / "seed_0").mkdir()
    (folder / "seed_0" / "checkpoint-3.pth").write_bytes(b"")
    run_folder.claim([folder], resume="", overwrite=True, say=lambda text: None)
    assert sorted(p.name for p in folder.iterdir()) == [demo.FORGERY_DATA]


def test_an_unreadable_validation_image_is_named(bench, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(bench, data)
    broken = sorted((data / "val" / "real").iterdir())[0]
    broken.write_bytes(b"not an image")
    out = tmp_path / "run"
    assert finetune.main(_argv(data, out, "--max_steps", "2", "--eval_every", "1")) == 0
    rows = (out / "skipped.tsv").read_text().splitlines()[1:]
    assert [r.split("\t")[:2] for r in rows] == [["1", str(broken)], ["2", str(broken)]]
    assert all("left out of validation split 'val'" in r for r in rows)
    screen = capsys.readouterr()
    assert screen.out.count(f"skipped unreadable sample: {broken}") == 1  # named once on screen
    assert "\r" not in screen.out + screen.err  # no terminal here: plain lines, no progress bar frames


def test_predict_checks_its_outputs_before_any_work_and_leaves_no_temp_file(tmp_path):
    image = tmp_path / "face.png"
    Image.new("RGB", (32, 32)).save(image)
    folder = tmp_path / "existing"
    folder.mkdir()
    # the detector does not exist either: the outputs are checked first, before anything is loaded
    for flag in ("--output", "--save_faces"):
        with pytest.raises(UsageError, match=f"{flag} {folder} is a folder: give a file name"):
            predict.main([str(image), "--detector", str(tmp_path / "absent"), flag, str(folder)])
    with pytest.raises(UsageError, match="name the same file"):
        predict.main([str(image), "--detector", "x", "--output", "a.png", "--save_faces", "a.png"])

    def fails(tmp):
        tmp.write_text("half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        predict.save_replacing(tmp_path / "scores.jsonl", fails)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing", "face.png"]


def _results(n: int) -> list:
    """``n`` scored faces: images fake_face_swap_person_000.png ... with rising scores."""
    thumb = np.full((predict.THUMB, predict.THUMB, 3), 128, np.uint8)
    return [predict.Result(Input(Path(f"/data/fake_face_swap_person_{i:03d}.png"), "x", "image"),
                           predict.Found(i, faces=[predict.Face(None, None, torch.zeros(1), thumb)]), [i / n])
            for i in range(n)]


def test_contact_sheet_says_what_it_shows(tmp_path, capsys):
    contract = Contract(("real", "fake"), "fake")
    path = tmp_path / "faces.png"
    assert predict.contact_sheet(_results(10), 0.5, path, 4, contract, title="demo detector",
                                 truth={"/data/fake_face_swap_person_000.png": "fake"}) == (4, 10)
    sheet = Image.open(path)
    cell_h = predict.THUMB + 8 + 3 * predict.SHEET_LINE + 2  # three caption lines: name, score, truth
    assert sheet.size[1] == predict.SHEET_HEADER + cell_h
    header = predict.sheet_header("demo detector", 4, 10, 0.5, contract)
    assert header[0] == "demo detector"
    assert "red border: called fake (P(fake) >= 0.5)" in header[1] and "green: called real" in header[1]
    assert header[2].startswith("the first 4 of 10 scored faces (--sheet_max 4")
    assert predict.sheet_header("t", 10, 10, 0.5, contract)[2] == "all 10 scored faces"
    # a name too long for its tile keeps its start and its end, which tell files apart
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    short = predict.fit_text(draw, "fake_face_swap_person_007.png #12", predict.THUMB, font)
    assert short.startswith("fake") and short.endswith("007.png #12") and ".." in short
    assert draw.textlength(short, font=font) <= predict.THUMB


@pytest.mark.filterwarnings("ignore:frame_metrics")  # the reals-only set: no curve, and its AUC is NaN
def test_evaluate_draws_a_roc_curve_per_set_and_per_fake_type(tmp_path):
    from fsfm_fast import evaluate
    from fsfm_fast.data.labelled import Sample
    from fsfm_fast.evaluate import Scores
    samples = [Sample(f"{cls}/{i}.png", int(cls != "real"), f"{cls}/v{i}", cls)
               for cls in ("real", "fake_swap", "fake_rerender") for i in range(4)]
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(12, 2)).astype(np.float32)
    scored = {"synthetic": (samples, Scores(np.arange(12), logits, [])),
              "reals_only": (samples[:4], Scores(np.arange(4), logits[:4], []))}
    metrics = {name: evaluate.set_metrics(s, sc, train_classes=("fake_swap", "real"))
               for name, (s, sc) in scored.items()}
    curves = evaluate.roc_curves("synthetic", samples, scored["synthetic"][1].positive_prob, metrics["synthetic"])
    assert list(curves) == ["synthetic (all types)", "synthetic / fake_rerender (unseen)",
                            "synthetic / fake_swap (seen)"]
    assert curves["synthetic / fake_swap (seen)"][2] == metrics["synthetic"]["by_class"]["fake_swap"]["frame"]["auc"]
    evaluate.write_outputs(tmp_path, metrics, scored, "header")
    assert (tmp_path / "roc.png").stat().st_size > 0


def test_without_a_terminal_progress_and_messages_are_plain_lines(tmp_path, capsys):
    log = RunLog(tmp_path, enabled=True, tensorboard=False, total=100)  # pytest's stderr is not a terminal
    log.start_at(40)  # a resumed run: its first 40 iterations are not this process's work
    log.message("fsfm_fast finetune: ...")
    for _ in range(60):
        log.progress(1, loss=0.5)
    log.close()
    screen = capsys.readouterr()
    assert "\r" not in screen.out + screen.err and screen.err == ""
    lines = screen.out.splitlines()
    assert lines[0] == "fsfm_fast finetune: ..."
    assert lines[1].startswith("training: 45/100 it (45%), ") and lines[1].endswith(", loss 0.5")
    assert lines[-1].startswith("training: 100/100 it (100%)") and len(lines) == 1 + 12  # one per 5 iterations


def test_demo_data_written_before_is_said_to_be_reused(bench):
    said = []
    write_forgery_benchmark(bench, seed=1, size=48, frames_per_video=2, identities={"train": 6, "val": 3, "test": 6},
                            workers=1, say=said.append)
    assert said == [f"reusing the synthetic forgery benchmark in {bench}"]


def test_export_with_no_checkpoint_says_what_it_exports(tmp_path, monkeypatch):
    from fsfm_fast import demo, export
    monkeypatch.chdir(tmp_path)
    (tmp_path / demo.PRETRAIN_DIR).mkdir()
    (tmp_path / demo.PRETRAIN_DIR / "checkpoint-00000008.pth").write_bytes(b"")
    path, why = export.demo_checkpoint()
    assert path == Path(demo.PRETRAIN_DIR) / "checkpoint-00000008.pth"
    assert "exporting the ENCODER of the demo pretraining run" in why and "predict needs a detector" in why
    detector = tmp_path / demo.FINETUNE_DIR / "checkpoint-best.pth"
    detector.parent.mkdir()
    detector.write_bytes(b"")
    path, why = export.demo_checkpoint()
    assert path == Path(demo.FINETUNE_DIR) / "checkpoint-best.pth" and "exporting the demo detector" in why
    # predict --demo exports into its own folder, never into the export demo's
    assert Path(demo.PREDICT_DIR) / predict.DEMO_DETECTOR != Path(demo.EXPORT_DIR)


def test_evaluate_replaces_its_own_results_and_refuses_another_evaluation_s(tmp_path):
    from fsfm_fast import evaluate
    checkpoint, other = tmp_path / "a.pth", tmp_path / "b.pth"
    checkpoint.write_bytes(b"")
    other.write_bytes(b"")
    out = tmp_path / "eval"
    out.mkdir()
    (out / "metrics.json").write_text("{}")
    tests = {"cdf": str(tmp_path / "cdf")}
    run_folder.record_evaluation(out, run_folder.evaluation_of(checkpoint, tests))
    run_folder.claim_evaluation(out, run_folder.evaluation_of(checkpoint, tests), overwrite=False)  # itself again
    # another checkpoint into that folder: refused before anything is loaded (the checkpoints are empty files)
    with pytest.raises(UsageError, match=f"holds the evaluation of {checkpoint}.*--overwrite"):
        evaluate.main(["--checkpoint", str(other), "--test", f"cdf={tmp_path / 'cdf'}", "--output_dir", str(out),
                       "--device", "cpu"])
    with pytest.raises(UsageError, match="holds the evaluation of .*--overwrite"):
        run_folder.claim_evaluation(out, run_folder.evaluation_of(checkpoint, {"dfdc": "x"}), overwrite=False)
    said = []
    run_folder.claim_evaluation(out, run_folder.evaluation_of(other, tests), overwrite=True, say=said.append)
    assert said and "replacing the evaluation" in said[0]
