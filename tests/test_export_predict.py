"""The exits: FSFM models registered in timm, python -m fsfm_fast.export (safetensors + config.json, ONNX)
and python -m fsfm_fast.predict (images, folders, videos, contact sheet, per-input errors; deepfake, FAS-head
and FS-Adapter detectors and their exports, with the recorded threshold; the one ``>=`` decision of every
verb), all on a tiny ViT at 32 px so that the whole file runs in seconds."""
from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from fsfm_fast import export, predict
from fsfm_fast.scorer import load_scorer
from fsfm_fast.runtime import cli
from fsfm_fast.formats import safe_load
from fsfm_fast.formats import DETECTOR_FORMAT
from fsfm_fast.models import DetectorConfig, create_online
from fsfm_fast.formats import MEAN_STD_FILE

TINY = "fsfm_vit_tiny_patch16"
SIZE = 32
STATS = {"mean": [0.45, 0.4, 0.35], "std": [0.25, 0.24, 0.23]}
ROOT = Path(__file__).resolve().parents[1]


def _cli(main, *argv) -> int:
    return cli.run(main, main.__module__, [str(a) for a in argv])


def _perturbed(model: torch.nn.Module, scale: float) -> torch.nn.Module:
    with torch.no_grad():  # make every weight matter (the head starts ~N(0, 2e-5): logits would be ~0)
        for p in model.parameters():
            p.add_(scale * torch.randn_like(p))
    return model.eval()


@pytest.fixture(scope="module")
def online():
    torch.manual_seed(0)
    return _perturbed(create_online(TINY, img_size=SIZE), 0.02)


@pytest.fixture(scope="module")
def reference_ckpt(online, tmp_path_factory):
    """A release-format online checkpoint (a pickled Namespace beside the weights), with its mean/std file."""
    folder = tmp_path_factory.mktemp("release")
    torch.save({"model": online.state_dict(), "args": argparse.Namespace(model=TINY, input_size=SIZE)},
               folder / "checkpoint-400.pth")
    (folder / MEAN_STD_FILE).write_text(json.dumps(STATS) + "\n")
    return folder / "checkpoint-400.pth"


@pytest.fixture(scope="module")
def detector(tmp_path_factory):
    """A tiny detector checkpoint of the fine-tuning format, and its model."""
    torch.manual_seed(1)
    config = DetectorConfig(model=TINY, img_size=SIZE, mean=(0.5, 0.45, 0.4), std=(0.2, 0.21, 0.22),
                            eval_resize="plain")
    model = config.build()
    with torch.no_grad():
        model.head.weight.normal_(0, 0.5)  # scores that differ from face to face
    model = _perturbed(model, 0.02)
    path = tmp_path_factory.mktemp("detector") / "checkpoint-best.pth"
    torch.save({"format": DETECTOR_FORMAT, "detector": config.to_dict(), "model": model.state_dict()}, path)
    return path, model


@pytest.fixture(scope="module")
def exported(detector, tmp_path_factory):
    """The detector exported (with ONNX when the [export] extra is there), shared by the timm, ONNX and predict tests."""
    out = tmp_path_factory.mktemp("export") / "fsfm_detector"
    onnx = ["--onnx"] if all(importlib.util.find_spec(m) for m in export.ONNX_PACKAGES) else []
    assert _cli(export.main, "--checkpoint", detector[0], "--output_dir", out, "--threshold", 0.4, *onnx) == 0
    return out


