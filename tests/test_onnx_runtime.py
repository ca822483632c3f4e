"""Scoring an export with onnxruntime (``--runtime onnx``): predict and evaluate give PyTorch's scores
within the tolerance export checked, through the same contract (score name, recorded threshold, decision);
``auto`` picks onnxruntime on the CPU only when the export holds model.onnx; impossible choices get one
line. A tiny ViT at 32 px, so the file runs in seconds."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fsfm_fast import evaluate, export, predict
from fsfm_fast.scorer import export_transform
from fsfm_fast.formats import DETECTOR_FORMAT
from fsfm_fast.models import DetectorConfig
from fsfm_fast.onnx_runtime import OnnxModel, choose_runtime
from fsfm_fast.runtime import cli

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

TINY = "fsfm_vit_tiny_patch16"
SIZE = 32


def _cli(main, *argv) -> int:
    return cli.run(main, main.__module__, [str(a) for a in argv])


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> dict:
    """A tiny detector whose scores vary from face to face, exported with and without model.onnx."""
    torch.manual_seed(3)
    config = DetectorConfig(model=TINY, img_size=SIZE, mean=(0.5, 0.45, 0.4), std=(0.2, 0.21, 0.22), eval_resize="crop")
    model = config.build()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
        model.head.weight.normal_(0, 0.5)
    root = tmp_path_factory.mktemp("onnx")
    ckpt = root / "checkpoint-best.pth"
    torch.save({"format": DETECTOR_FORMAT, "detector": config.to_dict(), "model": model.state_dict()}, ckpt)
    assert _cli(export.main, "--checkpoint", ckpt, "--output_dir", root / "with_onnx", "--threshold", 0.45, "--onnx") == 0
    assert _cli(export.main, "--checkpoint", ckpt, "--output_dir", root / "plain") == 0
    faces = root / "faces"
    rng = np.random.default_rng(0)
    for cls in ("real", "fake"):
        (faces / cls).mkdir(parents=True)
        for i in range(6):  # larger than the input and not square: the recorded resize and crop apply
            Image.fromarray(rng.integers(0, 255, (44, 40, 3), dtype=np.uint8)).save(faces / cls / f"v{i}_frame_0.png")
    return {"ckpt": ckpt, "onnx": root / "with_onnx", "plain": root / "plain", "faces": faces, "root": root}


def _tolerance(folder: Path) -> tuple[float, float]:
    """(atol, rtol) that export recorded for model.onnx against PyTorch."""
    text = json.loads((folder / "config.json").read_text())["fsfm_fast"]["onnx"]["tolerance"]
    words = text.split()
    return float(words[words.index("atol") + 1]), float(words[words.index("rtol") + 1])


def _predict(exports, runtime: str, out: Path, capsys) -> list[dict]:
    assert _cli(predict.main, exports["faces"], "--detector", exports["onnx"], "--face_detector", "none",
                "--runtime", runtime, "--output", out, "--num_workers", 0, "--device", "cpu", "--batch_size", 5) == 0
    said = capsys.readouterr().out
    assert ("via onnxruntime on the CPU" in said) == (runtime == "onnx"), said
    return [json.loads(line) for line in out.read_text().splitlines()]


def test_predict_onnx_equals_torch_within_the_export_tolerance(exports, tmp_path, capsys):
    rows = {rt: _predict(exports, rt, tmp_path / f"{rt}.jsonl", capsys) for rt in ("onnx", "torch")}
    onnx, torch_rows = rows["onnx"], rows["torch"]
    assert [(r["level"], r["input"]) for r in onnx] == [(r["level"], r["input"]) for r in torch_rows]
    a, b = np.array([r["p_fake"] for r in onnx]), np.array([r["p_fake"] for r in torch_rows])
    assert a.size == 24 and np.ptp(b) > 0.05  # 12 face rows and 12 input rows; scores that differ
    # The logits agree within atol + rtol * |logit|; a two-class softmax moves at most half as much.
    atol, rtol = _tolerance(exports["onnx"])
    model = OnnxModel(exports["onnx"] / "model.onnx", 2)
    transform = export_transform(json.loads((exports["onnx"] / "config.json").read_text())["pretrained_cfg"])
    x = torch.stack([transform(Image.open(p).convert("RGB")) for p in sorted(exports["faces"].rglob("*.png"))])
    bound = atol + rtol * float(model(x).abs().max())
    assert np.abs(a - b).max() <= bound < 0.01
    inputs = [r for r in onnx if r["level"] == "input"]
    assert {r["threshold"] for r in inputs} == {0.45}  # the recorded threshold, through the same contract
    assert all(r["decision"] == ("fake" if r["p_fake"] >= 0.45 else "real") for r in inputs)


def test_evaluate_takes_an_export_folder_with_either_runtime(exports, tmp_path):
    metrics = {}
    for runtime in ("onnx", "torch"):
        out = tmp_path / runtime
        assert _cli(evaluate.main, "--checkpoint", exports["onnx"], "--test", f"faces={exports['faces']}", "--runtime",
                    runtime, "--output_dir", out, "--num_workers", 0, "--device", "cpu") == 0
        metrics[runtime] = json.loads((out / "metrics.json").read_text())["faces"]
        assert ("onnxruntime" in (out / "table.md").read_text()) == (runtime == "onnx")
    onnx, torch_m = metrics["onnx"], metrics["torch"]
    assert onnx["n_images"] == torch_m["n_images"] == 12 and onnx["threshold"] == 0.45
    for level in ("frame", "video"):
        assert onnx[level]["auc"] == pytest.approx(torch_m[level]["auc"], abs=1e-9)  # same ranking
    # the export folder through torch scores as the checkpoint it came from
    assert _cli(evaluate.main, "--checkpoint", exports["ckpt"], "--test", f"faces={exports['faces']}",
                "--output_dir", tmp_path / "ckpt", "--num_workers", 0, "--device", "cpu") == 0
    ckpt = json.loads((tmp_path / "ckpt" / "metrics.json").read_text())["faces"]
    assert ckpt["frame"]["auc"] == pytest.approx(torch_m["frame"]["auc"], abs=1e-9)


def test_auto_runtime_and_one_line_refusals(exports):
    assert choose_runtime("auto", exports["onnx"], "cpu") == "onnx"
    assert choose_runtime("auto", exports["plain"], "cpu") == "torch"  # no model.onnx
    assert choose_runtime("auto", exports["ckpt"], "cpu") == "torch"  # a checkpoint
    assert choose_runtime("auto", exports["onnx"], "cpu", "bf16") == "torch"  # onnxruntime scores in fp32
    cases = [(exports["ckpt"], "cpu", "auto", "needs an export folder"),
             (exports["plain"], "cpu", "auto", "has no model.onnx; export it again with --onnx"),
             (exports["onnx"], "cuda", "auto", "scores on the CPU; --device cuda needs --runtime torch"),
             (exports["onnx"], "cpu", "bf16", "scores in fp32")]
    for detector, device, precision, message in cases:
        with pytest.raises(cli.UsageError, match=message) as info:
            choose_runtime("onnx", detector, device, precision)
        assert "\n" not in str(info.value)
    assert _cli(predict.main, exports["faces"], "--detector", exports["plain"], "--runtime", "onnx",
                "--face_detector", "none", "--device", "cpu") == 2