def _x(batch: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------------------------
# timm and export


def test_timm_by_name_with_a_file_gives_our_features_and_logits(online, reference_ckpt, detector):
    x = _x(3)
    encoder = timm.create_model(TINY, pretrained=True, pretrained_cfg_overlay=dict(file=str(reference_ckpt))).eval()
    assert encoder.num_classes == 0 and encoder.global_pool == "token"  # the encoder, final norm kept
    assert encoder.pretrained_cfg["mean"] == tuple(STATS["mean"]) and encoder.pretrained_cfg["input_size"] == (3, SIZE, SIZE)
    path, model = detector
    det = timm.create_model(TINY, pretrained=True, pretrained_cfg_overlay=dict(file=str(path))).eval()
    assert (det.num_classes, det.global_pool) == (2, "avg")  # the file's head and pooling
    with torch.no_grad():
        torch.testing.assert_close(encoder.forward_features(x), online.encode(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(det(x), model(x), rtol=0, atol=0)
        # asked for another size, the position embedding is resampled; asked for 5 classes, a new head
        bigger = timm.create_model(TINY, pretrained=True, img_size=64, num_classes=5,
                                   pretrained_cfg_overlay=dict(file=str(path)))
        assert bigger.pos_embed.shape == (1, 17, 192) and bigger.head.weight.shape == (5, 192)
        torch.testing.assert_close(bigger.blocks[0].attn.qkv.weight, model.blocks[0].attn.qkv.weight)
    with pytest.raises(RuntimeError, match="bundles no weights"):
        timm.create_model(TINY, pretrained=True)


@pytest.fixture(scope="module")
def exported_encoder(reference_ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "fsfm_vit"
    assert _cli(export.main, "--checkpoint", reference_ckpt, "--output_dir", out) == 0
    return out


def test_export_of_a_release_checkpoint_loads_in_timm_by_folder(online, reference_ckpt, exported_encoder):
    out = exported_encoder
    config = json.loads((out / "config.json").read_text())
    assert config["architecture"] == "vit_tiny_patch16_224" and config["num_classes"] == 0
    assert config["model_args"]["depth"] == 6 and config["model_args"]["img_size"] == [SIZE, SIZE]
    assert config["pretrained_cfg"]["mean"] == STATS["mean"] and config["pretrained_cfg"]["std"] == STATS["std"]
    assert config["fsfm_fast"]["source_kind"] == "reference release checkpoint, online encoder"
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    model = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    x = _x(2)
    with torch.no_grad():
        torch.testing.assert_close(model.forward_features(x), online.encode(x), rtol=1e-5, atol=1e-5)
    # the target network comes from its own release file, and not from the online one
    assert _cli(export.main, "--checkpoint", reference_ckpt, "--output_dir", out.parent / "t", "--encoder", "target") == 2


def test_exported_detector_in_timm_and_in_plain_timm(detector, exported):
    _, model = detector
    config = json.loads((exported / "config.json").read_text())
    assert config["label_names"] == ["real", "fake"] and config["fsfm_fast"]["threshold"] == 0.4
    assert config["pretrained_cfg"]["crop_mode"] == "squash" and config["pretrained_cfg"]["mean"] == [0.5, 0.45, 0.4]
    x = _x(3, seed=7)
    with torch.no_grad():
        expected = model(x)
        torch.testing.assert_close(timm.create_model(f"local-dir:{exported}", pretrained=True).eval()(x), expected,
                                   rtol=0, atol=0)
    # the architecture is timm's own ViT (the FSFM size in model_args): plain timm loads it, no fsfm_fast needed
    assert timm.models.get_arch_name(config["architecture"]) == "vit_tiny_patch16_224"
    assert timm.models._registry._model_to_module[config["architecture"]] == "vision_transformer"


def test_importing_fsfm_fast_before_timm_registers_the_models_when_timm_arrives():
    code = ('import sys, fsfm_fast; assert "timm" not in sys.modules, "import fsfm_fast must stay light"; '
            f'import timm; assert timm.list_models("fsfm*") == {sorted(export.MODEL_CONFIGS)}; print("ok")')
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-2000:]


def test_onnx_matches_pytorch_at_batch_1_and_3(detector, exported):
    for module in export.ONNX_PACKAGES:
        pytest.importorskip(module)
    ort = pytest.importorskip("onnxruntime")
    _, model = detector
    session = ort.InferenceSession(str(exported / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input"] and [o.name for o in session.get_outputs()] == ["logits"]
    assert not isinstance(session.get_inputs()[0].shape[0], int)  # the batch dimension is dynamic
    for batch in (1, 3):
        x = _x(batch, seed=10 + batch)
        with torch.no_grad():
            expected = model(x).numpy()
        got = session.run(None, {"input": x.numpy()})[0]
        np.testing.assert_allclose(got, expected, rtol=export.ONNX_RTOL, atol=export.ONNX_ATOL)
    record = json.loads((exported / "config.json").read_text())["fsfm_fast"]["onnx"]
    assert record["opset"] == export.ONNX_OPSET and record["max_abs_diff"] <= export.ONNX_ATOL


def test_export_refuses_mismatched_keys_by_name(detector, reference_ckpt, tmp_path, capsys):
    ckpt = torch.load(detector[0], weights_only=True)
    del ckpt["model"]["blocks.1.mlp.fc2.bias"]
    ckpt["model"]["decoder_pred.weight"] = torch.zeros(3)
    torch.save(ckpt, tmp_path / "edited.pth")
    assert _cli(export.main, "--checkpoint", tmp_path / "edited.pth", "--output_dir", tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert "blocks.1.mlp.fc2.bias" in err and "decoder_pred.weight" in err and err.count("\n") == 1
    release = safe_load(reference_ckpt)  # the release pickles a Namespace, which safe_load allows
    del release["model"]["predictor.projection_head.3.bias"]
    release["model"]["blocks.0.norm1.weight"] = torch.zeros(7)
    release["model"]["extra_head.weight"] = torch.zeros(2)
    torch.save(release, tmp_path / "release.pth")
    assert _cli(export.main, "--checkpoint", tmp_path / "release.pth", "--output_dir", tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert "missing keys: predictor.projection_head.3.bias" in err and "unexpected keys: extra_head.weight" in err
    assert "wrong shapes: blocks.0.norm1.weight [7] (model [192])" in err
    assert not list((tmp_path / "out").iterdir()), "nothing is written for a refused checkpoint"
    # a bare two-class state_dict does not say which class is fake: refused until --labels says it
    torch.save(detector[1].state_dict(), tmp_path / "bare.pth")
    assert _cli(export.main, "--checkpoint", tmp_path / "bare.pth", "--output_dir", tmp_path / "bare",
                "--normalize_from_IMN") == 2
    assert "--labels" in capsys.readouterr().err
    assert _cli(export.main, "--checkpoint", tmp_path / "bare.pth", "--output_dir", tmp_path / "bare",
                "--normalize_from_IMN", "--labels", "real,fake") == 0
    config = json.loads((tmp_path / "bare" / "config.json").read_text())
    assert config["label_names"] == ["real", "fake"] and config["pretrained_cfg"]["std"] == [0.229, 0.224, 0.225]


def test_encoder_only_export_gives_the_feature_the_head_reads(detector, tmp_path):
    path, model = detector
    assert _cli(export.main, "--checkpoint", path, "--output_dir", tmp_path / "features", "--encoder_only") == 0
    config = json.loads((tmp_path / "features" / "config.json").read_text())
    assert config["num_classes"] == 0 and "label_names" not in config and config["global_pool"] == "avg"
    features = timm.create_model(f"local-dir:{tmp_path / 'features'}", pretrained=True).eval()
    x = _x(2, seed=3)
    with torch.no_grad():
        pooled = features(x)
        torch.testing.assert_close(pooled, model.forward_head(model.forward_features(x), pre_logits=True), rtol=0, atol=0)
        torch.testing.assert_close(model.head(pooled), model(x), rtol=1e-6, atol=1e-6)


def test_export_of_an_adapter_checkpoint_rebuilds_the_detector_on_its_encoder(reference_ckpt, tmp_path, capsys):
    """An FS-Adapter checkpoint (trained parts only, FAS head) exports whole: the frozen encoder is read from
    the file it names; the folder loads through timm once fsfm_fast is imported, and through onnxruntime."""
    from fsfm_fast.formats import ADAPTER_FORMAT
    from fsfm_fast.models import load_pretrained_encoder
    from fsfm_fast.models.adapter import encoder_reference, trained_state
    torch.manual_seed(2)
    config = DetectorConfig(model=TINY, img_size=SIZE, mean=tuple(STATS["mean"]), std=tuple(STATS["std"]),
                            eval_resize="plain", head="fas", adapter="fs", labels=("real", "attack"))
    model = config.build()
    encoder = load_pretrained_encoder(model, reference_ckpt)
    _perturbed(model.head, 0.05)
    model.eval()
    path = tmp_path / "checkpoint-best.pth"
    torch.save({"format": ADAPTER_FORMAT, "detector": config.to_dict(), "model": trained_state(model),
                "encoder": encoder_reference(encoder)}, path)
    onnx = ["--onnx"] if all(importlib.util.find_spec(m) for m in export.ONNX_PACKAGES) else []
    assert _cli(export.main, "--checkpoint", path, "--output_dir", tmp_path / "out", *onnx) == 0
    config_json = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config_json["architecture"] == TINY and config_json["label_names"] == ["real", "attack"]
    assert config_json["model_args"]["adapter"] == "fs" and config_json["model_args"]["head"] == "fas"
    x = _x(3, seed=5)
    with torch.no_grad():
        expected = model(x)
        assert expected.std() > 0
        torch.testing.assert_close(timm.create_model(f"local-dir:{tmp_path / 'out'}", pretrained=True).eval()(x),
                                   expected, rtol=0, atol=0)
    if onnx:
        import onnxruntime as ort
        session = ort.InferenceSession(str(tmp_path / "out" / "model.onnx"), providers=["CPUExecutionProvider"])
        np.testing.assert_allclose(session.run(None, {"input": x.numpy()})[0], expected.numpy(),
                                   rtol=export.ONNX_RTOL, atol=export.ONNX_ATOL)
    # the encoder file changed since training: refused by checksum, in one line
    release = safe_load(reference_ckpt)  # the release pickles a Namespace, which safe_load allows
    moved = tmp_path / "moved.pth"
    ckpt = torch.load(path, weights_only=True)
    ckpt["encoder"]["path"] = str(moved)
    release["model"]["blocks.0.norm1.weight"] += 1
    torch.save(release, moved)
    torch.save(ckpt, path)
    capsys.readouterr()
    assert _cli(export.main, "--checkpoint", path, "--output_dir", tmp_path / "out2") == 2
    err = capsys.readouterr().err
    assert "SHA-256" in err and err.count("\n") == 1


# ----------------------------------------------------------------------------------------------
# predict


@pytest.fixture(scope="module")
def predicted(exported, tmp_path_factory):
    """One predict run over a folder of face images (with a corrupt image and a stray text file in it),
    a synthetic video, and a path that does not exist."""
    pytest.importorskip("av")
    pytest.importorskip("dlib")
    from fsfm_fast.data.synthetic_video import moving_face_frames, write_synthetic_videos
    root = tmp_path_factory.mktemp("inputs")
    (root / "photos").mkdir()
    frames, _ = moving_face_frames(seed=5, num_frames=2)
    for i, frame in enumerate(frames):
        Image.fromarray(frame).save(root / "photos" / f"face_{i}.png")
    (root / "photos" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(200)))
    (root / "photos" / "notes.txt").write_text("not a picture")
    video = write_synthetic_videos(root / "videos", num_videos=1, num_frames=6)[0]
    out = root / "scores.jsonl"
    code = _cli(predict.main, root / "photos", video, root / "missing.mp4", "--detector", exported,
                "--output", out, "--save_faces", root / "faces.png", "--num_frames", 4, "--num_workers", 2)
    return root, video, out, code


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_predict_scores_images_and_videos_and_reports_bad_inputs(predicted, detector, capsys):
    from fsfm_fast.prepare import DlibHogDetector, crop_face, largest_face, sample_indices
    root, video, out, code = predicted
    assert code == 0
    rows = _rows(out)
    inputs = {Path(r["input"]).name: r for r in rows if r["level"] == "input"}
    assert set(inputs) == {"face_0.png", "face_1.png", "broken.png", "notes.txt", video.name, "missing.mp4"}
    assert "not a readable image" in inputs["broken.png"]["error"] and inputs["broken.png"]["p_fake"] is None
    assert "not an image or video" in inputs["notes.txt"]["error"]
    assert inputs["missing.mp4"]["error"] == "no such file or folder"
    # an image's score is the detector's P(fake) of prepare's crop of its largest face, transformed as evaluated
    _, model = detector
    hog = DlibHogDetector()
    for name in ("face_0.png", "face_1.png"):
        image = np.asarray(Image.open(root / "photos" / name).convert("RGB"))
        crop = crop_face(image, largest_face(hog.detect(image)))
        x = torch.from_numpy(np.asarray(Image.fromarray(crop).resize((SIZE, SIZE), Image.BICUBIC), np.float32) / 255)
        x = (x - torch.tensor([0.5, 0.45, 0.4])) / torch.tensor([0.2, 0.21, 0.22])
        with torch.no_grad():
            expected = model(x.permute(2, 0, 1)[None]).softmax(1)[0, 1].item()
        assert inputs[name]["p_fake"] == pytest.approx(expected, abs=2e-3)
        assert inputs[name]["decision"] == ("fake" if expected >= 0.4 else "real") and inputs[name]["threshold"] == 0.4
    # a video: the faces of its sampled frames, and their mean
    faces = [r for r in rows if r["level"] == "face" and r["input"] == str(video)]
    assert [r["frame"] for r in faces] == sample_indices(6, 4) and all(len(r["box"]) == 4 for r in faces)
    assert inputs[video.name]["p_fake"] == pytest.approx(np.mean([r["p_fake"] for r in faces]))
    assert inputs[video.name]["faces"] == inputs[video.name]["frames"] == 4


def test_predict_writes_a_contact_sheet_and_csv(predicted, exported, tmp_path):
    root, video, out, _ = predicted
    sheet = Image.open(root / "faces.png")
    faces = [r for r in _rows(out) if r["level"] == "face"]
    tile_w, tile_h = predict.THUMB + 8, predict.THUMB + 8 + 2 * predict.SHEET_LINE + 2
    assert sheet.size[0] >= min(len(faces), 8) * tile_w  # at least the tiles; the header may be wider
    assert sheet.size[1] == predict.SHEET_HEADER + -(-len(faces) // 8) * tile_h
    top = predict.SHEET_HEADER + 2  # the tiles start under the header
    frame = np.asarray(sheet.convert("RGB"))[top, 2:tile_w - 2]  # the top edge of the first tile's frame
    first = faces[0]["p_fake"]
    assert (frame == ((200, 30, 30) if first >= 0.4 else (30, 150, 30))).all()
    csv_path = tmp_path / "scores.csv"
    assert _cli(predict.main, video, "--detector", exported, "--output", csv_path, "--num_frames", 2,
                "--num_workers", 0, "--threshold", 0.9) == 0
    lines = csv_path.read_text().splitlines()
    assert lines[0].split(",") == predict.CSV_COLUMNS and len(lines) == 1 + 2 + 1
    assert lines[-1].split(",")[predict.CSV_COLUMNS.index("threshold")] == "0.9"


def test_predict_refuses_an_encoder_and_says_what_the_demo_needs(reference_ckpt, exported_encoder, tmp_path, capsys,
                                                                 monkeypatch):
    assert _cli(predict.main, str(reference_ckpt), "--model", exported_encoder) == 2
    err = capsys.readouterr().err  # the former name still works, and says what replaced it, in one line
    assert "--model is now --detector" in err and "no classification head" in err and err.count("\n") == 2
    assert _cli(predict.main, str(reference_ckpt), "--model", exported_encoder, "--detector", exported_encoder) == 2
    assert "give --detector only" in capsys.readouterr().err
    monkeypatch.chdir(tmp_path)
    assert _cli(predict.main, "--demo") == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "run python -m fsfm_fast.finetune first" in err
    assert _cli(predict.main) == 2  # no arguments at all is the demo, which says the same
    captured = capsys.readouterr()
    assert "running the demo" in captured.out and "run python -m fsfm_fast.finetune first" in captured.err
    assert _cli(predict.main, "--detector", exported_encoder) == 2  # half a command is not the demo
    assert "give INPUT" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# the inference contract: anti-spoofing and FS-Adapter detectors in predict, the recorded threshold


SOURCE_SELECTED = "source-selected: FAR = FRR on held-out source data"


@pytest.fixture(scope="module")
def face_crops(tmp_path_factory):
    """Three already-cropped 'faces' (predict --face_detector none), different enough to score differently."""
    folder = tmp_path_factory.mktemp("crops")
    rng = np.random.default_rng(4)
    for i in range(3):
        pixels = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8) // (i + 1)
        Image.fromarray(pixels).save(folder / f"crop_{i}.png")
    return folder


@pytest.fixture(scope="module", params=["fas_head", "fs_adapter"])
def fas_checkpoint(request, reference_ckpt, tmp_path_factory):
    """An anti-spoofing detector checkpoint recording a source-selected threshold: a whole detector with the
    reference's FAS head, or an FS-Adapter checkpoint (trained parts only) on the release encoder."""
    from fsfm_fast.formats import ADAPTER_FORMAT
    from fsfm_fast.models import load_pretrained_encoder
    from fsfm_fast.models.adapter import encoder_reference, trained_state
    adapter = request.param == "fs_adapter"
    torch.manual_seed(6)
    config = DetectorConfig(model=TINY, img_size=SIZE, mean=tuple(STATS["mean"]), std=tuple(STATS["std"]),
                            eval_resize="plain", head="fas", adapter="fs" if adapter else "",
                            labels=("real", "attack"), threshold=0.45, threshold_source=SOURCE_SELECTED)
    model = config.build()
    path = tmp_path_factory.mktemp(request.param) / "checkpoint-best.pth"
    if adapter:
        encoder = load_pretrained_encoder(model, reference_ckpt)
        _perturbed(model.head, 0.05)
        torch.save({"format": ADAPTER_FORMAT, "detector": config.to_dict(), "model": trained_state(model),
                    "encoder": encoder_reference(encoder)}, path)
    else:
        _perturbed(model, 0.05)
        torch.save({"format": DETECTOR_FORMAT, "detector": config.to_dict(), "model": model.state_dict()}, path)
    return path, model.eval(), config


@pytest.fixture(scope="module")
def fas_export(fas_checkpoint, tmp_path_factory):
    """The export of each anti-spoofing detector; the export itself checks that timm rebuilds it (and, with the
    [export] extra, that onnxruntime reproduces it)."""
    out = tmp_path_factory.mktemp("fas_export") / "detector"
    onnx = ["--onnx"] if all(importlib.util.find_spec(m) for m in export.ONNX_PACKAGES) else []
    assert _cli(export.main, "--checkpoint", fas_checkpoint[0], "--output_dir", out, *onnx) == 0
    return out


def _predict_rows(capsys, detector, crops, out, *extra) -> tuple[dict, str]:
    capsys.readouterr()
    # torch whatever the export holds: the threshold test compares scores bit for bit across two exports,
    # one with model.onnx (which --runtime auto would score with onnxruntime) and one without
    assert _cli(predict.main, crops, "--detector", detector, "--face_detector", "none", "--num_workers", 0,
                "--output", out, "--runtime", "torch", *extra) == 0
    printed = capsys.readouterr().out
    return {Path(r["input"]).name: r for r in _rows(out) if r["level"] == "input"}, printed


@pytest.mark.parametrize("via", ["checkpoint", "export"])
def test_predict_scores_anti_spoofing_detectors_with_their_recorded_threshold(fas_checkpoint, fas_export, face_crops,
                                                                              via, tmp_path, capsys):
    """A FAS-head detector and an FS-Adapter checkpoint (the two fixture parameters), each as its checkpoint
    and as its export: P(attack) of each crop, named so, called at the threshold the detector records."""
    from fsfm_fast.models.detector import eval_transform
    path, model, config = fas_checkpoint
    if via == "export":
        record = json.loads((fas_export / "config.json").read_text())
        assert record["label_names"] == ["real", "attack"] and record["model_args"]["head"] == "fas"
        assert (record["fsfm_fast"]["positive_class"], record["fsfm_fast"]["score"]) == ("attack", "P(attack)")
        assert record["fsfm_fast"]["threshold"] == 0.45 and record["fsfm_fast"]["threshold_source"] == SOURCE_SELECTED
    rows, printed = _predict_rows(capsys, path if via == "checkpoint" else fas_export, face_crops,
                                  tmp_path / "rows.jsonl")
    assert "| P(attack) |" in printed and "P(fake)" not in printed
    assert f"threshold 0.45 (recorded in the detector: {SOURCE_SELECTED})" in printed
    transform = eval_transform(config)
    scores = []
    for name, row in rows.items():
        x = transform(Image.open(face_crops / name).convert("RGB"))[None]
        with torch.no_grad():
            expected = model(x).softmax(1)[0, 1].item()
        assert "p_fake" not in row and row["p_attack"] == pytest.approx(expected, abs=1e-5)
        assert row["decision"] == ("attack" if row["p_attack"] >= 0.45 else "real") and row["threshold"] == 0.45
        scores.append(row["p_attack"])
    assert max(scores) - min(scores) > 1e-3, "the crops should score differently"


def test_every_verb_calls_a_score_equal_to_the_threshold_the_positive_class(fas_export, face_crops, tmp_path,
                                                                            capsys):
    """evaluate's metrics, the FAS metrics, export (its recorded threshold) and predict use one rule,
    ``score >= threshold``: a score exactly equal to the threshold is the positive class in each."""
    from fsfm_fast.evaluate import summarize
    from fsfm_fast.metrics import SingleClassWarning, hter
    rows, _ = _predict_rows(capsys, fas_export, face_crops, tmp_path / "first.jsonl")
    name, row = sorted(rows.items())[0]
    s = row["p_attack"]  # a score the detector really gives, exactly (JSON keeps every bit of a float)
    # predict, given the threshold
    again, _ = _predict_rows(capsys, fas_export, face_crops, tmp_path / "given.jsonl", "--threshold", repr(s))
    assert again[name]["p_attack"] == s and again[name]["decision"] == "attack"
    # export: recorded, carried exactly, and predict applies it
    out = tmp_path / "at_s"
    assert _cli(export.main, "--checkpoint", fas_export, "--output_dir", out, "--threshold", repr(s)) == 0
    record = json.loads((out / "config.json").read_text())["fsfm_fast"]
    assert record["threshold"] == s and record["threshold_source"] == "given at export (--threshold)"
    carried, printed = _predict_rows(capsys, out, face_crops, tmp_path / "carried.jsonl")
    assert carried[name]["p_attack"] == s and carried[name]["decision"] == "attack" and "recorded in the detector" in printed
    # evaluate's accuracies and the FAS metrics: a real face scoring s is rejected, an attack scoring s caught
    labels, scores, videos = np.array([0, 1]), np.array([s, s]), np.array(["a", "b"])
    m = summarize(labels, scores, videos, threshold=s)
    assert m["frame"]["acc"] == 0.5 and m["frame"]["balanced_acc"] == 0.5 and m["video"]["acc"] == 0.5
    with pytest.warns(SingleClassWarning):  # one class: no AUC, but an accuracy
        assert summarize(np.array([1]), np.array([s]), np.array(["b"]), threshold=s)["frame"]["acc"] == 1.0
    assert hter(labels, scores, s)[1:] == (0.0, 1.0)  # FAR 0 (the attack is caught), FRR 1 (the real rejected)
    assert predict.decision(s, s, predict.Contract(("real", "attack"), "attack")) == "attack"


def test_an_export_older_than_the_contract_keeps_its_pooled_fas_head(fas_checkpoint, fas_export, tmp_path):
    """Before the contract, "fas" named the head on the pooled feature: such an export (no positive_class,
    no threshold_source) is rebuilt as it was trained, and its contract derived from its labels."""
    import shutil
    from fsfm_fast.models.heads import FASHead
    if fas_checkpoint[2].adapter:
        pytest.skip("the FS-Adapter's FAS head reads the pooled feature either way")
    old = tmp_path / "old_export"
    shutil.copytree(fas_export, old)
    config = json.loads((old / "config.json").read_text())
    for key in ("positive_class", "score", "threshold_source"):
        del config["fsfm_fast"][key]
    (old / "config.json").write_text(json.dumps(config))
    scorer = load_scorer(str(old))
    assert isinstance(scorer.model.head, FASHead) and scorer.model.head.pooled
    assert scorer.contract.positive_class == "attack" and scorer.contract.threshold == 0.45
    assert scorer.contract.threshold_source == "recorded in the export"
    assert not load_scorer(str(fas_export)).model.head.pooled
    again = tmp_path / "again"  # exported again: still the pooled head, now named so
    assert _cli(export.main, "--checkpoint", old, "--output_dir", again) == 0
    assert json.loads((again / "config.json").read_text())["model_args"]["head"] == "fas_pooled"
